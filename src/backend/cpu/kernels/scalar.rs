//! The portable kernels, and the definition the SIMD ones match bit for bit: per block, an exact
//! integer dot product per row, then `acc += (d * d_act) * isum` and `accm += m * dsum_act` in
//! f32, and `acc + accm` at the end.

use super::{h2f, ActBlock, Q4x4, Q5x4, Q8Group, QK, ROWS};

pub fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    nibbles(w, acts, out, |g, r, j| g.q(r, j), |g| g)
}

pub fn q5(w: &[Q5x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    nibbles(w, acts, out, |g, r, j| g.q(r, j), |g| &g.q4)
}

/// The 4- and 5-bit kernels: `value(g, r, j)` is row r's value j, `low(g)` holds the scales and
/// mins.
fn nibbles<G>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]], value: impl Fn(&G, usize, usize) -> u8, low: impl Fn(&G) -> &Q4x4) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let (mut acc, mut accm) = ([0f32; ROWS], [0f32; ROWS]);
        for (g, b) in w.iter().zip(a.iter()) {
            let sc = low(g);
            for r in 0..ROWS {
                let isum: i32 = (0..QK).map(|j| value(g, r, j) as i32 * b.qs[j] as i32).sum();
                acc[r] += h2f(sc.d[r]) * b.d * isum as f32;
                accm[r] += h2f(sc.m[r]) * b.dsum;
            }
        }
        *o = std::array::from_fn(|r| acc[r] + accm[r]);
    }
}

pub fn q8<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let (mut acc, mut accm) = ([0f32; ROWS], [0f32; ROWS]);
        for (g, b) in w.iter().zip(a.iter()) {
            for r in 0..ROWS {
                let half = |h: usize| (h * QK / 2..(h + 1) * QK / 2).map(|j| g.qs()[r][j] as i32 * b.qs[j] as i32).sum::<i32>();
                let (lo, hi) = (half(0), half(1));
                if G::HALVES {
                    acc[r] += h2f(g.d()[r]) * b.d * lo as f32;
                    acc[r] += h2f(g.d()[ROWS + r]) * b.d * hi as f32;
                } else {
                    acc[r] += h2f(g.d()[r]) * b.d * (lo + hi) as f32;
                }
                if G::MIN {
                    accm[r] += h2f(g.m()[r]) * b.dsum;
                }
            }
        }
        *o = std::array::from_fn(|r| acc[r] + accm[r]);
    }
}
