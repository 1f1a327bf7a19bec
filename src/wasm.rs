//! The browser API: the only file that sees `JsValue`. Inputs are typed; results are plain
//! objects serialized with serde; every error becomes a `JsError` with the crate's message.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::chat::{render_chat, ChatMessage, ChatTemplate};
use crate::generate::{now_ms, Backend, Device, LoadOptions};
use crate::gguf::Gguf;
use crate::gpu::GpuOptions;
use crate::model::Config;
use crate::tokenizer::Tokenizer;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// A loaded model, ready to generate.
#[wasm_bindgen]
pub struct Engine {
    config: Config,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    backend: Backend,
    context: usize,
    load_ms: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResult {
    text: String,
    tokens: Vec<u32>,
    finish_reason: &'static str,
    prompt_tokens: usize,
    generated_tokens: usize,
    ttft_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    logprobs: Vec<crate::generate::TokenLogprob>,
}

/// `generate` options, with the OpenAI API's names and defaults (greedy when absent).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GenerateRequest {
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
}

impl Default for GenerateRequest {
    fn default() -> Self {
        let s = crate::sampler::SamplingParams::greedy();
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
        }
    }
}

impl GenerateRequest {
    fn into_options(self) -> crate::Result<crate::generate::GenerateOptions> {
        let logit_bias = self
            .logit_bias
            .iter()
            .map(|(k, &v)| k.parse::<u32>().map(|id| (id, v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| crate::Error::InvalidOption { option: "logit_bias", reason: "keys must be token ids".into() })?;
        if self.logprobs.is_some_and(|n| n > 20) {
            return Err(crate::Error::InvalidOption { option: "logprobs", reason: "at most 20 alternatives".into() });
        }
        let sampling = crate::sampler::SamplingParams {
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
        Ok(crate::generate::GenerateOptions { max_tokens: self.max_tokens, sampling, stop: self.stop, ignore_eos: self.ignore_eos, logprobs: self.logprobs })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    architecture: String,
    n_layers: usize,
    d_model: usize,
    vocab_size: usize,
    context: usize,
    load_ms: f64,
    has_chat_template: bool,
    backend: String,
}

/// Where the engine runs.
#[wasm_bindgen]
#[derive(Clone, Copy)]
pub enum EngineDevice {
    Gpu = 0,
    Cpu = 1,
}

#[wasm_bindgen]
impl Engine {
    /// Parses and loads a GGUF model from its bytes onto `device`. `context` caps the context
    /// length (0: the model's own, at most 2048). `portable` ignores optional GPU features.
    pub async fn load(bytes: Vec<u8>, device: EngineDevice, context: u32, portable: bool) -> Result<Engine, JsError> {
        let t0 = now_ms();
        let gguf = Gguf::read(&bytes[..]).map_err(js_err)?;
        let tokenizer = Tokenizer::from_gguf(&gguf.metadata).map_err(js_err)?;
        let template = ChatTemplate::from_gguf(&gguf.metadata, &tokenizer).map_err(js_err)?;
        let config = Config::from_gguf(&gguf).map_err(js_err)?;
        let context = match context as usize {
            0 => config.context_len.min(2048),
            n => n.min(config.context_len),
        };
        let gpu = if portable { GpuOptions { allow_subgroups: false, allow_f16: false, allow_timestamps: false } } else { GpuOptions::default() };
        let device = match device {
            EngineDevice::Gpu => Device::Gpu,
            _ => Device::Cpu,
        };
        let backend = Backend::load(&gguf, &bytes[..], LoadOptions { device, context, gpu, kv_budget_bytes: None }).await.map_err(js_err)?;
        Ok(Engine { config, tokenizer, template, backend, context, load_ms: now_ms() - t0 })
    }

    /// Model facts for display.
    pub fn info(&self) -> Result<JsValue, JsError> {
        let info = ModelInfo {
            architecture: format!("{:?}", self.config.arch).to_lowercase(),
            n_layers: self.config.n_layers,
            d_model: self.config.d_model,
            vocab_size: self.config.vocab_size,
            context: self.context,
            load_ms: self.load_ms,
            has_chat_template: self.template.is_some(),
            backend: self.backend.describe(),
        };
        Ok(serde_wasm_bindgen::to_value(&info)?)
    }

    /// Token ids of `text` (special tokens parsed when `special`).
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, JsError> {
        self.tokenizer.encode(text, special).map_err(js_err)
    }

    /// Benchmarks greedy generation of `gen` tokens from the peer benchmark's prompt, `runs`
    /// times, plus the adapter's read bandwidth, and (when `stream_gen` > 0) the batching engine:
    /// 1-8 concurrent streams and prefix-cache TTFT. Returns the same summary as `ferrolm bench`.
    pub async fn benchmark(&self, gen: u32, runs: u32, stream_gen: u32) -> Result<JsValue, JsError> {
        use crate::bench::{read_bandwidth, time_generation, PRINTING_PRESS_PROMPT};
        let Backend::Gpu(model) = &self.backend else {
            return Err(JsError::new("benchmark needs the GPU engine (load with device \"gpu\")"));
        };
        let prompt = self.tokenizer.encode_prompt(PRINTING_PRESS_PROMPT, false).map_err(js_err)?;
        let bandwidth = read_bandwidth(model).await.map_err(js_err)?;
        let dispatch_us = crate::bench::dispatch_overhead_us(model).await.map_err(js_err)?;
        let mut timings = Vec::new();
        for _ in 0..runs.max(1) {
            timings.push(time_generation(model, &prompt, gen.max(2) as usize).await.map_err(js_err)?);
        }
        let median = |f: fn(&crate::bench::GenerationTiming) -> f64| {
            let mut v: Vec<f64> = timings.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let decode = median(|t| t.decode_tok_s);
        let serving = if stream_gen > 0 {
            let ids = self.tokenizer.encode_prompt(&PRINTING_PRESS_PROMPT.repeat(3), false).map_err(js_err)?;
            Some(crate::bench::time_serving(model, &self.tokenizer, &ids, stream_gen as usize).await.map_err(js_err)?)
        } else {
            None
        };
        let info = &model.ctx.info;
        let summary = serde_json::json!({
            "serving": serving,
            "where": "browser", "adapter": info.name, "backend": info.backend, "driver": info.driver,
            "load_ms": self.load_ms, "prompt_tokens": prompt.len(), "gen_tokens": gen, "runs": runs,
            "ttft_ms": median(|t| t.ttft_ms), "prefill_tok_s": median(|t| t.prefill_tok_s), "decode_tok_s": decode,
            "weight_bytes_per_token": model.weight_bytes, "read_gb_s": bandwidth / 1e9, "dispatch_us": dispatch_us,
            "mbu": model.weight_bytes as f64 * decode / bandwidth, "all_runs": timings,
        });
        Ok(JsValue::from_str(&summary.to_string()))
    }

    /// Teacher-forced logits of every position of `tokens`, `[n][vocab]` flattened.
    pub async fn score(&self, tokens: Vec<u32>) -> Result<Vec<f32>, JsError> {
        self.backend.score(&tokens).await.map_err(js_err)
    }

    /// Generation. With `chat`, `prompt` is a user message (after an optional `system` message)
    /// rendered through the model's chat template. `options` uses OpenAI names: `{max_tokens,
    /// temperature, top_p, top_k, min_p, typical_p, presence_penalty, frequency_penalty,
    /// repetition_penalty, logit_bias: {id: bias}, seed, stop: [..], ignore_eos, logprobs}`;
    /// unknown fields are an error. `on_text(piece)` is called as text completes. Returns
    /// `{text, tokens, finishReason, promptTokens, ttftMs, ..., logprobs}`.
    pub async fn generate(
        &self,
        prompt: &str,
        chat: bool,
        system: Option<String>,
        options: JsValue,
        on_text: &js_sys::Function,
    ) -> Result<JsValue, JsError> {
        let req: GenerateRequest = if options.is_undefined() || options.is_null() {
            GenerateRequest::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| JsError::new(&format!("invalid generate options: {e}")))?
        };
        let opts = req.into_options().map_err(js_err)?;
        let text = if chat {
            let mut messages = Vec::new();
            if let Some(s) = system.filter(|s| !s.is_empty()) {
                messages.push(ChatMessage { role: "system".into(), content: s });
            }
            messages.push(ChatMessage { role: "user".into(), content: prompt.to_string() });
            render_chat(self.template.as_ref(), &messages, true).map_err(js_err)?
        } else {
            prompt.to_string()
        };
        let ids = self.tokenizer.encode_prompt(&text, chat).map_err(js_err)?;
        let gen = self
            .backend
            .generate(&self.tokenizer, &ids, &opts, self.context, |piece| {
                let _ = on_text.call1(&JsValue::NULL, &JsValue::from_str(piece));
            })
            .await
            .map_err(js_err)?;
        let s = gen.stats;
        let result = GenerateResult {
            text: gen.text,
            tokens: gen.tokens,
            finish_reason: gen.finish_reason.as_str(),
            prompt_tokens: s.prompt_tokens,
            generated_tokens: s.generated_tokens,
            ttft_ms: s.ttft_ms,
            prefill_tok_s: s.prefill_tok_s,
            decode_tok_s: s.decode_tok_s,
            logprobs: gen.logprobs,
        };
        Ok(serde_wasm_bindgen::to_value(&result)?)
    }
}
