//! The generation loop: prefill the prompt, then pick a token, stream its text, feed it back,
//! until a stop token, `max_tokens` or the end of the context. Backends plug in through
//! [`Session`]; today the CPU reference implements it, the GPU engine will too.

use crate::cpu::{CpuModel, KvCache, Logits};
use crate::error::{Error, Result};
use crate::tokenizer::{Detokenizer, Tokenizer};

/// A sequence's state on some backend: extending it with tokens returns the next-token logits.
pub trait Session {
    /// Appends `tokens` at the current position and returns the logits after the last one.
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
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
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
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
pub fn generate_greedy(
    session: &mut dyn Session,
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
    let mut logits = session.extend(prompt)?;
    let mut detok = Detokenizer::new(tokenizer);
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        stats: GenerateStats { prompt_tokens: prompt.len(), ..Default::default() },
    };
    let mut t_first = t0;
    while out.tokens.len() < max_tokens {
        let next = argmax(&logits);
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
        logits = session.extend(&[next])?;
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
