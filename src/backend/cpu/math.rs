//! The CPU backend's elementwise functions: `exp` in plain f32 operations (the same bits on every
//! target, and loops over it vectorize, where a libm call per value does not), and the
//! softmax and gated activations built on it. `exp` is within 3 f32 epsilons (relative) of the
//! exact value over the range used.

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
pub fn softmax(x: &mut [f32]) {
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
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `gate = gelu(gate) * up`, GELU's tanh approximation, tanh(y) = 1 - 2 / (e^2y + 1).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x);
        let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
        *g = 0.5 * x * (1.0 + tanh) * u;
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
