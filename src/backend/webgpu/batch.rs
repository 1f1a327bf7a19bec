//! The step's batch description as `shaders/batch.wgsl` reads it, written before each forward.

use crate::engine::{Batch, Limits, Readback};
use crate::sample::RowSampling;

/// Header words: [n_tokens, n_logit_rows, max_tokens, max_blocks_per_seq, block_size, 0, 0, 0].
pub(super) const HEADER: usize = 8;

/// The batch description as `shaders/batch.wgsl` reads it: a header, then tokens, positions,
/// sequence ids, logit rows and the rows' sums temperatures in slots of `max_batch_tokens`, then
/// the block tables. `read`: what the step reads back (a sampled row's partial sums may be taken
/// at its temperature).
pub fn batch_to_words(b: &Batch, limits: &Limits, read: Readback) -> Vec<u32> {
    let t = limits.max_batch_tokens as usize;
    let max_blocks = limits.context.div_ceil(limits.block_size) as usize;
    let mut words = vec![0u32; batch_words(limits)];
    words[..5].copy_from_slice(&[b.tokens.len() as u32, b.logit_rows.len() as u32, t as u32, max_blocks as u32, limits.block_size]);
    for (i, part) in [b.tokens, b.positions, b.seq_ids, b.logit_rows].iter().enumerate() {
        words[HEADER + i * t..][..part.len()].copy_from_slice(part);
    }
    let sampling = b.sampling.filter(|_| read == Readback::Sample).unwrap_or(&[]);
    for (i, w) in words[HEADER + 4 * t..][..b.logit_rows.len()].iter_mut().enumerate() {
        *w = sampling.get(i).map_or(1.0, sums_temperature).to_bits();
    }
    for (s, table) in b.block_tables.iter().enumerate() {
        let n = table.len().min(max_blocks);
        words[HEADER + 5 * t + s * max_blocks..][..n].copy_from_slice(&table[..n]);
    }
    words
}

/// The temperature the LM head takes a sampled row's partial sums at: its own where the draw is
/// at a temperature alone (sample.wgsl's `from_partial_mass` then draws against them), else 1
/// (top-p cuts by the mass at temperature 1; log-sum-exps are at 1).
pub fn sums_temperature(r: &RowSampling) -> f32 {
    let alone = r.temperature > 0.0 && r.top_k == 0 && r.top_p >= 1.0 && r.min_p <= 0.0 && r.typical_p >= 1.0;
    if alone {
        r.temperature
    } else {
        1.0
    }
}

/// Words in the batch description buffer.
pub fn batch_words(limits: &Limits) -> usize {
    HEADER + 5 * limits.max_batch_tokens as usize + (limits.max_seqs * limits.context.div_ceil(limits.block_size)) as usize
}
