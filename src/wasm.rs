//! The browser API: the only file that sees `JsValue`. Inputs are typed; results are plain
//! objects serialized with serde; every error becomes a `JsError` with the crate's message.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::chat::{render_chat, ChatMessage, ChatTemplate};
use crate::cpu::CpuModel;
use crate::generate::{generate_greedy, now_ms, CpuSession};
use crate::gguf::Gguf;
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
    model: CpuModel,
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
}

#[wasm_bindgen]
impl Engine {
    /// Parses and loads a GGUF model from its bytes. `context` caps the context length (0: the
    /// model's own, at most 4096).
    pub fn load(bytes: &[u8], context: u32) -> Result<Engine, JsError> {
        let t0 = now_ms();
        let gguf = Gguf::read(bytes).map_err(js_err)?;
        let tokenizer = Tokenizer::from_gguf(&gguf.metadata).map_err(js_err)?;
        let template = ChatTemplate::from_gguf(&gguf.metadata, &tokenizer).map_err(js_err)?;
        let model = CpuModel::load(&gguf, bytes).map_err(js_err)?;
        let config = model.config.clone();
        let context = match context as usize {
            0 => config.context_len.min(4096),
            n => n.min(config.context_len),
        };
        Ok(Engine { config, tokenizer, template, model, context, load_ms: now_ms() - t0 })
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
        };
        Ok(serde_wasm_bindgen::to_value(&info)?)
    }

    /// Token ids of `text` (special tokens parsed when `special`).
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, JsError> {
        self.tokenizer.encode(text, special).map_err(js_err)
    }

    /// Greedy generation. With `chat`, `prompt` is a user message (after an optional `system`
    /// message) rendered through the model's chat template. `on_text(piece)` is called as text
    /// completes. Returns `{text, tokens, finishReason, promptTokens, ttftMs, ...}`.
    pub fn generate(
        &self,
        prompt: &str,
        max_tokens: u32,
        chat: bool,
        system: Option<String>,
        on_text: &js_sys::Function,
    ) -> Result<JsValue, JsError> {
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
        let mut session = CpuSession::new(&self.model, self.context);
        let gen = generate_greedy(&mut session, &self.tokenizer, &ids, max_tokens as usize, |piece| {
            let _ = on_text.call1(&JsValue::NULL, &JsValue::from_str(piece));
        })
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
        };
        Ok(serde_wasm_bindgen::to_value(&result)?)
    }
}
