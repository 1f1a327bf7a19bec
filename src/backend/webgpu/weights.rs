//! Quantized weights on the GPU. GGUF blocks are repacked once, here, into a layout shaders read
//! as u32 words: the quants of every block first, then the scales (f16 packed in u32) at
//! `scale_off`. Blocks stay quantized; `shaders/quant_*.wgsl` dequantize inside the kernels.

use crate::error::{Error, Result};
use crate::gguf::{dequantize, GgmlType, SUPPORTED_TYPES};

/// Types the GPU kernels read directly.
pub const GPU_MATRIX_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];

/// Rows one part may hold: a GPU matmul workgroup covers as few as 4 rows, and a dispatch has
/// at most 65535 workgroups per dimension (a 262k-token LM head needs two parts).
pub const MAX_ROWS_PER_PART: usize = 4 * 65535;

/// Upper bound of the repacked bytes of one 32-value group: its quant words plus scale words.
fn packed_group_bytes(ty: GgmlType) -> u64 {
    match ty {
        GgmlType::F32 => 128,
        GgmlType::F16 => 64,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 20 + 4,
        GgmlType::Q8_0 | GgmlType::Q6_K => 32 + 4,
        _ => 16 + 4,
    }
}

/// Upper bound of the repacked bytes of a row of `k` values (the loader's binding sizes, and the
/// header check before a download).
pub(super) fn packed_row_bytes(ty: GgmlType, k: u64) -> u64 {
    packed_group_bytes(ty) * (k / 32)
}

/// A weight matrix `[rows][k]` in the repacked layout, split by rows into parts that each fit
/// one storage binding (a 262k-token embedding is larger than many adapters allow).
pub struct GpuTensor {
    pub ty: GgmlType,
    pub rows: u32,
    pub k: u32,
    pub parts: Vec<TensorPart>,
}

/// Rows `row0 .. row0 + rows` of a tensor in one buffer.
pub struct TensorPart {
    pub buffer: wgpu::Buffer,
    pub row0: u32,
    pub rows: u32,
    /// u32 offset of the scale section.
    pub scale_off: u32,
}

/// Repacks `rows` rows of `k` values of type `ty` (GGUF block bytes) into u32 words.
/// Returns the words and the offset of the scale section.
pub fn repack(ty: GgmlType, data: &[u8], rows: usize, k: usize) -> Result<(Vec<u32>, u32)> {
    let expected = ty.row_bytes(k as u64)? as usize * rows;
    if data.len() != expected || !k.is_multiple_of(32) {
        return Err(Error::InvalidModel(format!("{ty} matrix of {rows}x{k} has {} bytes, expected {expected} (rows a multiple of 32)", data.len())));
    }
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let pack_halves = |halves: &[u16]| -> Vec<u32> { halves.chunks(2).map(|p| p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16).collect() };
    // The scale section of 32-value blocks of `bs` bytes: one word `d | m << 16` per block when
    // the type has a minimum, else the blocks' `d` two to a word.
    let block_scales = |bs: usize, with_min: bool| -> Vec<u32> {
        if with_min {
            data.chunks_exact(bs).map(|b| word(&b[0..4])).collect()
        } else {
            pack_halves(&data.chunks_exact(bs).map(|b| u16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>())
        }
    };
    let mut out: Vec<u32>;
    let scale_off;
    match ty {
        GgmlType::F32 | GgmlType::F16 => {
            out = data.chunks_exact(4).map(word).collect();
            scale_off = out.len() as u32;
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            let bs = ty.type_size() as usize;
            let n_blocks = data.len() / bs;
            let (head, qs_len) = match ty {
                GgmlType::Q4_0 => (2, 16),
                GgmlType::Q4_1 => (4, 16),
                _ => (2, 32),
            };
            out = Vec::with_capacity(n_blocks * (qs_len / 4 + 1));
            for b in data.chunks_exact(bs) {
                out.extend(b[head..head + qs_len].chunks_exact(4).map(word));
            }
            scale_off = out.len() as u32;
            out.extend(block_scales(bs, ty == GgmlType::Q4_1));
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            // Per block: the 4 nibble words, then the word of fifth bits.
            let (bs, head) = (ty.type_size() as usize, if ty == GgmlType::Q5_0 { 2 } else { 4 });
            out = Vec::with_capacity(data.len() / bs * 6);
            for b in data.chunks_exact(bs) {
                out.extend(b[head + 4..head + 20].chunks_exact(4).map(word));
                out.push(word(&b[head..head + 4]));
            }
            scale_off = out.len() as u32;
            out.extend(block_scales(bs, ty == GgmlType::Q5_1));
        }
        GgmlType::Q4_K | GgmlType::Q6_K => {
            let bs = ty.type_size() as usize;
            out = Vec::with_capacity(data.len() / bs * (8 * 8 + 5));
            let mut scales = Vec::with_capacity(data.len() / bs * 5);
            for b in data.chunks_exact(bs) {
                let (quants, words) = if ty == GgmlType::Q4_K { q4k_groups(b) } else { q6k_groups(b) };
                out.extend(quants.chunks_exact(4).map(word));
                scales.extend(words);
            }
            scale_off = out.len() as u32;
            out.extend(scales);
        }
        other => return Err(Error::UnsupportedTensorType { name: String::new(), ty: format!("{other} (on the GPU)"), supported: "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K on the GPU" }),
    }
    Ok((out, scale_off))
}

/// A Q4_K super-block as 8 groups of 32 nibbles (16 bytes each) in the Q4_0 order (value j in the low nibble of
/// byte j, value j + 16 in the high nibble), and its 5 scale words: (d, dmin), the 8 scales, the
/// 8 mins (shaders/quant_q4_k.wgsl).
fn q4k_groups(b: &[u8]) -> (Vec<u8>, [u32; 5]) {
    let scales: &[u8; 12] = b[4..16].try_into().expect("Q4_K scales are 12 bytes");
    let qs = &b[16..144];
    let mut groups = Vec::with_capacity(128);
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for g in 0..8 {
        let nib = |l: usize| (qs[32 * (g / 2) + l] >> (4 * (g % 2))) & 15;
        groups.extend((0..16).map(|j| nib(j) | nib(j + 16) << 4));
        (sc[g], mn[g]) = crate::gguf::q4k_scale_min(g, scales);
    }
    let w = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    (groups, [w(&b[0..4]), w(&sc[0..4]), w(&sc[4..8]), w(&mn[0..4]), w(&mn[4..8])])
}

/// A Q6_K super-block as 8 groups of 32 values q - 32 in int8 (32 bytes each), and its 5 scale words: d, then
/// the 16 int8 sub-block scales (shaders/quant_q6_k.wgsl).
fn q6k_groups(b: &[u8]) -> (Vec<u8>, [u32; 5]) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    let mut groups = Vec::with_capacity(256);
    for g in 0..8 {
        let (h, quarter) = (g / 4, g % 4);
        groups.extend((0..32).map(|l| {
            let low = ql[64 * h + l + 32 * (quarter % 2)] >> (4 * (quarter / 2)) & 15;
            let high = (qh[32 * h + l] >> (2 * quarter)) & 3;
            ((low | high << 4) as i32 - 32) as i8 as u8
        }));
    }
    let w = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    let d = u16::from_le_bytes([b[208], b[209]]) as u32;
    (groups, [d, w(&b[192..196]), w(&b[196..200]), w(&b[200..204]), w(&b[204..208])])
}

impl GpuTensor {
    /// Repacks and uploads a matrix, in as many parts as the binding size requires
    /// (`splittable`), or refuses one that does not fit in one binding.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(device: &wgpu::Device, queue: &wgpu::Queue, max_binding: u64, name: &str, ty: GgmlType, data: &[u8], rows: usize, k: usize, splittable: bool) -> Result<GpuTensor> {
        let row_bytes = ty.row_bytes(k as u64)? as usize;
        let packed_row = packed_row_bytes(ty, k as u64);
        let per_part = ((max_binding / packed_row) as usize).clamp(1, MAX_ROWS_PER_PART);
        // Whole 64-row runs where a part holds more: an LM head's parts then start where a
        // matmul workgroup does, so each keeps its partial maxima (matmul.wgsl's PARTIALS).
        let per_part = if per_part >= 64 { per_part / 64 * 64 } else { per_part };
        if rows > per_part && !splittable {
            return Err(Error::ModelTooLarge { what: format!("tensor '{name}'"), bytes: packed_row * rows as u64, limit: max_binding });
        }
        let mut parts = Vec::new();
        for row0 in (0..rows).step_by(per_part) {
            let n = per_part.min(rows - row0);
            let (words, scale_off) = repack(ty, &data[row0 * row_bytes..(row0 + n) * row_bytes], n, k).map_err(|e| match e {
                Error::UnsupportedTensorType { ty, .. } => Error::UnsupportedTensorType { name: name.to_string(), ty, supported: SUPPORTED_TYPES },
                e => e,
            })?;
            let buffer = upload_words(device, queue, name, &words);
            parts.push(TensorPart { buffer, row0: row0 as u32, rows: n as u32, scale_off });
        }
        Ok(GpuTensor { ty, rows: rows as u32, k: k as u32, parts })
    }
}

/// Small f32 vectors (norm weights, biases) on the GPU, one after the other in one buffer, each
/// dequantized if stored quantized: `(type, bytes, values)` per part.
pub fn upload_f32(device: &wgpu::Device, queue: &wgpu::Queue, name: &str, parts: &[(GgmlType, &[u8], usize)]) -> Result<wgpu::Buffer> {
    let mut v = vec![0f32; parts.iter().map(|p| p.2).sum()];
    let mut start = 0;
    for &(ty, data, n) in parts {
        dequantize(ty, data, &mut v[start..start + n])?;
        start += n;
    }
    Ok(upload_words(device, queue, name, bytemuck::cast_slice(&v)))
}

/// A storage buffer holding `words`, written through the queue in 4 MB pieces. Not
/// `mappedAtCreation`: Chromium then stages the whole buffer in freshly zeroed memory, which
/// took 0.95 s for SmolLM2's weights on SwiftShader against 0.3 s this way; the pieces keep
/// the staging memory small.
fn upload_words(device: &wgpu::Device, queue: &wgpu::Queue, name: &str, words: &[u32]) -> wgpu::Buffer {
    const PIECE: usize = 4 << 20;
    let bytes: &[u8] = bytemuck::cast_slice(words);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size: (bytes.len() as u64).max(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    for (i, piece) in bytes.chunks(PIECE).enumerate() {
        queue.write_buffer(&buffer, (i * PIECE) as u64, piece);
    }
    buffer
}

/// Concatenates the rows of matrices of one type and width (q|k|v, gate|up) so one dispatch
/// computes them all. `None` when the parts differ in type or width.
pub fn concat_rows(parts: &[(GgmlType, usize, &[u8])]) -> Option<(GgmlType, usize, Vec<u8>)> {
    let (ty, k, _) = parts[0];
    if parts.iter().any(|&(t, kk, _)| t != ty || kk != k) {
        return None;
    }
    Some((ty, k, parts.iter().flat_map(|p| p.2.iter().copied()).collect()))
}
