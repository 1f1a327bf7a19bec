//! wasm relaxed SIMD (the `relaxed-simd` cargo feature): the 4- and 5-bit kernels multiply with
//! `i32x4.relaxed_dot_i8x16_i7x16_add`, activations as the signed bytes and the weights' values
//! (0..31, so never the high bit that makes the instruction's result implementation-defined) as
//! the 7-bit ones: exact, the same integer sums as `scalar`, eight instructions a group and
//! block where `simd128` needs sixteen multiplies and the unpacking into 16-bit lanes (or, as
//! [`Target::Relaxed16`], the 16-bit form of the instruction and one widening per four, for
//! CPUs without VNNI: [`pick`] times both). The loops are
//! `simd128`'s; the 8-bit kernels are `simd128`'s (neither operand is 7-bit there; a form with
//! |w| as the 7-bit operand and the activations given w's sign measured slower in V8). Only these
//! functions are compiled with relaxed SIMD: a binary that has them does not load where the
//! browser lacks it, and the rest of the crate, its dependencies and std are the same with or
//! without the feature (one build of them serves both binaries).

use std::arch::wasm32::*;

use super::simd128::{chunks, five_bit_bytes, q4_groups_with, q4_with, NibbleDot};
use super::{ActBlock, Q4x4, Q5x4, Target, ROWS};

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

/// As [`RelaxedDot`], with `i16x8.relaxed_dot_i8x16_i7x16_s`: four products added in 16-bit
/// lanes (at most 4 x 2 x 31 x 127 = 31,496) before each widening.
struct RelaxedDot16;

impl NibbleDot for RelaxedDot16 {
    type W = [v128; 2 * ROWS];
    type A = [v128; 2 * ROWS];
    #[inline(always)]
    fn weights(g: &Q4x4) -> Self::W {
        RelaxedDot::weights(g)
    }
    #[inline(always)]
    fn weights5(g: &Q5x4) -> Self::W {
        RelaxedDot::weights5(g)
    }
    #[inline(always)]
    fn acts(ab: &ActBlock) -> Self::A {
        RelaxedDot::acts(ab)
    }
    #[inline(always)]
    fn isum(w: &Self::W, a: &Self::A) -> v128 {
        let d = |i: usize| i16x8_relaxed_dot_i8x16_i7x16(a[i], w[i]);
        let lo = i16x8_add(i16x8_add(d(0), d(1)), i16x8_add(d(2), d(3)));
        let hi = i16x8_add(i16x8_add(d(4), d(5)), i16x8_add(d(6), d(7)));
        i32x4_add(i32x4_extadd_pairwise_i16x8(lo), i32x4_extadd_pairwise_i16x8(hi))
    }
}

/// The kernels with `$dot`'s products, `dot` inlined into each, where relaxed SIMD is enabled,
/// and its intrinsic with it.
macro_rules! kernels {
    ($dot:ty: $q4:ident, $q4_groups:ident, $q5:ident, $q5_groups:ident) => {
        #[target_feature(enable = "relaxed-simd")]
        pub fn $q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
            q4_with::<$dot, _>(w, acts, out)
        }

        #[target_feature(enable = "relaxed-simd")]
        pub fn $q4_groups(ws: &[&[Q4x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
            q4_groups_with::<$dot, _>(ws, acts, out)
        }

        #[target_feature(enable = "relaxed-simd")]
        pub fn $q5(w: &[Q5x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
            q4_with::<$dot, _>(w, acts, out)
        }

        #[target_feature(enable = "relaxed-simd")]
        pub fn $q5_groups(ws: &[&[Q5x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
            q4_groups_with::<$dot, _>(ws, acts, out)
        }
    };
}

kernels!(RelaxedDot: q4, q4_groups, q5, q5_groups);
kernels!(RelaxedDot16: q4_16, q4_groups_16, q5_16, q5_groups_16);

/// [`Target::Relaxed`] or [`Target::Relaxed16`], whichever runs a decode set of 4-bit groups
/// faster here, timed once per wasm instance (a few milliseconds); both give the same sums, so
/// the pick changes speed only. Wasm cannot ask the CPU
/// whether it has VNNI: where it has, V8 lowers the 32-bit dot product to one instruction
/// and the 16-bit form costs SmolLM2 decode in Chromium about 9% on one thread (session 31, an
/// Intel host with AVX-VNNI); where it has not (AMD Zen 3), the 32-bit form is three
/// instructions and the 16-bit form gained 9-27% decode and 5-75% prefill on two threads.
pub fn pick() -> Target {
    static PICKED: std::sync::OnceLock<Target> = std::sync::OnceLock::new();
    *PICKED.get_or_init(|| {
        // 16 groups of 18 blocks (SmolLM2's 576 columns): 23 KB, in cache after the first pass.
        let (groups, nb) = (16, 18);
        let w: Vec<Q4x4> = (0..groups * nb).map(|i| Q4x4 { d: [0x3C00; ROWS], m: [0; ROWS], qs: [[(i % 251) as u8; 16]; ROWS] }).collect();
        let acts: Vec<ActBlock> = (0..nb)
            .map(|b| {
                let mut a = <ActBlock as bytemuck::Zeroable>::zeroed();
                a.qs = std::array::from_fn(|j| (b * 7 + j) as i8 - 16);
                a.d = 1.0;
                a
            })
            .collect();
        let ws: Vec<&[Q4x4]> = w.chunks_exact(nb).collect();
        let mut out = [[0f32; ROWS]; 16];
        let mut time = |t: Target| {
            let t0 = crate::clock::now_ms();
            for _ in 0..40 {
                for set in ws.chunks_exact(super::simd128::LOCKSTEP) {
                    t.q4_groups(set, &[&acts], &mut out[..set.len()]);
                }
                std::hint::black_box(&mut out);
            }
            crate::clock::now_ms() - t0
        };
        let (mut i32_form, mut i16_form) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            i32_form = i32_form.min(time(Target::Relaxed));
            i16_form = i16_form.min(time(Target::Relaxed16));
        }
        if i16_form < i32_form {
            Target::Relaxed16
        } else {
            Target::Relaxed
        }
    })
}
