//! The CPU backend's elementwise functions: `exp` in plain f32 operations (the same bits on every
//! target, and loops over it vectorize, where a libm call per value does not), and the
//! softmax, attention and gated activations built on it. `exp` is within 3 f32 epsilons
//! (relative) of the exact value over the range used. On x86_64 the public functions run an
//! AVX2 build of themselves where the kernels' target is AVX2: `exp`'s rounding is then one
//! instruction instead of a libm call (x86-64's baseline has none) and the loops run 8 wide;
//! the bits are the same (no fused multiply-add, the same operations in the same order).

use super::kernels::{ActBlock, Q8x4, Target, ROWS, TILE};
use crate::model::Activation;

/// e^x for x in [-87, 88] (clamped outside it): Cody-Waite reduction by ln 2, then a degree-6
/// polynomial on |r| <= ln2/2 (Cephes' split of ln 2).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

/// `gate = silu(gate) * up`.
#[inline(always)]
fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `gate = gelu(gate) * up`, GELU's tanh approximation, tanh(y) = 1 - 2 / (e^2y + 1).
#[inline(always)]
fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x);
        let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
        *g = 0.5 * x * (1.0 + tanh) * u;
    }
}

/// `gate = act(gate) * up`.
#[inline(always)]
fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => silu_mul(gate, up),
        Activation::GeluTanh => gelu_mul(gate, up),
    }
}

/// Query heads that share a KV head over one chunk of their span: `scores: [g][len]` (their
/// scaled q . k over the K/V rows `rows`) into `out: [g][head_dim + 2]`, each head's sum of
/// e^(score - max) v over the rows in row order, then the max, then the sum of e^(score -
/// max) ([`merge_chunks`] puts a span's chunks together). A row's values of their KV head are
/// at `values[row + off..]`.
#[inline(always)]
fn attend_chunk_with(out: &mut [f32], scores: &mut [f32], values: &[f32], rows: &[usize], off: usize, head_dim: usize) {
    let (hd, len) = (head_dim, rows.len());
    for (h, oh) in out.chunks_exact_mut(hd + 2).enumerate() {
        let a = &mut scores[h * len..(h + 1) * len];
        let max = a.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        // The exponentials in a loop of their own vectorize; the sum stays in order.
        a.iter_mut().for_each(|v| *v = exp(*v - max));
        let mut sum = 0.0;
        for v in a.iter() {
            sum += *v;
        }
        let (oh, stats) = oh.split_at_mut(hd);
        (stats[0], stats[1]) = (max, sum);
        for (c, oc) in oh.chunks_mut(SPAN).enumerate() {
            let col = off + c * SPAN;
            if oc.len() == SPAN {
                // A span of the output stays in registers over all rows.
                let mut acc = [0f32; SPAN];
                for (i, (&r, &w)) in rows.iter().zip(a.iter()).enumerate() {
                    if let Some(&ahead) = rows.get(i + 8) {
                        prefetch(values.as_ptr().wrapping_add(ahead + col), SPAN);
                    }
                    let v: &[f32; SPAN] = values[r + col..][..SPAN].try_into().expect("a span");
                    for j in 0..SPAN {
                        acc[j] += w * v[j];
                    }
                }
                oc.copy_from_slice(&acc);
            } else {
                let n = oc.len();
                oc.fill(0.0);
                for (&r, &w) in rows.iter().zip(a.iter()) {
                    oc.iter_mut().zip(&values[r + col..][..n]).for_each(|(o, v)| *o += w * v);
                }
            }
        }
    }
}

/// One head of a span from its chunks' [`attend_chunk`] outputs: `parts: [chunk][per]`, the
/// head's `[head_dim + 2]` at `at` of each, into `out: [head_dim]`, softmax(scores) . v over
/// the span: each chunk's sums rescaled from its max to the span's, added in chunk order.
pub fn merge_chunks(parts: &[f32], per: usize, at: usize, out: &mut [f32]) {
    let hd = out.len();
    let chunk = |c: usize| &parts[c * per + at..][..hd + 2];
    let chunks = parts.len() / per;
    let max = (0..chunks).map(|c| chunk(c)[hd]).fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    let mut sum = 0.0;
    out.fill(0.0);
    for c in 0..chunks {
        let p = chunk(c);
        let f = exp(p[hd] - max);
        sum += f * p[hd + 1];
        out.iter_mut().zip(&p[..hd]).for_each(|(o, v)| *o += f * v);
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Asks for the cache lines of `len` values at `p` ahead of use: K/V rows are read by slot,
/// not as one stream the hardware prefetchers follow (SmolLM2 decode, one thread: attention
/// 1.23-1.52 -> 0.96-1.02 ms a step). Natively only: wasm has no prefetch instruction.
#[inline(always)]
fn prefetch(p: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..len).step_by(16) {
        // SAFETY: a prefetch does not fault, whatever the address; SSE is baseline on x86_64.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(line) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Output values accumulated in registers at once: 8 of x86-64's 16 vector registers, 8 of
/// wasm's 4-lane ones (V8 maps those to the same 16 on x86).
#[cfg(target_arch = "x86_64")]
const SPAN: usize = 64;
#[cfg(not(target_arch = "x86_64"))]
const SPAN: usize = 32;

/// [`gated`] on `target`.
pub fn gated_mul(target: Target, act: Activation, gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if target.is_avx2() {
        // SAFETY: these targets are picked only on CPUs with AVX2.
        return unsafe { avx2::gated(act, gate, up) };
    }
    let _ = target;
    gated(act, gate, up)
}

/// The largest magnitude of [`quantize_fine`]'s integers: 127 * 64.
const FINE_MAX: i32 = 127 * 64;

/// Quantizes a query head (whole blocks of 32) finer than 8 bits, as two 8-bit block sets
/// whose sum is it: each value `d * q` with `q` an integer of magnitude at most 8128 (13
/// bits), `q = 64 * high + low` (`high` within 127, `low` within 32), `high`'s blocks scaled
/// `64 * d` and `low`'s `d`. Scores from 8-bit queries measured 3% worse in NLL over
/// SmolLM2's long case (1.028 vs 0.997 of the f32 reference); these keep f32 queries'
/// accuracy at two integer products a key. Plain f32 operations: the same bits everywhere.
pub fn quantize_fine(x: &[f32], high: &mut [ActBlock], low: &mut [ActBlock]) {
    // Adding and subtracting 1.5 * 2^23 rounds an f32 below 2^22 in magnitude half to even.
    const ROUND: f32 = 12_582_912.0;
    for ((xb, h), l) in x.chunks_exact(super::kernels::QK).zip(high).zip(low) {
        let amax = xb.iter().fold(0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
        let d = amax / FINE_MAX as f32;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let (mut sum_h, mut sum_l) = (0i32, 0i32);
        for (j, &v) in xb.iter().enumerate() {
            let q = (((v * id + ROUND) - ROUND) as i32).clamp(-FINE_MAX, FINE_MAX);
            let qh = ((q as f32 * (1.0 / 64.0) + ROUND) - ROUND) as i32;
            (h.qs[j], l.qs[j]) = (qh as i8, (q - 64 * qh) as i8);
            (sum_h, sum_l) = (sum_h + qh, sum_l + q - 64 * qh);
        }
        (h.d, l.d) = (64.0 * d, d);
        (h.dsum, l.dsum) = (h.d * sum_h as f32, d * sum_l as f32);
    }
}

/// Scores of query heads that share a KV head against its keys: `q: [g][2][nb]` each head's
/// [`quantize_fine`] blocks (zero-padded to whole blocks); positions 4i..4i+4 of the span are
/// in slot group `groups[i]`, whose `nb` blocks of this KV head start at
/// `keys[block(groups[i])]`; `skip` positions of the first group come before the span.
/// `scores: [g][len]`, each `scale * (high + low)`, both the matrix kernels' sums `sum over
/// blocks of (d_k * d_q) * (integer dot)`: the same bits on every target.
#[allow(clippy::too_many_arguments)]
pub fn key_scores(target: Target, q: &[ActBlock], nb: usize, keys: &[Q8x4], groups: &[usize], block: impl Fn(usize) -> usize, skip: usize, len: usize, scale: f32, scores: &mut Vec<f32>) {
    // Rows of `q` (high and low of each head), TILE at a time.
    let rows = q.len() / nb;
    scores.clear();
    scores.resize(rows / 2 * len, 0.0);
    let mut out = [[0f32; ROWS]; TILE];
    for (i, &group) in groups.iter().enumerate() {
        let k = &keys[block(group)..][..nb];
        for r0 in (0..rows).step_by(TILE) {
            let n = TILE.min(rows - r0);
            let acts: [&[ActBlock]; TILE] = std::array::from_fn(|j| if j < n { &q[(r0 + j) * nb..(r0 + j + 1) * nb] } else { &[][..] });
            target.q8(k, &acts[..n], &mut out[..n]);
            for (j, pair) in out[..n].chunks_exact(2).enumerate() {
                let h = r0 / 2 + j;
                for (lane, (high, low)) in pair[0].iter().zip(&pair[1]).enumerate() {
                    // Position 4i + lane of the groups is position 4i + lane - skip of the span.
                    let p = (ROWS * i + lane).wrapping_sub(skip);
                    if p < len {
                        scores[h * len + p] = (high + low) * scale;
                    }
                }
            }
        }
    }
}

/// [`attend_chunk_with`] on `target`.
pub fn attend_chunk(target: Target, out: &mut [f32], scores: &mut [f32], values: &[f32], rows: &[usize], off: usize, head_dim: usize) {
    #[cfg(target_arch = "x86_64")]
    if target.is_avx2() {
        // SAFETY: as in `gated_mul`.
        return unsafe { avx2::attend_chunk(out, scores, values, rows, off, head_dim) };
    }
    let _ = target;
    attend_chunk_with(out, scores, values, rows, off, head_dim)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::model::Activation;

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
        super::gated(act, gate, up)
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn attend_chunk(out: &mut [f32], scores: &mut [f32], values: &[f32], rows: &[usize], off: usize, head_dim: usize) {
        super::attend_chunk_with(out, scores, values, rows, off, head_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::{exp, quantize_fine, FINE_MAX};
    use crate::backend::cpu::kernels::ActBlock;
    use bytemuck::Zeroable;

    /// Each value is `64 * high + low` times the block's scale, within half a step of the
    /// input, `high` and `low` within their ranges, and the two blocks' scales and sums agree.
    #[test]
    fn fine_queries_are_high_and_low_bytes_of_13_bits() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37 + if i == 40 { 300.0 } else { 0.0 }).collect();
        let (mut high, mut low) = (vec![ActBlock::zeroed(); 3], vec![ActBlock::zeroed(); 3]);
        quantize_fine(&x, &mut high, &mut low);
        for (b, (h, l)) in high.iter().zip(&low).enumerate() {
            let xb = &x[32 * b..32 * (b + 1)];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(l.d, amax / FINE_MAX as f32);
            assert_eq!(h.d, 64.0 * l.d);
            for (j, &v) in xb.iter().enumerate() {
                let (qh, ql) = (h.qs[j] as i32, l.qs[j] as i32);
                assert!(qh.abs() <= 127 && ql.abs() <= 32, "block {b} value {j}: {qh}, {ql}");
                let back = (64 * qh + ql) as f32 * l.d;
                assert!((back - v).abs() <= 0.5001 * l.d, "block {b} value {j}: {v} came back {back}");
            }
            assert_eq!(h.dsum, h.d * h.qs.iter().map(|&q| q as i32).sum::<i32>() as f32);
            assert_eq!(l.dsum, l.d * l.qs.iter().map(|&q| q as i32).sum::<i32>() as f32);
        }
    }

    /// Within 3 epsilons (relative) of the exact value (f64) over the range softmax and the
    /// activations use.
    #[test]
    fn exp_is_within_three_epsilons() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            let rel = ((got - want) / want).abs();
            worst = worst.max(rel / f32::EPSILON as f64);
        }
        assert!(worst <= 3.0, "exp is off by {worst:.2} epsilons");
    }
}
