//! The CPU backend's elementwise functions: `exp` in plain f32 operations (the same bits on every
//! target, and loops over it vectorize, where a libm call per value does not), and the
//! softmax, attention and gated activations built on it. `exp` is within 3 f32 epsilons
//! (relative) of the exact value over the range used. On x86_64 the public functions run an
//! AVX2 build of themselves where the kernels' target is AVX2: `exp`'s rounding is then one
//! instruction instead of a libm call (x86-64's baseline has none) and the loops run 8 wide;
//! the bits are the same (no fused multiply-add, the same operations in the same order).

use super::kernels::Target;
use crate::backend::reference::ops::dot8;
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

/// In-place softmax.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    // The exponentials in a loop of their own vectorize; the sum stays in order.
    x.iter_mut().for_each(|v| *v = exp(*v - max));
    let mut sum = 0.0;
    for v in x.iter() {
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
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

/// Query heads that share a KV head, `q: [g][head_dim]`, over the K/V rows starting at `rows`
/// (+ `off`, their KV head's columns): softmax(q . k * scale) . v into `out: [g][head_dim]`.
/// Each head's sums are [`dot8`]'s and a weighted sum of V rows in row order, as if computed one
/// at a time; they are interleaved so that independent sums fill the vector units.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_with<D: Fn(&[f32], [&[f32]; DOTS]) -> [f32; DOTS]>(
    dots: D,
    out: &mut [f32],
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    rows: &[usize],
    off: usize,
    head_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let (hd, len) = (head_dim, rows.len());
    scores.clear();
    scores.resize(q.len() / hd * len, 0.0);
    for (c, rs) in rows.chunks(DOTS).enumerate() {
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            let at = h * len + c * DOTS;
            if rs.len() == DOTS {
                let d = dots(qh, std::array::from_fn(|i| &keys[rs[i] + off..][..hd]));
                scores[at..at + DOTS].iter_mut().zip(d).for_each(|(s, d)| *s = d * scale);
            } else {
                scores[at..at + rs.len()].iter_mut().zip(rs).for_each(|(s, &r)| *s = dot8(qh, &keys[r + off..][..hd]) * scale);
            }
        }
    }
    scores.chunks_exact_mut(len.max(1)).for_each(softmax);
    for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
        let a = &scores[h * len..(h + 1) * len];
        for (c, oc) in oh.chunks_mut(SPAN).enumerate() {
            let col = off + c * SPAN;
            if oc.len() == SPAN {
                // A span of the output stays in registers over all rows.
                let mut acc = [0f32; SPAN];
                for (&r, &w) in rows.iter().zip(a) {
                    let v: &[f32; SPAN] = values[r + col..][..SPAN].try_into().expect("a span");
                    for j in 0..SPAN {
                        acc[j] += w * v[j];
                    }
                }
                oc.copy_from_slice(&acc);
            } else {
                let n = oc.len();
                oc.fill(0.0);
                for (&r, &w) in rows.iter().zip(a) {
                    oc.iter_mut().zip(&values[r + col..][..n]).for_each(|(o, v)| *o += w * v);
                }
            }
        }
    }
}

/// Keys scored at once (independent sums in flight).
const DOTS: usize = 8;
/// Output values accumulated in registers at once: 8 of x86-64's 16 vector registers, 8 of
/// wasm's 4-lane ones (V8 maps those to the same 16 on x86).
#[cfg(target_arch = "x86_64")]
const SPAN: usize = 64;
#[cfg(not(target_arch = "x86_64"))]
const SPAN: usize = 32;

/// [`dot8`] of `q` with each of `DOTS` rows (the targets' vector forms are in their modules).
#[inline(always)]
fn dots(q: &[f32], k: [&[f32]; DOTS]) -> [f32; DOTS] {
    std::array::from_fn(|r| dot8(q, &k[r][..q.len()]))
}

/// [`dot8`]'s last steps: its eight lane sums added in order, then the products of the values
/// past the last whole 8.
#[inline(always)]
fn dot_total(lanes: [f32; 8], q_tail: &[f32], k_tail: &[f32]) -> f32 {
    let tail: f32 = q_tail.iter().zip(k_tail).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use std::arch::wasm32::*;

    use super::DOTS;

    /// [`super::dots`] with each row's eight lane sums in two registers: the same sums.
    #[inline(always)]
    pub fn dots(q: &[f32], k: [&[f32]; DOTS]) -> [f32; DOTS] {
        let whole = q.len() / 8 * 8;
        assert!(k.iter().all(|k| k.len() >= q.len()));
        let mut acc = [[f32x4_splat(0.0); 2]; DOTS];
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 <= whole <= the length of q and of every row; unaligned-safe loads.
            unsafe {
                let (q0, q1) = (v128_load(q.as_ptr().add(c) as *const v128), v128_load(q.as_ptr().add(c + 4) as *const v128));
                for (acc, k) in acc.iter_mut().zip(&k) {
                    let (k0, k1) = (v128_load(k.as_ptr().add(c) as *const v128), v128_load(k.as_ptr().add(c + 4) as *const v128));
                    acc[0] = f32x4_add(acc[0], f32x4_mul(q0, k0));
                    acc[1] = f32x4_add(acc[1], f32x4_mul(q1, k1));
                }
            }
        }
        std::array::from_fn(|r| {
            let [a, b] = acc[r];
            let lanes = [
                f32x4_extract_lane::<0>(a),
                f32x4_extract_lane::<1>(a),
                f32x4_extract_lane::<2>(a),
                f32x4_extract_lane::<3>(a),
                f32x4_extract_lane::<0>(b),
                f32x4_extract_lane::<1>(b),
                f32x4_extract_lane::<2>(b),
                f32x4_extract_lane::<3>(b),
            ];
            super::dot_total(lanes, &q[whole..], &k[r][whole..q.len()])
        })
    }
}

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

/// [`attend_with`] on `target`.
#[allow(clippy::too_many_arguments)]
pub fn attend(target: Target, out: &mut [f32], q: &[f32], keys: &[f32], values: &[f32], rows: &[usize], off: usize, head_dim: usize, scale: f32, scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if target.is_avx2() {
        // SAFETY: as in `gated_mul`.
        return unsafe { avx2::attend(out, q, keys, values, rows, off, head_dim, scale, scores) };
    }
    let _ = target;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return attend_with(simd128::dots, out, q, keys, values, rows, off, head_dim, scale, scores);
    #[allow(unreachable_code)]
    attend_with(dots, out, q, keys, values, rows, off, head_dim, scale, scores)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::DOTS;
    use crate::model::Activation;

    /// [`super::dots`] in 8-lane registers: the same sums.
    #[inline(always)]
    unsafe fn dots(q: &[f32], k: [&[f32]; DOTS]) -> [f32; DOTS] {
        let whole = q.len() / 8 * 8;
        assert!(k.iter().all(|k| k.len() >= q.len()));
        let mut acc = [_mm256_setzero_ps(); DOTS];
        for c in (0..whole).step_by(8) {
            let qv = _mm256_loadu_ps(q.as_ptr().add(c));
            for (acc, k) in acc.iter_mut().zip(&k) {
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(qv, _mm256_loadu_ps(k.as_ptr().add(c))));
            }
        }
        std::array::from_fn(|r| {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
            super::dot_total(lanes, &q[whole..], &k[r][whole..q.len()])
        })
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
        super::gated(act, gate, up)
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn attend(out: &mut [f32], q: &[f32], keys: &[f32], values: &[f32], rows: &[usize], off: usize, head_dim: usize, scale: f32, scores: &mut Vec<f32>) {
        super::attend_with(|q, k| dots(q, k), out, q, keys, values, rows, off, head_dim, scale, scores)
    }
}

#[cfg(test)]
mod tests {
    use super::exp;

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
