//! The generation loop: prefill the prompt, then pick a token (GPU argmax, or the sampler over
//! the logits), stream its text, feed it back, until a stop token or string, `max_tokens` or the
//! end of the context. Backends plug in through [`Session`]: the CPU reference and the GPU engine.

use crate::cpu::{CpuModel, KvCache, Logits};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf};
use crate::gpu::{GpuContext, GpuModel, GpuOptions, GpuSession};
use crate::model::Config;
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
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
    /// One entry per token when `logprobs` was asked for.
    pub logprobs: Vec<TokenLogprob>,
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

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Strings that end generation; they and what follows are not emitted.
    pub stop: Vec<String>,
    /// Keep going past EOS / end-of-turn tokens.
    pub ignore_eos: bool,
    /// Log-probabilities of each chosen token and this many alternatives (at most 20).
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, sampling: SamplingParams::greedy(), stop: Vec::new(), ignore_eos: false, logprobs: None }
    }
}

/// One generated token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Generates from `prompt` (token ids, BOS already included when the model wants it).
/// `on_text` receives each piece of newly completed text; text that could still turn into a stop
/// string is held back until it cannot. Plain greedy decoding lets the backend pick the token
/// (the GPU reads back 4 bytes); anything else reads the logits and samples on the CPU.
pub async fn generate<S: Session>(
    session: &mut S,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidOption { option: "prompt", reason: "the prompt is empty; give at least one token".into() });
    }
    let start_len = session.len();
    if start_len + prompt.len() > session.capacity() {
        return Err(Error::PromptTooLong { tokens: start_len + prompt.len(), context: session.capacity() });
    }
    let mut sampler = Sampler::new(opts.sampling.clone(), tokenizer.vocab_size())?;
    let backend_picks = opts.sampling.is_plain_greedy() && opts.logprobs.is_none();
    let mut history = prompt.to_vec();
    let mut logprobs = Vec::new();
    // Feeds tokens and returns the next one.
    let mut step = async |session: &mut S, tokens: &[u32], history: &[u32], logprobs: &mut Vec<TokenLogprob>| -> Result<u32> {
        if backend_picks {
            return session.extend_greedy(tokens).await;
        }
        let logits = session.extend_logits(tokens).await?;
        let next = sampler.sample(&logits, history);
        if let Some(n) = opts.logprobs {
            let (logprob, top) = crate::sampler::logprobs(&logits, next, n);
            logprobs.push(TokenLogprob { token: next, logprob, top });
        }
        Ok(next)
    };
    let t0 = now_ms();
    let mut next = step(session, prompt, &history, &mut logprobs).await?;
    let t_first = now_ms();
    let mut detok = Detokenizer::new(tokenizer);
    let mut stops = StopMatcher::new(&opts.stop);
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        logprobs: Vec::new(),
        stats: GenerateStats { prompt_tokens: prompt.len(), ttft_ms: t_first - t0, ..Default::default() },
    };
    let mut emit = |text: &str, out: &mut Generation| {
        if !text.is_empty() {
            on_text(text);
            out.text.push_str(text);
        }
    };
    while out.tokens.len() < opts.max_tokens {
        if !opts.ignore_eos && tokenizer.stop_ids().contains(&next) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        out.tokens.push(next);
        history.push(next);
        let (text, stopped) = stops.push(&detok.push(next)?);
        emit(&text, &mut out);
        if stopped {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        if out.tokens.len() == opts.max_tokens || session.len() >= session.capacity() {
            break;
        }
        next = step(session, &[next], &history, &mut logprobs).await?;
    }
    if out.finish_reason == FinishReason::Length {
        let (text, stopped) = stops.push(&detok.finish()?);
        emit(&text, &mut out);
        if stopped {
            out.finish_reason = FinishReason::Stop;
        } else {
            emit(&stops.finish(), &mut out);
        }
    }
    logprobs.truncate(out.tokens.len());
    out.logprobs = logprobs;
    let s = &mut out.stats;
    s.generated_tokens = out.tokens.len();
    s.prefill_tok_s = prompt.len() as f64 / (s.ttft_ms.max(1e-3) / 1e3);
    if s.generated_tokens > 1 {
        s.decode_tok_s = (s.generated_tokens - 1) as f64 / ((now_ms() - t_first).max(1e-3) / 1e3);
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
            Backend::Gpu(g) => {
                let i = &g.ctx.info;
                let driver = if i.driver.is_empty() { String::new() } else { format!(", {}", i.driver) };
                format!("GPU {} ({}{driver})", i.name, i.backend)
            }
        }
    }

    /// Generation on a fresh sequence of up to `context` positions.
    pub async fn generate(&self, tokenizer: &Tokenizer, prompt: &[u32], opts: &GenerateOptions, context: usize, on_text: impl FnMut(&str)) -> Result<Generation> {
        match self {
            Backend::Cpu(m) => generate(&mut CpuSession::new(m, context), tokenizer, prompt, opts, on_text).await,
            Backend::Gpu(m) => generate(&mut GpuSession::new(m), tokenizer, prompt, opts, on_text).await,
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
