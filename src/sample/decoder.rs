//! One request's output side: what to generate ([`GenerateOptions`]), the [`Decoder`] that turns
//! what a step read back into tokens and text (sampler, stop tokens and strings, incremental
//! detokenization, logprobs), and what comes out ([`Generation`]).

use serde::{Deserialize, Serialize};

use super::constraint::{apply_mask, Constraint, Grammar};
use super::stop::StopMatcher;
use super::{RowSampling, Sampler, SamplingParams, TopLogits, NO_TOKEN};
use crate::error::{Error, Result};
use crate::tokenizer::{Detokenizer, Tokenizer};

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
    /// Structured output: milliseconds spent in the grammar engine after submission.
    pub constraint_ms: f64,
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
    /// Speculative decoding: same output distribution, fewer forwards.
    pub speculative: Option<Speculative>,
    /// Structured output: what the text must match.
    pub grammar: Option<Grammar>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, sampling: SamplingParams::greedy(), stop: Vec::new(), ignore_eos: false, logprobs: None, speculative: None, grammar: None }
    }
}

/// One generated token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The argmax among the tokens the grammar allows (greedy structured output): the mask
    /// goes to the backend, 4 bytes come back.
    MaskedArgmax,
    /// The token the backend draws with the filters, logit edits and uniform number of
    /// [`Decoder::row`] (no logprobs): 4 bytes, and the token can stay on the GPU.
    Sample,
    /// [`Need::Sample`] with logprobs: the drawn token, its logit and the row's candidates and
    /// log-sum-exp (~0.5 KB), read with the token (which can still stay on the GPU).
    SampleTop,
    /// [`Need::Sample`] among the tokens the grammar allows (sampled structured output): the
    /// mask and the row's sampling go to the backend, 4 bytes come back.
    MaskedSample,
    /// [`Need::SampleTop`] among the tokens the grammar allows (structured output with
    /// logprobs, which are of the unmasked row).
    MaskedSampleTop,
    /// The whole row of logits (more logit edits than a backend takes, drafts sampled from a
    /// draft model, constrained drafts).
    Logits,
}

/// A draft's distribution over tokens: `(token, probability)`.
pub type Distribution<'a> = &'a [(u32, f64)];

impl Need {
    /// The readback that serves both needs: the wider kind, masked when either is.
    pub fn widest(self, other: Need) -> Need {
        let kind = match (self.unmasked(), other.unmasked()) {
            (Need::Logits, _) | (_, Need::Logits) => Need::Logits,
            // One readback kind serves a step: sampled rows take greedy ones along (temperature
            // 0).
            (Need::SampleTop, _) | (_, Need::SampleTop) => Need::SampleTop,
            (Need::Sample, _) | (_, Need::Sample) => Need::Sample,
            _ => Need::Argmax,
        };
        if self.is_masked() || other.is_masked() {
            kind.masked()
        } else {
            kind
        }
    }

    /// The same readback with each row's grammar mask applied by the backend, where the backend
    /// chooses the token (else the whole row).
    pub fn masked(self) -> Need {
        match self.unmasked() {
            Need::Argmax => Need::MaskedArgmax,
            Need::Sample => Need::MaskedSample,
            Need::SampleTop => Need::MaskedSampleTop,
            _ => Need::Logits,
        }
    }

    pub fn is_masked(self) -> bool {
        matches!(self, Need::MaskedArgmax | Need::MaskedSample | Need::MaskedSampleTop)
    }

    fn unmasked(self) -> Need {
        match self {
            Need::MaskedArgmax => Need::Argmax,
            Need::MaskedSample => Need::Sample,
            Need::MaskedSampleTop => Need::SampleTop,
            other => other,
        }
    }
}

/// What a step read back for one sequence.
#[derive(Clone, Copy)]
pub enum Picked<'a> {
    Token(u32),
    /// A token the backend drew, with its logit and the row's candidates (for logprobs).
    Drawn {
        token: u32,
        logit: f32,
        top: &'a TopLogits,
    },
    Logits(&'a [f32]),
}

/// One sequence's output side: the sampler, stop conditions, incremental detokenization and
/// logprobs. The engine drives one per request.
pub struct Decoder {
    opts: GenerateOptions,
    sampler: Sampler,
    need: Need,
    history: Vec<u32>,
    detok: Detokenizer,
    stops: StopMatcher,
    constraint: Option<Constraint>,
    /// A speculative step's rows drew their uniform numbers ahead: the RNG before them and
    /// the rows taken since ([`Decoder::settle`] gives back the others).
    drawn_ahead: Option<(super::Rng, usize)>,
    /// With logprobs, the tokens the grammar fixed are taken one row each (each reports the
    /// model's logprobs there), front first: chosen within a one-token mask (`forced_mask`),
    /// greedily, drawing nothing, so the output is the same tokens and draws as without logprobs.
    forced: std::collections::VecDeque<u32>,
    forced_mask: Vec<u32>,
    /// The last token taken was a forced one: the grammar's forced tokens were computed before
    /// it (as the plain path computes them once after each chosen token).
    took_forced: bool,
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
        } else if sampler.backend_samples() {
            if opts.logprobs.is_some() {
                Need::SampleTop
            } else {
                Need::Sample
            }
        } else {
            Need::Logits
        };
        Ok(Decoder {
            opts: opts.clone(),
            sampler,
            need,
            history: prompt.to_vec(),
            detok: Detokenizer::new(),
            stops: StopMatcher::new(&opts.stop),
            constraint: None,
            drawn_ahead: None,
            forced: Default::default(),
            forced_mask: Vec::new(),
            took_forced: false,
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

    /// This sequence's row of a sampled readback: for [`Need::Sample`] and [`Need::SampleTop`]
    /// the next choice's filters, logit edits and uniform number, drawn from the sampler's RNG
    /// now (one draw a token, as [`Decoder::pick`] on logits would make); otherwise greedy (the
    /// row rides along and the decoder picks from what else is read; so are a queued forced
    /// token's rows, which draw nothing). `chained`: the row is
    /// computed at the token the step in flight picks, which the history does not hold yet;
    /// otherwise at the history's last token.
    pub fn row(&mut self, chained: bool) -> RowSampling {
        if !self.forced.is_empty() || !matches!(self.need, Need::Sample | Need::SampleTop | Need::MaskedSample | Need::MaskedSampleTop) {
            return RowSampling::GREEDY;
        }
        let before = if chained { &self.history[..] } else { &self.history[..self.history.len() - 1] };
        self.sampler.row(before)
    }

    /// A speculative step's rows (one, as [`Decoder::row`], without drafts): row `j` computed
    /// at draft `j - 1` (row 0 at the history's last token), with the edits of the tokens
    /// before it and its own uniform number, drawn in the order plain decoding draws them.
    /// [`Decoder::settle`] gives back the draws of the rows not taken.
    pub fn rows(&mut self, drafts: &[u32]) -> Vec<RowSampling> {
        if drafts.is_empty() || !matches!(self.need, Need::Sample | Need::SampleTop) {
            return vec![self.row(false); drafts.len() + 1];
        }
        self.drawn_ahead = Some((self.sampler.mark(), 0));
        // A row's edits see only the penalty window before it: the history's tail suffices.
        let tail = self.history.len().saturating_sub(self.opts.sampling.repeat_last_n.max(1));
        let mut tokens = self.history[tail..].to_vec();
        let mut rows = vec![self.sampler.row(&tokens[..tokens.len() - 1])];
        for &d in drafts {
            tokens.push(d);
            rows.push(self.sampler.row(&tokens[..tokens.len() - 1]));
        }
        rows
    }

    /// After a speculative step's rows are verified: the RNG as if only the rows taken had
    /// drawn (the next token draws what plain decoding would).
    pub fn settle(&mut self) {
        if let Some((mark, taken)) = self.drawn_ahead.take() {
            self.sampler.rewind(mark, taken);
        }
    }

    /// Holds the output to `constraint`: every choice is made with the disallowed tokens
    /// removed first, by the backend from the mask (where it chooses the token) or here from
    /// the whole logits row.
    pub fn constrain(&mut self, constraint: Constraint) {
        self.constraint = Some(constraint);
        self.need = self.need.masked();
    }

    /// The mask [`Decoder::prepare_mask`] computed, until the next token is taken.
    pub fn prepared_mask(&self) -> Option<&[u32]> {
        if !self.forced.is_empty() {
            return Some(&self.forced_mask);
        }
        self.constraint.as_ref().and_then(Constraint::prepared)
    }

    /// For the masked needs: computes the next choice's mask ahead and returns its words for
    /// the backend; None without a constraint.
    pub fn prepare_mask(&mut self) -> Result<Option<&[u32]>> {
        if let Some(&f) = self.forced.front() {
            self.forced_mask.clear();
            self.forced_mask.resize(f as usize / 32 + 1, 0);
            self.forced_mask[f as usize / 32] = 1 << (f % 32);
            return Ok(Some(&self.forced_mask));
        }
        match &mut self.constraint {
            Some(c) if self.need.is_masked() => c.prepare().map(Some),
            _ => Ok(None),
        }
    }

    /// The logits the sampler chooses from: the row itself, or with a constraint, the row with
    /// the tokens the grammar forbids at -inf.
    fn allowed<'a>(&mut self, logits: &'a [f32]) -> Result<std::borrow::Cow<'a, [f32]>> {
        let Some(c) = &mut self.constraint else { return Ok(logits.into()) };
        let mask = c.mask()?;
        let mut row = logits.to_vec();
        apply_mask(&mask, &mut row);
        Ok(row.into())
    }

    /// Chooses the next token from what the step read back (and records its logprobs).
    pub fn pick(&mut self, picked: Picked) -> Result<u32> {
        self.took_forced = !self.forced.is_empty();
        if self.took_forced {
            return self.pick_forced(picked);
        }
        let (next, lp) = match picked {
            Picked::Token(t) | Picked::Drawn { token: t, .. } if self.constraint.as_ref().is_some_and(|c| !c.allows(t)) => {
                return Err(Error::Constraint(format!("the backend chose token {t}, which the grammar's mask forbids")));
            }
            Picked::Token(t) => (t, None),
            Picked::Drawn { token, logit, top } => (token, self.opts.logprobs.map(|n| top.logprobs_of(logit, n))),
            Picked::Logits(logits) => {
                let row = self.allowed(logits)?;
                let next = self.sampler.sample(&row, &self.history);
                (next, self.opts.logprobs.map(|n| super::logprobs(logits, next, n)))
            }
        };
        if let Some((logprob, top)) = lp {
            self.out.logprobs.push(TokenLogprob { token: next, logprob, top });
        }
        Ok(next)
    }

    /// The front forced token, with its logprobs from the row computed before it.
    fn pick_forced(&mut self, picked: Picked) -> Result<u32> {
        let f = self.forced.pop_front().expect("called with forced tokens");
        let lp = match picked {
            Picked::Token(t) | Picked::Drawn { token: t, .. } if t != f => {
                return Err(Error::Constraint(format!("the backend chose token {t} where the grammar forces token {f}")));
            }
            Picked::Token(_) => None,
            Picked::Drawn { logit, top, .. } => self.opts.logprobs.map(|n| top.logprobs_of(logit, n)),
            Picked::Logits(logits) => self.opts.logprobs.map(|n| super::logprobs(logits, f, n)),
        };
        if let Some((logprob, top)) = lp {
            self.out.logprobs.push(TokenLogprob { token: f, logprob, top });
        }
        Ok(f)
    }

    /// Whether the next rows take forced tokens (no drafts then: each is its own row).
    pub fn has_forced(&self) -> bool {
        !self.forced.is_empty()
    }

    /// The readback of a speculative step's rows: what a plain step reads, unless the drafts
    /// are sampled (the rejection rule needs the target's whole distribution) or constrained
    /// (a draft row's mask depends on the drafts before it being kept).
    pub fn need_speculative(&self, sampled_drafts: bool) -> Need {
        if sampled_drafts || self.need.is_masked() {
            Need::Logits
        } else {
            self.need
        }
    }

    pub fn options(&self) -> &GenerateOptions {
        &self.opts
    }

    /// Speculative verification of one position: the target's token here and whether it is the
    /// drafted one (`draft`: the token and, for sampled drafts, the draft's distribution).
    /// Without a draft, the bonus token after the drafts, chosen as [`Decoder::pick`] would.
    /// Distributed exactly as the target's own choice: a deterministic draft is kept when it is
    /// the token the target chooses as plain decoding would (the same draw, so seeded output is
    /// the same with and without speculation; for a draft of probability 1 this is the
    /// rejection rule's outcome), a sampled one by Leviathan et al.'s rejection rule. A row with
    /// no token to choose (every logit NaN or -inf) is [`Error::NoFiniteLogits`].
    pub fn verify(&mut self, picked: Picked, draft: Option<(u32, Option<Distribution>)>) -> Result<(u32, bool)> {
        if let Picked::Token(NO_TOKEN) | Picked::Drawn { token: NO_TOKEN, .. } = picked {
            return Err(Error::NoFiniteLogits);
        }
        let (next, kept) = self.verify_row(picked, draft)?;
        if next == NO_TOKEN {
            return Err(Error::NoFiniteLogits);
        }
        Ok((next, kept))
    }

    /// [`Decoder::verify`] of a row that has a token to choose.
    fn verify_row(&mut self, picked: Picked, draft: Option<(u32, Option<Distribution>)>) -> Result<(u32, bool)> {
        // A sampled draft's row chooses without `pick`: its token is not a forced one.
        self.took_forced = false;
        if let Some((_, taken)) = &mut self.drawn_ahead {
            *taken += 1;
        }
        let Some((d, q)) = draft else { return Ok((self.pick(picked)?, false)) };
        let Some(q) = q else {
            let next = self.pick(picked)?;
            return Ok((next, next == d));
        };
        let Picked::Logits(logits) = picked else {
            return Err(Error::InvalidOption { option: "speculative", reason: "sampled drafts are verified on whole logit rows".into() });
        };
        // A draft the constraint forbids has probability 0 here: it is rejected.
        let row = self.allowed(logits)?;
        let p = self.sampler.distribution(&row, &self.history);
        let (next, kept) = self.sampler.verify_draft(&p, d, Some(q));
        if let Some(n) = self.opts.logprobs {
            let (logprob, top) = super::logprobs(logits, next, n);
            self.out.logprobs.push(TokenLogprob { token: next, logprob, top });
        }
        Ok((next, kept))
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
        let complete = match &mut self.constraint {
            Some(c) => {
                c.commit(next)?;
                c.is_done()
            }
            None => false,
        };
        let (mut text, stopped) = self.stops.push(&self.detok.push(tokenizer, next)?);
        if stopped {
            self.out.finish_reason = FinishReason::Stop;
        } else if complete || self.out.tokens.len() >= self.opts.max_tokens || !room {
            // Grammar complete or length: flush what was held back.
            let (tail, stopped) = self.stops.push(&self.detok.finish(tokenizer)?);
            text.push_str(&tail);
            if stopped || complete {
                self.out.finish_reason = FinishReason::Stop;
            }
            if !stopped {
                text.push_str(&self.stops.finish());
            }
        } else {
            self.out.text.push_str(&text);
            return Ok((text, false));
        }
        self.out.text.push_str(&text);
        Ok((text, true))
    }

    /// Milliseconds the constraint took so far (0 without one).
    pub fn constraint_ms(&self) -> f64 {
        self.constraint.as_ref().map_or(0.0, Constraint::ms)
    }

    /// Tokens the constraint fixes next, to be taken without a forward of their own. With
    /// logprobs none: they are queued to be taken one row each (a forced token's logprobs are
    /// the model's at its position), after the token just chosen as without logprobs.
    pub fn forced(&mut self) -> Vec<u32> {
        let Some(c) = &mut self.constraint else { return Vec::new() };
        if self.opts.logprobs.is_none() {
            return c.forced();
        }
        if self.forced.is_empty() && !self.took_forced {
            self.forced = c.forced().into();
        }
        Vec::new()
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

/// Where speculative drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecMethod {
    /// Prompt lookup: continue the latest earlier occurrence of the sequence's last 1-3 tokens.
    Ngram,
    /// A smaller (or the same) model sharing the tokenizer, loaded as the engine's draft model.
    Draft,
}

/// Per-request speculation: the method and the largest draft length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speculative {
    pub method: SpecMethod,
    pub k: usize,
}

/// Longest draft a request may ask for.
pub const MAX_DRAFT: usize = 16;

impl Speculative {
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > MAX_DRAFT {
            return Err(Error::InvalidOption { option: "draft_k", reason: format!("{} is outside 1..={MAX_DRAFT}", self.k) });
        }
        Ok(())
    }
}
