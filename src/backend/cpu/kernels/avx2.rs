//! x86_64 AVX2 (+F16C for the scales): 32 products a block per row with `maddubs`, the four
//! rows' sums reduced together with `hadd`, the f32 steps of `scalar` four rows at a time.

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

#[inline(always)]
unsafe fn scales(h: &[u16]) -> __m128 {
    _mm_cvtph_ps(_mm_loadl_epi64(h.as_ptr() as *const __m128i))
}

/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let n = acts.len();
    let (mut acc, mut accm) = ([_mm_setzero_ps(); TILE], [_mm_setzero_ps(); TILE]);
    let (low4, ones) = (_mm256_set1_epi8(0xF), _mm256_set1_epi16(1));
    for (b, g) in w.iter().enumerate() {
        prefetch(g);
        // Two rows per register: rows 0 and 1, rows 2 and 3; low nibbles are values 0..16.
        let q = [_mm256_loadu_si256(g.qs.as_ptr() as *const __m256i), _mm256_loadu_si256(g.qs[2..].as_ptr() as *const __m256i)];
        let lo = q.map(|v| _mm256_and_si256(v, low4));
        let hi = q.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4));
        let (d, m) = (scales(&g.d), scales(&g.m));
        for t in 0..n {
            let ab = &acts[t][b];
            let a_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(ab.qs.as_ptr() as *const __m128i));
            let a_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(ab.qs[16..].as_ptr() as *const __m128i));
            // Per row pair: [row 2i partial sums | row 2i + 1 partial sums] (each lane < 2^13).
            let p = [0, 1].map(|i| _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo[i], a_lo), _mm256_maddubs_epi16(hi[i], a_hi)), ones));
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
    let n = acts.len();
    let (mut acc, mut accm) = ([_mm_setzero_ps(); TILE], [_mm_setzero_ps(); TILE]);
    let ones = _mm256_set1_epi16(1);
    for (b, g) in w.iter().enumerate() {
        prefetch(g);
        let wq: [__m256i; ROWS] = std::array::from_fn(|r| _mm256_loadu_si256(g.qs()[r].as_ptr() as *const __m256i));
        let wabs = wq.map(|v| _mm256_abs_epi8(v));
        let d = scales(g.d());
        let d_hi = if G::HALVES { scales(&g.d()[ROWS..]) } else { d };
        let m = if G::MIN { scales(g.m()) } else { _mm_setzero_ps() };
        for t in 0..n {
            let ab = &acts[t][b];
            let a = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let p: [__m256i; ROWS] = std::array::from_fn(|r| _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(a, wq[r])), ones));
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

/// [`super::quantize_row`] with the rounding as an instruction.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    super::quantize_row(x, out)
}
