//! Token embedding lookup with dequantization (embed.wgsl).

use bytemuck::{Pod, Zeroable};

use super::shader::Shader;
use super::{Count, Grid, Kernels, Op};
use crate::backend::webgpu::weights::GpuTensor;

/// `struct Params` of embed.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbedParams {
    /// Row width (multiple of 32).
    k: u32,
    /// u32 offset of the scales in the part.
    scale_off: u32,
    /// Rows in this part.
    part_rows: u32,
    /// Multiplier of every value (1, or sqrt(d_model) for Gemma).
    scale: f32,
    /// First table row in this part.
    row0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<EmbedParams>() == 32);

impl Kernels {
    /// `y[t] = scale * dequant(W[token t])`, one Op per part of `w` (each fills the tokens whose
    /// row it holds); with `direct`, `y` gets every row in order (tests).
    pub fn embed(&self, w: &GpuTensor, y: &wgpu::Buffer, scale: f32, direct: bool) -> Vec<Op> {
        let threads = w.k / 32;
        w.parts
            .iter()
            .map(|p| {
                let grid = if direct { Grid::Fixed { x: (p.rows * threads).div_ceil(64) } } else { Grid::Flat { threads, wg: 64, of: Count::Tokens } };
                let variants = self.single(Shader::Embed, Some(w.ty), &[("DIRECT", direct as u32)], grid);
                let params = EmbedParams { k: w.k, scale_off: p.scale_off, part_rows: p.rows, scale, row0: p.row0, _pad0: 0, _pad1: 0, _pad2: 0 };
                self.op("embed", variants, &params, &[&p.buffer, y])
            })
            .collect()
    }
}
