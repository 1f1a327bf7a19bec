//! One request's sequence inside the engine: its tokens, how many are in the KV cache, its
//! block table, and its output side (the [`Decoder`]).

use super::kv_cache::BlockPool;
use super::speculative::{Proposal, SpecState};
use super::{Event, RequestId, RequestStats};
use crate::clock::now_ms;
use crate::error::Result;
use crate::sample::Decoder;
use crate::tokenizer::Tokenizer;

pub(super) struct Sequence {
    pub id: RequestId,
    /// Prompt plus the generated tokens chosen so far (the last may not be fed yet).
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V is in the cache.
    pub computed: usize,
    /// Physical KV block of each logical block (each retained once by this sequence).
    pub blocks: Vec<u32>,
    /// Leading full blocks entered in (or taken from) the prefix cache, and the last one's key.
    registered: usize,
    last_key: u64,
    pub decoder: Decoder,
    /// Speculation, when the request asked for it, and this step's drafts.
    pub spec: Option<SpecState>,
    pub draft: Proposal,
    /// Steps that returned logits for this sequence.
    pub forwards: usize,
    pub stats: RequestStats,
    submitted: f64,
    first_token: Option<f64>,
    last_token: f64,
}

impl Sequence {
    pub fn new(id: RequestId, prompt: Vec<u32>, decoder: Decoder, spec: Option<SpecState>) -> Self {
        let prompt_len = prompt.len();
        Sequence {
            id,
            tokens: prompt,
            prompt_len,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            last_key: 0,
            decoder,
            spec,
            draft: Proposal::default(),
            forwards: 0,
            stats: RequestStats { prompt_tokens: prompt_len, ..Default::default() },
            submitted: now_ms(),
            first_token: None,
            last_token: 0.0,
        }
    }

    /// Tokens still to feed before the next token can be chosen (drafts included).
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed + self.draft.tokens.len()
    }

    pub fn is_decoding(&self) -> bool {
        self.tokens.len() - self.computed == 1 && self.computed > 0
    }

    /// The next `n` tokens to feed: the uncomputed ones, then the drafts.
    pub fn feed(&self, n: usize) -> Vec<u32> {
        self.tokens[self.computed..].iter().chain(&self.draft.tokens).take(n).copied().collect()
    }

    /// Keeps only the drafts that fit in a feed of `n` tokens.
    pub fn fit_drafts(&mut self, n: usize) {
        let keep = n.saturating_sub(self.tokens.len() - self.computed);
        self.draft.tokens.truncate(keep);
        self.draft.q.truncate(keep);
    }

    pub fn blocks_needed(&self, block_size: usize) -> usize {
        self.tokens.len().div_ceil(block_size)
    }

    /// Takes the cached prefix and checks that the pool can hold the rest of the tokens; on
    /// failure nothing is held. The last token is always recomputed: its logits are needed.
    pub fn admit(&mut self, pool: &mut BlockPool) -> bool {
        let bs = pool.block_size();
        let hit = pool.lookup(&self.tokens, (self.tokens.len() - 1) / bs);
        if pool.available() < self.blocks_needed(bs) - hit.blocks.len() {
            pool.release_all(&hit.blocks);
            return false;
        }
        self.computed = hit.blocks.len() * bs;
        self.registered = hit.blocks.len();
        self.last_key = hit.last_key;
        self.blocks = hit.blocks;
        if self.stats.preemptions == 0 {
            self.stats.cached_tokens = self.computed;
        }
        true
    }

    /// Whether this sequence is computing leading full blocks of `tokens` (at most `max_blocks`)
    /// that it has not yet entered into the prefix cache: a request with that prefix gets them
    /// as cache hits if it waits for them instead of computing them a second time.
    pub fn computing_prefix_of(&self, tokens: &[u32], max_blocks: usize, block_size: usize) -> bool {
        let common = self.tokens.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        (common / block_size).min(max_blocks) > self.registered
    }

    /// Makes sure the blocks for the next `n` tokens exist; false if the pool is out of blocks
    /// (those already taken stay with the sequence).
    pub fn reserve(&mut self, pool: &mut BlockPool, n: usize) -> bool {
        let want = (self.computed + n).div_ceil(pool.block_size());
        while self.blocks.len() < want {
            match pool.allocate() {
                Some(b) => self.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Enters every newly completed block into the prefix cache.
    pub fn register_full_blocks(&mut self, pool: &mut BlockPool) {
        let bs = pool.block_size();
        while (self.registered + 1) * bs <= self.computed {
            let i = self.registered;
            let parent = i.checked_sub(1).map(|p| self.blocks[p]);
            self.last_key = pool.register(self.blocks[i], parent, self.last_key, &self.tokens[i * bs..(i + 1) * bs]);
            self.registered += 1;
        }
    }

    /// Gives every block back (cached ones stay findable) and forgets what was computed.
    pub fn free(&mut self, pool: &mut BlockPool) {
        self.draft = Proposal::default();
        if let Some(spec) = &mut self.spec {
            spec.rollback(0);
        }
        pool.release_all(&self.blocks);
        self.blocks.clear();
        self.computed = 0;
        self.registered = 0;
        self.last_key = 0;
    }

    /// Takes a chosen token: reports its text and, unless generation is over (true), appends
    /// it to be fed back. `(drafted, rejected)`: how speculation produced it (see `Event`).
    pub fn take(&mut self, tokenizer: &Tokenizer, next: u32, context: usize, events: &mut Vec<Event>, (drafted, rejected): (bool, usize)) -> Result<bool> {
        let before = self.decoder.out.tokens.len();
        let (text, finished) = self.decoder.accept(tokenizer, next, self.tokens.len() < context)?;
        if self.decoder.out.tokens.len() > before {
            events.push(Event::Token { id: self.id, token: next, text, drafted, rejected });
        }
        if !finished {
            self.tokens.push(next);
        }
        Ok(finished)
    }

    pub fn record_token_time(&mut self, now: f64) {
        self.first_token.get_or_insert(now);
        self.last_token = now;
    }

    /// The `Done` event of a finished (or cancelled) sequence whose blocks are freed.
    pub fn done(self) -> Event {
        let mut stats = self.stats;
        let constraint_ms = self.decoder.constraint_ms();
        let mut gen = self.decoder.out;
        let n = gen.tokens.len();
        stats.generated_tokens = n;
        stats.forwards = self.forwards;
        if let Some(spec) = &self.spec {
            stats.drafted = spec.drafted;
            stats.accepted = spec.accepted;
        }
        if let Some(first) = self.first_token {
            stats.ttft_ms = first - self.submitted;
            if n > 1 {
                stats.tpot_ms = (self.last_token - first) / (n - 1) as f64;
            }
        }
        let g = &mut gen.stats;
        g.generated_tokens = n;
        g.forwards = stats.forwards;
        g.drafted = stats.drafted;
        g.accepted = stats.accepted;
        g.constraint_ms = constraint_ms;
        g.ttft_ms = stats.ttft_ms;
        g.prefill_tok_s = self.prompt_len as f64 / (stats.ttft_ms.max(1e-3) / 1e3);
        // Tokens a grammar forces arrive together: no time between them, no rate.
        g.decode_tok_s = if stats.tpot_ms > 0.0 { 1e3 / stats.tpot_ms } else { 0.0 };
        Event::Done { id: self.id, generation: Box::new(gen), stats }
    }
}
