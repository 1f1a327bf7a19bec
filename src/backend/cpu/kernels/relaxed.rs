//! wasm relaxed SIMD (the `relaxed-simd` cargo feature): the 4-bit kernels multiply with
//! `i32x4.relaxed_dot_i8x16_i7x16_add`, activations as the signed bytes and the weights' nibbles
//! (0..15, so never the high bit that makes the instruction's result implementation-defined) as
//! the 7-bit ones: exact, the same integer sums as `scalar`, two instructions a row and block
//! where `simd128` needs four multiplies and the unpacking into 16-bit lanes. The loops are
//! `simd128`'s; the 8-bit kernels are `simd128`'s (neither operand is 7-bit there; a form with
//! |w| as the 7-bit operand and the activations given w's sign measured slower in V8). Only these
//! functions are compiled with relaxed SIMD: a binary that has them does not load where the
//! browser lacks it, and the rest of the crate, its dependencies and std are the same with or
//! without the feature (one build of them serves both binaries).

use std::arch::wasm32::*;

use super::simd128::{q4_groups_with, q4_with, NibbleDot};
use super::{ActBlock, Q4x4, ROWS};

pub use super::simd128::{q8, q8_groups};

/// Nibbles as bytes (values 0..16, then 16..32) against the activation bytes.
struct RelaxedDot;

impl NibbleDot for RelaxedDot {
    type W = [v128; 2];
    type A = [v128; 2];
    #[inline(always)]
    fn weights(qs: &[u8; 16]) -> [v128; 2] {
        // SAFETY: 16 bytes; unaligned-safe load.
        let q = unsafe { v128_load(qs.as_ptr() as *const v128) };
        // A 16-bit shift and the same mask for both halves: x86 has no byte shift for V8 to
        // lower `i8x16.shr_u` to (one thread decode 49-52 -> 54-56 tok/s in Chromium).
        let low4 = u8x16_splat(0xF);
        [v128_and(q, low4), v128_and(u16x8_shr(q, 4), low4)]
    }
    #[inline(always)]
    fn acts(ab: &ActBlock) -> [v128; 2] {
        // SAFETY: 32 bytes; unaligned-safe loads.
        unsafe { [v128_load(ab.qs.as_ptr() as *const v128), v128_load(ab.qs.as_ptr().add(16) as *const v128)] }
    }
    #[inline(always)]
    fn dot(w: &[v128; 2], a: &[v128; 2]) -> v128 {
        i32x4_relaxed_dot_i8x16_i7x16_add(a[1], w[1], i32x4_relaxed_dot_i8x16_i7x16_add(a[0], w[0], i32x4_splat(0)))
    }
}

// `dot` above is inlined here, where relaxed SIMD is enabled, and its intrinsic with it.
#[target_feature(enable = "relaxed-simd")]
pub fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<RelaxedDot>(w, acts, out)
}

#[target_feature(enable = "relaxed-simd")]
pub fn q4_groups(ws: &[&[Q4x4]], act: &[ActBlock], out: &mut [[f32; ROWS]]) {
    q4_groups_with::<RelaxedDot>(ws, act, out)
}
