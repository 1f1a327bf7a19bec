//! The serving engine: requests share one model, on any backend behind [`ForwardModel`],
//! through continuous batching. Every step runs the next token of every decoding sequence plus
//! chunks of pending prompts (chunked prefill within the step's token budget) in one batched
//! forward. KV blocks come from the engine's pool ([`BlockPool`]); full blocks enter the prefix
//! cache, so a request that starts like an earlier one (system prompt, chat history, document)
//! prefills only the rest.
//!
//! Admission is first come, first served, once the pool can hold the whole prompt. When a
//! running sequence needs a block and none is free or evictable, the youngest sequence not yet
//! scheduled in this step is preempted: its blocks are released and it is recomputed later
//! (its finished blocks usually come straight back from the prefix cache). The pool always
//! holds one full-context sequence, so the oldest request always finishes. A sequence that
//! reaches the context length stops with finish reason `length`.

mod backend;
mod kv_cache;
mod sequence;
mod session;
mod speculative;

use std::collections::VecDeque;

use serde::Serialize;

pub use backend::{picks_from_logits, Batch, ForwardModel, LastPicks, Limits, ModelOptions, PendingStep, Picks, Readback, Ready, BLOCK_SIZE, CHAINED, DEFAULT_KV_BUDGET};
pub use kv_cache::{BlockHasher, BlockPool, PoolStats, PrefixHit};

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::sample::{Decoder, FinishReason, GenerateOptions, Generation, Grammars, Need, Picked};
use crate::tokenizer::Tokenizer;
use sequence::Sequence;
use session::Session;
use speculative::{DraftModel, SpecState, StepCosts};

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
    /// `drafted`: a speculative draft the model confirmed; `rejected`: drafts thrown away at
    /// this position (this token replaced them).
    Token { id: RequestId, token: u32, text: String, drafted: bool, rejected: usize },
    /// The request ended (its blocks are back in the pool).
    Done { id: RequestId, generation: Box<Generation>, stats: RequestStats },
}

/// One KV block as the demo's map draws it.
#[derive(Clone, Debug, Serialize)]
pub struct KvBlockView {
    /// Sequences referencing it.
    pub refs: u32,
    /// In the prefix cache (a later request with the same prefix reuses it).
    pub cached: bool,
    /// `(request, first token position)` of each running request whose table holds it.
    pub owners: Vec<(RequestId, usize)>,
    /// Tokens whose K/V it holds for its first owner (up to the block size).
    pub filled: usize,
}

/// Every block of the pool, with the engine's figures taken at the same moment.
#[derive(Clone, Debug, Serialize)]
pub struct KvMap {
    pub blocks: Vec<KvBlockView>,
    pub stats: EngineStats,
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
    /// Steps submitted before the step they follow was read (pipelining; see
    /// [`Engine::set_pipelined`]).
    pub chained_steps: u64,
    pub preemptions: u64,
}

/// A submitted step and what the engine needs to take its results.
struct InFlight<P> {
    /// `(sequence, tokens fed)`.
    plan: Vec<(RequestId, usize)>,
    /// `(sequence, readback, first logit row, rows)`: one row per draft plus one.
    needs: Vec<(RequestId, Need, usize, usize)>,
    readback: Readback,
    /// When it was submitted, if nothing else was in flight then: its cost is measured.
    submitted_ms: Option<f64>,
    result: StepResult<P>,
}

/// A submitted step's result: still on the device, or read early ([`Engine::score`] must read
/// it before the model runs anything else).
enum StepResult<P> {
    Pending(P),
    Read(Picks),
}

/// The scheduler over one model on any backend. It owns the model, the bookkeeping of the
/// model's KV blocks (the pool and prefix cache) and, for draft-model speculation, the draft
/// model with its own pool. Each call is given the tokenizer.
pub struct Engine<M: ForwardModel> {
    model: M,
    pool: BlockPool,
    /// The model drafting for requests with `SpecMethod::Draft`.
    draft: Option<DraftModel<M>>,
    /// Grammar compiler over the tokenizer's vocabulary, built at the first constrained request.
    grammars: Option<Grammars>,
    next_id: RequestId,
    waiting: VecDeque<Sequence>,
    /// In admission order, oldest first.
    running: Vec<Sequence>,
    /// The step submitted and not yet taken.
    in_flight: Option<InFlight<M::Pending>>,
    /// Submit the next greedy decode step before reading the one in flight.
    pipelined: bool,
    /// Step costs by tokens fed, for the speculation rule.
    costs: StepCosts,
    /// Draft whatever the costs say (see [`Engine::set_draft_always`]).
    draft_always: bool,
    steps: u64,
    chained_steps: u64,
    preemptions: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

fn pool_for<M: ForwardModel>(model: &M) -> BlockPool {
    let l = model.limits();
    BlockPool::new(l.n_blocks as usize, l.block_size as usize)
}

impl<M: ForwardModel> Engine<M> {
    pub fn new(model: M) -> Self {
        let pool = pool_for(&model);
        let pipelined = model.overlaps_steps();
        Engine {
            model,
            pool,
            draft: None,
            grammars: None,
            next_id: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            in_flight: None,
            pipelined,
            costs: StepCosts::default(),
            draft_always: false,
            steps: 0,
            chained_steps: 0,
            preemptions: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
        }
    }

    /// Speculation drafts only where it pays by the step costs measured on this device (see
    /// `SpecState::worth`), the default; `always`: whenever the drafter has a proposal (tests
    /// of the speculation itself, comparisons).
    pub fn set_draft_always(&mut self, always: bool) {
        self.draft_always = always;
    }

    /// Pipelining: while every running sequence decodes greedily, the next step is submitted
    /// before the one in flight is read, its tokens chained from that step's picks on the
    /// device. On by default where the backend overlaps steps (a real GPU); off, every step is
    /// read before the next is submitted. The output is the same either way.
    pub fn set_pipelined(&mut self, on: bool) {
        self.pipelined = on;
    }

    pub fn pipelined(&self) -> bool {
        self.pipelined
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// The KV block pool (its stats; tests clear its prefix cache).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Forgets every cached prefix nobody uses (the next requests run cold).
    pub fn clear_prefix_cache(&mut self) {
        self.pool.clear_cache();
    }

    /// Sets the model that drafts for draft-model speculation; it must share the model's
    /// vocabulary (the same tokenizer). Only while no request runs.
    pub fn set_draft_model(&mut self, draft: M) -> Result<()> {
        let (want, got) = (self.model.config().vocab_size, draft.config().vocab_size);
        if want != got {
            return Err(Error::InvalidOption { option: "draft model", reason: format!("its vocabulary has {got} tokens but the model's has {want}; use a draft model with the same tokenizer") });
        }
        if !self.is_idle() {
            return Err(Error::InvalidOption { option: "draft model", reason: "requests are running; set the draft model before submitting".into() });
        }
        self.draft = Some(DraftModel { pool: pool_for(&draft), model: draft });
        Ok(())
    }

    /// The draft model's KV block pool, if there is a draft model.
    pub fn draft_pool(&self) -> Option<&BlockPool> {
        self.draft.as_ref().map(|d| &d.pool)
    }

    /// Queues a request; it joins the batch at a coming step. Options and prompt length are
    /// checked here.
    pub fn submit(&mut self, tokenizer: &Tokenizer, req: Request) -> Result<RequestId> {
        let limits = self.model.limits();
        let mut decoder = Decoder::new(tokenizer, &req.prompt, &req.opts, 0, limits.context as usize)?;
        if let Some(grammar) = &req.opts.grammar {
            if self.grammars.is_none() {
                self.grammars = Some(Grammars::new(tokenizer)?);
            }
            decoder.constrain(self.grammars.as_ref().expect("built above").compile(grammar)?);
        }
        let limits = self.model.limits();
        let draft_vocab = self.draft.as_ref().map(|d| d.model.config().vocab_size);
        let spec = req.opts.speculative.map(|s| SpecState::new(s, limits.max_draft, draft_vocab, &req.opts.sampling)).transpose()?;
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence::new(id, req.prompt, decoder, spec));
        Ok(id)
    }

    /// Stops a request now and frees its blocks; returns its `Done` event (finish reason
    /// `cancelled`), or None if no such request is queued or running.
    pub fn cancel(&mut self, tokenizer: &Tokenizer, id: RequestId) -> Option<Event> {
        let mut seq = if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i)?
        } else {
            let i = self.running.iter().position(|s| s.id == id)?;
            self.running.remove(i)
        };
        let _ = seq.decoder.finish_length(tokenizer);
        seq.decoder.out.finish_reason = FinishReason::Cancelled;
        let done = self.finish(seq);
        self.drop_stale_in_flight();
        Some(done)
    }

    /// Forgets the step in flight once none of its sequences runs (it is never read).
    fn drop_stale_in_flight(&mut self) {
        if self.in_flight.as_ref().is_some_and(|f| !f.plan.iter().any(|(id, _)| self.running.iter().any(|s| s.id == *id))) {
            self.in_flight = None;
        }
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Frees a finished sequence's blocks (its drafter's too) and returns its `Done` event.
    fn finish(&mut self, mut seq: Sequence) -> Event {
        seq.free(&mut self.pool);
        if let Some(spec) = &mut seq.spec {
            spec.release(self.draft.as_mut());
        }
        seq.done()
    }

    /// The block pool block by block: who holds each block, how full it is, whether the prefix
    /// cache has it.
    pub fn kv_map(&self) -> KvMap {
        let bs = self.pool.block_size();
        let mut blocks: Vec<KvBlockView> = (0..self.pool.stats().n_blocks as u32)
            .map(|b| KvBlockView { refs: self.pool.refs(b), cached: self.pool.is_cached(b), owners: Vec::new(), filled: if self.pool.is_cached(b) { bs } else { 0 } })
            .collect();
        for seq in &self.running {
            for (i, &b) in seq.blocks.iter().enumerate() {
                let v = &mut blocks[b as usize];
                if v.owners.is_empty() {
                    v.filled = v.filled.max(seq.computed.saturating_sub(i * bs).min(bs));
                }
                v.owners.push((seq.id, i * bs));
            }
        }
        KvMap { blocks, stats: self.stats() }
    }

    pub fn stats(&self) -> EngineStats {
        let limits = self.model.limits();
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv: self.pool.stats(),
            block_size: limits.block_size as usize,
            kv_bytes_per_token: limits.kv_bytes_per_token,
            prefix_hit_rate: self.cached_tokens as f64 / self.prompt_tokens.max(1) as f64,
            steps: self.steps,
            chained_steps: self.chained_steps,
            preemptions: self.preemptions,
        }
    }

    /// Runs steps until every request has finished, passing each event to `on_event`.
    pub async fn run(&mut self, tokenizer: &Tokenizer, mut on_event: impl FnMut(Event)) -> Result<()> {
        while !self.is_idle() {
            for e in self.step(tokenizer).await? {
                on_event(e);
            }
        }
        Ok(())
    }

    /// Moves waiting requests into the running set while the pool can hold their prompts. A
    /// request whose prompt starts with full blocks a running sequence is still prefilling
    /// waits for them (it then takes them from the prefix cache), as does the queue behind it.
    fn admit(&mut self) {
        while self.running.len() < self.model.limits().max_seqs as usize {
            let Some(seq) = self.waiting.front_mut() else { break };
            let bs = self.pool.block_size();
            let max_blocks = (seq.tokens.len() - 1) / bs;
            if self.running.iter().any(|r| r.computing_prefix_of(&seq.tokens, max_blocks, bs)) {
                break;
            }
            if !seq.admit(&mut self.pool) {
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
    fn preempt_one(&mut self, scheduled: &[RequestId]) -> bool {
        let Some(i) = self.running.iter().rposition(|s| !scheduled.contains(&s.id)) else { return false };
        let mut seq = self.running.remove(i);
        seq.free(&mut self.pool);
        seq.stats.preemptions += 1;
        self.preemptions += 1;
        self.waiting.push_front(seq);
        true
    }

    /// Chooses this step's work: decoding sequences first (one token each), then prompt
    /// chunks, within the token budget; gives each the blocks its tokens need.
    fn schedule(&mut self) -> Vec<(RequestId, usize)> {
        let mut budget = self.model.limits().max_batch_tokens as usize;
        let mut order: Vec<RequestId> = self.running.iter().filter(|s| s.is_decoding()).map(|s| s.id).collect();
        order.extend(self.running.iter().filter(|s| !s.is_decoding()).map(|s| s.id));
        let mut plan: Vec<(RequestId, usize)> = Vec::new();
        for id in order {
            if budget == 0 {
                break;
            }
            // Until the sequence is scheduled, preempted itself, or nothing is left to preempt.
            while let Some(seq) = self.running.iter_mut().find(|s| s.id == id) {
                let n = seq.pending().min(budget);
                seq.fit_drafts(n);
                if seq.reserve(&mut self.pool, n) {
                    plan.push((id, n));
                    budget -= n;
                    break;
                }
                let scheduled: Vec<RequestId> = plan.iter().map(|p| p.0).collect();
                if !self.preempt_one(&scheduled) {
                    break;
                }
            }
        }
        plan
    }

    /// One batched forward over every running sequence; returns what happened to each request.
    /// Pipelined, it returns the step submitted at the previous call and leaves the next in
    /// flight.
    pub async fn step(&mut self, tokenizer: &Tokenizer) -> Result<Vec<Event>> {
        let current = match self.in_flight.take() {
            Some(f) => f,
            None => match self.start_step(tokenizer).await? {
                Some(f) => f,
                None => return Ok(Vec::new()),
            },
        };
        // The next step goes in before this one is read (see `chain`).
        self.in_flight = if self.pipelined { self.chain(&current)? } else { None };
        let picks = match current.result {
            StepResult::Read(picks) => picks,
            StepResult::Pending(pending) => match pending.read().await {
                Ok(picks) => picks,
                Err(e) => {
                    self.in_flight = None;
                    return Err(e);
                }
            },
        };
        let step_ms = current.submitted_ms.map(|t0| now_ms() - t0);
        if let Some(ms) = step_ms {
            self.costs.record(current.plan.iter().map(|p| p.1).sum(), ms);
        }
        let events = self.take_results(tokenizer, &current.plan, &current.needs, picks, step_ms)?;
        self.drop_stale_in_flight();
        Ok(events)
    }

    /// Schedules and submits a step over the running sequences; None when nothing can run.
    async fn start_step(&mut self, tokenizer: &Tokenizer) -> Result<Option<InFlight<M::Pending>>> {
        self.admit();
        let context = self.model.limits().context as usize;
        let decoding = self.running.iter().filter(|s| s.is_decoding()).count();
        for seq in self.running.iter_mut().filter(|s| s.is_decoding() && !s.decoder.has_forced()) {
            if let Some(spec) = &mut seq.spec {
                // Drafts take positions tokens.len() .. inside the context, and d kept drafts
                // yield d + 1 tokens: no more than the request still wants.
                let wanted = seq.decoder.options().max_tokens.saturating_sub(seq.decoder.out.tokens.len() + 1);
                let room = context.saturating_sub(seq.tokens.len()).min(wanted);
                let costs = (!self.draft_always).then_some(&self.costs);
                seq.draft = spec.propose(self.draft.as_mut(), &seq.tokens, room, costs, decoding - 1).await?;
            }
        }
        let plan = self.schedule();
        if plan.is_empty() {
            if self.running.is_empty() && !self.waiting.is_empty() {
                // Nothing runs and the head request still does not fit: the pool holds one
                // full context, so only a request longer than the context can get here. It is
                // dropped with this error rather than retried forever.
                let seq = self.waiting.pop_front().expect("waiting is not empty");
                let pool = &self.pool;
                return Err(Error::KvCacheFull { needed: seq.blocks_needed(pool.block_size()), available: pool.available(), block_size: pool.block_size() });
            }
            return Ok(None);
        }
        self.steps += 1;

        // Constrained sequences the backend chooses for (greedy or sampled, with or without
        // logprobs) get their masks ahead: the backend applies them (the mask of step N + 1 depends on
        // token N, so it is computed here).
        let vocab = self.model.config().vocab_size;
        for &(id, n) in &plan {
            let seq = self.running.iter_mut().find(|s| s.id == id).expect("planned sequences run");
            if n == seq.pending() && seq.draft.tokens.is_empty() {
                seq.decoder.prepare_mask()?;
            }
        }

        // The batch: each planned sequence's next tokens, logits for those that finish their feed.
        let (mut tokens, mut positions, mut seq_ids, mut logit_rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // (sequence, readback, first logit row, rows): one row per draft plus one.
        let mut needs: Vec<(RequestId, Need, usize, usize)> = Vec::new();
        for (slot, &(id, n)) in plan.iter().enumerate() {
            let seq = self.running.iter().find(|s| s.id == id).expect("planned sequences run");
            tokens.extend(seq.feed(n));
            positions.extend((seq.computed..seq.computed + n).map(|p| p as u32));
            seq_ids.extend(std::iter::repeat_n(slot as u32, n));
            if n == seq.pending() {
                let rows = 1 + seq.draft.tokens.len();
                let need = if seq.draft.tokens.is_empty() { seq.decoder.need() } else { seq.decoder.need_speculative(!seq.draft.q.is_empty()) };
                needs.push((id, need, logit_rows.len(), rows));
                logit_rows.extend((tokens.len() - rows..tokens.len()).map(|r| r as u32));
            }
        }
        // One readback serves every row: the widest any sequence needs.
        let widest = needs.iter().fold(None, |acc: Option<Need>, n| Some(acc.map_or(n.1, |a| a.widest(n.1))));
        let readback = match widest {
            None => Readback::Nothing,
            Some(Need::Argmax | Need::MaskedArgmax) => Readback::Argmax,
            Some(Need::Sample | Need::MaskedSample) => Readback::Sample,
            Some(Need::SampleTop | Need::MaskedSampleTop) => Readback::SampleTop,
            Some(Need::Logits) => Readback::Logits,
        };
        // Masked argmax or sampling: each row's mask, all tokens allowed for unconstrained rows.
        let words = vocab.div_ceil(32);
        let mut masks = Vec::new();
        if widest.is_some_and(Need::is_masked) {
            for &(id, _, _, rows) in &needs {
                let seq = self.running.iter().find(|s| s.id == id).expect("planned sequences run");
                let start = masks.len();
                masks.resize(start + rows * words, u32::MAX);
                if let Some(m) = seq.decoder.prepared_mask() {
                    // Tokens past the tokenizer's vocabulary (padding rows) are never allowed.
                    let row = &mut masks[start..start + words];
                    row.fill(0);
                    let n = m.len().min(words);
                    row[..n].copy_from_slice(&m[..n]);
                    for t in tokenizer.vocab_size().min(vocab)..(words * 32).min(n * 32) {
                        row[t / 32] &= !(1 << (t % 32));
                    }
                }
            }
        }
        let masks = (!masks.is_empty()).then_some(&masks[..]);
        // Sampled rows: each sequence's filters and the uniform numbers its RNG draws for this
        // token (and each draft's position) now; greedy rows ride along at temperature 0.
        let mut sampling = Vec::new();
        let sampled = matches!(readback, Readback::Sample | Readback::SampleTop);
        if sampled {
            for &(id, _, _, _) in &needs {
                let seq = self.running.iter_mut().find(|s| s.id == id).expect("planned sequences run");
                sampling.extend(seq.decoder.rows(&seq.draft.tokens));
            }
        }
        let sampling = sampled.then_some(&sampling[..]);
        let tables: Vec<&[u32]> = plan.iter().map(|&(id, _)| &self.running.iter().find(|s| s.id == id).expect("planned sequences run").blocks[..]).collect();
        let batch = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &logit_rows, block_tables: &tables, masks, sampling };
        let submitted_ms = Some(now_ms());
        let pending = self.model.submit(&batch, readback)?;
        Ok(Some(InFlight { plan, needs, readback, submitted_ms, result: StepResult::Pending(pending) }))
    }

    /// Submits the step after `current` before `current` is read, when nothing that step could
    /// report changes what the next one runs: every running sequence decodes by the backend's
    /// argmax or sampling (no drafts, masks or logits), each is in `current` with its logit
    /// row, and none is waiting to join. Sampled rows take their next uniform number now, the
    /// one the synchronous step would take. The
    /// next step takes each sequence that still wants a token after the one `current` picks
    /// (max_tokens and the context are known ahead; EOS and stop strings are not: a sequence
    /// that ends at `current` wasted its row of the next step and gives its blocks back).
    /// Returns None where it does not apply.
    fn chain(&mut self, current: &InFlight<M::Pending>) -> Result<Option<InFlight<M::Pending>>> {
        if !matches!(current.result, StepResult::Pending(_)) || !matches!(current.readback, Readback::Argmax | Readback::Sample | Readback::SampleTop) || !self.waiting.is_empty() {
            return Ok(None);
        }
        if current.plan.len() != current.needs.len() || current.needs.len() != self.running.len() {
            return Ok(None);
        }
        let context = self.model.limits().context as usize;
        // (sequence, position of the token `current` picks, its row there).
        let mut next = Vec::with_capacity(current.needs.len());
        for (&(id, n), &(need_id, need, current_row, rows)) in current.plan.iter().zip(&current.needs) {
            let Some(seq) = self.running.iter().find(|s| s.id == id) else { return Ok(None) };
            if id != need_id || !matches!(need, Need::Argmax | Need::Sample | Need::SampleTop) || rows != 1 || seq.spec.is_some() {
                return Ok(None);
            }
            // A sequence whose token at `current` is its last (max_tokens, or the context is
            // full) ends when `current` is read: the next step leaves it out.
            let pos = seq.computed + n;
            if seq.decoder.out.tokens.len() + 2 <= seq.decoder.options().max_tokens && pos < context {
                next.push((id, pos, current_row, need));
            }
        }
        if next.is_empty() {
            return Ok(None);
        }
        for &(id, pos, _, _) in &next {
            let seq = self.running.iter_mut().find(|s| s.id == id).expect("checked above");
            if !seq.reserve(&mut self.pool, pos + 1 - seq.computed) {
                return Ok(None);
            }
        }
        let readback = match next.iter().fold(Need::Argmax, |a, n| a.widest(n.3)) {
            Need::SampleTop => Readback::SampleTop,
            Need::Sample => Readback::Sample,
            _ => Readback::Argmax,
        };
        let mut sampling = Vec::new();
        if readback != Readback::Argmax {
            for &(id, _, _, _) in &next {
                let seq = self.running.iter_mut().find(|s| s.id == id).expect("checked above");
                sampling.push(seq.decoder.row(true));
            }
        }
        let k = next.len() as u32;
        let tokens: Vec<u32> = next.iter().map(|&(_, _, row, _)| CHAINED | row as u32).collect();
        let positions: Vec<u32> = next.iter().map(|&(_, p, _, _)| p as u32).collect();
        let seq_ids: Vec<u32> = (0..k).collect();
        let tables: Vec<&[u32]> = next.iter().map(|&(id, _, _, _)| &self.running.iter().find(|s| s.id == id).expect("checked above").blocks[..]).collect();
        let sampling = (readback != Readback::Argmax).then_some(&sampling[..]);
        let batch = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &seq_ids, block_tables: &tables, masks: None, sampling };
        let pending = self.model.submit(&batch, readback)?;
        self.steps += 1;
        self.chained_steps += 1;
        let plan = next.iter().map(|&(id, _, _, _)| (id, 1)).collect();
        let needs = next.iter().enumerate().map(|(r, &(id, _, _, need))| (id, need, r, 1)).collect();
        Ok(Some(InFlight { plan, needs, readback, submitted_ms: None, result: StepResult::Pending(pending) }))
    }

    /// Takes a step's picks: accounts for the fed tokens, verifies drafts, emits tokens and
    /// finishes sequences. Sequences cancelled since the step was submitted are skipped.
    fn take_results(&mut self, tokenizer: &Tokenizer, plan: &[(RequestId, usize)], needs: &[(RequestId, Need, usize, usize)], picked: Picks, step_ms: Option<f64>) -> Result<Vec<Event>> {
        let context = self.model.limits().context as usize;
        let vocab = self.model.config().vocab_size;
        // Account for the fed tokens (drafts count once kept), then verify and take new tokens.
        let now = now_ms();
        let mut events = Vec::new();
        for &(id, n) in plan {
            let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else { continue };
            seq.computed += n - seq.draft.tokens.len();
            seq.register_full_blocks(&mut self.pool);
        }
        for &(id, _, first_row, rows) in needs {
            let Some(i) = self.running.iter().position(|s| s.id == id) else { continue };
            let seq = &mut self.running[i];
            seq.forwards += 1;
            let draft = std::mem::take(&mut seq.draft);
            let mut kept = 0;
            let mut done = false;
            for r in first_row..first_row + rows {
                let picked = match &picked {
                    Picks::Nothing => unreachable!("rows were asked for"),
                    Picks::Tokens(t) => Picked::Token(t[r]),
                    Picks::Top(_) => unreachable!("the engine asks for no top-k candidates"),
                    Picks::Sampled { tokens, logits, top } => Picked::Drawn { token: tokens[r], logit: logits[r], top: &top[r] },
                    Picks::Logits(l) => Picked::Logits(&l[r * vocab..(r + 1) * vocab]),
                };
                let j = r - first_row;
                let (next, is_draft) = seq.decoder.verify(picked, draft.tokens.get(j).map(|&d| (d, draft.q.get(j).map(|q| &q[..]))))?;
                seq.record_token_time(now);
                let rejected = if is_draft { 0 } else { draft.tokens.len().saturating_sub(j) };
                if seq.take(tokenizer, next, context, &mut events, (is_draft, rejected))? {
                    done = true;
                    break;
                }
                if !is_draft {
                    break;
                }
                // A kept draft: its K/V, written at this position, is now the sequence's own.
                seq.computed += 1;
                kept += 1;
            }
            seq.decoder.settle();
            if let Some(spec) = &mut seq.spec {
                spec.record(draft.tokens.len(), kept, step_ms);
                spec.rollback(seq.computed);
            }
            // Tokens the grammar forces are taken now and fed together in the next forward.
            if !done {
                for next in seq.decoder.forced() {
                    if seq.take(tokenizer, next, context, &mut events, (false, 0))? {
                        done = true;
                        break;
                    }
                }
            }
            if done {
                let seq = self.running.remove(i);
                events.push(self.finish(seq));
            } else {
                seq.register_full_blocks(&mut self.pool);
            }
        }
        Ok(events)
    }

    /// Generates for one request and returns its result; `on_text` receives each piece of
    /// text as it becomes final. Other requests already submitted run alongside.
    pub async fn generate(&mut self, tokenizer: &Tokenizer, req: Request, mut on_text: impl FnMut(&str)) -> Result<Generation> {
        let id = self.submit(tokenizer, req)?;
        let mut result = None;
        self.run(tokenizer, |e| match e {
            Event::Token { id: i, text, .. } if i == id && !text.is_empty() => on_text(&text),
            Event::Done { id: i, generation, .. } if i == id => result = Some(*generation),
            _ => {}
        })
        .await?;
        Ok(result.expect("the engine finishes every request it runs"))
    }

    /// Teacher-forced logits of every position of `tokens` as one fresh sequence, `[n][vocab]`.
    /// Its blocks come from the pool and go back after.
    pub async fn score(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.score_from(tokens, 0).await
    }

    /// As [`Engine::score`], reading back only the positions from `from` on (a long prompt's
    /// last positions without `n x vocab` logits): `[n - from][vocab]`.
    pub async fn score_from(&mut self, tokens: &[u32], from: usize) -> Result<Vec<f32>> {
        // The model's next step must follow the one in flight: read that one now.
        if let Some(f) = self.in_flight.take() {
            let result = match f.result {
                StepResult::Pending(pending) => StepResult::Read(pending.read().await?),
                read => read,
            };
            self.in_flight = Some(InFlight { submitted_ms: None, result, ..f });
        }
        let mut session = Session::default();
        let out = session.extend(&self.model, &mut self.pool, tokens, Readback::Logits, Some(from)).await;
        session.release(&mut self.pool);
        match out? {
            Picks::Logits(l) => Ok(l),
            Picks::Nothing if from >= tokens.len() => Ok(Vec::new()),
            _ => unreachable!("a logits run returns logits"),
        }
    }
}
