//! wasm relaxed SIMD (the `relaxed-simd` cargo feature): the 4- and 5-bit kernels multiply with
//! `i32x4.relaxed_dot_i8x16_i7x16_add`, activations as the signed bytes and the weights' values
//! (0..31, so never the high bit that makes the instruction's result implementation-defined) as
//! the 7-bit ones: exact, the same integer sums as `scalar`, eight instructions a group and
//! block where `simd128` needs sixteen multiplies and the unpacking into 16-bit lanes. The loops are
//! `simd128`'s; the 8-bit kernels are `simd128`'s (neither operand is 7-bit there; a form with
//! |w| as the 7-bit operand and the activations given w's sign measured slower in V8). Only these
//! functions are compiled with relaxed SIMD: a binary that has them does not load where the
//! browser lacks it, and the rest of the crate, its dependencies and std are the same with or
//! without the feature (one build of them serves both binaries).

use std::arch::wasm32::*;

use super::simd128::{chunks, five_bit_bytes, q4_groups_with, q4_with, NibbleDot};
use super::{ActBlock, Q4x4, Q5x4, ROWS};

pub use super::simd128::{q8, q8_groups};

/// Each 16-byte chunk of a group's nibbles (four bytes a row: values 4c..4c + 4 in the low
/// nibbles, 16 + 4c.. in the high) against the block's four activation bytes 4c.. (16 + 4c..)
/// in every lane: lane r of each product is row r's.
struct RelaxedDot;

impl NibbleDot for RelaxedDot {
    type W = [v128; 2 * ROWS];
    type A = [v128; 2 * ROWS];
    #[inline(always)]
    fn weights(g: &Q4x4) -> Self::W {
        let q = chunks(g);
        // A 16-bit shift and the same mask for both halves: x86 has no byte shift for V8 to
        // lower `i8x16.shr_u` to (one thread decode 49-52 -> 54-56 tok/s in Chromium).
        let low4 = u8x16_splat(0xF);
        std::array::from_fn(|i| if i < ROWS { v128_and(q[i], low4) } else { v128_and(u16x8_shr(q[i - ROWS], 4), low4) })
    }
    #[inline(always)]
    fn weights5(g: &Q5x4) -> Self::W {
        // Values 0..32: still never the high bit.
        five_bit_bytes(g)
    }
    #[inline(always)]
    fn acts(ab: &ActBlock) -> Self::A {
        // SAFETY: eight 4-byte loads within the block's 32 bytes; unaligned-safe.
        std::array::from_fn(|i| unsafe { v128_load32_splat(ab.qs.as_ptr().add(4 * i) as *const u32) })
    }
    #[inline(always)]
    fn isum(w: &Self::W, a: &Self::A) -> v128 {
        // Two chains of four, for the adds' latency.
        let dot = |i: usize, acc: v128| i32x4_relaxed_dot_i8x16_i7x16_add(a[i], w[i], acc);
        let (lo, hi) = (i32x4_splat(0), i32x4_splat(0));
        let lo = dot(3, dot(2, dot(1, dot(0, lo))));
        let hi = dot(7, dot(6, dot(5, dot(4, hi))));
        i32x4_add(lo, hi)
    }
}

// `dot` above is inlined here, where relaxed SIMD is enabled, and its intrinsic with it.
#[target_feature(enable = "relaxed-simd")]
pub fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<RelaxedDot, _>(w, acts, out)
}

#[target_feature(enable = "relaxed-simd")]
pub fn q4_groups(ws: &[&[Q4x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_groups_with::<RelaxedDot, _>(ws, acts, out)
}

#[target_feature(enable = "relaxed-simd")]
pub fn q5(w: &[Q5x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<RelaxedDot, _>(w, acts, out)
}

#[target_feature(enable = "relaxed-simd")]
pub fn q5_groups(ws: &[&[Q5x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_groups_with::<RelaxedDot, _>(ws, acts, out)
}
