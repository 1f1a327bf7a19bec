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

/// `struct Params` of rope_kv.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeKvParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    /// q_dim + 2 * kv_dim.
    qkv_stride: u32,
}
const _: () = assert!(std::mem::size_of::<RopeKvParams>() == 16);

impl Kernels {
    /// RoPE on q (in place in `qkv`) and k, and K/V into the layer's cache.
    pub fn rope_kv(&self, qkv: &wgpu::Buffer, r: RopeKv) -> Op {
        let variants = self.single(Shader::RopeKv, None, &[("NEOX", r.neox as u32)], Grid::PerItem { of: Count::Tokens });
        let d = r.dims;
        let params = RopeKvParams { n_heads: d.n_heads, n_kv_heads: d.n_kv_heads, head_dim: d.head_dim, qkv_stride: d.qkv_stride };
        self.op("rope_kv", variants, &params, &[qkv, r.table, r.k_cache, r.v_cache])
    }
}
