//! The generation loop: prefill the prompt, then pick a token, stream its text, feed it back,
//! until a stop token, `max_tokens` or the end of the context. Backends plug in through
//! [`Session`]; today the CPU reference implements it, the GPU engine will too.

use crate::cpu::{CpuModel, KvCache, Logits};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf};
use crate::gpu::{GpuContext, GpuModel, GpuOptions, GpuSession};
use crate::model::Config;
use crate::tokenizer::{Detokenizer, Tokenizer};

/// A sequence's state on some backend. Extending it appends tokens at the current position and
/// returns what comes next: the greedy token, or the full logits.
#[allow(async_fn_in_trait)] // Futures stay on one thread: wasm has one, natively we block on them.
pub trait Session {
    /// Appends `tokens` and returns the argmax of the logits after the last one.
    async fn extend_greedy(&mut self, tokens: &[u32]) -> Result<u32>;
    /// Appends `tokens` and returns the logits after the last one.
    async fn extend_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Positions filled so far.
    fn len(&self) -> usize;
    /// Positions the session can hold.
    fn capacity(&self) -> usize;
}

/// A sequence on the CPU reference model.
pub struct CpuSession<'m> {
    model: &'m CpuModel,
    cache: KvCache,
}

impl<'m> CpuSession<'m> {
    pub fn new(model: &'m CpuModel, context: usize) -> Self {
        CpuSession { model, cache: model.new_cache(context) }
    }
}

impl Session for CpuSession<'_> {
    async fn extend_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        Ok(argmax(&self.model.forward(tokens, &mut self.cache, Logits::Last)?))
    }
    async fn extend_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.forward(tokens, &mut self.cache, Logits::Last)
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (EOS or end of turn) was generated.
    Stop,
    /// `max_tokens` were generated or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Time to first token: prefill plus choosing the first token.
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    /// Tokens after the first, per second of decoding.
    pub decode_tok_s: f64,
}

pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub stats: GenerateStats,
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy generation from `prompt` (token ids, BOS already included when the model wants it).
/// `on_text` receives each piece of newly completed text as it is produced.
pub async fn generate_greedy<S: Session>(
    session: &mut S,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidOption { option: "prompt", reason: "the prompt is empty; give at least one token".into() });
    }
    let start_len = session.len();
    if start_len + prompt.len() > session.capacity() {
        return Err(Error::PromptTooLong { tokens: start_len + prompt.len(), context: session.capacity() });
    }
    let t0 = now_ms();
    let mut next = session.extend_greedy(prompt).await?;
    let mut detok = Detokenizer::new(tokenizer);
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        stats: GenerateStats { prompt_tokens: prompt.len(), ..Default::default() },
    };
    let mut t_first = t0;
    while out.tokens.len() < max_tokens {
        if out.tokens.is_empty() {
            t_first = now_ms();
            out.stats.ttft_ms = t_first - t0;
        }
        if tokenizer.stop_ids().contains(&next) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        out.tokens.push(next);
        let piece = detok.push(next)?;
        if !piece.is_empty() {
            on_text(&piece);
            out.text.push_str(&piece);
        }
        if out.tokens.len() == max_tokens || session.len() >= session.capacity() {
            break;
        }
        next = session.extend_greedy(&[next]).await?;
    }
    let tail = detok.finish()?;
    if !tail.is_empty() {
        on_text(&tail);
        out.text.push_str(&tail);
    }
    let s = &mut out.stats;
    s.generated_tokens = out.tokens.len();
    s.prefill_tok_s = prompt.len() as f64 / (s.ttft_ms.max(1e-3) / 1e3);
    let decode_ms = now_ms() - t_first;
    if s.generated_tokens > 1 {
        s.decode_tok_s = (s.generated_tokens - 1) as f64 / (decode_ms.max(1e-3) / 1e3);
    }
    Ok(out)
}

/// Milliseconds from an arbitrary origin; `Instant` does not exist on wasm32-unknown-unknown.
#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> f64 {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
}

#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The exact f32 reference on the CPU.
    Cpu,
    /// The WebGPU engine.
    Gpu,
}

/// How to load a model.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Context length in tokens (capped at the model's trained length).
    pub context: usize,
    pub gpu: GpuOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Gpu, context: 2048, gpu: GpuOptions::default() }
    }
}

/// A loaded model on one of the backends; the CLI and the wasm API drive it the same way.
pub enum Backend {
    Cpu(CpuModel),
    Gpu(GpuModel),
}

impl Backend {
    pub async fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S, opts: LoadOptions) -> Result<Backend> {
        let context = opts.context.min(Config::from_gguf(gguf)?.context_len).max(1);
        Ok(match opts.device {
            Device::Cpu => Backend::Cpu(CpuModel::load(gguf, source)?),
            Device::Gpu => {
                let ctx = GpuContext::new(opts.gpu).await?;
                Backend::Gpu(GpuModel::load(ctx, gguf, source, context as u32, 128).await?)
            }
        })
    }

    pub fn config(&self) -> &Config {
        match self {
            Backend::Cpu(m) => &m.config,
            Backend::Gpu(m) => &m.config,
        }
    }

    /// One line naming the backend and adapter.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu(_) => "CPU f32 reference".into(),
            Backend::Gpu(g) => format!("GPU {} ({}, {})", g.ctx.info.name, g.ctx.info.backend, g.ctx.info.driver),
        }
    }

    /// Greedy generation on a fresh sequence of up to `context` positions.
    pub async fn generate_greedy(&self, tokenizer: &Tokenizer, prompt: &[u32], max_tokens: usize, context: usize, on_text: impl FnMut(&str)) -> Result<Generation> {
        match self {
            Backend::Cpu(m) => generate_greedy(&mut CpuSession::new(m, context), tokenizer, prompt, max_tokens, on_text).await,
            Backend::Gpu(m) => generate_greedy(&mut GpuSession::new(m), tokenizer, prompt, max_tokens, on_text).await,
        }
    }

    /// Teacher-forced logits of every position, `[n][vocab]`.
    pub async fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self {
            Backend::Cpu(m) => m.forward(tokens, &mut m.new_cache(tokens.len()), Logits::All),
            Backend::Gpu(m) => m.score(tokens).await,
        }
    }
}
