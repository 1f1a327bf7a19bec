//! RMSNorm of whole rows (rmsnorm.wgsl); the per-head norm of Gemma 3's q and k runs in
//! rope_kv.wgsl.

use bytemuck::{Pod, Zeroable};

use super::shader::Shader;
use super::{Count, Grid, Kernels, Op};

/// `struct Params` of rmsnorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RmsnormParams {
    /// Row width.
    d: u32,
    eps: f32,
    /// 1: row `i` reads the batch's logit row `i` (the final norm).
    gather: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<RmsnormParams>() == 16);

impl Kernels {
    /// RMSNorm of each token's row of width `d`; `gather` reads the batch's logit rows instead.
    pub fn rmsnorm(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32, gather: bool) -> Op {
        self.rmsnorm_into(x, weight, y, d, eps, gather, false)
    }

    /// `y[t] += rmsnorm(x[t]) * weight`: a post-norm added to the residual stream.
    pub fn rmsnorm_add(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32) -> Op {
        self.rmsnorm_into(x, weight, y, d, eps, false, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_into(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32, gather: bool, add: bool) -> Op {
        let of = if gather { Count::LogitRows } else { Count::Tokens };
        // CPU-emulated adapters run barriers as coroutine switches: one thread per row there.
        let serial = self.cpu_like;
        let (wg, grid) = if serial { (4, Grid::Flat { threads: 1, wg: 4, of }) } else { (64, Grid::PerItem { of }) };
        let variants = self.single(Shader::Rmsnorm, None, &[("ADD", add as u32), ("SERIAL", serial as u32), ("WG", wg)], grid);
        self.op("rmsnorm", variants, &RmsnormParams { d, eps, gather: gather as u32, _pad: 0 }, &[x, weight, y])
    }
}
