//! Kernel test cases shared by the native kernel tests (tests/native/kernels.rs) and the browser
//! tests (tests/browser.rs): random inputs, attention over a paged K/V cache and its exact value in f64.
#![allow(dead_code)]

use ferrolm::backend::webgpu::kernels::AttnDims;
use ferrolm::backend::webgpu::KvType;
use ferrolm::engine::Limits;

/// Three sequences of up to 1024 positions over a shuffled pool of 16-position blocks.
pub const LIMITS: Limits = Limits { max_batch_tokens: 32, context: 1024, max_seqs: 3, block_size: 16, n_blocks: 192, kv_bytes_per_token: 0, max_logit_rows: 32, max_draft: 0 };

/// Deterministic pseudo-random values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `values` as a GPU KV cache of type `kv` holds them, as u32 words: f32 bits, or f16 (round
/// to nearest even; below f16's smallest normal, zero) two to a word, the first in the low half.
pub fn kv_words(kv: KvType, values: &[f32]) -> Vec<u32> {
    let f16 = |v: f32| if v.abs() < f32::powi(2.0, -14) { half::f16::from_f32(0.0 * v.signum()) } else { half::f16::from_f32(v) }.to_bits() as u32;
    match kv {
        KvType::F32 => values.iter().map(|v| v.to_bits()).collect(),
        KvType::F16 => values.chunks(2).map(|p| f16(p[0]) | f16(p[1]) << 16).collect(),
    }
}

/// The values the words of a KV cache of type `kv` hold.
pub fn kv_values(kv: KvType, words: &[u32]) -> Vec<f32> {
    match kv {
        KvType::F32 => words.iter().map(|w| f32::from_bits(*w)).collect(),
        KvType::F16 => words.iter().flat_map(|w| [half::f16::from_bits(*w as u16).to_f32(), half::f16::from_bits((*w >> 16) as u16).to_f32()]).collect(),
    }
}

/// Random KV cache contents that `kv` holds exactly, so the cache adds no rounding.
pub fn random_kv(kv: KvType, n: usize, seed: u64) -> Vec<f32> {
    kv_values(kv, &kv_words(kv, &random(n, seed)))
}

/// Each sequence's block table: a fixed shuffle of the pool, dealt out.
pub fn block_tables() -> Vec<Vec<u32>> {
    let mut pool: Vec<u32> = (0..LIMITS.n_blocks).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, (i * 7919 + 13) % (i + 1));
    }
    pool.chunks((LIMITS.n_blocks / LIMITS.max_seqs) as usize).map(|c| c.to_vec()).collect()
}

/// (sequence, position) of each token. Decode: a few tokens at long positions (three
/// 256-position chunks for the split kernel). Prefill: 8-token tiles mixing sequences.
pub fn decode_batch() -> Vec<(u32, u32)> {
    vec![(0, 700), (1, 5), (2, 300), (0, 701), (0, 702)]
}

pub fn prefill_batch() -> Vec<(u32, u32)> {
    (250..271).map(|p| (1, p)).chain((0..7).map(|p| (2, p))).chain([(0, 999)]).collect()
}

/// (heads, KV heads, head size): 2, 4, 3 and 1 query heads per KV head; head sizes 64, 256
/// (Gemma 3), 72 (not a power of two) and 32.
pub fn shapes() -> Vec<AttnDims> {
    [(4u32, 2u32, 64u32), (4, 1, 256), (3, 1, 72), (2, 2, 32)]
        .iter()
        .map(|&(n_heads, n_kv_heads, head_dim)| AttnDims { n_heads, n_kv_heads, head_dim, qkv_stride: (n_heads + 2 * n_kv_heads) * head_dim })
        .collect()
}

/// `out[t][h][d]` of softmax(q.k * scale) . v over each token's causal (and sliding) window.
#[allow(clippy::too_many_arguments)]
pub fn reference(dims: AttnDims, items: &[(u32, u32)], qkv: &[f32], k: &[f32], v: &[f32], tables: &[Vec<u32>], scale: f32, window: u32) -> Vec<f32> {
    let (hd, kv_dim, bs) = (dims.head_dim as usize, (dims.n_kv_heads * dims.head_dim) as usize, LIMITS.block_size);
    let mut out = Vec::new();
    for (t, &(seq, pos)) in items.iter().enumerate() {
        for head in 0..dims.n_heads as usize {
            let q = &qkv[t * dims.qkv_stride as usize + head * hd..][..hd];
            let kv_off = head / (dims.n_heads / dims.n_kv_heads) as usize * hd;
            let start = if window > 0 { (pos + 1).saturating_sub(window) } else { 0 };
            let rows: Vec<usize> = (start..=pos).map(|p| (tables[seq as usize][(p / bs) as usize] * bs + p % bs) as usize * kv_dim + kv_off).collect();
            let scores: Vec<f64> = rows.iter().map(|&r| q.iter().zip(&k[r..]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64).collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                out.push((rows.iter().zip(&e).map(|(&r, w)| w * v[r + d] as f64).sum::<f64>() / sum) as f32);
            }
        }
    }
    out
}

/// Largest |a - b| / (1 + |b|); NaN counts as infinite.
pub fn worst_difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths");
    got.iter().zip(want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).map(|d| if d.is_nan() { f32::INFINITY } else { d }).fold(0f32, f32::max)
}
