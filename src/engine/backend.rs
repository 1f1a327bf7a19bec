//! The one interface between the engine and a compute backend. The engine decides what runs
//! (which tokens of which sequences, at which positions, in which KV blocks, and what to read
//! back); a backend runs it. Submitting and reading back are separate calls, so a backend can
//! keep a step in flight while the engine prepares the next one.

use crate::error::{Error, Result};
use crate::model::Config;
use crate::sample::{RowSampling, TopLogits, NO_LOGIT, NO_TOKEN};

/// A token the step submitted just before chose: `CHAINED | r` stands for the argmax of that
/// step's logit row `r`, read where that step left it. The engine submits the next decode step
/// before reading this one's result; a GPU then never sends the token to the host and back.
pub const CHAINED: u32 = 1 << 31;

/// One step's work: tokens of one or more sequences, and which of them need logits.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Token ids, or [`CHAINED`] picks of the previous step.
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// Index into `block_tables` of each token's sequence.
    pub seq_ids: &'a [u32],
    /// Indices into `tokens` whose logits (or argmax, or top-k) the step returns.
    pub logit_rows: &'a [u32],
    /// Physical KV block of each logical block, per sequence id.
    pub block_tables: &'a [&'a [u32]],
    /// With [`Readback::Argmax`], [`Readback::Sample`] or [`Readback::SampleTop`] (whose
    /// candidates and log-sum-exp stay those of the unmasked row): the tokens each logit row may choose
    /// (structured output), `[logit rows][vocab.div_ceil(32)]` u32 words, bit `t % 32` of word
    /// `t / 32` set when token `t` is allowed.
    pub masks: Option<&'a [u32]>,
    /// With [`Readback::Sample`]: each logit row's sampling (filters and uniform number).
    pub sampling: Option<&'a [RowSampling]>,
}

impl Batch<'_> {
    /// Refuses what `read` cannot honour: masks beside a readback that does not choose the
    /// token (argmax or sampled), a sampled readback without each row's sampling.
    pub fn check_readback(&self, read: Readback) -> Result<()> {
        if self.masks.is_some() && !matches!(read, Readback::Argmax | Readback::Sample | Readback::SampleTop) {
            return Err(Error::InvalidOption { option: "batch", reason: format!("masks go with an argmax or sampled readback, not {read:?}") });
        }
        if matches!(read, Readback::Sample | Readback::SampleTop) && self.sampling.is_none() {
            return Err(Error::InvalidOption { option: "batch", reason: "a sampled readback needs each logit row's sampling".into() });
        }
        Ok(())
    }

    /// KV positions the step's attention reads: its largest position + 1.
    pub fn span(&self) -> u32 {
        self.positions.iter().max().map_or(0, |p| p + 1)
    }

    /// Checks the batch against a model's limits and vocabulary: every backend refuses the same
    /// malformed batches with the same errors.
    pub fn validate(&self, limits: &Limits, vocab: usize) -> Result<()> {
        let n = self.tokens.len();
        let bad = |reason: String| Err(Error::InvalidOption { option: "batch", reason });
        if n == 0 || n > limits.max_batch_tokens as usize {
            return bad(format!("{n} tokens; a step takes 1 to {}", limits.max_batch_tokens));
        }
        if self.positions.len() != n || self.seq_ids.len() != n {
            return bad("positions and sequence ids must match the tokens".into());
        }
        if self.logit_rows.len() > limits.max_logit_rows as usize || self.logit_rows.iter().any(|&r| r as usize >= n) {
            return bad(format!("logit rows must be token indices, at most {}", limits.max_logit_rows));
        }
        if self.masks.is_some_and(|m| m.len() != self.logit_rows.len() * vocab.div_ceil(32)) {
            return bad("the masks must hold one row of vocab / 32 words per logit row".into());
        }
        if self.sampling.is_some_and(|s| s.len() != self.logit_rows.len()) {
            return bad("the sampling must hold one entry per logit row".into());
        }
        if self.block_tables.len() > limits.max_seqs as usize {
            return bad(format!("{} sequences; at most {}", self.block_tables.len(), limits.max_seqs));
        }
        let max_blocks = limits.context.div_ceil(limits.block_size) as usize;
        for (s, table) in self.block_tables.iter().enumerate() {
            if table.len() > max_blocks || table.iter().any(|&b| b >= limits.n_blocks) {
                return bad(format!("sequence {s}'s block table names blocks outside the pool or more blocks than a context holds"));
            }
        }
        for (i, (&tok, (&pos, &seq))) in self.tokens.iter().zip(self.positions.iter().zip(self.seq_ids)).enumerate() {
            if tok & CHAINED != 0 {
                if tok & !CHAINED >= limits.max_logit_rows {
                    return bad(format!("token {i} chains logit row {} of the previous step, which has at most {}", tok & !CHAINED, limits.max_logit_rows));
                }
            } else if tok as usize >= vocab {
                return Err(Error::TokenOutOfRange { id: tok, vocab });
            }
            let table = self.block_tables.get(seq as usize).ok_or_else(|| Error::InvalidOption { option: "batch", reason: format!("token {i} names sequence {seq} which has no block table") })?;
            if pos >= limits.context || (pos / limits.block_size) as usize >= table.len() {
                return Err(Error::PromptTooLong { tokens: pos as usize + 1, context: limits.context as usize });
            }
        }
        Ok(())
    }
}

/// What a step reads back for its logit rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readback {
    /// Nothing (prefill chunks before the last).
    Nothing,
    /// The index of each row's largest logit: 4 bytes a row.
    Argmax,
    /// The token each row draws with its [`Batch::sampling`] entry (greedy rows: temperature
    /// 0): 4 bytes a row, and the token can chain like an argmax.
    Sample,
    /// [`Readback::Sample`] plus each row's [`crate::sample::MAX_TOP`] largest logits and
    /// log-sum-exp (before the row's edits) and the drawn token's logit (logprobs; rows that
    /// sample on the host from candidates).
    SampleTop,
    /// Each row's `k` (at most [`crate::sample::MAX_TOP`]) largest logits and log-sum-exp.
    Top(usize),
    /// Each row's whole logits.
    Logits,
}

/// What a step read back, one entry per logit row.
#[derive(Clone, Debug)]
pub enum Picks {
    Nothing,
    Tokens(Vec<u32>),
    Top(Vec<TopLogits>),
    /// [`Readback::SampleTop`]'s: each row's token, its logit and the row's candidates.
    Sampled {
        tokens: Vec<u32>,
        logits: Vec<f32>,
        top: Vec<TopLogits>,
    },
    /// `[rows][vocab]`.
    Logits(Vec<f32>),
}

/// What the engine asks a backend to size when it loads a model.
#[derive(Clone, Copy, Debug)]
pub struct ModelOptions {
    /// Positions per sequence (capped at the model's trained context).
    pub context: u32,
    /// Tokens one forward can take.
    pub max_batch_tokens: u32,
    /// Sequences one forward can serve.
    pub max_seqs: u32,
    /// Bytes for the KV pool; None: [`DEFAULT_KV_BUDGET`]. The pool always holds at least one
    /// full-context sequence.
    pub kv_budget_bytes: Option<u64>,
}

/// The KV pool's default size.
pub const DEFAULT_KV_BUDGET: u64 = 256 << 20;

/// Tokens per KV block.
pub const BLOCK_SIZE: u32 = 16;

impl ModelOptions {
    pub fn new(context: u32, max_batch_tokens: u32) -> Self {
        ModelOptions { context, max_batch_tokens, max_seqs: 16, kv_budget_bytes: None }
    }

    /// KV blocks for a pool of `bytes_per_token` per position: the budget, but at least one
    /// full context and at most `cap` (what the backend can address).
    pub fn kv_blocks(&self, context: u32, bytes_per_token: u64, cap: u64) -> u32 {
        let budget = self.kv_budget_bytes.unwrap_or(DEFAULT_KV_BUDGET) / (bytes_per_token * BLOCK_SIZE as u64);
        budget.min(cap).max(context.div_ceil(BLOCK_SIZE) as u64) as u32
    }
}

/// Sizes a backend fixed when it loaded the model; the engine schedules within them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tokens one forward can take (longer prompts are prefilled in chunks).
    pub max_batch_tokens: u32,
    /// Positions per sequence.
    pub context: u32,
    /// Sequences one forward can serve.
    pub max_seqs: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks in the pool.
    pub n_blocks: u32,
    /// KV bytes one token takes over all layers.
    pub kv_bytes_per_token: u64,
    /// Logit rows one step can return.
    pub max_logit_rows: u32,
    /// The longest draft worth verifying on this device: an extra row costs ~40% of a step on
    /// CPU-emulated adapters (measured on lavapipe), little on a GPU.
    pub max_draft: usize,
}

impl Limits {
    /// The limits of a CPU backend with a KV pool grown as blocks are used (keys in 8-bit
    /// blocks of 32 with an f16 scale, values f32): no device limit, so the options decide.
    pub fn for_cpu(c: &Config, opts: &ModelOptions, max_draft: usize) -> Limits {
        let context = opts.context.clamp(1, c.context_len as u32);
        let max_batch_tokens = opts.max_batch_tokens.max(1);
        let key_bytes = c.n_kv_heads as u64 * c.head_dim.div_ceil(32) as u64 * 34;
        let kv_bytes_per_token = c.n_layers as u64 * (key_bytes + c.kv_dim() as u64 * 4);
        Limits {
            max_batch_tokens,
            context,
            max_seqs: opts.max_seqs.clamp(1, max_batch_tokens),
            block_size: BLOCK_SIZE,
            n_blocks: opts.kv_blocks(context, kv_bytes_per_token, u32::MAX as u64 / BLOCK_SIZE as u64),
            kv_bytes_per_token,
            max_logit_rows: max_batch_tokens,
            max_draft,
        }
    }
}

/// A loaded model the engine can run steps on. Each backend implements it and knows nothing of
/// the others; the engine knows nothing of any backend's types.
pub trait ForwardModel {
    /// A submitted step whose results are not read yet.
    type Pending: PendingStep;

    fn config(&self) -> &Config;
    fn limits(&self) -> &Limits;
    /// One line naming the backend and device.
    fn describe(&self) -> String;
    /// Starts a step: writes the tokens' K/V into their blocks and computes what `read` asks
    /// for at the batch's logit rows. Does not wait for the device.
    fn submit(&self, batch: &Batch, read: Readback) -> Result<Self::Pending>;
    /// Whether submitting a step before reading the one in flight overlaps work (a GPU runs one
    /// step while the host reads, detokenizes and streams the one before). Backends that
    /// compute at submission gain nothing; they still take [`CHAINED`] tokens.
    fn overlaps_steps(&self) -> bool {
        false
    }
}

/// The argmax picks of the last step, for backends that compute at submission and resolve
/// [`CHAINED`] tokens themselves.
#[derive(Default)]
pub struct LastPicks(std::cell::RefCell<Vec<u32>>);

impl LastPicks {
    /// `tokens` with every chained pick replaced by the token it stands for (borrowed when
    /// there is none).
    pub fn resolve<'a>(&self, tokens: &'a [u32]) -> Result<std::borrow::Cow<'a, [u32]>> {
        if tokens.iter().all(|&t| t & CHAINED == 0) {
            return Ok(tokens.into());
        }
        let last = self.0.borrow();
        tokens
            .iter()
            .map(|&t| match t & CHAINED {
                0 => Ok(t),
                _ => last.get((t & !CHAINED) as usize).copied().ok_or_else(|| Error::InvalidOption {
                    option: "batch",
                    reason: format!("a token chains row {} of the previous step, which chose {} tokens by argmax or sampling", t & !CHAINED, last.len()),
                }),
            })
            .collect::<Result<Vec<u32>>>()
            .map(Into::into)
    }

    /// Keeps what a step chose by argmax or sampling (anything else leaves nothing to chain).
    pub fn remember(&self, picks: &Picks) {
        let mut last = self.0.borrow_mut();
        last.clear();
        if let Picks::Tokens(t) | Picks::Sampled { tokens: t, .. } = picks {
            last.extend(t);
        }
    }
}

/// A step in flight.
#[allow(async_fn_in_trait)] // Futures stay on one thread: wasm has one, natively we block on them.
pub trait PendingStep {
    /// Waits for the step and returns what it was asked to read back.
    async fn read(self) -> Result<Picks>;
}

/// A step computed at submission (CPU backends).
pub struct Ready(pub Picks);

impl PendingStep for Ready {
    async fn read(self) -> Result<Picks> {
        Ok(self.0)
    }
}

/// The picks of `logits: [rows][vocab]` that `read` asks for, argmax or sampled within the
/// batch's masks when given, sampled with its sampling rows (CPU backends).
pub fn picks_from_logits(logits: &mut [f32], vocab: usize, read: Readback, b: &Batch) -> Result<Picks> {
    b.check_readback(read)?;
    let masks = b.masks;
    Ok(match read {
        Readback::Nothing => Picks::Nothing,
        Readback::Argmax => Picks::Tokens(match masks {
            None => logits.chunks_exact(vocab).map(crate::sample::argmax).collect(),
            Some(m) => logits.chunks_exact(vocab).zip(m.chunks_exact(vocab.div_ceil(32))).map(|(row, words)| masked_argmax(row, words)).collect(),
        }),
        Readback::Sample | Readback::SampleTop => {
            let rows = b.sampling.expect("checked: sampled readbacks carry sampling");
            // Candidates of the row as the model scored it, before any mask.
            let top = (read == Readback::SampleTop).then(|| logits.chunks_exact(vocab).map(|row| TopLogits::from_logits(row, crate::sample::MAX_TOP)).collect());
            // Forbidden tokens at -inf, as the sampler's own constrained choice sets them.
            for (row, words) in logits.chunks_exact_mut(vocab).zip(masks.into_iter().flat_map(|m| m.chunks_exact(vocab.div_ceil(32)))) {
                row.iter_mut().enumerate().filter(|&(i, _)| !allowed(words, i)).for_each(|(_, l)| *l = f32::NEG_INFINITY);
            }
            // Each row's input token counts in its penalty window.
            let inputs = b.logit_rows.iter().map(|&r| b.tokens[r as usize]);
            let tokens: Vec<u32> = logits.chunks_exact(vocab).zip(rows).zip(inputs).map(|((row, s), input)| s.choose(row, input)).collect();
            match top {
                None => Picks::Tokens(tokens),
                // An allowed token's logit is the model's own (`choose` edits a copy).
                Some(top) => Picks::Sampled { logits: logits.chunks_exact(vocab).zip(&tokens).map(|(row, &t)| row[t as usize]).collect(), top, tokens },
            }
        }
        Readback::Top(k) => Picks::Top(logits.chunks_exact(vocab).map(|row| TopLogits::from_logits(row, k)).collect()),
        Readback::Logits => Picks::Logits(logits.to_vec()),
    })
}

/// Whether token `i`'s bit is set in a row's mask words.
fn allowed(words: &[u32], i: usize) -> bool {
    words[i / 32] >> (i % 32) & 1 == 1
}

/// The first largest logit among the allowed tokens, as [`crate::sample::argmax`] counts them
/// ([`NO_TOKEN`] where none counts).
fn masked_argmax(row: &[f32], words: &[u32]) -> u32 {
    let mut best = (NO_LOGIT, NO_TOKEN);
    for (i, &v) in row.iter().enumerate() {
        if v > best.0 && allowed(words, i) {
            best = (v, i as u32);
        }
    }
    best.1
}
