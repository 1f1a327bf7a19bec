//! Per-logit-row reductions the sampler reads back: argmax (argmax.wgsl) and the top-k
//! candidates with the row's log-sum-exp (topk.wgsl).

use bytemuck::{Pod, Zeroable};

use super::shader::Shader;
use super::{Count, Grid, Kernels, Op};

/// Candidates the top-k kernel returns per row (shaders/topk.wgsl MAX_K).
pub const TOPK_MAX: usize = 64;
/// Words of top-k output per row.
pub const TOPK_WORDS: usize = 2 * TOPK_MAX + 2;

/// `struct Params` of argmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ArgmaxParams {
    vocab: u32,
    mask_words: u32,
    _pad1: u32,
    _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<ArgmaxParams>() == 16);

/// `struct Params` of topk.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TopkParams {
    vocab: u32,
    /// Candidates wanted, at most [`TOPK_MAX`].
    k: u32,
    _pad0: u32,
    _pad1: u32,
}
const _: () = assert!(std::mem::size_of::<TopkParams>() == 16);

impl Kernels {
    /// Index of the largest logit of each logit row; with `masked`, of the largest allowed by
    /// the row's bits in `masks` (`[rows][vocab.div_ceil(32)]` u32 words, bit set: allowed).
    pub fn argmax(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, masks: &wgpu::Buffer, vocab: u32, masked: bool) -> Op {
        let variants = self.single(Shader::Argmax, None, &[("MASKED", masked as u32)], Grid::PerItem { of: Count::LogitRows });
        let params = ArgmaxParams { vocab, mask_words: vocab.div_ceil(32), _pad1: 0, _pad2: 0 };
        self.op(if masked { "masked argmax" } else { "argmax" }, variants, &params, &[logits, result, masks])
    }

    /// The [`TOPK_MAX`] largest logits of each logit row, sorted, and the row's log-sum-exp
    /// ([`TOPK_WORDS`] words per row: id/logit pairs, lse, count).
    pub fn topk(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, vocab: u32) -> Op {
        let variants = self.single(Shader::Topk, None, &[], Grid::PerItem { of: Count::LogitRows });
        self.op("topk", variants, &TopkParams { vocab, k: TOPK_MAX as u32, _pad0: 0, _pad1: 0 }, &[logits, result])
    }
}
