//! x86_64 AVX2 (+F16C for the scales): 32 products a block per row with `maddubs`, the four
//! rows' sums reduced together with `hadd`, the f32 steps of `scalar` four rows at a time. Where
//! the CPU has VNNI (AVX-VNNI, or AVX-512 VNNI on 256-bit registers) the products are summed by
//! `vpdpbusd`, one instruction where AVX2 needs three: the same exact integer sums.

use std::arch::x86_64::*;

use super::{ActBlock, Q4x4, Q8Group, ROWS, TILE};

/// How far ahead of the block being summed the kernels prefetch (bytes). Decode streams the
/// weights once a token and the hardware prefetchers stop at each 4 KiB page: without this the
/// loads stalled (SmolLM2 on one thread: 55 -> 80-90 tok/s; 8-32 KiB measured alike).
const PREFETCH: usize = 16 << 10;

/// Prefetches the line `PREFETCH` bytes past `p` (a hint: any address is fine; SSE, so any
/// x86_64 CPU). The read probe streams the same way.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch does not fault and SSE is baseline on x86_64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(PREFETCH)) }
}

/// Four rows' i32x8 partial sums (values 0..16 in the low half, 16..32 in the high) -> the low
/// halves' totals and the high halves' totals, each `[r0, r1, r2, r3]`.
#[inline(always)]
unsafe fn reduce4_halves(p: [__m256i; ROWS]) -> (__m128i, __m128i) {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    (_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// How a kernel sums unsigned x signed byte products into i32 lanes (each lane: four adjacent
/// products). Every form gives the same exact sums: `maddubs` saturates only past 32,767, which
/// two products of |u| <= 128 and |s| <= 127 never reach.
///
/// # Safety
/// Callers run these only inside functions compiled with the form's CPU features, on CPUs
/// that have them.
pub trait ByteDot {
    /// Lanes of `u0 . s0 + u1 . s1`.
    ///
    /// # Safety
    /// As the trait.
    unsafe fn dot2(u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) -> __m256i;
    /// Lanes of `u . s`.
    ///
    /// # Safety
    /// As the trait.
    unsafe fn dot1(u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `maddubs` into i16 pairs, `madd` by ones into i32.
pub struct Maddubs;

impl ByteDot for Maddubs {
    #[inline(always)]
    unsafe fn dot2(u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) -> __m256i {
        // Each i16 lane is at most 4 * 15 * 127 here (4-bit weights); see `dot1` for 8-bit.
        _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)), _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn dot1(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

/// AVX-VNNI's `vpdpbusd` (VEX encoding: Alder Lake and later, Zen 5).
pub struct AvxVnni;

impl ByteDot for AvxVnni {
    #[inline(always)]
    unsafe fn dot2(u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(Self::dot1(u0, s0), u1, s1)
    }
    #[inline(always)]
    unsafe fn dot1(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
}

/// AVX-512 VNNI's `vpdpbusd` on 256-bit registers (EVEX encoding: Ice Lake, Zen 4).
pub struct Avx512Vnni;

impl ByteDot for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot2(u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(Self::dot1(u0, s0), u1, s1)
    }
    #[inline(always)]
    unsafe fn dot1(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
}

#[inline(always)]
unsafe fn scales(h: &[u16]) -> __m128 {
    _mm_cvtph_ps(_mm_loadl_epi64(h.as_ptr() as *const __m128i))
}

/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<Maddubs>(w, acts, out)
}

/// # Safety
/// The CPU must have AVX2, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,f16c,avxvnni")]
pub unsafe fn q4_avx_vnni(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<AvxVnni>(w, acts, out)
}

/// # Safety
/// The CPU must have AVX2, F16C, AVX-512 VNNI and AVX-512 VL.
#[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
pub unsafe fn q4_avx512_vnni(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<Avx512Vnni>(w, acts, out)
}

#[inline(always)]
unsafe fn q4_with<D: ByteDot>(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([_mm_setzero_ps(); TILE], [_mm_setzero_ps(); TILE]);
    let low4 = _mm256_set1_epi8(0xF);
    for (b, g) in w.iter().enumerate() {
        prefetch(g);
        // Two rows per register: rows 0 and 1, rows 2 and 3; low nibbles are values 0..16.
        let q = [_mm256_loadu_si256(g.qs.as_ptr() as *const __m256i), _mm256_loadu_si256(g.qs[2..].as_ptr() as *const __m256i)];
        // Plain arrays, not `map` closures: those were left as calls in the loop.
        let lo = [_mm256_and_si256(q[0], low4), _mm256_and_si256(q[1], low4)];
        let hi = [_mm256_and_si256(_mm256_srli_epi16::<4>(q[0]), low4), _mm256_and_si256(_mm256_srli_epi16::<4>(q[1]), low4)];
        let (d, m) = (scales(&g.d), scales(&g.m));
        for t in 0..n {
            let ab = &acts[t][b];
            let a_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(ab.qs.as_ptr() as *const __m128i));
            let a_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(ab.qs[16..].as_ptr() as *const __m128i));
            // Per row pair: [row 2i partial sums | row 2i + 1 partial sums] (each lane < 2^13).
            let p = [D::dot2(lo[0], a_lo, hi[0], a_hi), D::dot2(lo[1], a_lo, hi[1], a_hi)];
            // [r0a r0b r2a r2b | r1a r1b r3a r3b] -> [r0 r2 . . | r1 r3 . .] -> [r0 r1 r2 r3].
            let h = _mm256_hadd_epi32(p[0], p[1]);
            let h = _mm256_hadd_epi32(h, h);
            let isum = _mm_unpacklo_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(ab.d)), _mm_cvtepi32_ps(isum)));
            accm[t] = _mm_add_ps(accm[t], _mm_mul_ps(m, _mm_set1_ps(ab.dsum)));
        }
    }
    for t in 0..n {
        _mm_storeu_ps(out[t].as_mut_ptr(), _mm_add_ps(acc[t], accm[t]));
    }
}

/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q8<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q8_with::<G, Maddubs>(w, acts, out)
}

/// # Safety
/// As [`q4_avx_vnni`].
#[target_feature(enable = "avx2,f16c,avxvnni")]
pub unsafe fn q8_avx_vnni<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q8_with::<G, AvxVnni>(w, acts, out)
}

/// # Safety
/// As [`q4_avx512_vnni`].
#[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
pub unsafe fn q8_avx512_vnni<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q8_with::<G, Avx512Vnni>(w, acts, out)
}

#[inline(always)]
unsafe fn q8_with<G: Q8Group, D: ByteDot>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([_mm_setzero_ps(); TILE], [_mm_setzero_ps(); TILE]);
    for (b, g) in w.iter().enumerate() {
        prefetch(g);
        let (mut wq, mut wabs) = ([_mm256_setzero_si256(); ROWS], [_mm256_setzero_si256(); ROWS]);
        for r in 0..ROWS {
            wq[r] = _mm256_loadu_si256(g.qs()[r].as_ptr() as *const __m256i);
            wabs[r] = _mm256_abs_epi8(wq[r]);
        }
        let d = scales(g.d());
        let d_hi = if G::HALVES { scales(&g.d()[ROWS..]) } else { d };
        let m = if G::MIN { scales(g.m()) } else { _mm_setzero_ps() };
        for t in 0..n {
            let ab = &acts[t][b];
            let a = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let mut p = [_mm256_setzero_si256(); ROWS];
            for r in 0..ROWS {
                p[r] = D::dot1(wabs[r], _mm256_sign_epi8(a, wq[r]));
            }
            let ad = _mm_set1_ps(ab.d);
            let (lo, hi) = reduce4_halves(p);
            if G::HALVES {
                acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d, ad), _mm_cvtepi32_ps(lo)));
                acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d_hi, ad), _mm_cvtepi32_ps(hi)));
            } else {
                acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d, ad), _mm_cvtepi32_ps(_mm_add_epi32(lo, hi))));
            }
            if G::MIN {
                accm[t] = _mm_add_ps(accm[t], _mm_mul_ps(m, _mm_set1_ps(ab.dsum)));
            }
        }
    }
    for t in 0..n {
        _mm_storeu_ps(out[t].as_mut_ptr(), _mm_add_ps(acc[t], accm[t]));
    }
}

/// [`super::quantize_row`] in 8-lane registers, the same bits: the largest magnitude as a max
/// that skips NaN (as the scalar comparison does), round half to even, NaN to 0 (as Rust's
/// `as i8`), then packed to bytes. Written out because `as i8`'s saturation kept the compiler
/// from vectorizing the conversion (five scalar instructions a value, 3.4% of native decode).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    const QK: usize = super::QK;
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
        // `max(a, m)` is `a > m ? a : m`: a NaN lane keeps m, as `if a > amax` does.
        let mut m = _mm256_setzero_ps();
        for vi in v {
            m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m2 = _mm_max_ps(_mm_movehl_ps(m4, m4), m4);
        let amax = _mm_cvtss_f32(_mm_max_ss(_mm_movehdup_ps(m2), m2));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[i], id));
            // `as i8`: saturated (only reachable when 1 / d overflows), NaN -> 0 (an ordered
            // compare is false only for NaN).
            let sat = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-128.0)), _mm256_set1_ps(127.0));
            _mm256_cvtps_epi32(_mm256_and_ps(sat, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r)))
        });
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let t4 = _mm_add_epi32(_mm256_extracti128_si256::<1>(total), _mm256_castsi256_si128(total));
        let t2 = _mm_add_epi32(t4, _mm_shuffle_epi32::<0b01_00_11_10>(t4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32::<0b10_11_00_01>(t2)));
        // Packs work within 128-bit halves: [0..4 8..12 4..8 12..16] per pair, fixed by a
        // permute of 32-bit groups at the end.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(ob.qs.as_mut_ptr() as *mut __m256i, bytes);
        ob.d = d;
        ob.dsum = d * sum as f32;
    }
}
