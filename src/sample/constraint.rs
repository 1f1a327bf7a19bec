//! Structured output: a request's output held to a JSON Schema, a regular expression or a Lark
//! grammar, token by token, by llguidance. [`Grammars`] is built once per tokenizer (its token
//! trie); each constrained request gets a [`Constraint`] that yields the allowed-token mask
//! before every choice, takes every token chosen, and names the tokens the grammar forces.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::clock::now_ms;
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
        Ok(Constraint { matcher, ready: Some(first), ms: 0.0 })
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
    /// The mask of the next choice when already computed (at compile, or ahead of a step
    /// whose backend applies it).
    ready: Option<SimpleVob>,
    /// Milliseconds spent in llguidance after submission (masks, commits, forced tokens).
    ms: f64,
}

impl Constraint {
    /// Runs `f` on the matcher, timed.
    fn timed<T>(&mut self, f: impl FnOnce(&mut Matcher) -> T) -> T {
        let t0 = now_ms();
        let out = f(&mut self.matcher);
        self.ms += now_ms() - t0;
        out
    }

    /// The tokens allowed next (the stop tokens alone once the grammar is complete).
    pub fn mask(&mut self) -> Result<SimpleVob> {
        if let Some(m) = self.ready.take() {
            return Ok(m);
        }
        self.timed(|m| m.compute_mask_or_eos()).map_err(|e| Error::Constraint(e.to_string()))
    }

    /// Computes the next mask ahead, for a backend to apply; returns its words (bit `t % 32`
    /// of word `t / 32`: token `t` allowed).
    pub fn prepare(&mut self) -> Result<&[u32]> {
        if self.ready.is_none() {
            self.ready = Some(self.mask()?);
        }
        Ok(self.ready.as_ref().expect("computed above").as_slice())
    }

    /// The words of the mask computed ahead, if any.
    pub fn prepared(&self) -> Option<&[u32]> {
        self.ready.as_ref().map(SimpleVob::as_slice)
    }

    /// Whether the mask computed ahead allows `token` (true when none was).
    pub fn allows(&self, token: u32) -> bool {
        self.ready.as_ref().is_none_or(|m| (token as usize) < m.len() && m.is_allowed(token))
    }

    /// Takes a chosen token.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.ready = None;
        self.timed(|m| m.consume_token(token)).map_err(|e| Error::Constraint(e.to_string()))
    }

    /// Tokens the grammar fixes from here whatever the model says (e.g. `"name": "` after
    /// `{`), not yet taken.
    pub fn forced(&mut self) -> Vec<u32> {
        self.timed(|m| m.compute_ff_tokens())
    }

    /// Milliseconds spent computing masks and forced tokens and taking tokens.
    pub fn ms(&self) -> f64 {
        self.ms
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
