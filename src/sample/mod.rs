//! Logits processors and sampling, on the CPU. The chain follows llama.cpp's default order where
//! the two overlap:
//!
//! 1. logit bias (added to the raw logits, by token id)
//! 2. penalties over the last `repeat_last_n` tokens of prompt + output: repetition (llama.cpp:
//!    positive logits divided, negative multiplied), then frequency and presence (OpenAI:
//!    `logit -= frequency * count + presence * (count > 0)`)
//! 3. temperature 0: greedy (the first largest logit); otherwise
//! 4. top-k, typical-p, top-p, min-p (each on the distribution at temperature 1), then
//! 5. temperature, and a draw from the seeded RNG.
//!
//! The RNG (xoshiro256**) and the exponentials (f32, summed in f64) are plain arithmetic of our
//! own, so a seed gives the same tokens natively and in wasm.

mod constraint;
mod decoder;
mod numeric;
mod stop;

pub use constraint::{apply_mask, Constraint, Grammar, Grammars};
pub use decoder::{Decoder, FinishReason, GenerateOptions, GenerateStats, Generation, Need, Picked, SpecMethod, Speculative, TokenLogprob, MAX_DRAFT};
pub use numeric::{argmax, NO_LOGIT, NO_TOKEN};
pub use stop::StopMatcher;

use crate::error::{Error, Result};
use numeric::{candidates, counts, inv_temperature, order, top_of_row, weight, weight_sum, weight_total};

/// Generation controls with OpenAI-compatible names and defaults (temperature 1, no filter).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub typical_p: f32,
    /// 1 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0 and nothing that changes the argmax.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// True when the choice is the argmax of the raw logits, which the GPU computes itself.
    pub fn is_plain_greedy(&self) -> bool {
        (self.temperature == 0.0 || self.top_k == 1) && !self.has_penalties() && self.logit_bias.is_empty()
    }

    fn has_penalties(&self) -> bool {
        self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Rejects out-of-range values with the option's OpenAI name.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let bad = |option: &'static str, reason: String| Err(Error::InvalidOption { option, reason });
        let p = self;
        if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
            return bad("temperature", format!("{} must be a finite number >= 0 (0 is greedy)", p.temperature));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", p.top_p));
        }
        if !(0.0..=1.0).contains(&p.min_p) {
            return bad("min_p", format!("{} must be in [0, 1]", p.min_p));
        }
        if !(p.typical_p > 0.0 && p.typical_p <= 1.0) {
            return bad("typical_p", format!("{} must be in (0, 1]", p.typical_p));
        }
        if !(p.repeat_penalty > 0.0 && p.repeat_penalty.is_finite()) {
            return bad("repetition_penalty", format!("{} must be > 0 (1 is off)", p.repeat_penalty));
        }
        for (name, v) in [("presence_penalty", p.presence_penalty), ("frequency_penalty", p.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(name, format!("{v} must be in [-2, 2]"));
            }
        }
        for &(id, b) in &p.logit_bias {
            if id as usize >= vocab {
                return bad("logit_bias", format!("token id {id} is outside the vocabulary (size {vocab})"));
            }
            if !b.is_finite() && b != f32::NEG_INFINITY {
                return bad("logit_bias", format!("bias {b} for token {id} is not a number"));
            }
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Token ids with their (processed) logits.
type Candidates = Vec<(u32, f32)>;

/// Softmax of the candidates' logits at inverse temperature `inv_t` (their [`weight`]s over
/// their [`weight_sum`]), summing to 1.
fn probabilities(c: &[(u32, f32)], inv_t: f32) -> Vec<f64> {
    let max = max_logit(c);
    let z = weight_sum(c, max, inv_t);
    c.iter().map(|x| weight(x.1, max, inv_t) / z).collect()
}

/// The `k` largest logits of a row (logit descending, token id ascending) and the log-sum-exp of
/// the whole row: all a sampling step needs when nothing changes logits outside the top `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct TopLogits {
    pub top: Vec<(u32, f32)>,
    pub lse: f32,
}

/// Largest candidate count a backend can be asked for (the GPU top-k kernel's limit).
pub const MAX_TOP: usize = 64;

impl TopLogits {
    /// From a full row of logits (CPU backends, and the exactness tests).
    pub fn from_logits(logits: &[f32], k: usize) -> TopLogits {
        let mut top = Vec::new();
        top_of_row(logits, k.max(1), &mut top);
        let max = top.first().map_or(f32::NEG_INFINITY, |x| x.1);
        let lse = (weight_total(logits, max, 1.0).ln() + max as f64) as f32;
        TopLogits { top, lse }
    }

    /// From the GPU top-k kernel's output row (shaders/topk.wgsl), keeping the first `k`.
    pub fn from_words(words: &[u32], k: usize) -> TopLogits {
        let n = (words[words.len() - 1] as usize).min(k);
        let top = (0..n).map(|i| (words[2 * i], f32::from_bits(words[2 * i + 1]))).collect();
        TopLogits { top, lse: f32::from_bits(words[words.len() - 2]) }
    }

    /// `logprobs` for a token among the candidates: its log-probability and the first `n`.
    pub fn logprobs(&self, chosen: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
        let chosen_logit = self.top.iter().find(|c| c.0 == chosen).map_or(f32::NEG_INFINITY, |c| c.1);
        self.logprobs_of(chosen_logit, n)
    }

    /// `logprobs` for a token whose logit is known (it may lie outside the candidates).
    pub fn logprobs_of(&self, logit: f32, n: usize) -> (f32, Vec<(u32, f32)>) {
        let lp = |l: f32| (l as f64 - self.lse as f64) as f32;
        (lp(logit), self.top.iter().take(n.min(20)).map(|&(i, l)| (i, lp(l))).collect())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab` tokens; validates the parameters. Without a seed
    /// the RNG is seeded from the clock.
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Sampler> {
        params.validate(vocab)?;
        if params.temperature > 0.0 {
            // The whole row's candidates are built only for a choice past the head; the buffer
            // is sized now, with the request, so memory does not step up the first time one is.
            CANDIDATES.with(|c| c.borrow_mut().reserve(vocab));
        }
        let seed = params.seed.unwrap_or_else(|| crate::clock::now_ms().to_bits() ^ 0x5DEE_CE66_D1CE_5EED);
        Ok(Sampler { rng: Rng::new(seed), params })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// How many of the largest raw logits decide this sampler's choice (and `logprobs` top-n
    /// alternatives) exactly, when that is at most [`MAX_TOP`]: no bias or penalty can lift a
    /// token from outside them, and top-k (or greedy) cuts the rest before any other filter.
    pub fn top_needed(&self, logprobs: Option<usize>) -> Option<usize> {
        let p = &self.params;
        if p.has_penalties() || !p.logit_bias.is_empty() {
            return None;
        }
        let k = if p.temperature == 0.0 { 1 } else { p.top_k };
        let k = k.max(logprobs.unwrap_or(0).min(20));
        ((1..=MAX_TOP).contains(&k) && (p.temperature == 0.0 || p.top_k >= 1)).then_some(k)
    }

    /// Chooses the next token from the row's top candidates (see [`Sampler::top_needed`]); the
    /// same choice, RNG draw included, as [`Sampler::sample`] on the full logits.
    pub fn sample_top(&mut self, top: &TopLogits) -> u32 {
        if top.top.first().is_none_or(|x| !counts(x.1)) {
            return NO_TOKEN;
        }
        if self.params.temperature == 0.0 {
            return top.top[0].0;
        }
        let mut c: Candidates = top.top.clone();
        self.filter(&mut c);
        self.draw(&c)
    }

    /// Chooses the next token from the model's `logits`; `history` is prompt + output so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let u = if self.params.temperature == 0.0 { 0.0 } else { self.rng.uniform() };
        let (edits, input) = self.history_edits(history);
        RowSampling { u, ..edits }.choose(logits, input)
    }

    /// A draw from the candidates' distribution at the sampling temperature.
    fn draw(&mut self, c: &[(u32, f32)]) -> u32 {
        draw(c, inv_temperature(self.params.temperature), self.rng.uniform())
    }

    /// Whether a backend can make this sampler's choice itself from [`Sampler::row`]: every
    /// filter, and logit bias and penalties as at most [`MAX_EDITS`] per-token edits (logprobs
    /// are of the unedited logits: the backend reports the drawn token's logit before its edits).
    pub fn backend_samples(&self) -> bool {
        let p = &self.params;
        let window = if p.has_penalties() { p.repeat_last_n } else { 0 };
        p.logit_bias.len().saturating_add(window) < MAX_EDITS
    }

    /// The next choice for a backend to make: filters, logit edits and this token's uniform
    /// draw (the one [`Sampler::sample`] would make), taken from the RNG now. `before`: the
    /// history before the token the row is computed at (that token counts in the penalty
    /// window too; the backend adds it, so a token still on the GPU can be that input).
    pub fn row(&mut self, before: &[u32]) -> RowSampling {
        let u = if self.params.temperature == 0.0 { 0.0 } else { self.rng.uniform() };
        RowSampling { u, ..self.edits(before, true) }
    }

    /// The row without its draw: bias entries, and with `input` (a token the row is computed at,
    /// after `before`) the penalty window's counts.
    fn edits(&self, before: &[u32], input: bool) -> RowSampling {
        let p = &self.params;
        let mut edits: Vec<LogitEdit> = p.logit_bias.iter().map(|&(token, bias)| LogitEdit { token, bias, count: 0 }).collect();
        let count_input = input && p.has_penalties() && p.repeat_last_n > 0;
        if count_input {
            let window = &before[before.len().saturating_sub(p.repeat_last_n - 1)..];
            let mut counts = std::collections::BTreeMap::<u32, u32>::new();
            for &t in window {
                *counts.entry(t).or_default() += 1;
            }
            edits.extend(counts.into_iter().map(|(token, count)| LogitEdit { token, bias: 0.0, count }));
        }
        RowSampling {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            min_p: p.min_p,
            typical_p: p.typical_p,
            repeat_penalty: p.repeat_penalty,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
            count_input,
            edits,
            u: 0.0,
        }
    }

    /// Logit bias, then the penalties of the last `repeat_last_n` tokens of `history` (the
    /// same edits a backend applies from [`Sampler::row`]).
    fn apply_bias_and_penalties(&self, l: &mut [f32], history: &[u32]) {
        let (edits, input) = self.history_edits(history);
        edits.edit(l, input);
    }

    /// The edits of a row computed at the last token of `history`, and that token.
    fn history_edits(&self, history: &[u32]) -> (RowSampling, u32) {
        match history.split_last() {
            Some((&last, before)) => (self.edits(before, true), last),
            None => (self.edits(history, false), 0),
        }
    }

    fn filter(&self, c: &mut Candidates) {
        filter(&self.params, c)
    }

    /// The RNG's state, to give back draws made ahead and not used ([`Sampler::rewind`]).
    pub fn mark(&self) -> Rng {
        self.rng.clone()
    }

    /// Back to `mark`, then the draws of `rows` choices again (none at temperature 0, as
    /// [`Sampler::row`] and [`Sampler::sample`] draw).
    pub fn rewind(&mut self, mark: Rng, rows: usize) {
        self.rng = mark;
        if self.params.temperature != 0.0 {
            for _ in 0..rows {
                self.rng.uniform();
            }
        }
    }

    /// A draw from an explicit distribution (`(token, probability)` pairs summing to 1).
    pub fn draw_from(&mut self, p: &[(u32, f64)]) -> u32 {
        if p.len() == 1 {
            return p[0].0;
        }
        let u = self.rng.uniform();
        let mut acc = 0.0;
        for &(t, q) in p {
            acc += q;
            if u < acc {
                return t;
            }
        }
        p[p.len() - 1].0
    }

    /// Speculative sampling (Leviathan et al. 2023): given the target distribution `p` at a
    /// position and a drafted token with the draft's distribution `q` (None: the draft was
    /// deterministic, q = 1 on it), keeps the draft with probability min(1, p/q), else draws
    /// from max(0, p - q) renormalized. The result is distributed exactly as `p`. Returns the
    /// token and whether it is the draft.
    pub fn verify_draft(&mut self, p: &[(u32, f64)], draft: u32, q: Option<&[(u32, f64)]>) -> (u32, bool) {
        // q by token (a deterministic draft: 1 on it); p and q can span the whole vocabulary.
        let q_of: std::collections::HashMap<u32, f64> = q.map_or_else(|| [(draft, 1.0)].into(), |q| q.iter().copied().collect());
        let qd = q_of.get(&draft).copied().unwrap_or(0.0);
        let pd = p.iter().find(|x| x.0 == draft).map_or(0.0, |x| x.1);
        if pd >= qd || (pd > 0.0 && self.rng.uniform() * qd < pd) {
            return (draft, true);
        }
        let residual: Vec<(u32, f64)> = p.iter().map(|&(t, pt)| (t, (pt - q_of.get(&t).copied().unwrap_or(0.0)).max(0.0))).filter(|x| x.1 > 0.0).collect();
        let total: f64 = residual.iter().map(|x| x.1).sum();
        if total <= 0.0 {
            // p == q up to rounding: any draw from p is exact.
            return (self.draw_from(p), false);
        }
        let residual: Vec<(u32, f64)> = residual.into_iter().map(|(t, r)| (t, r / total)).collect();
        (self.draw_from(&residual), false)
    }

    /// The distribution `sample` draws from (tests compare sampled frequencies against it).
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f64)> {
        let mut l = logits.to_vec();
        self.apply_bias_and_penalties(&mut l, history);
        if self.params.temperature == 0.0 {
            return vec![(argmax(&l), 1.0)];
        }
        let mut c: Candidates = candidates(&l).collect();
        self.filter(&mut c);
        let p = probabilities(&c, inv_temperature(self.params.temperature));
        c.iter().zip(p).map(|(x, q)| (x.0, q)).collect()
    }
}

/// top-k, typical-p, top-p, min-p, in that order; leaves candidates sorted by logit.
fn filter(p: &SamplingParams, c: &mut Candidates) {
    if p.top_k > 0 && p.top_k < c.len() {
        // The k best first (a total order, so the same k a full sort keeps), then sort those:
        // a 49k-token vocabulary's full sort cost milliseconds a token.
        c.select_nth_unstable_by(p.top_k - 1, order);
        c.truncate(p.top_k);
    }
    c.sort_by(order);
    if p.typical_p < 1.0 {
        // Keep the tokens whose surprise is closest to the entropy, up to typical_p mass.
        let probs = probabilities(c, 1.0);
        let entropy: f64 = probs.iter().filter(|&&q| q > 0.0).map(|q| -q * q.ln()).sum();
        let mut order: Vec<usize> = (0..c.len()).collect();
        let dev = |i: usize| if probs[i] > 0.0 { (-probs[i].ln() - entropy).abs() } else { f64::INFINITY };
        order.sort_by(|&a, &b| dev(a).total_cmp(&dev(b)).then(a.cmp(&b)));
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in &order {
            mass += probs[i];
            keep += 1;
            if mass >= p.typical_p as f64 {
                break;
            }
        }
        let mut kept: Vec<usize> = order[..keep].to_vec();
        kept.sort();
        *c = kept.into_iter().map(|i| c[i]).collect();
    }
    if p.top_p < 1.0 {
        let probs = probabilities(c, 1.0);
        let mut mass = 0.0;
        let mut keep = c.len();
        for (i, q) in probs.iter().enumerate() {
            mass += q;
            if mass >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let probs = probabilities(c, 1.0);
        let floor = probs[0] * p.min_p as f64;
        let keep = probs.iter().take_while(|&&q| q >= floor).count();
        c.truncate(keep.max(1));
    }
}

/// The first candidate whose cumulative probability at inverse temperature `inv_t` passes `u`
/// (the last one if rounding leaves `u` above the total).
fn draw(c: &[(u32, f32)], inv_t: f32, u: f64) -> u32 {
    // `probabilities`' values, walked without collecting them (a choice allocates nothing).
    let max = max_logit(c);
    let z = weight_sum(c, max, inv_t);
    walk(c, |x| weight(x.1, max, inv_t) / z, u).unwrap_or_else(|_| c[c.len() - 1].0)
}

/// The largest of the candidates' logits (-inf for none).
fn max_logit(c: &[(u32, f32)]) -> f32 {
    c.iter().fold(f32::NEG_INFINITY, |m, x| if x.1 > m { x.1 } else { m })
}

/// The first of the sorted candidates `c` whose running sum of `p` passes `u`; else the sum of
/// them all.
fn walk(c: &[(u32, f32)], p: impl Fn(&(u32, f32)) -> f64, u: f64) -> std::result::Result<u32, f64> {
    let mut acc = 0.0;
    for x in c {
        acc += p(x);
        if u < acc {
            return Ok(x.0);
        }
    }
    Err(acc)
}

/// `filter` then `draw` over a row of logits with the uniform number `u`, without sorting the
/// vocabulary when the choice is decided among the [`HEAD`] largest logits (most rows): top-k
/// up to [`HEAD`] takes them from [`top_of_row`]; otherwise each cut and the draw walk the
/// sorted head, normalized by sums over the whole row. The same choice as sorting all, up to the
/// order of those f64 sums (a draw within ~1e-16 of a boundary). A choice past the head is found
/// by halving the rest ([`at_mass`]), not sorting it. Over Gemma 3's 262,144 logits natively,
/// building, selecting and weighing every candidate took 1.6 ms a token.
fn choose_among(p: &SamplingParams, logits: &[f32], u: f64) -> u32 {
    HEADS.with(|h| choose_with(p, logits, u, &mut h.borrow_mut()))
}

thread_local! {
    /// [`choose_among`]'s sorted head, reused from choice to choice (as [`CANDIDATES`]).
    static HEADS: std::cell::RefCell<Candidates> = const { std::cell::RefCell::new(Vec::new()) };
}

fn choose_with(p: &SamplingParams, logits: &[f32], u: f64, head: &mut Candidates) -> u32 {
    let inv_t = inv_temperature(p.temperature);
    let k = if p.top_k > 0 { p.top_k.min(logits.len()) } else { logits.len() };
    if k <= HEAD {
        top_of_row(logits, k, head);
        if head.is_empty() {
            // An empty row.
            return slow(p, logits, u);
        }
        if !counts(head[0].1) {
            return NO_TOKEN;
        }
        filter(p, head);
        return draw(head, inv_t, u);
    }
    if k < logits.len() || p.typical_p < 1.0 {
        return slow(p, logits, u);
    }
    top_of_row(logits, HEAD, head);
    let Some(&(_, max)) = head.first() else {
        return slow(p, logits, u);
    };
    if !counts(max) {
        return NO_TOKEN;
    }
    // The normalizer at temperature 1 over the whole row, for top-p and min-p (one pass).
    let mut z1 = None;
    let mut z_all = || *z1.get_or_insert_with(|| weight_total(logits, max, 1.0));
    // top-p: the shortest sorted prefix with that mass at temperature 1.
    let mut keep = logits.len();
    if p.top_p < 1.0 {
        let z = z_all();
        let mut mass = 0.0;
        match head.iter().position(|x| {
            mass += weight(x.1, max, 1.0) / z;
            mass >= p.top_p as f64
        }) {
            Some(i) => keep = i + 1,
            None if head.len() < HEAD => return slow(p, logits, u),
            // Past the head: min-p (a floor relative to the largest) cuts first, if it does.
            None if p.min_p > 0.0 => {}
            // A flat row: the cut lies in the tail, found without sorting it all.
            None => {
                return with_tail(logits, |c| {
                    let cut = HEAD + at_mass(&mut c[HEAD..], |x| weight(x.1, max, 1.0) / z, p.top_p as f64 - mass, true);
                    let kept = &mut c[..=cut];
                    let z = weight_sum(kept, max, inv_t);
                    draw_past_head(kept, |x| weight(x.1, max, inv_t) / z, u)
                })
            }
        }
    }
    // min-p: a floor relative to the largest (as `filter` computes it); a sorted prefix.
    if p.min_p > 0.0 {
        let z = if keep <= head.len() { weight_sum(&head[..keep], max, 1.0) } else { z_all() };
        let floor = weight(head[0].1, max, 1.0) / z * p.min_p as f64;
        let n = head[..keep.min(head.len())].iter().take_while(|x| weight(x.1, max, 1.0) / z >= floor).count();
        if n == HEAD && keep > HEAD {
            return slow(p, logits, u);
        }
        keep = n.max(1);
    }
    if keep <= head.len() {
        return draw(&head[..keep], inv_t, u);
    }
    // Every candidate kept: the whole row is built only when the draw lands past the head.
    let z = weight_total(logits, max, inv_t);
    let p = |x: &(u32, f32)| weight(x.1, max, inv_t) / z;
    walk(head, p, u).unwrap_or_else(|acc| with_tail(logits, |c| past_head(&mut c[HEAD..], p, u - acc)))
}

/// The draw with `u` from candidates whose first [`HEAD`] are sorted, the rest in any order
/// (`p`: their probabilities): in the head unless `u` lies in the tail's mass.
fn draw_past_head(c: &mut [(u32, f32)], p: impl Fn(&(u32, f32)) -> f64, u: f64) -> u32 {
    let (head, tail) = c.split_at_mut(HEAD);
    walk(head, &p, u).unwrap_or_else(|acc| past_head(tail, p, u - acc))
}

/// The draw from the unsorted candidates past the head, `u` past the head's mass.
fn past_head(tail: &mut [(u32, f32)], p: impl Fn(&(u32, f32)) -> f64, u: f64) -> u32 {
    tail[at_mass(tail, p, u, false)].0
}

/// Where the running sum of `weight` over `c` in sorted order (logit descending, id ascending)
/// first passes `target` (`inclusive`: reaches it), found by halving `c` with selections instead
/// of sorting it: on return `c[..i]` holds the candidates before that one (unordered) and `c[i]`
/// is it. The sorted walk's answer, up to the order of the f64 sums (a target within ~1e-16 of
/// a boundary); past the end (rounding), the last candidate.
fn at_mass(c: &mut [(u32, f32)], weight: impl Fn(&(u32, f32)) -> f64, mut target: f64, inclusive: bool) -> usize {
    let passes = |acc: f64, target: f64| if inclusive { acc >= target } else { target < acc };
    let (mut lo, mut hi) = (0, c.len());
    while hi - lo > HEAD {
        let mid = lo + (hi - lo) / 2;
        c[lo..hi].select_nth_unstable_by(mid - lo, order);
        let m: f64 = c[lo..mid].iter().map(&weight).sum();
        if passes(m, target) {
            hi = mid;
        } else {
            target -= m;
            lo = mid;
        }
    }
    c[lo..hi].sort_by(order);
    let mut acc = 0.0;
    let found = c[lo..hi].iter().position(|x| {
        acc += weight(x);
        passes(acc, target)
    });
    found.map_or(hi - 1, |i| lo + i)
}

/// `filter` (which sorts every candidate top-k keeps) and `draw` over the row.
fn slow(p: &SamplingParams, logits: &[f32], u: f64) -> u32 {
    with_candidates(logits, |c| {
        if !c.iter().any(|x| counts(x.1)) {
            return NO_TOKEN;
        }
        filter(p, c);
        draw(c, inv_temperature(p.temperature), u)
    })
}

/// Runs `f` on the row's candidates with its [`HEAD`] first ones first, sorted, and the rest
/// after them in any order.
fn with_tail<R>(logits: &[f32], f: impl FnOnce(&mut Candidates) -> R) -> R {
    with_candidates(logits, |c| {
        c.select_nth_unstable_by(HEAD - 1, order);
        c[..HEAD].sort_by(order);
        f(c)
    })
}

thread_local! {
    /// The candidate buffer, reused from choice to choice: a fresh one a token (393 KB for a
    /// 49k vocabulary) fragmented the wasm heap until it grew (the npm package's soak test).
    static CANDIDATES: std::cell::RefCell<Candidates> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on the row's `(token, logit)` candidates, in the reused buffer.
fn with_candidates<R>(logits: &[f32], f: impl FnOnce(&mut Candidates) -> R) -> R {
    CANDIDATES.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.extend(candidates(logits));
        f(&mut c)
    })
}

/// Largest logits [`choose_among`] sorts before it falls back to sorting every candidate.
const HEAD: usize = 256;

/// Largest number of logit edits (bias entries plus tokens in the penalty window) a row a
/// backend samples may carry.
pub const MAX_EDITS: usize = 256;

/// One edit of a row's logits before sampling: `count` 0 adds `bias` (logit bias); otherwise
/// the token occurred `count` times in the penalty window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitEdit {
    pub token: u32,
    pub bias: f32,
    pub count: u32,
}

/// One logit row's sampling for a backend that chooses the token itself (the GPU's
/// shaders/sample.wgsl): logit bias and penalties as edits, the filters, and the uniform number
/// the sequence's RNG drew for this token.
/// Greedy when `temperature` is 0.
#[derive(Clone, Debug, PartialEq)]
pub struct RowSampling {
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    /// 1: off.
    pub typical_p: f32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// The token the row is computed at counts once more in the penalty window.
    pub count_input: bool,
    /// Bias entries first (in the request's order), then the window's tokens with their counts.
    pub edits: Vec<LogitEdit>,
    /// In [0, 1).
    pub u: f64,
}

impl RowSampling {
    /// The first largest logit.
    pub const GREEDY: RowSampling = RowSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        typical_p: 1.0,
        repeat_penalty: 1.0,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
        count_input: false,
        edits: Vec::new(),
        u: 0.0,
    };

    /// Applies the edits to a row computed at token `input`: exactly what [`Sampler::sample`]
    /// does with the history (bias, then each window token's penalty).
    pub fn edit(&self, row: &mut [f32], input: u32) {
        let (bias, window) = self.edits.split_at(self.edits.iter().position(|e| e.count > 0).unwrap_or(self.edits.len()));
        for e in bias {
            row[e.token as usize] += e.bias;
        }
        let mut counts: Vec<(u32, u32)> = window.iter().map(|e| (e.token, e.count)).collect();
        if self.count_input {
            match counts.iter_mut().find(|c| c.0 == input) {
                Some(c) => c.1 += 1,
                None => counts.push((input, 1)),
            }
        }
        for (t, n) in counts {
            let Some(v) = row.get_mut(t as usize) else { continue };
            if self.repeat_penalty != 1.0 {
                *v = if *v > 0.0 { *v / self.repeat_penalty } else { *v * self.repeat_penalty };
            }
            *v -= self.frequency_penalty * n as f32 + self.presence_penalty;
        }
    }

    /// The token a row of logits computed at token `input` gives: exactly [`Sampler::sample`]'s
    /// choice for the same uniform (CPU backends; the GPU kernel's reference).
    pub fn choose(&self, logits: &[f32], input: u32) -> u32 {
        let edited;
        let logits = if self.edits.is_empty() && !self.count_input {
            logits
        } else {
            let mut row = logits.to_vec();
            self.edit(&mut row, input);
            edited = row;
            &edited
        };
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        choose_among(&self.params(), logits, self.u)
    }

    /// The candidates the filters keep, in draw order, with their probabilities at the
    /// temperature: what [`RowSampling::choose`] draws from (not for greedy rows).
    pub fn distribution(&self, logits: &[f32], input: u32) -> Vec<(u32, f64)> {
        let mut row = logits.to_vec();
        self.edit(&mut row, input);
        let c = self.kept(&row);
        c.iter().zip(probabilities(&c, inv_temperature(self.temperature))).map(|(x, p)| (x.0, p)).collect()
    }

    fn params(&self) -> SamplingParams {
        SamplingParams { temperature: self.temperature, top_k: self.top_k as usize, top_p: self.top_p, min_p: self.min_p, typical_p: self.typical_p, ..SamplingParams::default() }
    }

    fn kept(&self, logits: &[f32]) -> Candidates {
        let mut c: Candidates = candidates(logits).collect();
        filter(&self.params(), &mut c);
        c
    }
}

/// Log-probability of `chosen` and the `n` (<= 20) most likely tokens under the model's raw
/// distribution (OpenAI's `logprobs`).
pub fn logprobs(logits: &[f32], chosen: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    TopLogits::from_logits(logits, n.clamp(1, 20)).logprobs_of(logits[chosen as usize], n)
}
