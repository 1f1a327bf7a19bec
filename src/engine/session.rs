//! One sequence run outside the scheduler: a draft model's drafts and teacher-forced scoring.
//! Its blocks come from the pool it is given as positions fill; `release` gives them back.

use super::backend::{Batch, ForwardModel, PendingStep, Picks, Readback};
use super::kv_cache::BlockPool;
use crate::error::{Error, Result};

#[derive(Default)]
pub(crate) struct Session {
    len: usize,
    /// Physical KV block of each logical block.
    table: Vec<u32>,
}

impl Session {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets every position from `len` on (their blocks stay with the session for reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Gives every block back to `pool`.
    pub fn release(&mut self, pool: &mut BlockPool) {
        pool.release_all(&self.table);
        self.table.clear();
        self.len = 0;
    }

    /// Appends `tokens` in chunks a step can take. With `rows_from: Some(p)`, returns `read`
    /// for every token at position `p` or later (the chunks that have such rows also fit the
    /// logit rows a step returns); with None, for the last token only.
    pub async fn extend<M: ForwardModel>(&mut self, model: &M, pool: &mut BlockPool, tokens: &[u32], read: Readback, rows_from: Option<usize>) -> Result<Picks> {
        let limits = model.limits();
        if tokens.is_empty() {
            return Err(Error::InvalidOption { option: "tokens", reason: "nothing to run; give at least one token".into() });
        }
        if self.len + tokens.len() > limits.context as usize {
            return Err(Error::PromptTooLong { tokens: self.len + tokens.len(), context: limits.context as usize });
        }
        let bs = limits.block_size as usize;
        let want = (self.len + tokens.len()).div_ceil(bs);
        if want > self.table.len() {
            let more = want - self.table.len();
            if pool.available() < more {
                return Err(Error::KvCacheFull { needed: more, available: pool.available(), block_size: bs });
            }
            self.table.extend((0..more).map(|_| pool.allocate().expect("counted as available")));
        }
        let (max_batch, max_rows) = (limits.max_batch_tokens as usize, limits.max_batch_tokens.min(limits.max_logit_rows) as usize);
        let end = self.len + tokens.len();
        let mut out = Picks::Nothing;
        let mut fed = 0;
        while fed < tokens.len() {
            let start = self.len;
            // Chunks before the first row to read take a whole step's tokens.
            let n = match rows_from {
                Some(from) if start + max_batch > from => max_rows,
                _ => max_batch,
            }
            .min(tokens.len() - fed);
            let chunk = &tokens[fed..fed + n];
            fed += n;
            let positions: Vec<u32> = (start..start + n).map(|p| p as u32).collect();
            let rows: Vec<u32> = match rows_from {
                Some(from) => (0..n as u32).filter(|&r| start + r as usize >= from).collect(),
                None if start + n == end => vec![n as u32 - 1],
                None => Vec::new(),
            };
            let seq_ids = vec![0u32; n];
            let batch = Batch { tokens: chunk, positions: &positions, seq_ids: &seq_ids, logit_rows: &rows, block_tables: &[&self.table], masks: None, sampling: None };
            let read = if rows.is_empty() { Readback::Nothing } else { read };
            let picks = model.submit(&batch, read)?.read().await?;
            self.len += chunk.len();
            out = match (out, picks) {
                (Picks::Logits(mut a), Picks::Logits(b)) => {
                    a.extend(b);
                    Picks::Logits(a)
                }
                (Picks::Tokens(mut a), Picks::Tokens(b)) => {
                    a.extend(b);
                    Picks::Tokens(a)
                }
                (Picks::Top(mut a), Picks::Top(b)) => {
                    a.extend(b);
                    Picks::Top(a)
                }
                (_, p) => p,
            };
        }
        Ok(out)
    }
}
