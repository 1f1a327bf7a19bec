//! What a request carries across the wasm boundary, with the OpenAI API's names: parsed and
//! checked the same way natively (the fuzz targets) and in the browser.

use super::tools::{self, Tool, ToolChoice};
use crate::chat::{ChatMessage, ChatTemplate};
use crate::sample::{GenerateOptions, Grammar, SamplingParams, SpecMethod, Speculative};
use crate::tokenizer::Tokenizer;

/// OpenAI's `response_format`.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// OpenAI's `response_format.json_schema`. Output always follows the schema (as with
/// `strict: true`); `name` and `description` are not used.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// Request options, with the OpenAI API's names and defaults (greedy when absent).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateRequest {
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    typical_p: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    repetition_penalty: f32,
    logit_bias: std::collections::BTreeMap<String, f32>,
    seed: Option<u64>,
    stop: Vec<String>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    /// "ngram" or "draft" (after `loadDraft`); absent: no speculation.
    speculative: Option<SpecMethod>,
    draft_k: usize,
    response_format: Option<ResponseFormat>,
    /// ferrolm: output matching this regular expression.
    regex: Option<String>,
    /// ferrolm: output in the language of this Lark grammar (llguidance's dialect).
    grammar: Option<String>,
    tools: Vec<Tool>,
    tool_choice: Option<ToolChoice>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        let s = SamplingParams::greedy();
        GenerateRequest {
            max_tokens: 256,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            min_p: s.min_p,
            typical_p: s.typical_p,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Default::default(),
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            speculative: None,
            draft_k: 4,
            response_format: None,
            regex: None,
            grammar: None,
            tools: Vec::new(),
            tool_choice: None,
        }
    }
}

impl GenerateRequest {
    /// The tools the model may call (they go into the chat prompt).
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    pub fn into_options(self) -> crate::Result<GenerateOptions> {
        let logit_bias = self
            .logit_bias
            .iter()
            .map(|(k, &v)| k.parse::<u32>().map(|id| (id, v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| crate::Error::InvalidOption { option: "logit_bias", reason: "keys must be token ids".into() })?;
        if self.logprobs.is_some_and(|n| n > 20) {
            return Err(crate::Error::InvalidOption { option: "logprobs", reason: "at most 20 alternatives".into() });
        }
        let speculative = self.speculative.map(|method| Speculative { method, k: self.draft_k });
        if let Some(sp) = &speculative {
            sp.validate()?;
        }
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias,
            seed: self.seed,
            ..Default::default()
        };
        let format = match self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(Grammar::JsonObject),
            Some(ResponseFormat::JsonSchema { json_schema }) => Some(json_schema.schema.map_or(Grammar::JsonObject, Grammar::JsonSchema)),
        };
        let calls = tools::grammar(&self.tools, self.tool_choice.as_ref())?;
        let grammars: Vec<Grammar> = [format, self.regex.map(Grammar::Regex), self.grammar.map(Grammar::Lark), calls].into_iter().flatten().collect();
        if grammars.len() > 1 {
            return Err(crate::Error::InvalidOption { option: "response_format", reason: "give at most one of a JSON response_format, regex, grammar and tools".into() });
        }
        let grammar = grammars.into_iter().next();
        Ok(GenerateOptions { max_tokens: self.max_tokens, sampling, stop: self.stop, ignore_eos: self.ignore_eos, logprobs: self.logprobs, speculative, grammar })
    }
}

/// What `submit` takes besides options: a raw prompt or chat messages.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitInput {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
}

impl SubmitInput {
    pub fn into_input(self) -> crate::Result<Input> {
        match (self.prompt, self.messages) {
            (Some(p), None) => Ok(Input::Prompt(p)),
            (None, Some(m)) => Ok(Input::Messages(m)),
            _ => Err(crate::Error::InvalidOption { option: "request", reason: "give either prompt or messages".into() }),
        }
    }
}

/// What a request generates from.
#[derive(Clone, Debug)]
pub enum Input {
    /// Raw text, tokenized as is (completions).
    Prompt(String),
    /// A chat, rendered with the model's template (and the tools, when there are any).
    Messages(Vec<ChatMessage>),
}

/// The prompt's token ids as the engine takes them, refused at once when its text is longer
/// than `context` tokens can hold.
pub fn encode_input(tokenizer: &Tokenizer, template: Option<&ChatTemplate>, input: &Input, tools: &[Tool], context: usize) -> crate::Result<Vec<u32>> {
    match input {
        Input::Prompt(_) if !tools.is_empty() => Err(crate::Error::InvalidOption { option: "tools", reason: "tools need chat messages, not a raw prompt".into() }),
        Input::Prompt(p) => tokenizer.encode_request(p, false, context),
        Input::Messages(m) => tokenizer.encode_request(&tools::render(template, m, tools, tokenizer.max_prompt_bytes(context))?, true, context),
    }
}

/// Request options from JSON text, checked as the wasm boundary checks them.
pub fn options_from_json(text: &str) -> crate::Result<GenerateOptions> {
    let req: GenerateRequest = serde_json::from_str(text).map_err(|e| crate::Error::InvalidOption { option: "request", reason: e.to_string() })?;
    req.into_options()
}
