//! Speculative decoding. A drafter proposes up to k tokens; the engine feeds the pending token
//! and the drafts in one forward with k + 1 logit rows, keeps the drafts the target agrees with
//! (greedy: its own argmax; sampling: Leviathan et al.'s rejection rule, so the output is
//! distributed exactly as without speculation) plus one token of the target's own, and rolls the
//! KV cache back past the first rejection by lowering the sequence's computed length (the
//! rejected positions' slots are simply written again later).

use super::backend::{ForwardModel, Picks, Readback};
use super::kv_cache::BlockPool;
use super::session::Session;
use crate::error::{Error, Result};
use crate::sample::{Sampler, SamplingParams, SpecMethod, Speculative};

/// Drafted tokens and, for sampled drafts, the draft's distribution at each (empty when the
/// drafts are deterministic).
#[derive(Clone, Debug, Default)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Vec<Vec<(u32, f64)>>,
}

/// Prompt-lookup drafting: find the most recent earlier place where the sequence's last n
/// tokens (n = max_n down to min_n) occurred and propose what followed them there.
pub struct NgramDrafter {
    pub max_n: usize,
    /// Single-token matches are mostly wrong in free text: 2 by default.
    pub min_n: usize,
}

impl NgramDrafter {
    /// Up to `k` tokens to follow `tokens`.
    pub fn propose(&self, tokens: &[u32], k: usize) -> Proposal {
        for n in (self.min_n.max(1)..=self.max_n.min(tokens.len().saturating_sub(1))).rev() {
            let pattern = &tokens[tokens.len() - n..];
            // Latest earlier start j with tokens[j..j + n] == pattern and something after it.
            if let Some(j) = (0..tokens.len() - n).rev().find(|&j| &tokens[j..j + n] == pattern) {
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
                    out.q.push(q);
                    t
                }
            };
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

/// One sequence's speculation: its drafter, the adaptive draft length and the counters.
pub(super) struct SpecState {
    drafter: AnyDrafter,
    k_max: usize,
    k: usize,
    /// Verifications in a row that kept no draft, and steps left without drafting.
    misses: u32,
    pause: u32,
    pub drafted: usize,
    pub accepted: usize,
}

impl SpecState {
    /// `cap`: the device's useful draft length (the request's k is lowered to it); `draft_vocab`:
    /// the draft model's vocabulary, when the engine has one.
    pub fn new(spec: Speculative, cap: usize, draft_vocab: Option<usize>, params: &SamplingParams) -> Result<Self> {
        spec.validate()?;
        let drafter = match (spec.method, draft_vocab) {
            (SpecMethod::Ngram, _) => AnyDrafter::Ngram(NgramDrafter { max_n: 3, min_n: 2 }),
            (SpecMethod::Draft, Some(vocab)) => AnyDrafter::Model(ModelDrafter::new(vocab, params)?),
            (SpecMethod::Draft, None) => {
                return Err(Error::InvalidOption { option: "speculative", reason: "draft-model speculation needs a draft model; load one (--draft-model) or use ngram".into() })
            }
        };
        let k = spec.k.min(cap).max(1);
        Ok(SpecState { drafter, k_max: k, k, misses: 0, pause: 0, drafted: 0, accepted: 0 })
    }

    /// Drafts for the next step, at most `room` (positions left in the context).
    pub async fn propose<M: ForwardModel>(&mut self, draft: Option<&mut DraftModel<M>>, tokens: &[u32], room: usize) -> Result<Proposal> {
        if self.pause > 0 {
            self.pause -= 1;
            return Ok(Proposal::default());
        }
        let k = self.k.min(room);
        if k == 0 {
            return Ok(Proposal::default());
        }
        let proposal = match (&mut self.drafter, draft) {
            (AnyDrafter::Ngram(d), _) => Ok(d.propose(tokens, k)),
            (AnyDrafter::Model(d), Some(draft)) => d.propose(draft, tokens, k).await,
            (AnyDrafter::Model(_), None) => unreachable!("draft-model speculation is admitted only with a draft model"),
        };
        match proposal {
            // The draft model's pool is busy with other requests' drafts: decode plainly.
            Err(Error::KvCacheFull { .. }) => Ok(Proposal::default()),
            other => other,
        }
    }

    /// Adapts the draft length to how many of `drafted` were kept: the next draft is one longer
    /// than what was kept; verifications that keep nothing pause drafting for 2, 4, ... 32
    /// steps (doubling while they keep failing), so text the drafter cannot predict costs little.
    pub fn record(&mut self, drafted: usize, kept: usize) {
        if drafted == 0 {
            return;
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
