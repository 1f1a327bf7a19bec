//! The bench's roofline probes: streaming reads (read_bandwidth.wgsl) and the decode GEMV's
//! Q4_1 arithmetic without memory reads (dequant_probe.wgsl).

use bytemuck::{Pod, Zeroable};

use super::shader::Shader;
use super::{Grid, Kernels, Op};
use crate::gguf::GgmlType;

/// `struct Params` of read_bandwidth.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReadBandwidthParams {
    /// vec4<u32> elements in `data`.
    n_vec4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<ReadBandwidthParams>() == 16);

/// `struct Params` of dequant_probe.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DequantProbeParams {
    /// Values per row.
    k: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<DequantProbeParams>() == 16);

impl Kernels {
    /// Streaming read of `n_vec4` 16-byte words of `data` by `workgroups` x 64 threads.
    pub fn read_bandwidth(&self, data: &wgpu::Buffer, sink: &wgpu::Buffer, n_vec4: u32, workgroups: u32) -> Op {
        let variants = self.single(Shader::ReadBandwidth, None, &[], Grid::Fixed { x: workgroups });
        self.op("read_bandwidth", variants, &ReadBandwidthParams { n_vec4, _pad0: 0, _pad1: 0, _pad2: 0 }, &[data, sink])
    }

    /// The arithmetic probe: `workgroups` x 16 threads each run the decode GEMV's Q4_1 inner loop
    /// over 8 rows of `k` values with no storage reads; `unread` only fills the unread bindings.
    /// Returns the Op and the multiply-adds one run does.
    pub fn dequant_probe(&self, unread: &wgpu::Buffer, sink: &wgpu::Buffer, k: u32, workgroups: u32) -> (Op, u64) {
        let variants = self.single(Shader::DequantProbe, Some(GgmlType::Q4_1), &[], Grid::Fixed { x: workgroups });
        let op = self.op("dequant_probe", variants, &DequantProbeParams { k, _pad0: 0, _pad1: 0, _pad2: 0 }, &[unread, unread, sink]);
        (op, workgroups as u64 * 16 * 8 * k as u64)
    }
}
