//! The generation loop: prefill the prompt, then pick a token (GPU argmax, or the sampler over
//! the logits), stream its text, feed it back, until a stop token or string, `max_tokens` or the
//! end of the context. Backends plug in through [`Session`]: the CPU reference and the GPU engine.

use crate::cpu::{CpuModel, KvCache, Logits};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf};
use crate::engine::{Engine, Event, Request};
use crate::gpu::{GpuContext, GpuModel, GpuOptions, ModelOptions};
use crate::model::Config;
use crate::sampler::{Sampler, SamplingParams, TopLogits};
use crate::stop::StopMatcher;
use crate::tokenizer::{Detokenizer, Tokenizer};

/// A sequence's state on some backend. Extending it appends tokens at the current position and
/// returns what comes next: the greedy token, or the full logits.
#[allow(async_fn_in_trait)] // Futures stay on one thread: wasm has one, natively we block on them.
pub trait Session {
    /// Appends `tokens` and returns the argmax of the logits after the last one.
    async fn extend_greedy(&mut self, tokens: &[u32]) -> Result<u32>;
    /// Appends `tokens` and returns the `k` (<= 64) largest logits after the last one, with
    /// the row's log-sum-exp.
    async fn extend_top(&mut self, tokens: &[u32], k: usize) -> Result<TopLogits>;
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
    async fn extend_top(&mut self, tokens: &[u32], k: usize) -> Result<TopLogits> {
        Ok(TopLogits::from_logits(&self.model.forward(tokens, &mut self.cache, Logits::Last)?, k))
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
    /// The caller cancelled the request.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
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
    /// Steps that produced tokens, and with speculation the tokens drafted and kept.
    pub forwards: usize,
    pub drafted: usize,
    pub accepted: usize,
}

#[derive(Clone, Debug)]
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
    /// Speculative decoding (GPU engine only): same output distribution, fewer forwards.
    pub speculative: Option<crate::engine::Speculative>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, sampling: SamplingParams::greedy(), stop: Vec::new(), ignore_eos: false, logprobs: None, speculative: None }
    }
}

/// One generated token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a step must read back for a sequence to choose its next token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The backend's argmax (plain greedy): 4 bytes.
    Argmax,
    /// The `k` (<= 64) largest logits and the row's log-sum-exp (~0.5 KB).
    Top(usize),
    /// The whole row of logits (penalties, logit bias, wide top-k).
    Logits,
}

/// What a step read back for one sequence.
#[derive(Clone, Copy)]
pub enum Picked<'a> {
    Token(u32),
    Top(&'a TopLogits),
    Logits(&'a [f32]),
}

/// One sequence's output side: the sampler, stop conditions, incremental detokenization and
/// logprobs. [`generate`] drives one over a [`Session`]; the batching engine drives many.
pub struct Decoder {
    opts: GenerateOptions,
    sampler: Sampler,
    need: Need,
    history: Vec<u32>,
    detok: Detokenizer,
    stops: StopMatcher,
    pub out: Generation,
}

impl Decoder {
    /// Validates the options for `prompt` (token ids, BOS already included when the model wants
    /// it) on a sequence of `capacity` positions of which `start_len` are filled.
    pub fn new(tokenizer: &Tokenizer, prompt: &[u32], opts: &GenerateOptions, start_len: usize, capacity: usize) -> Result<Decoder> {
        if prompt.is_empty() {
            return Err(Error::InvalidOption { option: "prompt", reason: "the prompt is empty; give at least one token".into() });
        }
        if start_len + prompt.len() > capacity {
            return Err(Error::PromptTooLong { tokens: start_len + prompt.len(), context: capacity });
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= tokenizer.vocab_size()) {
            return Err(Error::TokenOutOfRange { id: bad, vocab: tokenizer.vocab_size() });
        }
        let sampler = Sampler::new(opts.sampling.clone(), tokenizer.vocab_size())?;
        let need = if opts.sampling.is_plain_greedy() && opts.logprobs.is_none() {
            Need::Argmax
        } else {
            sampler.top_needed(opts.logprobs).map_or(Need::Logits, Need::Top)
        };
        Ok(Decoder {
            opts: opts.clone(),
            sampler,
            need,
            history: prompt.to_vec(),
            detok: Detokenizer::new(),
            stops: StopMatcher::new(&opts.stop),
            out: Generation {
                tokens: Vec::new(),
                text: String::new(),
                finish_reason: FinishReason::Length,
                logprobs: Vec::new(),
                stats: GenerateStats { prompt_tokens: prompt.len(), ..Default::default() },
            },
        })
    }

    pub fn need(&self) -> Need {
        self.need
    }

    /// Chooses the next token from what the step read back (and records its logprobs).
    pub fn pick(&mut self, picked: Picked) -> u32 {
        let (next, lp) = match picked {
            Picked::Token(t) => (t, None),
            Picked::Top(top) => {
                let next = self.sampler.sample_top(top);
                (next, self.opts.logprobs.map(|n| top.logprobs(next, n)))
            }
            Picked::Logits(logits) => {
                let next = self.sampler.sample(logits, &self.history);
                (next, self.opts.logprobs.map(|n| crate::sampler::logprobs(logits, next, n)))
            }
        };
        if let Some((logprob, top)) = lp {
            self.out.logprobs.push(TokenLogprob { token: next, logprob, top });
        }
        next
    }

    /// The readback a speculative verification row needs: the argmax for plain greedy, else
    /// the whole row (the rejection rule needs the target's full distribution).
    pub fn need_speculative(&self) -> Need {
        if self.need == Need::Argmax { Need::Argmax } else { Need::Logits }
    }

    pub fn options(&self) -> &GenerateOptions {
        &self.opts
    }

    /// Speculative verification of one position: the target's token here and whether it is the
    /// drafted one (`draft`: the token and, for sampled drafts, the draft's distribution).
    /// Without a draft, the bonus token after the drafts, chosen as [`Decoder::pick`] would.
    /// Distributed exactly as the target's own choice (Leviathan et al.'s rejection rule).
    pub fn verify(&mut self, picked: Picked, draft: Option<(u32, Option<&[(u32, f64)]>)>) -> (u32, bool) {
        let Some((d, q)) = draft else { return (self.pick(picked), false) };
        let (next, kept) = match picked {
            Picked::Token(t) => (t, t == d),
            Picked::Logits(logits) => {
                let p = self.sampler.distribution(logits, &self.history);
                self.sampler.verify_draft(&p, d, q)
            }
            Picked::Top(_) => unreachable!("speculative steps read back argmax ids or logits"),
        };
        if let (Some(n), Picked::Logits(logits)) = (self.opts.logprobs, picked) {
            let (logprob, top) = crate::sampler::logprobs(logits, next, n);
            self.out.logprobs.push(TokenLogprob { token: next, logprob, top });
        }
        (next, kept)
    }

    /// Takes the chosen token: returns the text that became final (held back only while it
    /// could still begin a stop string) and whether generation is over. `room` says whether the
    /// sequence has a position left for the token to be fed back.
    pub fn accept(&mut self, tokenizer: &Tokenizer, next: u32, room: bool) -> Result<(String, bool)> {
        if self.opts.max_tokens == 0 {
            self.out.logprobs.clear();
            return Ok((String::new(), true));
        }
        if !self.opts.ignore_eos && tokenizer.stop_ids().contains(&next) {
            self.out.finish_reason = FinishReason::Stop;
            self.out.logprobs.truncate(self.out.tokens.len());
            return Ok((String::new(), true));
        }
        self.out.tokens.push(next);
        self.history.push(next);
        let (mut text, stopped) = self.stops.push(&self.detok.push(tokenizer, next)?);
        if stopped {
            self.out.finish_reason = FinishReason::Stop;
        } else if self.out.tokens.len() >= self.opts.max_tokens || !room {
            // Length: flush what was held back.
            let (tail, stopped) = self.stops.push(&self.detok.finish(tokenizer)?);
            text.push_str(&tail);
            if stopped {
                self.out.finish_reason = FinishReason::Stop;
            } else {
                text.push_str(&self.stops.finish());
            }
        } else {
            self.out.text.push_str(&text);
            return Ok((text, false));
        }
        self.out.text.push_str(&text);
        Ok((text, true))
    }

    /// Ends generation early with `length` (the engine could not give the sequence another
    /// position); returns the text held back so far.
    pub fn finish_length(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        self.out.finish_reason = FinishReason::Length;
        let (mut text, _) = self.stops.push(&self.detok.finish(tokenizer)?);
        text.push_str(&self.stops.finish());
        self.out.text.push_str(&text);
        Ok(text)
    }
}

/// Generates from `prompt` (token ids, BOS already included when the model wants it).
/// `on_text` receives each piece of newly completed text; text that could still turn into a stop
/// string is held back until it cannot. Plain greedy decoding lets the backend pick the token
/// (the GPU reads back 4 bytes); settings decided by the top <= 64 logits read those back (~0.5
/// KB, see [`Sampler::top_needed`]); anything else reads the full logits. The sampler runs on
/// the CPU in the last two cases.
pub async fn generate<S: Session>(
    session: &mut S,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let mut dec = Decoder::new(tokenizer, prompt, opts, session.len(), session.capacity())?;
    let t0 = now_ms();
    let mut feed = prompt.to_vec();
    let mut t_first = None;
    loop {
        let next = match dec.need() {
            Need::Argmax => session.extend_greedy(&feed).await?,
            Need::Top(k) => {
                let top = session.extend_top(&feed, k).await?;
                dec.pick(Picked::Top(&top))
            }
            Need::Logits => {
                let logits = session.extend_logits(&feed).await?;
                dec.pick(Picked::Logits(&logits))
            }
        };
        t_first.get_or_insert_with(now_ms);
        let (text, done) = dec.accept(tokenizer, next, session.len() < session.capacity())?;
        if !text.is_empty() {
            on_text(&text);
        }
        if done {
            break;
        }
        feed = vec![next];
    }
    let mut out = dec.out;
    let t_first = t_first.unwrap_or(t0);
    let s = &mut out.stats;
    s.ttft_ms = t_first - t0;
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
    /// Bytes for the GPU's KV pool (None: the default, see [`crate::gpu::DEFAULT_KV_BUDGET`]).
    pub kv_budget_bytes: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Gpu, context: 2048, gpu: GpuOptions::default(), kv_budget_bytes: None }
    }
}

/// A loaded model on one of the backends; the CLI and the wasm API drive it the same way.
pub enum Backend {
    Cpu(CpuModel),
    Gpu(GpuModel),
}

impl Backend {
    pub async fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S, opts: LoadOptions) -> Result<Backend> {
        Ok(Self::load_alongside(gguf, source, opts, async {}).await?.0)
    }

    /// As [`Backend::load`], running `work` (the caller's own CPU work) while the GPU finishes
    /// the uploads and pipeline compiles the load queued.
    pub async fn load_alongside<S: ByteSource + ?Sized, R>(gguf: &Gguf, source: &S, opts: LoadOptions, work: impl std::future::Future<Output = R>) -> Result<(Backend, R)> {
        let context = opts.context.min(Config::from_gguf(gguf)?.context_len).max(1);
        Ok(match opts.device {
            Device::Cpu => (Backend::Cpu(CpuModel::load(gguf, source)?), work.await),
            Device::Gpu => {
                let ctx = GpuContext::new(opts.gpu).await?;
                let model_opts = ModelOptions { kv_budget_bytes: opts.kv_budget_bytes, ..ModelOptions::new(context as u32, 128) };
                let pending = GpuModel::record(ctx, gguf, source, &model_opts)?;
                let r = work.await;
                (Backend::Gpu(pending.ready().await?), r)
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

    /// Generation on a fresh sequence of up to `context` positions. On the GPU it runs through
    /// the batching engine, so the model's prefix cache serves repeated prompt beginnings;
    /// `draft` is the model for draft-model speculation.
    pub async fn generate(
        &self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        context: usize,
        draft: Option<&std::rc::Rc<GpuModel>>,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        match self {
            Backend::Cpu(_) if opts.speculative.is_some() => {
                Err(Error::InvalidOption { option: "speculative", reason: "speculative decoding runs on the GPU engine; drop --device cpu".into() })
            }
            Backend::Cpu(m) => generate(&mut CpuSession::new(m, context), tokenizer, prompt, opts, on_text).await,
            Backend::Gpu(m) => {
                let mut engine = Engine::new();
                if let Some(d) = draft {
                    engine.set_draft_model(m, d.clone())?;
                }
                engine.submit(m, tokenizer, Request { prompt: prompt.to_vec(), opts: opts.clone() })?;
                let mut result = None;
                engine
                    .run(m, tokenizer, |e| match e {
                        Event::Token { text, .. } if !text.is_empty() => on_text(&text),
                        Event::Token { .. } => {}
                        Event::Done { generation, .. } => result = Some(*generation),
                    })
                    .await?;
                Ok(result.expect("the engine finishes every request it runs"))
            }
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
