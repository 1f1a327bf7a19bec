//! One sequence on the GPU model, behind the backend-neutral [`Session`] trait. Prompts longer
//! than a step's token budget are prefilled in chunks; only the last chunk reads anything back.

use super::model::{Batch, GpuModel};
use crate::error::{Error, Result};
use crate::generate::Session;

pub struct GpuSession<'m> {
    model: &'m GpuModel,
    len: usize,
    /// Physical KV block of each logical block (one sequence owns the whole pool for now).
    table: Vec<u32>,
}

impl<'m> GpuSession<'m> {
    pub fn new(model: &'m GpuModel) -> Self {
        GpuSession { model, len: 0, table: (0..model.limits.n_blocks).collect() }
    }

    /// Runs `tokens` in chunks; the last chunk asks for the logits of its last token.
    async fn run(&mut self, tokens: &[u32], greedy: bool) -> Result<Vec<u8>> {
        if tokens.is_empty() {
            return Err(Error::InvalidOption { option: "tokens", reason: "nothing to run".into() });
        }
        if self.len + tokens.len() > self.capacity() {
            return Err(Error::PromptTooLong { tokens: self.len + tokens.len(), context: self.capacity() });
        }
        let step = self.model.limits.max_batch_tokens as usize;
        let n_chunks = tokens.len().div_ceil(step);
        let mut out = Vec::new();
        for (i, chunk) in tokens.chunks(step).enumerate() {
            let positions: Vec<u32> = (self.len..self.len + chunk.len()).map(|p| p as u32).collect();
            let last = [chunk.len() as u32 - 1];
            let rows: &[u32] = if i + 1 == n_chunks { &last } else { &[] };
            let seq_ids = vec![0u32; chunk.len()];
            let batch = Batch { tokens: chunk, positions: &positions, seq_ids: &seq_ids, logit_rows: rows, block_tables: &[&self.table] };
            if rows.is_empty() {
                self.model.submit(&batch)?;
            } else if greedy {
                out = bytemuck::cast_slice(&self.model.forward_argmax(&batch).await?).to_vec();
            } else {
                out = bytemuck::cast_slice(&self.model.forward_logits(&batch).await?).to_vec();
            }
            self.len += chunk.len();
        }
        Ok(out)
    }
}

impl Session for GpuSession<'_> {
    async fn extend_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        let bytes = self.run(tokens, true).await?;
        Ok(u32::from_le_bytes(bytes[..4].try_into().expect("one argmax id")))
    }

    async fn extend_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(bytemuck::cast_slice(&self.run(tokens, false).await?).to_vec())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.model.limits.context as usize
    }
}
