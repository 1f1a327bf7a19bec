//! Bias added to each token's row (bias_add.wgsl; Qwen2's q/k/v biases).

use bytemuck::{Pod, Zeroable};

use super::shader::Shader;
use super::{Count, Grid, Kernels, Op};

/// `struct Params` of bias_add.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BiasAddParams {
    /// Values of each row that get a bias.
    width: u32,
    /// Row stride of `y`.
    stride: u32,
    /// First element of the bias in its buffer.
    offset: u32,
    _pad0: u32,
}
const _: () = assert!(std::mem::size_of::<BiasAddParams>() == 16);

impl Kernels {
    /// `y[t][i] += bias[offset + i]` for `i < width` in every token's row of `stride` values.
    pub fn bias_add(&self, y: &wgpu::Buffer, bias: &wgpu::Buffer, width: u32, stride: u32, offset: u32) -> Op {
        let variants = self.single(Shader::BiasAdd, None, &[], Grid::PerItem { of: Count::Tokens });
        self.op("bias_add", variants, &BiasAddParams { width, stride, offset, _pad0: 0 }, &[y, bias])
    }
}
