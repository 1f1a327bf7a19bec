//! ggml quant block formats and exact CPU dequantization (the ground truth the GPU repack and
//! kernels are tested against). Layouts follow ggml's `ggml-common.h`; value formulas follow its
//! `dequantize_row_*`, in the same f32 operation order so results match bit for bit.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

use super::types::{GgmlType, SUPPORTED_TYPES};
use crate::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Fifth bit of each of the 32 values, as a little-endian u32.
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 256 values in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// 256 values in 16 sub-blocks of 16 with i8 scales; 4 low bits in `ql`, 2 high bits in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// Dequantizes `data` (whole blocks of `ty`) into `out`; `out.len()` is the number of values.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let expected = ty.row_bytes(out.len() as u64)?;
    if data.len() as u64 != expected {
        return Err(Error::malformed(format!("{ty} data of {} bytes does not hold {} values ({expected} bytes expected)", data.len(), out.len())));
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks(data, out, |b: BlockQ4_0, y| {
            let d = b.d.to_f32();
            for j in 0..16 {
                y[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks(data, out, |b: BlockQ4_1, y| {
            let (d, m) = (b.d.to_f32(), b.m.to_f32());
            for j in 0..16 {
                y[j] = (b.qs[j] & 0xF) as f32 * d + m;
                y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks(data, out, |b: BlockQ5_0, y| {
            let d = b.d.to_f32();
            let qh = u32::from_le_bytes(b.qh);
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((b.qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((b.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }),
        GgmlType::Q5_1 => blocks(data, out, |b: BlockQ5_1, y| {
            let (d, m) = (b.d.to_f32(), b.m.to_f32());
            let qh = u32::from_le_bytes(b.qh);
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = ((b.qs[j] & 0xF) as u32 | h0) as f32 * d + m;
                y[j + 16] = ((b.qs[j] >> 4) as u32 | h1) as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blocks(data, out, |b: BlockQ8_0, y| {
            let d = b.d.to_f32();
            for (yj, &q) in y.iter_mut().zip(&b.qs) {
                *yj = q as f32 * d;
            }
        }),
        GgmlType::Q4_K => blocks(data, out, |b: BlockQ4K, y| {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            for (chunk, (q, y)) in b.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                let (sc0, m0) = q4k_scale_min(2 * chunk, &b.scales);
                let (sc1, m1) = q4k_scale_min(2 * chunk + 1, &b.scales);
                let (d0, min0) = (d * sc0 as f32, dmin * m0 as f32);
                let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                for l in 0..32 {
                    y[l] = d0 * (q[l] & 0xF) as f32 - min0;
                    y[l + 32] = d1 * (q[l] >> 4) as f32 - min1;
                }
            }
        }),
        GgmlType::Q6_K => blocks(data, out, |b: BlockQ6K, y| {
            let d = b.d.to_f32();
            for half in 0..2 {
                let (ql, qh) = (&b.ql[64 * half..], &b.qh[32 * half..]);
                let sc = &b.scales[8 * half..];
                let y = &mut y[128 * half..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * sc[is] as f32 * q1 as f32;
                    y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                    y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                    y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                }
            }
        }),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q5_K => return Err(Error::UnsupportedTensorType { name: String::new(), ty: ty.name(), supported: SUPPORTED_TYPES }),
    }
    Ok(())
}

/// The 6-bit scale and min of sub-block `j` (0..8), packed in Q4_K's 12 scale bytes.
pub fn q4k_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Applies `f` to each block of `data` with the block's output slice.
fn blocks<B: Pod, F: Fn(B, &mut [f32])>(data: &[u8], out: &mut [f32], f: F) {
    let n = out.len() / (data.len() / std::mem::size_of::<B>()).max(1);
    for (raw, y) in data.chunks_exact(std::mem::size_of::<B>()).zip(out.chunks_exact_mut(n)) {
        f(bytemuck::pod_read_unaligned(raw), y);
    }
}
