//! The CPU backend's elementwise functions: `exp` in plain f32 operations (the same bits on every
//! target, and loops over it vectorize, where a libm call per value does not), and the
//! softmax, attention and gated activations built on it. `exp` is within 3 f32 epsilons
//! (relative) of the exact value over the range used. On x86_64 the public functions run an
//! AVX2 build of themselves where the kernels' target is AVX2: `exp`'s rounding is then one
//! instruction instead of a libm call (x86-64's baseline has none) and the loops run 8 wide;
//! the bits are the same (no fused multiply-add, the same operations in the same order).

use super::kernels::Target;
use crate::backend::reference::ops::dot;
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
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp(*v - max);
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

/// One query head over the K/V rows starting at `rows` (+ `off`, its KV head's columns):
/// softmax(q . k * scale) . v into `out`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_with(out: &mut [f32], q: &[f32], keys: &[f32], values: &[f32], rows: &[usize], off: usize, scale: f32, scores: &mut Vec<f32>) {
    let hd = q.len();
    scores.clear();
    scores.extend(rows.iter().map(|&r| dot(q, &keys[r + off..][..hd]) * scale));
    softmax(scores);
    out.fill(0.0);
    for (&r, &a) in rows.iter().zip(scores.iter()) {
        for (o, v) in out.iter_mut().zip(&values[r + off..][..hd]) {
            *o += a * v;
        }
    }
}

/// [`gated`] on `target`.
pub fn gated_mul(target: Target, act: Activation, gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if target == Target::Avx2 {
        // SAFETY: `Target::Avx2` is picked only on CPUs with AVX2.
        return unsafe { avx2::gated(act, gate, up) };
    }
    let _ = target;
    gated(act, gate, up)
}

/// [`attend_with`] on `target`.
#[allow(clippy::too_many_arguments)]
pub fn attend(target: Target, out: &mut [f32], q: &[f32], keys: &[f32], values: &[f32], rows: &[usize], off: usize, scale: f32, scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if target == Target::Avx2 {
        // SAFETY: as in `gated_mul`.
        return unsafe { avx2::attend(out, q, keys, values, rows, off, scale, scores) };
    }
    let _ = target;
    attend_with(out, q, keys, values, rows, off, scale, scores)
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
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn attend(out: &mut [f32], q: &[f32], keys: &[f32], values: &[f32], rows: &[usize], off: usize, scale: f32, scores: &mut Vec<f32>) {
        super::attend_with(out, q, keys, values, rows, off, scale, scores)
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
