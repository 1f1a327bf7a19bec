//! RoPE on q and k, and K/V into the paged cache (rope_kv.wgsl), where the q|k|v matmul cannot
//! do it in its epilogue ([`Kernels::folds_rope`]).

use bytemuck::{Pod, Zeroable};

use super::attention::AttnDims;
use super::shader::Shader;
use super::{Count, Grid, Kernels, Op};

/// RoPE and the paged KV write of one layer: the cos/sin table (`[pos][i] = (cos, sin)`), the
/// layer's caches, the q|k|v shape and the pairing (NeoX: `(i, i + d/2)`, else `(2i, 2i + 1)`).
#[derive(Clone, Copy)]
pub struct RopeKv<'a> {
    pub table: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub dims: AttnDims,
    pub neox: bool,
}

/// Qwen2's q|k|v bias for the fused rows, at element `offset` of `buffer` (see
/// [`Kernels::matmul_rope_kv`]).
#[derive(Clone, Copy)]
pub struct QkvBias<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u32,
}

/// Gemma 3's per-head RMSNorm of q and k before RoPE: `weight` holds the query norm's head_dim
/// weights, then the key norm's.
#[derive(Clone, Copy)]
pub struct QkNorm<'a> {
    pub weight: &'a wgpu::Buffer,
    pub eps: f32,
}

/// `struct Params` of rope_kv.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeKvParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    /// q_dim + 2 * kv_dim.
    qkv_stride: u32,
    /// QK_NORM only.
    eps: f32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<RopeKvParams>() == 32);

impl Kernels {
    /// RoPE on q (in place in `qkv`) and k, and K/V into the layer's cache; with `qk_norm`, each
    /// query and key head RMS-normalized first (in place in `qkv` too).
    pub fn rope_kv(&self, qkv: &wgpu::Buffer, r: RopeKv, qk_norm: Option<QkNorm>) -> Op {
        let overrides = [("NEOX", r.neox as u32), ("QK_NORM", qk_norm.is_some() as u32)];
        let variants = self.single(Shader::RopeKv, None, &overrides, Grid::PerItem { of: Count::Tokens });
        let d = r.dims;
        let eps = qk_norm.map_or(0.0, |n| n.eps);
        let params = RopeKvParams { n_heads: d.n_heads, n_kv_heads: d.n_kv_heads, head_dim: d.head_dim, qkv_stride: d.qkv_stride, eps, _pad: [0; 3] };
        // Without the norm its binding is the table (never read).
        let weight = qk_norm.map_or(r.table, |n| n.weight);
        self.op(if qk_norm.is_some() { "qk_norm_rope_kv" } else { "rope_kv" }, variants, &params, &[qkv, r.table, r.k_cache, r.v_cache, weight])
    }
}
