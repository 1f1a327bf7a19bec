//! Speculative decoding. A drafter proposes up to k tokens; the engine feeds the pending token
//! and the drafts in one forward with k + 1 logit rows, keeps the drafts the target agrees with
//! (greedy: its own argmax; sampling: Leviathan et al.'s rejection rule, so the output is
//! distributed exactly as without speculation) plus one token of the target's own, and rolls the
//! KV cache back past the first rejection by lowering the sequence's computed length (the
//! rejected positions' slots are simply written again later).

use std::ops::Deref;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::generate::Session;
use crate::gpu::{GpuModel, GpuSession};
use crate::sampler::{Sampler, SamplingParams};

/// Where drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecMethod {
    /// Prompt lookup: continue the latest earlier occurrence of the sequence's last 1-3 tokens.
    Ngram,
    /// A smaller (or the same) model sharing the tokenizer, loaded with `Engine::set_draft_model`.
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

/// Drafted tokens and, for sampled drafts, the draft's distribution at each (empty when the
/// drafts are deterministic).
#[derive(Clone, Debug, Default)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Vec<Vec<(u32, f64)>>,
}

/// A source of drafts.
#[allow(async_fn_in_trait)] // Futures stay on one thread, as everywhere in the engine.
pub trait Drafter {
    /// Up to `k` tokens to follow `tokens` (the sequence so far; its last token is not in the
    /// target's KV cache yet).
    async fn propose(&mut self, tokens: &[u32], k: usize) -> Result<Proposal>;
    /// The first `valid` tokens of the sequence are final; state past them is stale.
    fn rollback(&mut self, valid: usize);
}

/// Prompt-lookup drafting: find the most recent earlier place where the sequence's last n
/// tokens (n = max_n down to min_n) occurred and propose what followed them there.
pub struct NgramDrafter {
    pub max_n: usize,
    /// Single-token matches are mostly wrong in free text: 2 by default.
    pub min_n: usize,
}

impl Drafter for NgramDrafter {
    async fn propose(&mut self, tokens: &[u32], k: usize) -> Result<Proposal> {
        for n in (self.min_n.max(1)..=self.max_n.min(tokens.len().saturating_sub(1))).rev() {
            let pattern = &tokens[tokens.len() - n..];
            // Latest earlier start j with tokens[j..j + n] == pattern and something after it.
            if let Some(j) = (0..tokens.len() - n).rev().find(|&j| &tokens[j..j + n] == pattern) {
                let follow = &tokens[j + n..];
                return Ok(Proposal { tokens: follow[..follow.len().min(k)].to_vec(), q: Vec::new() });
            }
        }
        Ok(Proposal::default())
    }

    fn rollback(&mut self, _valid: usize) {}
}

/// Drafting with a second model: greedy drafts when the request is greedy, else drafts sampled
/// from the draft model's own distribution (recorded for the rejection rule).
pub struct ModelDrafter<M: Deref<Target = GpuModel>> {
    session: GpuSession<M>,
    sampler: Option<Sampler>,
}

impl<M: Deref<Target = GpuModel>> ModelDrafter<M> {
    /// `params`: the request's sampling (None or plain greedy: greedy drafts).
    pub fn new(model: M, params: Option<&SamplingParams>) -> Result<Self> {
        let sampler = match params {
            Some(p) if !p.is_plain_greedy() => {
                // Its own RNG stream, reproducible from the request's seed.
                let p = SamplingParams { seed: p.seed.map(|s| s ^ 0xD5AF_7E11_0B5E_55ED), ..p.clone() };
                Some(Sampler::new(p, model.config.vocab_size)?)
            }
            _ => None,
        };
        Ok(ModelDrafter { session: GpuSession::new(model), sampler })
    }
}

impl<M: Deref<Target = GpuModel>> Drafter for ModelDrafter<M> {
    async fn propose(&mut self, tokens: &[u32], k: usize) -> Result<Proposal> {
        let mut out = Proposal::default();
        let mut history = tokens.to_vec();
        let mut feed = tokens[self.session.len().min(tokens.len())..].to_vec();
        while out.tokens.len() < k && self.session.len() + feed.len() <= self.session.capacity() {
            let next = match &mut self.sampler {
                None => self.session.extend_greedy(&feed).await?,
                Some(sampler) => {
                    let q = sampler.distribution(&self.session.extend_logits(&feed).await?, &history);
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

    fn rollback(&mut self, valid: usize) {
        self.session.truncate(valid);
    }
}

pub(super) enum AnyDrafter {
    Ngram(NgramDrafter),
    Model(ModelDrafter<Rc<GpuModel>>),
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
    /// `cap`: the adapter's useful draft length (the request's k is lowered to it).
    pub fn new(spec: Speculative, cap: usize, draft_model: Option<&Rc<GpuModel>>, params: &SamplingParams) -> Result<Self> {
        spec.validate()?;
        let drafter = match (spec.method, draft_model) {
            (SpecMethod::Ngram, _) => AnyDrafter::Ngram(NgramDrafter { max_n: 3, min_n: 2 }),
            (SpecMethod::Draft, Some(m)) => AnyDrafter::Model(ModelDrafter::new(m.clone(), Some(params))?),
            (SpecMethod::Draft, None) => {
                return Err(Error::InvalidOption { option: "speculative", reason: "draft-model speculation needs a draft model; load one (--draft-model) or use ngram".into() })
            }
        };
        let k = spec.k.min(cap).max(1);
        Ok(SpecState { drafter, k_max: k, k, misses: 0, pause: 0, drafted: 0, accepted: 0 })
    }

    /// Drafts for the next step, at most `room` (positions left in the context).
    pub async fn propose(&mut self, tokens: &[u32], room: usize) -> Result<Proposal> {
        if self.pause > 0 {
            self.pause -= 1;
            return Ok(Proposal::default());
        }
        let k = self.k.min(room);
        if k == 0 {
            return Ok(Proposal::default());
        }
        let proposal = match &mut self.drafter {
            AnyDrafter::Ngram(d) => d.propose(tokens, k).await,
            AnyDrafter::Model(d) => d.propose(tokens, k).await,
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

    pub fn rollback(&mut self, valid: usize) {
        match &mut self.drafter {
            AnyDrafter::Ngram(d) => d.rollback(valid),
            AnyDrafter::Model(d) => d.rollback(valid),
        }
    }
}
