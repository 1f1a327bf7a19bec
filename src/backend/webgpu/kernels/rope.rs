//! RoPE on q and k, and K/V into the paged cache (rope_kv.wgsl).

use bytemuck::{Pod, Zeroable};

use super::attention::AttnDims;
use super::shader::Shader;
use super::{Count, Grid, Kernels, Op};

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
    pub fn rope_kv(&self, qkv: &wgpu::Buffer, rope: &wgpu::Buffer, k_cache: &wgpu::Buffer, v_cache: &wgpu::Buffer, dims: AttnDims, neox: bool) -> Op {
        let variants = self.single(Shader::RopeKv, None, &[("NEOX", neox as u32)], Grid::PerItem { of: Count::Tokens });
        let params = RopeKvParams { n_heads: dims.n_heads, n_kv_heads: dims.n_kv_heads, head_dim: dims.head_dim, qkv_stride: dims.qkv_stride };
        self.op("rope_kv", variants, &params, &[qkv, rope, k_cache, v_cache])
    }
}
