//! Causal attention over the paged KV cache: split decode (attention.wgsl + attn_combine.wgsl)
//! and tiled prefill (attn_tiled.wgsl) on GPUs, three barrier-free passes on CPU-emulated
//! adapters (attn_scores.wgsl, attn_softmax.wgsl, attn_pv.wgsl). All share one uniform.

use bytemuck::{Pod, Zeroable};

use super::shader::Shader;
use super::{Count, Grid, Kernels, Op, Variant};

/// Shapes shared by the attention kernels.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub qkv_stride: u32,
}

/// `struct AttnParams` of attn_params.wgsl, the uniform of every attention kernel.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    qkv_stride: u32,
    scale: f32,
    /// Sliding window in positions; 0: full causal.
    window: u32,
    /// Scratch entries per (token, head): chunk records (split decode) or scores (CPU passes).
    scratch_stride: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<AttnParams>() == 32);

/// Cached positions per workgroup of the split decode attention (CHUNK of attention.wgsl and
/// attn_combine.wgsl).
const ATTN_CHUNK: u32 = 256;
/// Batches up to this many tokens run the split decode attention; larger ones the tiled kernel.
pub const ATTN_SPLIT_MAX_TOKENS: u32 = 16;

/// How a model's attention runs ([`Kernels::attention_plan`]).
#[derive(Clone, Copy, Debug)]
pub struct AttnPlan {
    /// Three barrier-free passes through a scores buffer (CPU-emulated adapters).
    pub passes: bool,
    /// Positions per sequence.
    pub context: u32,
    /// Scratch entries per (token, head): scores (passes, `context`) or per-chunk softmax states
    /// (split decode, one per chunk of the context).
    pub scratch_stride: u32,
    /// Floats of the scratch buffer.
    pub scratch_floats: u64,
}

impl Kernels {
    /// How attention runs for a model of `context` positions and batches of up to `tokens`,
    /// and the scratch buffer it needs.
    pub fn attention_plan(&self, tokens: u32, dims: AttnDims, context: u32, max_binding: u64) -> AttnPlan {
        let scores = tokens as u64 * dims.n_heads as u64 * context as u64;
        if self.cpu_like && dims.head_dim.is_multiple_of(4) && scores * 4 <= max_binding {
            return AttnPlan { passes: true, context, scratch_stride: context, scratch_floats: scores };
        }
        let n_chunks = context.div_ceil(ATTN_CHUNK);
        let records = tokens.min(ATTN_SPLIT_MAX_TOKENS) as u64 * dims.n_heads as u64 * n_chunks as u64;
        AttnPlan { passes: false, context, scratch_stride: n_chunks, scratch_floats: records * (dims.head_dim as u64 + 2) }
    }

    /// Causal attention of every token's query heads over its sequence's cached K/V, through
    /// `scratch` ([`AttnPlan::scratch_floats`] floats). GPUs: decode batches split the context
    /// into chunks and merge them (flash-decoding; a span of one chunk is written at once, with
    /// no merge), larger batches run tiled. CPU-emulated
    /// adapters: three barrier-free passes through a scores buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        dims: AttnDims,
        scale: f32,
        window: u32,
        plan: &AttnPlan,
        scratch: &wgpu::Buffer,
    ) -> Vec<Op> {
        let params =
            AttnParams { n_heads: dims.n_heads, n_kv_heads: dims.n_kv_heads, head_dim: dims.head_dim, qkv_stride: dims.qkv_stride, scale, window, scratch_stride: plan.scratch_stride, _pad: 0 };
        if !plan.passes {
            let chunk = [("CHUNK", ATTN_CHUNK)];
            let split =
                Variant { pipeline: self.pipeline(Shader::Attention, None, &chunk), grid: Grid::Span { heads: dims.n_heads, per: ATTN_CHUNK / 64, max: plan.context }, max_n: ATTN_SPLIT_MAX_TOKENS };
            let tiled = Variant { pipeline: self.pipeline(Shader::AttnTiled, None, &[]), grid: Grid::Rows { x: dims.n_heads, per: 8, of: Count::Tokens }, max_n: u32::MAX };
            let attend = self.op("attention", vec![split, tiled], &params, &[qkv, k_cache, v_cache, out, scratch]);
            let grid = Grid::Merge { heads: dims.n_heads, chunk: ATTN_CHUNK };
            let combine = Variant { pipeline: self.pipeline(Shader::AttnCombine, None, &chunk), grid, max_n: ATTN_SPLIT_MAX_TOKENS };
            return vec![attend, self.op("attention", vec![combine], &params, &[scratch, out])];
        }
        let s = scratch;
        // Query heads per thread: the most (up to 4) that share one KV head, so K and V rows
        // are loaded once for all of them.
        let group = dims.n_heads / dims.n_kv_heads;
        let qh = (1..=4u32).rev().find(|q| group.is_multiple_of(*q)).unwrap_or(1);
        let c = [("QH", qh)];
        let grid = Grid::Span { heads: dims.n_heads / qh, per: 4, max: plan.context };
        let scores_op = self.op("attention", self.single(Shader::AttnScores, None, &c, grid), &params, &[qkv, k_cache, s]);
        let grid = Grid::Flat { threads: dims.n_heads, wg: 16, of: Count::Tokens };
        let softmax_op = self.op("attention", self.single(Shader::AttnSoftmax, None, &[], grid), &params, &[s]);
        let grid = Grid::Flat { threads: dims.n_heads / qh * dims.head_dim / 4, wg: 16, of: Count::Tokens };
        let pv_op = self.op("attention", self.single(Shader::AttnPv, None, &c, grid), &params, &[s, v_cache, out]);
        vec![scores_op, softmax_op, pv_op]
    }
}
