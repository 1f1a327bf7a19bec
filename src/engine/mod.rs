//! The serving engine: requests share one GPU model through continuous batching. Every step
//! runs the next token of every decoding sequence plus chunks of pending prompts (chunked
//! prefill within the step's token budget) in one batched forward. KV blocks come from the
//! model's pool (`src/kv_cache.rs`); full blocks enter the prefix cache, so a request that
//! starts like an earlier one (system prompt, chat history, document) prefills only the rest.
//!
//! Admission is first come, first served, once the pool can hold the whole prompt. When a
//! running sequence needs a block and none is free or evictable, the youngest sequence not yet
//! scheduled in this step is preempted: its blocks are released and it is recomputed later
//! (its finished blocks usually come straight back from the prefix cache). The pool always
//! holds one full-context sequence, so the oldest request always finishes. A sequence that
//! reaches the context length stops with finish reason `length`.

mod sequence;
mod speculative;

use std::collections::VecDeque;
use std::rc::Rc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::generate::{now_ms, Decoder, FinishReason, GenerateOptions, Generation, Need, Picked};
use crate::gpu::{Batch, GpuModel};
use crate::kv_cache::PoolStats;
use crate::sampler::TopLogits;
use crate::tokenizer::Tokenizer;
use sequence::Sequence;
pub use speculative::{Drafter, ModelDrafter, NgramDrafter, Proposal, SpecMethod, Speculative, MAX_DRAFT};
use speculative::SpecState;

pub type RequestId = u64;

/// A request: prompt token ids (BOS included when the model wants it) and how to generate.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
}

/// Per-request figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Submission to first token.
    pub ttft_ms: f64,
    /// Mean time per output token after the first.
    pub tpot_ms: f64,
    /// Times the sequence was preempted and recomputed.
    pub preemptions: usize,
    /// Steps that produced tokens for this request (with speculation, one step can produce
    /// several: generated / forwards is the effective tokens per forward).
    pub forwards: usize,
    /// Speculation: tokens drafted and drafts the target kept.
    pub drafted: usize,
    pub accepted: usize,
}

/// What a step reports for one request.
#[derive(Debug)]
pub enum Event {
    /// A generated token and the text it completed (empty while text is held back).
    Token { id: RequestId, token: u32, text: String },
    /// The request ended (its blocks are back in the pool).
    Done { id: RequestId, generation: Box<Generation>, stats: RequestStats },
}

/// Engine-wide figures.
#[derive(Clone, Debug, Serialize)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv: PoolStats,
    pub block_size: usize,
    pub kv_bytes_per_token: u64,
    /// Prompt tokens served from the prefix cache / prompt tokens admitted.
    pub prefix_hit_rate: f64,
    pub steps: u64,
    pub preemptions: u64,
}

/// The scheduler. It holds no reference to the model: each [`Engine::step`] is given the model
/// (always the same one) and the tokenizer.
pub struct Engine {
    /// The model drafting for requests with `SpecMethod::Draft`.
    draft_model: Option<Rc<GpuModel>>,
    next_id: RequestId,
    waiting: VecDeque<Sequence>,
    /// In admission order, oldest first.
    running: Vec<Sequence>,
    steps: u64,
    preemptions: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine { draft_model: None, next_id: 0, waiting: VecDeque::new(), running: Vec::new(), steps: 0, preemptions: 0, prompt_tokens: 0, cached_tokens: 0 }
    }

    /// Sets the model that drafts for draft-model speculation; it must share `target`'s
    /// vocabulary (the same tokenizer).
    pub fn set_draft_model(&mut self, target: &GpuModel, draft: Rc<GpuModel>) -> Result<()> {
        if draft.config.vocab_size != target.config.vocab_size {
            return Err(Error::InvalidOption {
                option: "draft model",
                reason: format!("its vocabulary has {} tokens but the model's has {}; use a draft model with the same tokenizer", draft.config.vocab_size, target.config.vocab_size),
            });
        }
        self.draft_model = Some(draft);
        Ok(())
    }

    /// Queues a request; it joins the batch at a coming step. Options and prompt length are
    /// checked here.
    pub fn submit(&mut self, model: &GpuModel, tokenizer: &Tokenizer, req: Request) -> Result<RequestId> {
        let decoder = Decoder::new(tokenizer, &req.prompt, &req.opts, 0, model.limits.context as usize)?;
        // On CPU-emulated adapters each extra token in a forward costs ~40% of a step (measured
        // on lavapipe), so longer drafts lose more than they win there: cap them at 2.
        let cap = if model.ctx.info.cpu_like { 2 } else { MAX_DRAFT };
        let spec = req.opts.speculative.map(|s| SpecState::new(s, cap, self.draft_model.as_ref(), &req.opts.sampling)).transpose()?;
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence::new(id, req.prompt, decoder, spec));
        Ok(id)
    }

    /// Stops a request now and frees its blocks; returns its `Done` event (finish reason
    /// `cancelled`), or None if no such request is queued or running.
    pub fn cancel(&mut self, model: &GpuModel, tokenizer: &Tokenizer, id: RequestId) -> Option<Event> {
        let mut seq = if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i)?
        } else {
            let i = self.running.iter().position(|s| s.id == id)?;
            self.running.remove(i)
        };
        seq.free(&mut model.pool.borrow_mut());
        let _ = seq.decoder.finish_length(tokenizer);
        seq.decoder.out.finish_reason = FinishReason::Cancelled;
        Some(seq.done())
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn stats(&self, model: &GpuModel) -> EngineStats {
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv: model.pool.borrow().stats(),
            block_size: model.limits.block_size as usize,
            kv_bytes_per_token: model.limits.kv_bytes_per_token,
            prefix_hit_rate: self.cached_tokens as f64 / self.prompt_tokens.max(1) as f64,
            steps: self.steps,
            preemptions: self.preemptions,
        }
    }

    /// Runs steps until every request has finished, passing each event to `on_event`.
    pub async fn run(&mut self, model: &GpuModel, tokenizer: &Tokenizer, mut on_event: impl FnMut(Event)) -> Result<()> {
        while !self.is_idle() {
            for e in self.step(model, tokenizer).await? {
                on_event(e);
            }
        }
        Ok(())
    }

    /// Moves waiting requests into the running set while the pool can hold their prompts.
    fn admit(&mut self, model: &GpuModel) {
        let mut pool = model.pool.borrow_mut();
        while self.running.len() < model.limits.max_seqs as usize {
            let Some(seq) = self.waiting.front_mut() else { break };
            if !seq.admit(&mut pool) {
                break;
            }
            let seq = self.waiting.pop_front().expect("front exists");
            if seq.stats.preemptions == 0 {
                self.prompt_tokens += seq.prompt_len as u64;
                self.cached_tokens += seq.stats.cached_tokens as u64;
            }
            self.running.push(seq);
        }
    }

    /// Preempts the youngest running sequence not in `scheduled`; false if there is none.
    fn preempt_one(&mut self, model: &GpuModel, scheduled: &[RequestId]) -> bool {
        let Some(i) = self.running.iter().rposition(|s| !scheduled.contains(&s.id)) else { return false };
        let mut seq = self.running.remove(i);
        seq.free(&mut model.pool.borrow_mut());
        seq.stats.preemptions += 1;
        self.preemptions += 1;
        self.waiting.push_front(seq);
        true
    }

    /// Chooses this step's work: decoding sequences first (one token each), then prompt
    /// chunks, within the token budget; gives each the blocks its tokens need.
    fn schedule(&mut self, model: &GpuModel) -> Vec<(RequestId, usize)> {
        let mut budget = model.limits.max_batch_tokens as usize;
        let mut order: Vec<RequestId> = self.running.iter().filter(|s| s.is_decoding()).map(|s| s.id).collect();
        order.extend(self.running.iter().filter(|s| !s.is_decoding()).map(|s| s.id));
        let mut plan: Vec<(RequestId, usize)> = Vec::new();
        for id in order {
            if budget == 0 {
                break;
            }
            loop {
                let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else { break }; // preempted
                let n = seq.pending().min(budget);
                seq.fit_drafts(n);
                if seq.reserve(&mut model.pool.borrow_mut(), n) {
                    plan.push((id, n));
                    budget -= n;
                    break;
                }
                let scheduled: Vec<RequestId> = plan.iter().map(|p| p.0).collect();
                if !self.preempt_one(model, &scheduled) {
                    break;
                }
            }
        }
        plan
    }

    /// One batched forward over every running sequence; returns what happened to each request.
    pub async fn step(&mut self, model: &GpuModel, tokenizer: &Tokenizer) -> Result<Vec<Event>> {
        self.admit(model);
        let context = model.limits.context as usize;
        for seq in self.running.iter_mut().filter(|s| s.is_decoding()) {
            if let Some(spec) = &mut seq.spec {
                // Drafts take positions tokens.len() .. inside the context, and d kept drafts
                // yield d + 1 tokens: no more than the request still wants.
                let wanted = seq.decoder.options().max_tokens.saturating_sub(seq.decoder.out.tokens.len() + 1);
                seq.draft = spec.propose(&seq.tokens, context.saturating_sub(seq.tokens.len()).min(wanted)).await?;
            }
        }
        let plan = self.schedule(model);
        if plan.is_empty() {
            if self.running.is_empty() && !self.waiting.is_empty() {
                // Nothing of ours runs and the head request still does not fit: other users of
                // the pool (a GpuSession, scoring) hold the blocks. The request is dropped with
                // this error rather than retried forever.
                let seq = self.waiting.pop_front().expect("waiting is not empty");
                let pool = model.pool.borrow();
                return Err(Error::KvCacheFull { needed: seq.blocks_needed(pool.block_size()), available: pool.available(), block_size: pool.block_size() });
            }
            return Ok(Vec::new());
        }
        self.steps += 1;

        // The batch: each planned sequence's next tokens, logits for those that finish their feed.
        let (mut tokens, mut positions, mut seq_ids, mut logit_rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut tables: Vec<&[u32]> = Vec::new();
        // (sequence, readback, first logit row, rows): one row per draft plus one.
        let mut needs: Vec<(RequestId, Need, usize, usize)> = Vec::new();
        for (slot, &(id, n)) in plan.iter().enumerate() {
            let seq = self.running.iter().find(|s| s.id == id).expect("planned sequences run");
            tokens.extend(seq.feed(n));
            positions.extend((seq.computed..seq.computed + n).map(|p| p as u32));
            seq_ids.extend(std::iter::repeat_n(slot as u32, n));
            tables.push(&seq.blocks);
            if n == seq.pending() {
                let rows = 1 + seq.draft.tokens.len();
                let need = if seq.spec.is_some() { seq.decoder.need_speculative() } else { seq.decoder.need() };
                needs.push((id, need, logit_rows.len(), rows));
                logit_rows.extend((tokens.len() - rows..tokens.len()).map(|r| r as u32));
            }
        }
        let batch = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &logit_rows, block_tables: &tables };
        let readback = needs.iter().fold(Need::Argmax, |acc, n| match (acc, n.1) {
            (Need::Logits, _) | (_, Need::Logits) => Need::Logits,
            (Need::Top(a), Need::Top(b)) => Need::Top(a.max(b)),
            (Need::Top(k), Need::Argmax) | (Need::Argmax, Need::Top(k)) => Need::Top(k),
            (Need::Argmax, Need::Argmax) => Need::Argmax,
        });
        let picked = match (logit_rows.is_empty(), readback) {
            (true, _) => {
                model.submit(&batch)?;
                Picks::None
            }
            (false, Need::Argmax) => Picks::Tokens(model.forward_argmax(&batch).await?),
            (false, Need::Top(_)) => Picks::Top(model.forward_top(&batch, crate::sampler::MAX_TOP).await?),
            (false, Need::Logits) => Picks::Logits(model.forward_logits(&batch).await?),
        };

        // Account for the fed tokens (drafts count once kept), then verify and take new tokens.
        let now = now_ms();
        let vocab = model.config.vocab_size;
        let mut events = Vec::new();
        for &(id, n) in &plan {
            let seq = self.running.iter_mut().find(|s| s.id == id).expect("planned sequences run");
            seq.computed += n - seq.draft.tokens.len();
            seq.register_full_blocks(&mut model.pool.borrow_mut());
        }
        for &(id, _, first_row, rows) in &needs {
            let i = self.running.iter().position(|s| s.id == id).expect("planned sequences run");
            let seq = &mut self.running[i];
            seq.forwards += 1;
            let draft = std::mem::take(&mut seq.draft);
            let mut kept = 0;
            let mut done = false;
            for r in first_row..first_row + rows {
                let picked = match &picked {
                    Picks::None => unreachable!("rows were asked for"),
                    Picks::Tokens(t) => Picked::Token(t[r]),
                    Picks::Top(t) => Picked::Top(&t[r]),
                    Picks::Logits(l) => Picked::Logits(&l[r * vocab..(r + 1) * vocab]),
                };
                let j = r - first_row;
                let (next, is_draft) = seq.decoder.verify(picked, draft.tokens.get(j).map(|&d| (d, draft.q.get(j).map(|q| &q[..]))));
                seq.record_token_time(now);
                let before = seq.decoder.out.tokens.len();
                let (text, finished) = seq.decoder.accept(tokenizer, next, seq.tokens.len() < context)?;
                if seq.decoder.out.tokens.len() > before {
                    events.push(Event::Token { id, token: next, text });
                }
                if finished {
                    done = true;
                    break;
                }
                seq.tokens.push(next);
                if !is_draft {
                    break;
                }
                // A kept draft: its K/V, written at this position, is now the sequence's own.
                seq.computed += 1;
                kept += 1;
            }
            if let Some(spec) = &mut seq.spec {
                spec.record(draft.tokens.len(), kept);
                spec.rollback(seq.computed);
            }
            if done {
                let mut seq = self.running.remove(i);
                seq.free(&mut model.pool.borrow_mut());
                events.push(seq.done());
            } else {
                seq.register_full_blocks(&mut model.pool.borrow_mut());
            }
        }
        Ok(events)
    }
}

/// What a step read back, one entry per logit row.
enum Picks {
    None,
    Tokens(Vec<u32>),
    Top(Vec<TopLogits>),
    Logits(Vec<f32>),
}
