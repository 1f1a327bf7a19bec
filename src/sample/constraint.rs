//! Structured output: a request's output held to a JSON Schema, a regular expression or a Lark
//! grammar, token by token, by llguidance. [`Grammars`] is built once per tokenizer (its token
//! trie); each constrained request gets a [`Constraint`] that yields the allowed-token mask
//! before every choice, takes every token chosen, and names the tokens the grammar forces.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What a constrained request's output must match: OpenAI's `response_format` kinds, and
/// ferrolm's `regex` and `grammar`.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON Schema.
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression.
    Regex(String),
    /// Text in the language of this Lark grammar (llguidance's dialect).
    Lark(String),
}

impl Grammar {
    /// The request field the grammar came from, for errors.
    fn option(&self) -> &'static str {
        match self {
            Grammar::JsonObject | Grammar::JsonSchema(_) => "response_format",
            Grammar::Regex(_) => "regex",
            Grammar::Lark(_) => "grammar",
        }
    }
}

/// llguidance's view of the tokenizer: the token trie, and the real tokenizer for forced text.
struct Env {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.tokenizer.encodes_pieces()
    }
}

/// Compiles grammars for one tokenizer.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the token trie over the vocabulary; any of the tokenizer's stop tokens ends a
    /// finished grammar.
    pub fn new(tokenizer: &Tokenizer) -> Result<Grammars> {
        let words = tokenizer.token_bytes();
        let stops = tokenizer.stop_ids();
        let Some(&eos) = stops.first() else {
            return Err(Error::InvalidOption { option: "response_format", reason: "the model's tokenizer names no end-of-text token, so constrained output could never end".into() });
        };
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(stops);
        let env: llguidance::toktrie::TokEnv = Arc::new(Env { trie, tokenizer: tokenizer.clone() });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| Error::InvalidOption { option: "response_format", reason: format!("the tokenizer's vocabulary cannot be used for constraints: {e}") })?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A fresh constraint for one request; refused with the reason when the grammar does not
    /// compile or admits no output.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint> {
        let top = match grammar {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" }))),
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let bad = |reason: String| Error::InvalidOption { option: grammar.option(), reason };
        let parser = self.factory.create_parser(top).map_err(|e| bad(one_line(&e.to_string())))?;
        let mut matcher = Matcher::new(Ok(parser));
        let first = matcher.compute_mask().map_err(|e| bad(one_line(&e.to_string())))?;
        if first.is_zero() {
            return Err(bad("no text satisfies it".into()));
        }
        Ok(Constraint { matcher, first: Some(first) })
    }
}

/// JSON on one line with `, ` and `: ` between items, unless the schema sets llguidance's
/// options itself: free whitespace lets a small model add newlines without end, and fixed
/// separators are forced tokens instead of choices.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " }));
    }
    schema
}

/// llguidance's message on one line, at most 400 characters.
fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

/// One request's grammar state.
pub struct Constraint {
    matcher: Matcher,
    /// The mask computed when the grammar was checked, used for the first choice.
    first: Option<SimpleVob>,
}

impl Constraint {
    /// The tokens allowed next (the stop tokens alone once the grammar is complete).
    pub fn mask(&mut self) -> Result<SimpleVob> {
        if let Some(m) = self.first.take() {
            return Ok(m);
        }
        self.matcher.compute_mask_or_eos().map_err(|e| Error::Constraint(e.to_string()))
    }

    /// Takes a chosen token.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.first = None;
        self.matcher.consume_token(token).map_err(|e| Error::Constraint(e.to_string()))
    }

    /// Tokens the grammar fixes from here whatever the model says (e.g. `"name": "` after
    /// `{`), not yet taken.
    pub fn forced(&mut self) -> Vec<u32> {
        self.matcher.compute_ff_tokens()
    }

    /// Whether the grammar is complete and allows nothing more.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Sets the logits of disallowed tokens to -inf (tokens past the mask, such as padding rows of
/// the output matrix, are disallowed).
pub fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    for (i, l) in logits.iter_mut().enumerate() {
        if i >= mask.len() || !mask.is_allowed(i as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
}
