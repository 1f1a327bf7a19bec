//! The sampler's numerics: `e^x` in plain f32 operations (the same bits natively and in wasm,
//! where the platforms' libm differ), sums of its values in a fixed order, argmax and a row's
//! largest logits, each written so that the compiler vectorizes it (a 49k-262k-token row every
//! token).

/// `e^x` for x <= 0 in f32 from basic operations only (no platform libm, no fused multiply-add),
/// so it has the same bits on every target: within 2 ulp of `exp` down to e^-87, 0 below (and
/// at -inf) and for NaN (a NaN logit weighs nothing). A sampling weight needs no more: the f64
/// form (a degree-13 polynomial on two f64 lanes) took 1.1 ms a token natively over Gemma 3's
/// 262,144 logits.
pub(super) fn exp32(x: f32) -> f32 {
    // e^x = 2^k * e^r with r in [-ln2/2, ln2/2] and a degree-7 Taylor polynomial (its error is
    // below f32's precision there). ln 2 in two parts: k * LN2_HI is exact for |k| < 2^15.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by adding and subtracting 1.5 * 2^23: the integer k is then the low bits
    // of `shifted`, with no float-to-int conversion and no branch, so loops vectorize.
    const ROUND: f32 = 12_582_912.0;
    let xc = if x < -88.0 { -88.0 } else { x };
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // k in [-127, 0]: 2^k from its exponent bits (0 at -127, where the result is 0 anyway).
    let ki = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((127 + ki) as u32) << 23);
    // 0 below e^-87 (and for NaN) by a mask, not a branch.
    let kept = (x >= -87.0) as u32;
    f32::from_bits((p * scale).to_bits() & kept.wrapping_neg())
}

/// 1 / T for a temperature T > 0, finite however small T is (1 / 1e-39 overflows f32): with
/// it, every weight but the largest logit's rounds to 0, as the limit T -> 0 has it.
pub(super) fn inv_temperature(t: f32) -> f32 {
    (1.0 / t).min(f32::MAX)
}

/// A row's logits as sampling candidates `(id, logit)`: NaN counts as -inf (never drawn, and
/// sorted where -inf is), so that every selection, sort and weight sees the same order.
pub(super) fn candidates(logits: &[f32]) -> impl Iterator<Item = (u32, f32)> + '_ {
    logits.iter().enumerate().map(|(i, &v)| (i as u32, if v.is_nan() { f32::NEG_INFINITY } else { v }))
}

/// A candidate's sampling weight at inverse temperature `inv_t`: e^((l - max) inv_t) for the
/// row's largest logit `max` (so the largest weighs exactly 1), summed and divided in f64.
pub(super) fn weight(l: f32, max: f32, inv_t: f32) -> f64 {
    exp32((l - max) * inv_t) as f64
}

/// Lanes of a weight sum: value i of a sequence goes to lane i % LANES, and the lanes are added
/// in one fixed order at the end (a fixed order is the result's bits, on every target).
const LANES: usize = 8;

fn add_weights(acc: &mut [f64; LANES], l: &[f32], max: f32, inv_t: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { add_weights_avx2(acc, l, max, inv_t) };
    }
    add_weights_in_lanes(acc, l, max, inv_t)
}

/// [`add_weights_in_lanes`] in 8-lane registers natively: the same operations, so the same
/// bits (no FMA: Rust never fuses a multiply and an add), in half the time of SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_weights_avx2(acc: &mut [f64; LANES], l: &[f32], max: f32, inv_t: f32) {
    add_weights_in_lanes(acc, l, max, inv_t)
}

#[inline(always)]
fn add_weights_in_lanes(acc: &mut [f64; LANES], l: &[f32], max: f32, inv_t: f32) {
    // The exponentials 64 at a time into f32 lanes, then added in f64: in one loop the f64 sums
    // held the f32 arithmetic to their lane count (two in SSE2 and wasm).
    let mut w = [0f32; 64];
    for chunk in l.chunks(64) {
        let w = &mut w[..chunk.len()];
        for (w, &v) in w.iter_mut().zip(chunk) {
            *w = exp32((v - max) * inv_t);
        }
        let lanes = w.chunks_exact(LANES);
        let rest = lanes.remainder();
        for c in lanes {
            for j in 0..LANES {
                acc[j] += c[j] as f64;
            }
        }
        for (a, &w) in acc.iter_mut().zip(rest) {
            *a += w as f64;
        }
    }
}

fn total(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The sum of [`weight`] over a row of logits, in lanes that vectorize.
pub(super) fn weight_total(l: &[f32], max: f32, inv_t: f32) -> f64 {
    let mut acc = [0.0; LANES];
    add_weights(&mut acc, l, max, inv_t);
    total(acc)
}

/// [`weight_total`] of the candidates' logits in their order (the same bits as over a row of
/// them), copied out 64 at a time so that the sum vectorizes.
pub(super) fn weight_sum(c: &[(u32, f32)], max: f32, inv_t: f32) -> f64 {
    let mut acc = [0.0; LANES];
    let mut l = [0f32; 64];
    for chunk in c.chunks(64) {
        for (l, x) in l.iter_mut().zip(chunk) {
            *l = x.1;
        }
        add_weights(&mut acc, &l[..chunk.len()], max, inv_t);
    }
    total(acc)
}

/// Sampling order: logit descending, then token id ascending.
pub(super) fn order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Logits a row is cut into by [`top_of_row`].
const CHUNK: usize = 64;

/// The largest of a run of logits (NaN never; -inf for none), in lanes that vectorize.
fn largest(c: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let parts = c.chunks_exact(8);
    let rest = parts.remainder();
    for p in parts {
        for j in 0..8 {
            lanes[j] = if p[j] > lanes[j] { p[j] } else { lanes[j] };
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The first `k` of a row's [`candidates`] in sampling order into `out`, sorted (the whole row
/// when it is shorter), without building and selecting among all of them (0.5 ms a token over
/// Gemma 3's 262,144 logits natively). The k-th largest of the row's chunk maxima is a floor
/// under the k-th largest logit (k chunks hold a logit at least that large), so only the chunks
/// that reach it are read again, and only their logits at or above it are selected among.
/// Where fewer than k logits exceed -inf (a grammar's mask), the rest are the first -inf ones
/// by id, taken without gathering the row.
pub(super) fn top_of_row(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    MAXIMA.with(|m| top_of_row_in(logits, k, out, &mut m.borrow_mut()))
}

thread_local! {
    /// The chunk maxima and a copy to select in, reused from row to row: buffers allocated
    /// every token fragmented the wasm heap until it grew (the npm package's soak test).
    static MAXIMA: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn top_of_row_in(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>, (maxima, scratch): &mut (Vec<f32>, Vec<f32>)) {
    maxima.clear();
    maxima.extend(logits.chunks(CHUNK).map(largest));
    let mut floor = f32::NEG_INFINITY;
    if (1..maxima.len()).contains(&k) {
        scratch.clear();
        scratch.extend_from_slice(maxima);
        scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        floor = scratch[k - 1];
    }
    out.clear();
    let taken = |v: f32| v >= floor && v > f32::NEG_INFINITY;
    for (i, chunk) in logits.chunks(CHUNK).enumerate() {
        if taken(maxima[i]) {
            out.extend(chunk.iter().enumerate().filter(|x| taken(*x.1)).map(|(j, &v)| ((CHUNK * i + j) as u32, v)));
        }
    }
    if out.len() < k {
        let rest = candidates(logits).filter(|x| x.1 == f32::NEG_INFINITY);
        out.extend(rest.take(k - out.len()));
    }
    if out.len() > k && k > 0 {
        out.select_nth_unstable_by(k - 1, order);
    }
    out.truncate(k);
    out.sort_by(order);
}

/// What an argmax returns for a row with no logit that counts: every one NaN or at or below
/// [`NO_LOGIT`] (the GPU's argmax kernel returns the same).
pub const NO_TOKEN: u32 = u32::MAX;

/// Logits at or below this never win an argmax (-inf and masked-out tokens; the WGSL kernel's
/// floor, which has no infinity literal).
pub const NO_LOGIT: f32 = -3.4e38;

/// Whether a logit can be chosen: not NaN and above [`NO_LOGIT`].
pub fn counts(logit: f32) -> bool {
    logit > NO_LOGIT
}

/// Index of the largest logit (the first one on ties); NaN and values at or below [`NO_LOGIT`]
/// never count, and a row where nothing does gives [`NO_TOKEN`].
pub fn argmax(logits: &[f32]) -> u32 {
    // The first place of the largest value, found in eight independent lanes (a NaN never wins
    // a comparison), in loops that vectorize (a plain `if l[i] > l[best]` loop took 142 us over
    // SmolLM2's 49,152 logits in Chromium, this 15).
    let max = largest(logits);
    if !counts(max) {
        return NO_TOKEN;
    }
    let chunk = logits.chunks(8).position(|c| c.iter().fold(false, |found, &l| found | (l == max))).unwrap_or(0);
    (chunk * 8 + logits[chunk * 8..].iter().position(|&l| l == max).unwrap_or(0)) as u32
}

#[cfg(test)]
mod tests {
    use super::{argmax, candidates, exp32, order, top_of_row, weight_sum, weight_total, NO_LOGIT, NO_TOKEN};

    /// The first largest logit, NaN and -inf never winning, as a plain loop over the values that
    /// count; [`NO_TOKEN`] where none does.
    #[test]
    fn argmax_is_the_first_largest() {
        let plain = |l: &[f32]| {
            let mut best: Option<usize> = None;
            for (i, &v) in l.iter().enumerate() {
                if v > NO_LOGIT && best.is_none_or(|b| v > l[b]) {
                    best = Some(i);
                }
            }
            best.map_or(NO_TOKEN, |b| b as u32)
        };
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![nan, 1.0, 2.0],
            vec![1.0, nan, 3.0, 3.0, -1.0],
            vec![-0.0, -1.0, 0.0, -0.0],
            vec![-inf; 19],
            vec![nan; 9],
            vec![2.0; 17],
            vec![-5.0, inf, 7.0, inf],
            vec![f32::MIN, -inf, nan],
        ];
        cases.extend((1..40).map(|n| (0..n).map(|i| ((i * 37 % 11) as f32) - if i % 5 == 0 { nan } else { 0.0 }).collect()));
        for c in &cases {
            assert_eq!(argmax(c), plain(c), "{c:?}");
        }
        assert_eq!(argmax(&[nan, 1.0, 2.0]), 2);
        assert_eq!(argmax(&[-inf; 19]), NO_TOKEN);
    }

    #[test]
    fn exp32_is_exp_to_f32_precision() {
        let mut worst = 0f64;
        for i in 0..2_000_000 {
            let x = -(i as f32) * 4.35e-5;
            let (got, want) = (exp32(x) as f64, (x as f64).exp());
            if x >= -87.0 {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert_eq!(got, 0.0, "x = {x}");
            }
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!((exp32(0.0), exp32(-0.0), exp32(f32::NEG_INFINITY), exp32(-1e30)), (1.0, 1.0, 0.0, 0.0));
        assert_eq!(exp32(f32::NAN), 0.0);
    }

    /// The vectorized sums are value i in lane i % 8, lanes added pairwise, bit for bit.
    #[test]
    fn weight_total_is_its_plain_loop() {
        for n in [0, 5, 64, 1001, 262_144] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7919 % 100_003) as f32) * -3e-4 + if i % 5 == 0 { f32::NEG_INFINITY } else { 0.0 }).collect();
            for inv_t in [1.0, 1.0 / 0.7, 4.0] {
                let mut acc = [0f64; 8];
                for (i, &v) in row.iter().enumerate() {
                    acc[i % 8] += exp32((v - 1.5) * inv_t) as f64;
                }
                let want = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
                assert_eq!(weight_total(&row, 1.5, inv_t).to_bits(), want.to_bits(), "n {n}");
            }
        }
    }

    /// A sum over candidates is the sum over a row of the same logits, bit for bit.
    #[test]
    fn weight_sums_of_rows_and_candidates_agree() {
        for n in [0, 1, 7, 8, 63, 64, 65, 1000] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32) * 0.01 - 5.0).collect();
            let c: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            for inv_t in [1.0, 1.0 / 0.7] {
                assert_eq!(weight_total(&row, 5.0, inv_t).to_bits(), weight_sum(&c, 5.0, inv_t).to_bits(), "n {n}");
            }
        }
    }

    /// The first `k` of a full sort, on rows with ties, -0, -inf, NaN (as -inf), a few finite
    /// values among -inf, and flat and peaked spreads.
    #[test]
    fn top_of_row_is_the_sorted_prefix() {
        let mut rows: Vec<Vec<f32>> = vec![vec![], vec![1.0], vec![2.0; 300], vec![0.0, -0.0, 0.0, -0.0]];
        rows.push((0..500).map(|i| if i % 3 == 0 { f32::NEG_INFINITY } else { (i % 7) as f32 }).collect());
        rows.push((0..600).map(|i| if i % 5 == 0 { f32::NAN } else { -(i as f32) * 0.01 }).collect());
        rows.push((0..400).map(|i| if i < 10 { i as f32 } else { f32::NEG_INFINITY }).collect());
        rows.push(
            (0..5000)
                .map(|i| {
                    if i % 997 == 5 {
                        i as f32
                    } else if i % 7 == 0 {
                        f32::NAN
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect(),
        );
        for spread in [0.01, 0.05, 0.1, 0.2, 0.5, 1.0] {
            rows.push((0..3000).map(|i| -((i * 7919 % 3001) as f32) * spread).collect());
        }
        for row in &rows {
            let mut all: Vec<(u32, f32)> = candidates(row).collect();
            all.sort_by(order);
            for k in [1, 2, 64, 256, 257] {
                let mut got = Vec::new();
                top_of_row(row, k, &mut got);
                let want = &all[..k.min(all.len())];
                assert_eq!(got.iter().map(|x| (x.0, x.1.to_bits())).collect::<Vec<_>>(), want.iter().map(|x| (x.0, x.1.to_bits())).collect::<Vec<_>>(), "k {k}, row of {}", row.len());
            }
        }
    }
}
