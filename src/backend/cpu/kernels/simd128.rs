//! wasm simd128: values widened to i16 and multiplied with `i32x4.dot_i16x8_s` (exact), the four
//! rows' sums reduced together, the f32 steps of `scalar` four rows at a time.

use std::arch::wasm32::*;

use super::{ActBlock, Q4x4, Q8Group, ROWS, TILE};

/// Four rows' i32x4 partial sums -> their four totals.
#[inline(always)]
fn reduce4(p: [v128; ROWS]) -> v128 {
    let ab = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(p[0], p[1]), i32x4_shuffle::<2, 6, 3, 7>(p[0], p[1]));
    let cd = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(p[2], p[3]), i32x4_shuffle::<2, 6, 3, 7>(p[2], p[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(ab, cd), i32x4_shuffle::<2, 3, 6, 7>(ab, cd))
}

/// Four f16 scales -> f32, exactly (finite values; the repack refuses others).
#[inline(always)]
fn scales(h: &[u16]) -> v128 {
    // SAFETY: `h` holds at least four u16 (8 bytes); the load is unaligned-safe.
    let h = u32x4_extend_low_u16x8(unsafe { v128_load64_zero(h.as_ptr() as *const u64) });
    let mag = f32x4_mul(u32x4_shl(v128_and(h, u32x4_splat(0x7FFF)), 13), f32x4_splat(f32::from_bits((127 + 112) << 23)));
    v128_or(mag, u32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

/// An activation block's 32 values as four i16x8.
#[inline(always)]
fn widen_act(b: &ActBlock) -> [v128; 4] {
    // SAFETY: `qs` is 32 bytes; the loads are unaligned-safe.
    let (a0, a1) = unsafe { (v128_load(b.qs.as_ptr() as *const v128), v128_load(b.qs.as_ptr().add(16) as *const v128)) };
    [i16x8_extend_low_i8x16(a0), i16x8_extend_high_i8x16(a0), i16x8_extend_low_i8x16(a1), i16x8_extend_high_i8x16(a1)]
}

#[inline(always)]
fn dot2(w: &[v128; 4], a: &[v128; 4], i: usize) -> v128 {
    i32x4_add(i32x4_dot_i16x8(w[2 * i], a[2 * i]), i32x4_dot_i16x8(w[2 * i + 1], a[2 * i + 1]))
}

pub fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([f32x4_splat(0.0); TILE], [f32x4_splat(0.0); TILE]);
    let low4 = u8x16_splat(0xF);
    for (b, g) in w.iter().enumerate() {
        let wq: [[v128; 4]; ROWS] = std::array::from_fn(|r| {
            // SAFETY: a row's 16 bytes; unaligned-safe load.
            let q = unsafe { v128_load(g.qs[r].as_ptr() as *const v128) };
            let (lo, hi) = (v128_and(q, low4), u8x16_shr(q, 4));
            [u16x8_extend_low_u8x16(lo), u16x8_extend_high_u8x16(lo), u16x8_extend_low_u8x16(hi), u16x8_extend_high_u8x16(hi)]
        });
        let (d, m) = (scales(&g.d), scales(&g.m));
        for t in 0..n {
            let ab = &acts[t][b];
            let a = widen_act(ab);
            let isum = reduce4(std::array::from_fn(|r| i32x4_add(dot2(&wq[r], &a, 0), dot2(&wq[r], &a, 1))));
            acc[t] = f32x4_add(acc[t], f32x4_mul(f32x4_mul(d, f32x4_splat(ab.d)), f32x4_convert_i32x4(isum)));
            accm[t] = f32x4_add(accm[t], f32x4_mul(m, f32x4_splat(ab.dsum)));
        }
    }
    for t in 0..n {
        // SAFETY: `out[t]` is four f32.
        unsafe { v128_store(out[t].as_mut_ptr() as *mut v128, f32x4_add(acc[t], accm[t])) };
    }
}

pub fn q8<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([f32x4_splat(0.0); TILE], [f32x4_splat(0.0); TILE]);
    for (b, g) in w.iter().enumerate() {
        let wq: [[v128; 4]; ROWS] = std::array::from_fn(|r| {
            let p = g.qs()[r].as_ptr();
            // SAFETY: a row's 32 bytes; unaligned-safe loads.
            let (w0, w1) = unsafe { (v128_load(p as *const v128), v128_load(p.add(16) as *const v128)) };
            [i16x8_extend_low_i8x16(w0), i16x8_extend_high_i8x16(w0), i16x8_extend_low_i8x16(w1), i16x8_extend_high_i8x16(w1)]
        });
        let d = scales(g.d());
        let d_hi = if G::HALVES { scales(&g.d()[ROWS..]) } else { d };
        let m = if G::MIN { scales(g.m()) } else { f32x4_splat(0.0) };
        for t in 0..n {
            let ab = &acts[t][b];
            let a = widen_act(ab);
            let ad = f32x4_splat(ab.d);
            if G::HALVES {
                let lo = reduce4(std::array::from_fn(|r| dot2(&wq[r], &a, 0)));
                let hi = reduce4(std::array::from_fn(|r| dot2(&wq[r], &a, 1)));
                acc[t] = f32x4_add(acc[t], f32x4_mul(f32x4_mul(d, ad), f32x4_convert_i32x4(lo)));
                acc[t] = f32x4_add(acc[t], f32x4_mul(f32x4_mul(d_hi, ad), f32x4_convert_i32x4(hi)));
            } else {
                let isum = reduce4(std::array::from_fn(|r| i32x4_add(dot2(&wq[r], &a, 0), dot2(&wq[r], &a, 1))));
                acc[t] = f32x4_add(acc[t], f32x4_mul(f32x4_mul(d, ad), f32x4_convert_i32x4(isum)));
            }
            if G::MIN {
                accm[t] = f32x4_add(accm[t], f32x4_mul(m, f32x4_splat(ab.dsum)));
            }
        }
    }
    for t in 0..n {
        // SAFETY: `out[t]` is four f32.
        unsafe { v128_store(out[t].as_mut_ptr() as *mut v128, f32x4_add(acc[t], accm[t])) };
    }
}
