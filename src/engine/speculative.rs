//! Speculative decoding. A drafter proposes up to k tokens; the engine feeds the pending token
//! and the drafts in one forward with k + 1 logit rows, keeps the drafts the target agrees with
//! (deterministic drafts: the token the target chooses at that row as plain decoding would,
//! greedy or sampled with the same uniform number, so seeded output is the same; drafts sampled
//! from a draft model: Leviathan et al.'s rejection rule; either way the output is distributed
//! exactly as without speculation) plus one token of the target's own, and rolls the
//! KV cache back past the first rejection by lowering the sequence's computed length (the
//! rejected positions' slots are simply written again later).

use std::collections::{HashMap, VecDeque};

use super::backend::{ForwardModel, Picks, Readback};
use super::kv_cache::BlockPool;
use super::session::Session;
use crate::error::{Error, Result};
use crate::sample::{Sampler, SamplingParams, SpecMethod, Speculative, NO_TOKEN};

/// Drafted tokens and, for sampled drafts, the draft's distribution at each (empty when the
/// drafts are deterministic).
#[derive(Clone, Debug, Default)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Vec<Vec<(u32, f64)>>,
}

/// Prompt-lookup drafting: find the most recent earlier place where the sequence's last n
/// tokens (n = max_n down to min_n) occurred and propose what followed them there. An index of
/// every n-gram's latest place that something follows, extended as the sequence grows, finds
/// it without scanning the sequence: proposals are made every step, and at 32k tokens a scan
/// took 95 us a proposal natively, the index 0.26 us (after 9 ms to index the first 32k).
pub struct NgramDrafter {
    max_n: usize,
    min_n: usize,
    /// n-gram -> its latest start j with a token after it (j + n < `indexed`).
    latest: HashMap<Ngram, usize>,
    /// Tokens of the sequence indexed so far.
    indexed: usize,
}

/// The longest match an [`NgramDrafter`] looks for.
const MAX_NGRAM: usize = 4;

/// An n-gram as a key without an allocation: its length and tokens (the rest zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Ngram(u8, [u32; MAX_NGRAM]);

impl Ngram {
    fn of(tokens: &[u32]) -> Ngram {
        let mut t = [0; MAX_NGRAM];
        t[..tokens.len()].copy_from_slice(tokens);
        Ngram(tokens.len() as u8, t)
    }
}

impl NgramDrafter {
    /// Matches of `min_n` to `max_n` tokens (single-token matches are mostly wrong in free
    /// text; at most [`MAX_NGRAM`]).
    pub fn new(min_n: usize, max_n: usize) -> NgramDrafter {
        let max_n = max_n.min(MAX_NGRAM);
        NgramDrafter { max_n, min_n: min_n.clamp(1, max_n), latest: HashMap::new(), indexed: 0 }
    }

    /// Up to `k` tokens to follow `tokens` (the sequence so far; it only grows between calls).
    pub fn propose(&mut self, tokens: &[u32], k: usize) -> Proposal {
        if tokens.len() < self.indexed {
            (self.latest, self.indexed) = (HashMap::new(), 0);
        }
        for p in self.indexed.max(1)..tokens.len() {
            // The n-grams ending just before token p now have something after them.
            for n in self.min_n..=self.max_n.min(p) {
                self.latest.insert(Ngram::of(&tokens[p - n..p]), p - n);
            }
        }
        self.indexed = tokens.len();
        for n in (self.min_n..=self.max_n.min(tokens.len().saturating_sub(1))).rev() {
            if let Some(&j) = self.latest.get(&Ngram::of(&tokens[tokens.len() - n..])) {
                let follow = &tokens[j + n..];
                return Proposal { tokens: follow[..follow.len().min(k)].to_vec(), q: Vec::new() };
            }
        }
        Proposal::default()
    }
}

/// The engine's draft model and the pool of its KV blocks, shared by every request's drafter.
pub(super) struct DraftModel<M> {
    pub model: M,
    pub pool: BlockPool,
}

/// Drafting with a second model: greedy drafts when the request is greedy, else drafts sampled
/// from the draft model's own distribution (recorded for the rejection rule). Its sequence
/// lives in the draft model's pool.
pub(super) struct ModelDrafter {
    session: Session,
    sampler: Option<Sampler>,
}

impl ModelDrafter {
    /// `params`: the request's sampling (plain greedy: greedy drafts).
    fn new(vocab: usize, params: &SamplingParams) -> Result<Self> {
        let sampler = if params.is_plain_greedy() {
            None
        } else {
            // Its own RNG stream, reproducible from the request's seed.
            let p = SamplingParams { seed: params.seed.map(|s| s ^ 0xD5AF_7E11_0B5E_55ED), ..params.clone() };
            Some(Sampler::new(p, vocab)?)
        };
        Ok(ModelDrafter { session: Session::default(), sampler })
    }

    /// Up to `k` tokens to follow `tokens` (the sequence so far; its last token is not in the
    /// target's KV cache yet).
    async fn propose<M: ForwardModel>(&mut self, draft: &mut DraftModel<M>, tokens: &[u32], k: usize) -> Result<Proposal> {
        let mut out = Proposal::default();
        let mut history = tokens.to_vec();
        let mut feed = tokens[self.session.len().min(tokens.len())..].to_vec();
        let context = draft.model.limits().context as usize;
        while out.tokens.len() < k && self.session.len() + feed.len() <= context {
            let (model, pool) = (&draft.model, &mut draft.pool);
            let next = match &mut self.sampler {
                None => match self.session.extend(model, pool, &feed, Readback::Argmax, None).await? {
                    Picks::Tokens(t) => t[0],
                    _ => unreachable!("an argmax step returns tokens"),
                },
                Some(sampler) => {
                    let Picks::Logits(logits) = self.session.extend(model, pool, &feed, Readback::Logits, None).await? else { unreachable!("a logits step returns logits") };
                    let q = sampler.distribution(&logits, &history);
                    let t = sampler.draw_from(&q);
                    if t == NO_TOKEN {
                        break;
                    }
                    out.q.push(q);
                    t
                }
            };
            if next == NO_TOKEN {
                // The draft model has nothing to propose here; the target decides alone.
                break;
            }
            out.tokens.push(next);
            history.push(next);
            feed = vec![next];
        }
        Ok(out)
    }
}

enum AnyDrafter {
    Ngram(NgramDrafter),
    Model(ModelDrafter),
}

/// Measured milliseconds of a step by the tokens it fed (1 to 16), smoothed: what a plain step
/// costs on this device, whatever the backend, against which drafting must pay.
#[derive(Default)]
pub(super) struct StepCosts {
    ms: [f64; 17],
    seen: [bool; 17],
}

impl StepCosts {
    /// Records a step of `tokens` tokens that took `ms` from submission to its result. A size's
    /// first step is not counted (a GPU compiles the pipelines for a new row count then), and a
    /// later one moves the estimate by at most a factor of 2 before smoothing: a size whose
    /// cost an outlier inflated would seldom be drafted, so seldom measured again.
    pub fn record(&mut self, tokens: usize, ms: f64) {
        let (Some(m), Some(seen)) = (self.ms.get_mut(tokens), self.seen.get_mut(tokens)) else { return };
        if tokens == 0 || !std::mem::replace(seen, true) {
            return;
        }
        *m = if *m == 0.0 { ms } else { 0.75 * *m + 0.25 * ms.clamp(0.5 * *m, 2.0 * *m) };
    }

    pub fn get(&self, tokens: usize) -> Option<f64> {
        self.ms.get(tokens).copied().filter(|&m| m > 0.0)
    }

    /// A `tokens`-token step's cost: measured, else on the line through the nearest measured
    /// sizes around it, else extended from the two largest below it, else (one size below
    /// measured) with each token beyond it at [`UNMEASURED_TOKEN`] of that step. None when no
    /// smaller step was measured, or past 16 tokens.
    pub fn estimate(&self, tokens: usize) -> Option<f64> {
        if tokens >= self.ms.len() {
            return None;
        }
        let known = |t: usize| self.get(t).map(|m| (t as f64, m));
        let mut below = (1..=tokens).rev().filter_map(known);
        let (a, ma) = below.next()?;
        let x = tokens as f64;
        let slope = match ((tokens + 1..self.ms.len()).find_map(known), below.next()) {
            _ if x == a => 0.0,
            (Some((b, mb)), _) => (mb - ma) / (b - a),
            (None, Some((a2, m2))) => ((ma - m2) / (a - a2)).max(0.0),
            (None, None) => UNMEASURED_TOKEN * ma,
        };
        Some(ma + slope * (x - a))
    }
}

/// What a step's extra token is assumed to cost, as a fraction of a step, while no larger step
/// has been measured: the first drafts are tried where they would pay at that price, and
/// their steps measure the real one.
const UNMEASURED_TOKEN: f64 = 0.25;

/// Proposals an n-gram drafter made, scored against the tokens that followed them once those
/// are known. A deterministic draft is kept exactly where it equals the plain output (greedy,
/// or sampled with the same numbers), so what drafting would keep is learned on every step,
/// drafting or not, at no cost: no probe steps, and no drafts made before the text has shown
/// it repeats.
struct Shadow {
    /// (the tokens before it, the proposal): undecided proposals, oldest first.
    pending: VecDeque<(usize, Vec<u32>)>,
    /// Decayed counts of scored proposals by how many of their tokens the output kept.
    kept: Vec<f64>,
}

/// Weight of each scored proposal against the next one: the last ten or so decide.
const SHADOW_DECAY: f64 = 0.9;

impl Shadow {
    fn new(k_max: usize) -> Shadow {
        Shadow { pending: VecDeque::new(), kept: vec![0.0; k_max + 1] }
    }

    /// Remembers `proposal`, made after the first `at` tokens, to score it once decided.
    fn push(&mut self, at: usize, proposal: &[u32]) {
        if !proposal.is_empty() && self.pending.back().is_none_or(|(last, _)| *last < at) {
            self.pending.push_back((at, proposal.to_vec()));
        }
    }

    /// Scores the pending proposals `tokens` (the sequence so far) decides.
    fn score(&mut self, tokens: &[u32]) {
        let kept = &mut self.kept;
        self.pending.retain(|(at, proposal)| {
            let Some(next) = tokens.get(*at..) else { return false };
            let j = proposal.iter().zip(next).take_while(|(p, t)| p == t).count();
            let decided = j == proposal.len() || j < next.len();
            if decided {
                kept.iter_mut().for_each(|w| *w *= SHADOW_DECAY);
                let last = kept.len() - 1;
                kept[j.min(last)] += 1.0;
            }
            !decided
        });
    }

    /// The draft length up to `max` whose expected tokens per millisecond (by the scored
    /// proposals, and `cost(t)` of a step where this sequence feeds t tokens) beat a plain
    /// step's most; 0 when none beats it.
    fn best_k(&self, max: usize, cost: impl Fn(usize) -> Option<f64>) -> usize {
        let total: f64 = self.kept.iter().sum();
        let Some(plain) = cost(1).filter(|_| total > 0.0) else { return 0 };
        let mut best = (0, 1.0 / plain);
        for k in 1..=max.min(self.kept.len() - 1) {
            let Some(ms) = cost(k + 1) else { break };
            let expected = 1.0 + self.kept.iter().enumerate().map(|(j, w)| w * j.min(k) as f64).sum::<f64>() / total;
            if expected / ms > best.1 {
                best = (k, expected / ms);
            }
        }
        best.0
    }
}

/// Steps in a row the cost rule keeps a sequence drafting with a draft model from drafting
/// before it drafts once more (its acceptance may have changed; n-gram proposals are scored
/// without drafting, [`Shadow`]). Each probe that still does not pay doubles the wait, up to
/// [`REPROBE_MAX`]: text the drafter cannot predict loses at most one step's extra cost in 128
/// (a fixed 1 in 16 measured 2-6% slower than plain decoding on the CPU backend).
const REPROBE: u32 = 16;
const REPROBE_MAX: u32 = 128;

/// How far a probe's yield must beat plain decoding for drafting to resume. One step's yield is
/// noisy: a probe that keeps a single draft in a step that costs 1.7 plain ones (two rows in
/// Chromium's CPU backend, whose products are bound by arithmetic, not memory) beats it by 15%
/// and, taken as proof, restarted drafting that lost 4-5% on free text there.
const RESUME: f64 = 1.25;

/// One sequence's speculation: its drafter, the adaptive draft length and the counters.
pub(super) struct SpecState {
    drafter: AnyDrafter,
    k_max: usize,
    k: usize,
    /// n-gram drafts by measured costs: every step's proposal, scored (the rule below is the
    /// draft model's, whose proposals cost a forward each).
    shadow: Shadow,
    /// Verifications in a row that kept no draft, and steps left without drafting.
    misses: u32,
    pause: u32,
    /// Steps in a row the cost rule chose not to draft, and how many it may before a probe.
    declined: u32,
    reprobe: u32,
    /// A plain step's measured cost when the step being drafted is a probe.
    probe_plain: Option<f64>,
    /// Milliseconds the last proposal took.
    draft_ms: f64,
    /// Tokens per millisecond of this sequence's drafting steps (smoothed; 0 until measured).
    draft_rate: f64,
    pub drafted: usize,
    pub accepted: usize,
}

impl SpecState {
    /// `cap`: the device's useful draft length (the request's k is lowered to it); `draft_vocab`:
    /// the draft model's vocabulary, when the engine has one.
    pub fn new(spec: Speculative, cap: usize, draft_vocab: Option<usize>, params: &SamplingParams) -> Result<Self> {
        spec.validate()?;
        let drafter = match (spec.method, draft_vocab) {
            (SpecMethod::Ngram, _) => AnyDrafter::Ngram(NgramDrafter::new(2, 3)),
            (SpecMethod::Draft, Some(vocab)) => AnyDrafter::Model(ModelDrafter::new(vocab, params)?),
            (SpecMethod::Draft, None) => {
                return Err(Error::InvalidOption { option: "speculative", reason: "draft-model speculation needs a draft model; load one (--draft-model) or use ngram".into() })
            }
        };
        let k = spec.k.min(cap).max(1);
        Ok(SpecState { drafter, k_max: k, k, shadow: Shadow::new(k), misses: 0, pause: 0, declined: 0, reprobe: REPROBE, probe_plain: None, draft_ms: 0.0, draft_rate: 0.0, drafted: 0, accepted: 0 })
    }

    /// Drafts for the next step, at most `room` (positions left in the context). `others`:
    /// the tokens the other sequences feed in the step; `costs`: the measured step costs
    /// (None: draft whatever they are).
    pub async fn propose<M: ForwardModel>(&mut self, draft: Option<&mut DraftModel<M>>, tokens: &[u32], room: usize, costs: Option<&StepCosts>, others: usize) -> Result<Proposal> {
        if let (AnyDrafter::Ngram(_), Some(costs)) = (&self.drafter, costs) {
            return Ok(self.propose_ngram(tokens, room, costs, others));
        }
        let k = self.draft_len(costs, others, room);
        if k == 0 {
            return Ok(Proposal::default());
        }
        let t0 = crate::clock::now_ms();
        let proposal = match (&mut self.drafter, draft) {
            (AnyDrafter::Ngram(d), _) => Ok(d.propose(tokens, k)),
            (AnyDrafter::Model(d), Some(draft)) => d.propose(draft, tokens, k).await,
            (AnyDrafter::Model(_), None) => unreachable!("draft-model speculation is admitted only with a draft model"),
        };
        self.draft_ms = crate::clock::now_ms() - t0;
        match proposal {
            // The draft model's pool is busy with other requests' drafts: decode plainly (and
            // judge no later draft as this probe).
            Err(Error::KvCacheFull { .. }) => {
                self.probe_plain = None;
                Ok(Proposal::default())
            }
            other => other,
        }
    }

    /// n-gram drafts by the measured costs: the proposal is made (and scored later) every step,
    /// and drafted as far as the scored proposals say pays.
    fn propose_ngram(&mut self, tokens: &[u32], room: usize, costs: &StepCosts, others: usize) -> Proposal {
        let AnyDrafter::Ngram(d) = &mut self.drafter else { unreachable!("called for n-gram drafters") };
        self.shadow.score(tokens);
        let mut proposal = d.propose(tokens, self.k_max);
        self.shadow.push(tokens.len(), &proposal.tokens);
        let k = self.shadow.best_k(room.min(proposal.tokens.len()), |t| costs.estimate(others + t));
        proposal.tokens.truncate(k);
        proposal
    }

    /// How many tokens to draft this step, at most `room` (draft-model drafts, or any without
    /// costs; 0: none): none while paused after misses; by the measured costs when there are
    /// some, with a probe now and then whose interval doubles while drafting does not pay.
    fn draft_len(&mut self, costs: Option<&StepCosts>, others: usize, room: usize) -> usize {
        if room == 0 {
            return 0;
        }
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        if let Some(c) = costs.filter(|c| !self.worth(c, others)) {
            self.declined += 1;
            if self.declined < self.reprobe {
                return 0;
            }
            // A probe: its own yield decides (see `record`). It drafts the full length: after a
            // miss the length is 1, whose best yield (2 tokens in a 2-row step, 1.7 plain ones
            // in Chromium's CPU backend) cannot reach RESUME, so drafting never came back.
            self.probe_plain = c.get(others + 1);
            self.declined = 0;
            return self.k_max.min(room);
        }
        self.declined = 0;
        self.k.min(room)
    }

    /// Whether drafting pays: the tokens a drafting step of this sequence produced per
    /// millisecond (its k + 1-row forward plus the drafting, measured; kept drafts come in runs,
    /// so the yield is measured, not modelled) against a plain step's 1 token in the measured
    /// cost of a step of `others` + 1 tokens. A plain step is measured first, then a drafting one.
    pub fn worth(&self, costs: &StepCosts, others: usize) -> bool {
        match costs.get(others + 1) {
            None => false,
            Some(plain) => self.draft_rate == 0.0 || self.draft_rate * plain > 1.0,
        }
    }

    /// Adapts the draft length to how many of `drafted` were kept: the next draft is one longer
    /// than what was kept; verifications that keep nothing pause drafting for 2, 4, ... 32
    /// steps (doubling while they keep failing), so text the drafter cannot predict costs little.
    /// `step_ms`: what the verifying step took, when it was measured.
    pub fn record(&mut self, drafted: usize, kept: usize, step_ms: Option<f64>) {
        if drafted == 0 {
            return;
        }
        if let Some(ms) = step_ms {
            let rate = (kept + 1) as f64 / (ms + self.draft_ms).max(1e-6);
            match self.probe_plain.take() {
                // A probe that paid well: the text has turned predictable, draft from the next step.
                Some(plain) if rate * plain > RESUME => {
                    self.draft_rate = rate;
                    self.reprobe = REPROBE;
                }
                // One that did not: the next probe waits twice as long, and its yield may lower
                // the rate but not raise it (a blend past the break-even would resume drafting
                // on a yield RESUME refused).
                Some(_) => {
                    self.reprobe = (self.reprobe * 2).min(REPROBE_MAX);
                    self.draft_rate = self.draft_rate.min(0.75 * self.draft_rate + 0.25 * rate);
                }
                None => self.draft_rate = if self.draft_rate == 0.0 { rate } else { 0.75 * self.draft_rate + 0.25 * rate },
            }
        }
        self.drafted += drafted;
        self.accepted += kept;
        self.k = (kept + 1).clamp(1, self.k_max);
        if kept == 0 {
            self.misses += 1;
            self.pause = 2u32.pow(self.misses.min(5));
        } else {
            self.misses = 0;
        }
    }

    /// The first `valid` tokens of the sequence are final; draft state past them is stale.
    pub fn rollback(&mut self, valid: usize) {
        if let AnyDrafter::Model(d) = &mut self.drafter {
            d.session.truncate(valid);
        }
    }

    /// Gives the drafter's KV blocks back to the draft model's pool.
    pub fn release<M>(&mut self, draft: Option<&mut DraftModel<M>>) {
        if let (AnyDrafter::Model(d), Some(draft)) = (&mut self.drafter, draft) {
            d.session.release(&mut draft.pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SpecState {
        SpecState::new(Speculative { method: SpecMethod::Ngram, k: 4 }, 4, None, &SamplingParams::greedy()).unwrap()
    }

    fn costs(ms: &[f64]) -> StepCosts {
        let mut c = StepCosts::default();
        for (i, &m) in ms.iter().enumerate() {
            c.record(i + 1, 1e3); // the first of each size is not counted
            c.record(i + 1, m);
        }
        c
    }

    #[test]
    fn drafts_only_where_the_measured_yield_pays() {
        let mut s = state();
        // Nothing measured: a plain step first, then a drafting one.
        assert!(!s.worth(&StepCosts::default(), 0));
        let c = costs(&[10.0, 11.0, 16.0]);
        assert!(s.worth(&c, 0));
        // 2 drafts, both kept, in a 16 ms step: 3 tokens in 16 ms beat 1 in 10.
        s.record(2, 2, Some(16.0));
        assert!(s.worth(&c, 0));
        // Drafts that keep failing: 1 token per 16 ms step, the smoothed rate drops below.
        for _ in 0..6 {
            s.record(2, 0, Some(16.0));
        }
        assert!(!s.worth(&c, 0), "rate {}", s.draft_rate);
        // Against a 2-token step (another sequence in the batch) that costs 30 ms, it pays.
        assert!(s.worth(&costs(&[10.0, 30.0]), 1));
        // Slow drafting counts against it: 3 tokens in 16 ms of step and 20 of drafting.
        let mut s = state();
        s.draft_ms = 20.0;
        s.record(2, 2, Some(16.0));
        assert!(!s.worth(&c, 0));
        // Unmeasured steps (pipelined, or read early) leave the rate alone.
        let mut s = state();
        s.record(2, 2, None);
        assert_eq!(s.draft_rate, 0.0);
    }

    #[test]
    fn probes_back_off_while_drafting_does_not_pay() {
        let mut s = state();
        let c = costs(&[10.0, 11.0, 16.0]);
        s.record(2, 1, Some(40.0)); // 2 tokens in 40 ms: worse than 1 in 10
        let mut probes = Vec::new();
        for step in 1..=400 {
            if s.draft_len(Some(&c), 0, 8) > 0 {
                probes.push(step);
                s.record(2, 1, Some(40.0));
            }
        }
        assert_eq!(probes, [16, 48, 112, 240, 368], "steps that drafted");
        // A probe that beats plain steps by less than RESUME (2 tokens in 17 ms against 1 in 10)
        // does not resume drafting, even from a rate just below the break-even.
        while s.draft_len(Some(&c), 0, 8) == 0 {}
        s.draft_rate = 0.095;
        s.record(1, 1, Some(17.0));
        assert_eq!(s.draft_len(Some(&c), 0, 8), 0);
        assert_eq!(s.draft_rate, 0.095);
        // A probe drafts the full length, whatever the last miss left it at; one that pays (5
        // tokens in 16 ms) resumes drafting at once, the interval back to 16.
        s.record(4, 0, None);
        assert_eq!(s.k, 1);
        s.pause = 0;
        let probe = loop {
            match s.draft_len(Some(&c), 0, 8) {
                0 => continue,
                k => break k,
            }
        };
        assert_eq!(probe, s.k_max);
        s.record(4, 4, Some(16.0));
        assert!((0..5).all(|_| s.draft_len(Some(&c), 0, 8) > 0));
        // Never past the room left in the context; none without room, counting no declined step.
        assert_eq!(s.draft_len(Some(&c), 0, 2), 2);
        assert_eq!(s.draft_len(Some(&c), 0, 0), 0);
        assert_eq!(s.reprobe, REPROBE);
        // No measured costs: drafts (after any pause from misses).
        s.pause = 1;
        assert!(s.draft_len(None, 0, 8) == 0 && s.draft_len(None, 0, 8) > 0);
    }

    /// The index finds what a scan of the whole sequence finds, as the sequence grows.
    #[test]
    fn ngram_index_proposes_what_a_scan_finds() {
        let scan = |tokens: &[u32], k: usize| -> Vec<u32> {
            for n in (2..=3.min(tokens.len().saturating_sub(1))).rev() {
                let pattern = &tokens[tokens.len() - n..];
                if let Some(j) = (0..tokens.len() - n).rev().find(|&j| &tokens[j..j + n] == pattern) {
                    return tokens[j + n..].iter().take(k).copied().collect();
                }
            }
            Vec::new()
        };
        let mut s = 7u32;
        let tokens: Vec<u32> = (0..3000)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s % 5
            })
            .collect();
        let mut d = NgramDrafter::new(2, 3);
        let mut proposed = 0;
        for len in (0..tokens.len()).step_by(7).chain([tokens.len()]) {
            let got = d.propose(&tokens[..len], 4).tokens;
            assert_eq!(got, scan(&tokens[..len], 4), "at {len} tokens");
            proposed += got.len();
        }
        assert!(proposed > 1000, "the sequence should repeat n-grams");
        // A shorter sequence than the last (a new one) starts the index again.
        assert_eq!(d.propose(&tokens[..40], 4).tokens, scan(&tokens[..40], 4));
    }

    /// Scores proposals as the output decides them: all kept, a miss at once, a miss after one.
    #[test]
    fn shadow_scores_each_proposal_once_the_output_decides_it() {
        let mut sh = Shadow::new(4);
        sh.push(3, &[7, 8, 9]);
        sh.push(3, &[1]); // a second proposal at the same place is not counted twice
        sh.score(&[1, 2, 3, 7, 8]);
        assert_eq!(sh.pending.len(), 1, "two of three proposed tokens seen: undecided");
        sh.score(&[1, 2, 3, 7, 8, 9]);
        assert!(sh.pending.is_empty());
        assert_eq!(sh.kept, [0.0, 0.0, 0.0, 1.0, 0.0]);
        sh.push(6, &[5, 5]);
        sh.push(7, &[4, 4]);
        sh.score(&[1, 2, 3, 7, 8, 9, 5, 6, 4]);
        // The first kept one token of two, the second none; older counts decay.
        let d = SHADOW_DECAY;
        assert_eq!(sh.kept, [1.0, d, 0.0, d * d, 0.0]);
    }

    /// The length whose expected yield per millisecond beats plain steps most, by the step
    /// costs measured on this device, or 0.
    #[test]
    fn drafts_the_length_the_scored_proposals_pay_for() {
        let mut sh = Shadow::new(4);
        let cheap = costs(&[10.0, 11.0, 12.0, 13.0, 14.0]);
        let dear = costs(&[10.0, 17.0, 24.0, 31.0, 38.0]);
        let k = |sh: &Shadow, c: &StepCosts| sh.best_k(4, |t| c.estimate(t));
        assert_eq!(k(&sh, &cheap), 0, "nothing scored yet");
        sh.kept = vec![1.0, 0.0, 0.0, 0.0, 1.0]; // half kept whole, half missed at once
        assert_eq!(k(&sh, &cheap), 4, "3 tokens in 14 ms against 1 in 10");
        assert_eq!(k(&sh, &dear), 0, "at most 3 in 38 ms, 2.5 in 31, 1.5 in 17: none beats 1 in 10");
        sh.kept = vec![1.0, 9.0, 0.0, 0.0, 0.0];
        assert_eq!(k(&sh, &dear), 1, "1.9 tokens in 17 ms");
        sh.kept = vec![1.0, 0.0, 0.0, 0.0, 9.0];
        assert_eq!(k(&sh, &dear), 4, "4.6 tokens in 38 ms beat 1.9 in 17");
        sh.kept = vec![1.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(k(&sh, &cheap), 0, "proposals that always miss");
        assert_eq!(sh.best_k(4, |_| None), 0, "no plain step measured");
        // Another sequence in the batch: this one's 1 token costs a 2-token step (17 ms), and
        // 3 expected tokens in a 6-token step (45 ms, extended from 31 and 38) beat it.
        sh.kept = vec![1.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(sh.best_k(4, |t| dear.estimate(1 + t)), 4);
    }

    #[test]
    fn unmeasured_step_costs_are_estimated_from_measured_ones() {
        let mut c = StepCosts::default();
        assert_eq!(c.estimate(1), None);
        c = costs(&[10.0]);
        assert_eq!(c.estimate(1), Some(10.0));
        assert_eq!(c.estimate(3), Some(10.0 + 2.0 * UNMEASURED_TOKEN * 10.0));
        c.record(4, 1e3);
        c.record(4, 16.0);
        assert_eq!(c.estimate(2), Some(12.0), "between 1 and 4");
        assert_eq!(c.estimate(6), Some(20.0), "on from the two largest below");
        assert_eq!(c.estimate(17), None);
    }

    #[test]
    fn step_costs_are_smoothed_and_bounded() {
        let mut c = StepCosts::default();
        c.record(1, 5000.0);
        assert_eq!(c.get(1), None, "a size's first step (pipeline compiles) is not counted");
        c.record(1, 100.0);
        c.record(1, 200.0);
        assert_eq!(c.get(1), Some(125.0));
        c.record(1, 1e4);
        assert_eq!(c.get(1), Some(125.0 * 0.75 + 250.0 * 0.25), "an outlier counts as twice the estimate");
        c.record(0, 5.0);
        c.record(17, 5.0);
        assert_eq!((c.get(0), c.get(2), c.get(17)), (None, None, None));
    }
}
