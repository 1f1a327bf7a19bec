//! The CPU backend's K/V pages and attention over them. A token's span of positions is cut into
//! chunks of [`CHUNK`] positions fixed by absolute position; each chunk keeps its softmax
//! unnormalized (its max, its sum, its weighted values) and a token's chunks merge in order.
//! A decode step's few KV heads are shared out chunk by chunk, so that every thread works to
//! the end and each reads part of each span (whole heads left one of two threads idle while
//! the other did a fifth of the work more, and split one KV head's span between both); a
//! longer step's tokens go whole to a thread. The chunks are the same either way, and so are
//! the bits, whatever the step's tokens or threads.

use std::ops::Range;

use super::kernels::{ActBlock, Q8x4, Target, QK, ROWS};
use super::math::{attend_chunk, key_scores, merge_chunks};
use super::threads::{Counter, Shared, Worker};

/// One layer's keys and values by KV slot, grown as slots are used, in pages of [`PAGE`] slots
/// with each KV head's rows of a page together. Keys in 8-bit blocks, four slots a group (a
/// [`Q8x4`] per 32 values of a head, `[page][kv head][group of the page][block]`), so that
/// scores are the matrix kernels' integer dot products against the query heads
/// ([`super::math::quantize_fine`]'s two 8-bit halves): a quarter of the bytes f32 keys took.
/// Values stay f32 (`[page][kv head][slot of the page][head_dim]`): they are weighted by
/// probabilities, not dotted with 8-bit blocks.
#[derive(Clone, Default)]
pub struct LayerKv {
    pub k: Vec<Q8x4>,
    pub v: Vec<f32>,
}

/// Slots a page of [`LayerKv`]: a head's pass over a span then reads runs of whole pages, which
/// the hardware prefetchers follow (wasm has no prefetch instruction), instead of a head's
/// slice of every slot's row. The engine's KV blocks are whole pages (checked below), so a
/// page holds one sequence's consecutive positions.
pub const PAGE: usize = 16;
const _: () = assert!((crate::engine::BLOCK_SIZE as usize).is_multiple_of(PAGE) && PAGE.is_multiple_of(ROWS), "a KV block is whole pages, a page whole key groups");

/// Positions a chunk of a span: whole key groups, and few enough that a KV head's values of a
/// chunk (16 KB at head_dim 64) stay in the first-level cache while its query heads read them.
pub const CHUNK: usize = 64;
const _: () = assert!(CHUNK.is_multiple_of(ROWS));

impl LayerKv {
    /// Where slot `slot`'s values of KV head 0 start; head `h`'s are [`LayerKv::v_head`]`(h)` after.
    pub fn v_row(slot: usize, kv_dim: usize, head_dim: usize) -> usize {
        slot / PAGE * PAGE * kv_dim + slot % PAGE * head_dim
    }

    pub fn v_head(h: usize, head_dim: usize) -> usize {
        h * PAGE * head_dim
    }

    /// The first block of key group `group` (slots `4 * group..`) of KV head `h`.
    pub fn k_group(group: usize, h: usize, kv_heads: usize, blocks: usize) -> usize {
        const PER_PAGE: usize = PAGE / ROWS;
        ((group / PER_PAGE * kv_heads + h) * PER_PAGE + group % PER_PAGE) * blocks
    }
}

/// Whether a step of `n` tokens on `threads` shares out chunks ([`Attention::chunks_claimed`]
/// then [`Attention::merge_all`]) rather than whole spans ([`Attention::spans_claimed`]): when
/// its (token, KV head) pairs are too few to keep the threads evenly busy, and it has at most
/// [`SPLIT_TOKENS`] tokens, which bounds the chunks' buffer and the merges every thread repeats.
pub fn splits(n: usize, kv_heads: usize, threads: usize) -> bool {
    threads > 1 && n <= SPLIT_TOKENS && n * kv_heads < 4 * threads
}

/// The most tokens a step that shares out chunks has: decode steps, and short verifications.
const SPLIT_TOKENS: usize = 4;

/// Chunks the longest span of a step at `positions` has: [`Attention::chunks_claimed`]'s room
/// for each (token, KV head).
pub fn max_chunks(positions: &[u32]) -> usize {
    positions.iter().map(|&p| p as usize / CHUNK + 1).max().unwrap_or(0)
}

/// One layer's attention for a step, as every thread sees it once the step's K/V are written.
pub struct Attention<'a> {
    pub target: Target,
    pub keys: &'a [Q8x4],
    pub values: &'a [f32],
    /// Every query head's `quantize_fine` blocks, `[token][head][high, low][block]`.
    pub queries: &'a [ActBlock],
    pub positions: &'a [u32],
    /// KV slot of (token index in the step, a position of its sequence).
    pub slot: &'a (dyn Fn(usize, usize) -> usize + Sync),
    pub window: Option<usize>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// A thread's own buffers for [`Attention`], kept over a step's layers.
#[derive(Default)]
pub struct Local {
    /// Which token's span (and its first position) `rows` and `groups` hold: a decode step's are
    /// the same in every layer of the same window.
    rows_for: Option<(usize, usize)>,
    /// Where each position's values start.
    rows: Vec<usize>,
    /// The slot group of each four positions from the span's first group.
    groups: Vec<usize>,
    scores: Vec<f32>,
    /// `[chunk][query head of the KV head][head_dim + 2]`: one token's chunks of one KV head.
    parts: Vec<f32>,
    units: Vec<(usize, usize, usize)>,
}

impl Attention<'_> {
    /// Query heads a KV head serves.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Positions `first..len` token `t` attends to.
    fn span(&self, t: usize) -> (usize, usize) {
        let len = self.positions[t] as usize + 1;
        (self.window.map_or(0, |w| len.saturating_sub(w)), len)
    }

    /// The chunks of a span (at least one: a token attends at least to itself).
    fn chunks((first, len): (usize, usize)) -> Range<usize> {
        first / CHUNK..(len - 1) / CHUNK + 1
    }

    /// The query heads of KV head `kvh` of token `t` over chunk `c` of its span into `out:
    /// [head of the group][head_dim + 2]` ([`attend_chunk`]).
    fn chunk(&self, t: usize, kvh: usize, c: usize, local: &mut Local, out: &mut [f32]) {
        let (first, len) = self.span(t);
        if local.rows_for != Some((t, first)) {
            let kv_dim = self.kv_heads * self.head_dim;
            local.rows.clear();
            local.rows.extend((first..len).map(|p| LayerKv::v_row((self.slot)(t, p), kv_dim, self.head_dim)));
            local.groups.clear();
            local.groups.extend((first / ROWS * ROWS..len).step_by(ROWS).map(|p| (self.slot)(t, p) / ROWS));
            local.rows_for = Some((t, first));
        }
        let (a, b) = ((c * CHUNK).max(first), ((c + 1) * CHUNK).min(len));
        let (g, nb) = (self.group(), self.head_dim.div_ceil(QK));
        let groups = &local.groups[a / ROWS - first / ROWS..(b - 1) / ROWS - first / ROWS + 1];
        let queries = &self.queries[(t * self.heads + kvh * g) * 2 * nb..][..g * 2 * nb];
        let block = |group: usize| LayerKv::k_group(group, kvh, self.kv_heads, nb);
        key_scores(self.target, queries, nb, self.keys, groups, block, a % ROWS, b - a, self.scale, &mut local.scores);
        attend_chunk(self.target, out, &mut local.scores, self.values, &local.rows[a - first..b - first], LayerKv::v_head(kvh, self.head_dim), self.head_dim);
    }

    /// The query heads of one (token, KV head) from its chunks, `parts: [chunk][head of the
    /// group][head_dim + 2]`, into `out: [head of the group][head_dim]`.
    fn merge_group(&self, parts: &[f32], out: &mut [f32]) {
        let (per, hd) = (self.group() * (self.head_dim + 2), self.head_dim);
        for (i, oh) in out.chunks_exact_mut(hd).enumerate() {
            merge_chunks(parts, per, i * (hd + 2), oh);
        }
    }

    /// This thread's claims of the chunks of `n` tokens' spans, (token, KV head, chunk) at a
    /// time, each into `parts: [token][kv head][chunk of the span][head of the group][head_dim
    /// + 2]`, `max_chunks` chunks a (token, KV head).
    pub fn chunks_claimed(&self, w: &Worker, counters: &[Counter], n: usize, parts: &Shared<f32>, max_chunks: usize, local: &mut Local) {
        let per = self.group() * (self.head_dim + 2);
        let mut units = std::mem::take(&mut local.units);
        units.clear();
        for t in 0..n {
            let chunks = Self::chunks(self.span(t));
            units.extend((0..self.kv_heads).flat_map(|kvh| chunks.clone().map(move |c| (t, kvh, c))));
        }
        w.claim(
            units.len(),
            1,
            counters,
            |len| len,
            |share, j| {
                let (t, kvh, c) = units[share.start + j];
                let at = ((t * self.kv_heads + kvh) * max_chunks + c - Self::chunks(self.span(t)).start) * per;
                // SAFETY: each unit's part is written by the one thread that claims it, and read
                // only after the next barrier.
                self.chunk(t, kvh, c, local, unsafe { parts.slice_mut(at..at + per) });
            },
        );
        local.units = units;
    }

    /// Every head of `n` tokens from [`Attention::chunks_claimed`]'s `parts` into `out: [token][heads
    /// x head_dim]` and its 8-bit blocks `acts` (each thread its own copy: a few microseconds
    /// repeated instead of a barrier).
    pub fn merge_all(&self, n: usize, parts: &[f32], max_chunks: usize, out: &mut [f32], acts: &mut [ActBlock]) {
        let (g, hd) = (self.group(), self.head_dim);
        let (per, q_dim) = (g * (hd + 2), self.heads * hd);
        for t in 0..n {
            let chunks = Self::chunks(self.span(t)).len();
            for kvh in 0..self.kv_heads {
                let mine = &parts[(t * self.kv_heads + kvh) * max_chunks * per..][..chunks * per];
                self.merge_group(mine, &mut out[t * q_dim + kvh * g * hd..][..g * hd]);
            }
            self.target.quantize_row(&out[t * q_dim..(t + 1) * q_dim], &mut acts[t * (q_dim / QK)..(t + 1) * (q_dim / QK)]);
        }
    }

    /// This thread's claims of `n` tokens' whole spans, (token, KV head) at a time, chunk after
    /// chunk, merged into `out: [token][heads x head_dim]` and, where heads are whole 8-bit
    /// blocks, quantized into `acts` (else the caller quantizes whole rows).
    pub fn spans_claimed(&self, w: &Worker, counters: &[Counter], n: usize, out: &Shared<f32>, acts: &Shared<ActBlock>, local: &mut Local) {
        let (g, hd) = (self.group(), self.head_dim);
        let (per, q_dim) = (g * (hd + 2), self.heads * hd);
        let mut parts = std::mem::take(&mut local.parts);
        w.claim(
            n * self.kv_heads,
            1,
            counters,
            |len| len,
            |share, j| {
                let (t, kvh) = ((share.start + j) / self.kv_heads, (share.start + j) % self.kv_heads);
                let chunks = Self::chunks(self.span(t));
                if parts.len() < chunks.len() * per {
                    parts.resize(chunks.len() * per, 0.0);
                }
                for (i, c) in chunks.clone().enumerate() {
                    self.chunk(t, kvh, c, local, &mut parts[i * per..(i + 1) * per]);
                }
                let at = t * q_dim + kvh * g * hd..t * q_dim + (kvh + 1) * g * hd;
                // SAFETY: this (token, KV head)'s heads are written by the thread that claims it
                // alone, and read only after the next barrier.
                let o = unsafe { out.slice_mut(at.clone()) };
                self.merge_group(&parts[..chunks.len() * per], o);
                if hd % QK == 0 {
                    self.target.quantize_row(o, unsafe { acts.slice_mut(at.start / QK..at.end / QK) });
                }
            },
        );
        local.parts = parts;
    }
}
