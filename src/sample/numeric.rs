//! The sampler's numerics: `e^x` in plain f64 operations (the same bits natively and in wasm,
//! where the platforms' libm differ), sums of its values in a fixed order, and argmax, each
//! written so that the compiler vectorizes it (a 49k-262k-token row every token).

/// `e^x` for x <= 0 from basic f64 operations only (no platform libm), identical on every target.
/// Multiplications and additions only (divisions made it 1.5 ms over a 49k-token row).
pub(super) fn exp_neg(x: f64) -> f64 {
    // e^x = 2^k * e^r with r in [-ln2/2, ln2/2]; a degree-13 Taylor series is exact to f64 there,
    // summed by Horner's rule from the coefficients 1/i!.
    // ln 2 in two parts (fdlibm's): k * LN2_HI is exact for |k| < 2^11, so r keeps f64
    // precision however far below 0 x is.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const INV_LN2: f64 = std::f64::consts::LOG2_E;
    const C: [f64; 14] = {
        let mut c = [1.0; 14];
        let mut i = 1;
        while i < 14 {
            c[i] = c[i - 1] / i as f64;
            i += 1;
        }
        c
    };
    // Round to nearest (even) by adding and subtracting 1.5 * 2^52: two additions on every
    // target (`round` is a libm call in wasm and natively without SSE4.1).
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let shifted = x * INV_LN2 + ROUND;
    let k = shifted - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut sum = C[13];
    for i in (0..13).rev() {
        sum = sum * r + C[i];
    }
    // 2^k as two exact factors (2^k alone is below f64's normal range past -1022), the second
    // 1 unless k < -1000. k as an integer is the low bits of `shifted` (its unit is 1): no
    // float-to-int conversion and no branch, so that loops over `exp_neg` vectorize.
    let ki = shifted.to_bits() as i64 - ROUND.to_bits() as i64;
    let step = if ki < -1000 { -1000 } else { ki };
    let scale = f64::from_bits(((1023 + step) as u64) << 52) * f64::from_bits(((1023 + (ki - step)) as u64) << 52);
    if x < -745.0 {
        0.0
    } else {
        sum * scale
    }
}

/// The sum of `exp_neg((l - max) / t)` over the candidates' logits, in their order (the order
/// of the additions is the result's bits): the exponentials 64 at a time in a loop that
/// vectorizes, then added one by one. A full row's sum in one iterator chain did not vectorize
/// (0.5 ms a token of sampled decode natively, for SmolLM2's 49,152 candidates).
pub(super) fn weight_sum(c: &[(u32, f32)], max: f64, t: f64) -> f64 {
    let mut w = [0f64; 64];
    let mut z = -0.0;
    let mut l = [0f32; 64];
    for chunk in c.chunks(64) {
        for (l, x) in l.iter_mut().zip(chunk) {
            *l = x.1;
        }
        for (w, &l) in w.iter_mut().zip(&l) {
            *w = exp_neg((l as f64 - max) / t);
        }
        for &w in &w[..chunk.len()] {
            z += w;
        }
    }
    z
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    // What `for i { if l[i] > l[best] { best = i } }` returns, in loops that vectorize (that
    // loop took 142 us over SmolLM2's 49,152 logits in Chromium, this 15): the largest value
    // in eight independent lanes (a NaN never wins a comparison), then its first place.
    let Some(&first) = logits.first() else { return 0 };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [first; 8];
    let chunks = logits.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
        }
    }
    let max = lanes.iter().chain(rest).fold(first, |m, &l| if l > m { l } else { m });
    let chunk = logits.chunks(8).position(|c| c.iter().fold(false, |found, &l| found | (l == max))).unwrap_or(0);
    (chunk * 8 + logits[chunk * 8..].iter().position(|&l| l == max).unwrap_or(0)) as u32
}

#[cfg(test)]
mod tests {
    use super::{argmax, exp_neg};

    /// The first largest logit, NaN never winning (a NaN first logit: 0), as the plain loop.
    #[test]
    fn argmax_is_the_first_largest() {
        let plain = |l: &[f32]| {
            let mut best = 0;
            for (i, &v) in l.iter().enumerate() {
                if v > l[best] {
                    best = i;
                }
            }
            best as u32
        };
        let nan = f32::NAN;
        let mut cases: Vec<Vec<f32>> =
            vec![vec![], vec![nan, 1.0, 2.0], vec![1.0, nan, 3.0, 3.0, -1.0], vec![-0.0, -1.0, 0.0, -0.0], vec![f32::NEG_INFINITY; 19], vec![2.0; 17], vec![-5.0, f32::INFINITY, 7.0, f32::INFINITY]];
        cases.extend((1..40).map(|n| (0..n).map(|i| ((i * 37 % 11) as f32) - if i % 5 == 0 { nan } else { 0.0 }).collect()));
        for c in &cases {
            assert_eq!(argmax(c), plain(c), "{c:?}");
        }
    }

    /// Within a few f64 ulps of the platform's `exp` (which it may not use: libm differs
    /// between targets) from 0 down to underflow, and 0 below.
    /// The branch-free form has the bits of the form with a branch and a scaling loop (2^k
    /// applied in steps of at most 2^-1000), down through the subnormals to 0.
    #[test]
    fn exp_neg_equals_its_loop_form() {
        let looped = |x: f64| -> f64 {
            if x < -745.0 {
                return 0.0;
            }
            const ROUND: f64 = 6_755_399_441_055_744.0;
            let k = (x * std::f64::consts::LOG2_E + ROUND) - ROUND;
            let r = (x - k * f64::from_bits(0x3fe6_2e42_fee0_0000)) - k * f64::from_bits(0x3dea_39ef_3579_3c76);
            let mut c = [1.0; 14];
            for i in 1..14 {
                c[i] = c[i - 1] / i as f64;
            }
            let mut sum = c[13];
            for i in (0..13).rev() {
                sum = sum * r + c[i];
            }
            let (mut scale, mut k) = (1.0, k as i32);
            while k < 0 {
                let step = k.max(-1000);
                scale *= f64::from_bits(((1023 + step) as u64) << 52);
                k -= step;
            }
            sum * scale
        };
        for i in 0..400_000 {
            let x = -(i as f64) * 0.001_873;
            assert_eq!(exp_neg(x).to_bits(), looped(x).to_bits(), "x = {x}");
        }
        assert!(exp_neg(f64::NAN).is_nan());
    }

    #[test]
    fn exp_neg_is_exp_to_f64_precision() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f64) * 0.003_727;
            let (got, want) = (exp_neg(x), x.exp());
            if want > 1e-300 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 4.0 * f64::EPSILON, "worst relative error {worst:e}");
        assert_eq!((exp_neg(0.0), exp_neg(-746.0)), (1.0, 0.0));
    }
}
