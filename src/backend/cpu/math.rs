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
        for &r in rows.get((c + 2) * DOTS..).unwrap_or(&[]).iter().take(DOTS) {
            prefetch(keys.as_ptr().wrapping_add(r + off), hd);
        }
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
                for (i, (&r, &w)) in rows.iter().zip(a).enumerate() {
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
                for (&r, &w) in rows.iter().zip(a) {
                    oc.iter_mut().zip(&values[r + col..][..n]).for_each(|(o, v)| *o += w * v);
                }
            }
        }
    }
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

/// [`dot8`]'s last step for the vector forms of [`dots`]: each row's products of the values
/// past the last whole 8 (`whole`), summed in order, added to its lane total.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn add_tails(sums: &mut [f32; DOTS], q: &[f32], k: &[&[f32]; DOTS], whole: usize) {
    if whole < q.len() {
        for (s, k) in sums.iter_mut().zip(k) {
            *s += q[whole..].iter().zip(&k[whole..q.len()]).map(|(x, y)| x * y).sum::<f32>();
        }
    }
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
        // Four rows at a time transposed, lane j of each in one register: adding the eight in
        // order gives each row's lanes summed in order.
        let mut sums = [0f32; DOTS];
        for (rows, out) in acc.chunks_exact(4).zip(sums.chunks_exact_mut(4)) {
            let mut lanes = [f32x4_splat(0.0); 8];
            for half in 0..2 {
                let (t0, t1) = (i32x4_shuffle::<0, 4, 1, 5>(rows[0][half], rows[1][half]), i32x4_shuffle::<2, 6, 3, 7>(rows[0][half], rows[1][half]));
                let (t2, t3) = (i32x4_shuffle::<0, 4, 1, 5>(rows[2][half], rows[3][half]), i32x4_shuffle::<2, 6, 3, 7>(rows[2][half], rows[3][half]));
                lanes[4 * half] = i32x4_shuffle::<0, 1, 4, 5>(t0, t2);
                lanes[4 * half + 1] = i32x4_shuffle::<2, 3, 6, 7>(t0, t2);
                lanes[4 * half + 2] = i32x4_shuffle::<0, 1, 4, 5>(t1, t3);
                lanes[4 * half + 3] = i32x4_shuffle::<2, 3, 6, 7>(t1, t3);
            }
            let sum = lanes[1..].iter().fold(lanes[0], |s, &l| f32x4_add(s, l));
            // SAFETY: `out` is four f32.
            unsafe { v128_store(out.as_mut_ptr() as *mut v128, sum) };
        }
        super::add_tails(&mut sums, q, &k, whole);
        sums
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
        // Transposed, lane j of every row in one register: adding the eight in order gives each
        // row's lanes summed in order, eight rows at once.
        let lo = |a, b| _mm256_unpacklo_ps(a, b);
        let hi = |a, b| _mm256_unpackhi_ps(a, b);
        let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
        let (t0, t1, t2, t3) = (lo(a0, a1), hi(a0, a1), lo(a2, a3), hi(a2, a3));
        let (t4, t5, t6, t7) = (lo(a4, a5), hi(a4, a5), lo(a6, a7), hi(a6, a7));
        let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
        let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
        let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
        let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
        // Lane j of rows 0..4 in u_j's low half (j < 4) or u_{j-4}'s high half; rows 4..8 in u_{j+4}.
        let lane = |a: __m256, b: __m256, high: bool| if high { _mm256_permute2f128_ps::<0x31>(a, b) } else { _mm256_permute2f128_ps::<0x20>(a, b) };
        let mut sum = lane(u0, u4, false);
        for (a, b, high) in [(u1, u5, false), (u2, u6, false), (u3, u7, false), (u0, u4, true), (u1, u5, true), (u2, u6, true), (u3, u7, true)] {
            sum = _mm256_add_ps(sum, lane(a, b, high));
        }
        let mut sums = [0f32; DOTS];
        _mm256_storeu_ps(sums.as_mut_ptr(), sum);
        super::add_tails(&mut sums, q, &k, whole);
        sums
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
