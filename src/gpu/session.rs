//! One sequence on the GPU model, behind the backend-neutral [`Session`] trait. Prompts longer
//! than a step's token budget are prefilled in chunks; only the last chunk reads anything back.
//! Its KV blocks come from the model's pool as positions fill and go back when it is dropped.

use std::ops::Deref;

use super::model::{Batch, GpuModel, Readback};
use crate::error::{Error, Result};
use crate::generate::Session;
use crate::sampler::TopLogits;

/// `M` is how the session holds its model: `&GpuModel`, or `Rc<GpuModel>` where the session
/// must own its model (a speculative drafter inside the engine).
pub struct GpuSession<M: Deref<Target = GpuModel>> {
    model: M,
    len: usize,
    /// Physical KV block of each logical block.
    table: Vec<u32>,
}

impl<M: Deref<Target = GpuModel>> GpuSession<M> {
    pub fn new(model: M) -> Self {
        GpuSession { model, len: 0, table: Vec::new() }
    }

    /// Forgets every position from `len` on (their blocks stay with the session for reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Runs `tokens` in chunks; the last chunk reads back `readback` for its last token.
    async fn run(&mut self, tokens: &[u32], readback: Readback, k: usize) -> Result<Step> {
        if tokens.is_empty() {
            return Err(Error::InvalidOption { option: "tokens", reason: "nothing to run".into() });
        }
        if self.len + tokens.len() > self.capacity() {
            return Err(Error::PromptTooLong { tokens: self.len + tokens.len(), context: self.capacity() });
        }
        let want = (self.len + tokens.len()).div_ceil(self.model.limits.block_size as usize);
        if want > self.table.len() {
            let more = self.model.allocate_blocks((want - self.table.len()) * self.model.limits.block_size as usize)?;
            self.table.extend(more);
        }
        let step = self.model.limits.max_batch_tokens as usize;
        let n_chunks = tokens.len().div_ceil(step);
        let mut out = Step::Nothing;
        for (i, chunk) in tokens.chunks(step).enumerate() {
            let positions: Vec<u32> = (self.len..self.len + chunk.len()).map(|p| p as u32).collect();
            let last = [chunk.len() as u32 - 1];
            let rows: &[u32] = if i + 1 == n_chunks { &last } else { &[] };
            let seq_ids = vec![0u32; chunk.len()];
            let batch = Batch { tokens: chunk, positions: &positions, seq_ids: &seq_ids, logit_rows: rows, block_tables: &[&self.table] };
            out = match (rows.is_empty(), readback) {
                (true, _) | (_, Readback::Nothing) => {
                    self.model.submit(&batch)?;
                    Step::Nothing
                }
                (false, Readback::Argmax) => Step::Token(self.model.forward_argmax(&batch).await?[0]),
                (false, Readback::Top) => Step::Top(self.model.forward_top(&batch, k).await?.remove(0)),
                (false, Readback::Logits) => Step::Logits(self.model.forward_logits(&batch).await?),
            };
            self.len += chunk.len();
        }
        Ok(out)
    }
}

impl<M: Deref<Target = GpuModel>> Drop for GpuSession<M> {
    fn drop(&mut self) {
        self.model.pool.borrow_mut().release_all(&self.table);
    }
}

/// What the last chunk of a run read back.
enum Step {
    Nothing,
    Token(u32),
    Top(TopLogits),
    Logits(Vec<f32>),
}

impl<M: Deref<Target = GpuModel>> Session for GpuSession<M> {
    async fn extend_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        match self.run(tokens, Readback::Argmax, 1).await? {
            Step::Token(t) => Ok(t),
            _ => unreachable!("an argmax run returns a token"),
        }
    }

    async fn extend_top(&mut self, tokens: &[u32], k: usize) -> Result<TopLogits> {
        match self.run(tokens, Readback::Top, k).await? {
            Step::Top(t) => Ok(t),
            _ => unreachable!("a top-k run returns candidates"),
        }
    }

    async fn extend_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self.run(tokens, Readback::Logits, 0).await? {
            Step::Logits(l) => Ok(l),
            _ => unreachable!("a logits run returns logits"),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.model.limits.context as usize
    }
}
