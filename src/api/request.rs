//! What a request carries across the wasm boundary, with the OpenAI API's names: parsed and
//! checked the same way natively (the fuzz targets) and in the browser.

use crate::chat::ChatMessage;
use crate::sample::{GenerateOptions, SamplingParams, SpecMethod, Speculative};

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
        }
    }
}

impl GenerateRequest {
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
        Ok(GenerateOptions { max_tokens: self.max_tokens, sampling, stop: self.stop, ignore_eos: self.ignore_eos, logprobs: self.logprobs, speculative })
    }
}

/// What `submit` takes besides options: a raw prompt or chat messages.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitInput {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
}

/// Request options from JSON text, checked as the wasm boundary checks them.
pub fn options_from_json(text: &str) -> crate::Result<GenerateOptions> {
    let req: GenerateRequest = serde_json::from_str(text).map_err(|e| crate::Error::InvalidOption { option: "request", reason: e.to_string() })?;
    req.into_options()
}
