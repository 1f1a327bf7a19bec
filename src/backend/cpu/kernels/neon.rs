//! aarch64 NEON (baseline on every aarch64 CPU, so no run-time check): widening 8-bit products
//! (`smull`) summed pairwise into i32 lanes, one total per row, then the f32 steps of `scalar`
//! four rows at a time with separate multiplies and adds (a fused multiply-add would round
//! differently from the other targets).

use std::arch::aarch64::*;

use super::{h2f, ActBlock, Q4x4, Q8Group, ROWS, TILE};

/// The f16 scales of four rows as f32 (exact: `half` does the conversion).
#[inline(always)]
unsafe fn scales(h: &[u16]) -> float32x4_t {
    let v: [f32; ROWS] = std::array::from_fn(|r| h2f(h[r]));
    vld1q_f32(v.as_ptr())
}

/// Sum of the 16 products of `w` and `a` (each 16 signed 8-bit values) as i32 lanes; exact, as
/// each product fits an i16 and pairs are widened before they are added.
#[inline(always)]
unsafe fn dot16(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(a));
    let hi = vmull_high_s8(w, a);
    vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

/// Four rows' totals `[r0, r1, r2, r3]` from their i32 lanes.
#[inline(always)]
unsafe fn totals(p: [int32x4_t; ROWS]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]))
}

/// # Safety
/// NEON is part of every aarch64 target; the slices are as [`super::Target::q4`] requires.
pub unsafe fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([vdupq_n_f32(0.0); TILE], [vdupq_n_f32(0.0); TILE]);
    let low4 = vdupq_n_u8(0xF);
    for (b, g) in w.iter().enumerate() {
        let q: [uint8x16_t; ROWS] = std::array::from_fn(|r| vld1q_u8(g.qs[r].as_ptr()));
        // Values 0..16 are the low nibbles, 16..32 the high ones (0..15: safe as i8).
        let lo = q.map(|v| vreinterpretq_s8_u8(vandq_u8(v, low4)));
        let hi = q.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)));
        let (d, m) = (scales(&g.d), scales(&g.m));
        for t in 0..n {
            let ab = &acts[t][b];
            let (a_lo, a_hi) = (vld1q_s8(ab.qs.as_ptr()), vld1q_s8(ab.qs[16..].as_ptr()));
            let isum = totals(std::array::from_fn(|r| vaddq_s32(dot16(lo[r], a_lo), dot16(hi[r], a_hi))));
            acc[t] = vaddq_f32(acc[t], vmulq_f32(vmulq_f32(d, vdupq_n_f32(ab.d)), vcvtq_f32_s32(isum)));
            accm[t] = vaddq_f32(accm[t], vmulq_f32(m, vdupq_n_f32(ab.dsum)));
        }
    }
    for t in 0..n {
        vst1q_f32(out[t].as_mut_ptr(), vaddq_f32(acc[t], accm[t]));
    }
}

/// # Safety
/// As [`q4`].
pub unsafe fn q8<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([vdupq_n_f32(0.0); TILE], [vdupq_n_f32(0.0); TILE]);
    for (b, g) in w.iter().enumerate() {
        let lo: [int8x16_t; ROWS] = std::array::from_fn(|r| vld1q_s8(g.qs()[r].as_ptr()));
        let hi: [int8x16_t; ROWS] = std::array::from_fn(|r| vld1q_s8(g.qs()[r][16..].as_ptr()));
        let d = scales(g.d());
        let d_hi = if G::HALVES { scales(&g.d()[ROWS..]) } else { d };
        let m = if G::MIN { scales(g.m()) } else { vdupq_n_f32(0.0) };
        for t in 0..n {
            let ab = &acts[t][b];
            let (a_lo, a_hi) = (vld1q_s8(ab.qs.as_ptr()), vld1q_s8(ab.qs[16..].as_ptr()));
            let s_lo = totals(std::array::from_fn(|r| dot16(lo[r], a_lo)));
            let s_hi = totals(std::array::from_fn(|r| dot16(hi[r], a_hi)));
            let ad = vdupq_n_f32(ab.d);
            if G::HALVES {
                acc[t] = vaddq_f32(acc[t], vmulq_f32(vmulq_f32(d, ad), vcvtq_f32_s32(s_lo)));
                acc[t] = vaddq_f32(acc[t], vmulq_f32(vmulq_f32(d_hi, ad), vcvtq_f32_s32(s_hi)));
            } else {
                acc[t] = vaddq_f32(acc[t], vmulq_f32(vmulq_f32(d, ad), vcvtq_f32_s32(vaddq_s32(s_lo, s_hi))));
            }
            if G::MIN {
                accm[t] = vaddq_f32(accm[t], vmulq_f32(m, vdupq_n_f32(ab.dsum)));
            }
        }
    }
    for t in 0..n {
        vst1q_f32(out[t].as_mut_ptr(), vaddq_f32(acc[t], accm[t]));
    }
}
