//! x86_64 AVX2 (+F16C for the scales): 32 products a block per row with `maddubs`, the four
//! rows' sums reduced together, the f32 steps of `scalar` four rows at a time.

use std::arch::x86_64::*;

use super::{ActBlock, Q4x4, Q8Group, ROWS, TILE};

/// Four rows' i32x8 partial sums -> their four totals.
#[inline(always)]
unsafe fn reduce4(p: [__m256i; ROWS]) -> __m128i {
    let f = p.map(|v| _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)));
    _mm_hadd_epi32(_mm_hadd_epi32(f[0], f[1]), _mm_hadd_epi32(f[2], f[3]))
}

/// The low 128 bits (values 0..16) and high (16..32) of four rows' sums, each reduced.
#[inline(always)]
unsafe fn reduce4_halves(p: [__m256i; ROWS]) -> (__m128i, __m128i) {
    let lo = p.map(|v| _mm256_castsi256_si128(v));
    let hi = p.map(|v| _mm256_extracti128_si256::<1>(v));
    let r = |f: [__m128i; ROWS]| _mm_hadd_epi32(_mm_hadd_epi32(f[0], f[1]), _mm_hadd_epi32(f[2], f[3]));
    (r(lo), r(hi))
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
    let (low4, ones) = (_mm_set1_epi8(0xF), _mm256_set1_epi16(1));
    for (b, g) in w.iter().enumerate() {
        let wq: [__m256i; ROWS] = std::array::from_fn(|r| {
            let q = _mm_loadu_si128(g.qs[r].as_ptr() as *const __m128i);
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(q), low4), _mm_and_si128(q, low4))
        });
        let (d, m) = (scales(&g.d), scales(&g.m));
        for t in 0..n {
            let ab = &acts[t][b];
            let a = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let isum = reduce4(wq.map(|wr| _mm256_madd_epi16(_mm256_maddubs_epi16(wr, a), ones)));
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
            if G::HALVES {
                let (lo, hi) = reduce4_halves(p);
                acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d, ad), _mm_cvtepi32_ps(lo)));
                acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d_hi, ad), _mm_cvtepi32_ps(hi)));
            } else {
                acc[t] = _mm_add_ps(acc[t], _mm_mul_ps(_mm_mul_ps(d, ad), _mm_cvtepi32_ps(reduce4(p))));
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
