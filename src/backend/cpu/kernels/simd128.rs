//! wasm simd128: values split into even and odd i16 lanes (shifts and masks of 16-bit lanes, no
//! byte shuffles) and multiplied with `i32x4.dot_i16x8_s` (exact), the f32 steps of `scalar`
//! four rows at a time. 4-bit groups hold four bytes of each row per 16 bytes (see [`Q4x4`]), so
//! their products land one row a lane; the 8-bit kernels reduce four rows' lanes together.

use std::arch::wasm32::*;

use super::{ActBlock, Q4x4, Q5x4, Q8Group, ROWS, TILE};

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
    let h = unsafe { v128_load64_zero(h.as_ptr() as *const u64) };
    f16_low(h)
}

/// Lanes 0..4 (`f16_low`) or 4..8 (`f16_high`) of eight f16 as f32, exactly for finite values:
/// each f16 moved to the top of an i32 lane (one unpack), shifted down 3 (arithmetic: the sign
/// stays on top) with the copies of the sign below it cleared, is the f32 whose exponent is
/// the f16's rebased by -112; scaling by 2^112 rebases it (normals and subnormals alike).
/// Three operations a vector after the unpack, where widening then splitting sign and
/// magnitude took six.
#[inline(always)]
fn f16_low(h: v128) -> v128 {
    rebase(i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(i16x8_splat(0), h))
}

#[inline(always)]
fn f16_high(h: v128) -> v128 {
    rebase(i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(i16x8_splat(0), h))
}

#[inline(always)]
fn rebase(top: v128) -> v128 {
    f32x4_mul(v128_and(i32x4_shr(top, 3), i32x4_splat(0x8FFF_FFFFu32 as i32)), f32x4_splat(f32::from_bits((127 + 112) << 23)))
}

/// A 4-bit group's row scales and mins, from one load (they are its first 16 bytes).
#[inline(always)]
fn scales_mins(g: &Q4x4) -> (v128, v128) {
    // SAFETY: `d` and `m` are 16 contiguous bytes at the start of the group; unaligned-safe load.
    let h = unsafe { v128_load(g as *const Q4x4 as *const v128) };
    (f16_low(h), f16_high(h))
}

/// 16 signed bytes as i16x8 of the even ones and of the odd ones.
#[inline(always)]
fn split_i8(v: v128) -> [v128; 2] {
    [i16x8_shr(i16x8_shl(v, 8), 8), i16x8_shr(v, 8)]
}

/// 32 signed bytes at `p` as four i16x8: even and odd of 0..16, even and odd of 16..32.
#[inline(always)]
fn split_i8x32(p: *const i8) -> [v128; 4] {
    // SAFETY: callers pass 32 readable bytes; the loads are unaligned-safe.
    let (v0, v1) = unsafe { (v128_load(p as *const v128), v128_load(p.add(16) as *const v128)) };
    let ([e0, o0], [e1, o1]) = (split_i8(v0), split_i8(v1));
    [e0, o0, e1, o1]
}

#[inline(always)]
fn dot2(w: &[v128; 4], a: &[v128; 4], i: usize) -> v128 {
    i32x4_add(i32x4_dot_i16x8(w[2 * i], a[2 * i]), i32x4_dot_i16x8(w[2 * i + 1], a[2 * i + 1]))
}

/// A 16-byte chunk of a group's nibbles (four bytes a row: see [`Q4x4`]) as four i16x8: the
/// low nibbles of the even bytes, of the odd bytes, then the high nibbles of each; lanes 2r and
/// 2r + 1 are row r's.
#[inline(always)]
fn split_nibbles(q: v128) -> [v128; 4] {
    let low4 = u16x8_splat(0xF);
    [v128_and(q, low4), v128_and(u16x8_shr(q, 8), low4), v128_and(u16x8_shr(q, 4), low4), u16x8_shr(q, 12)]
}

/// A group's 64 bytes of nibbles, chunk by chunk.
#[inline(always)]
pub(super) fn chunks(g: &Q4x4) -> [v128; ROWS] {
    // SAFETY: `qs` is 64 bytes; unaligned-safe loads.
    std::array::from_fn(|c| unsafe { v128_load(g.qs[c].as_ptr() as *const v128) })
}

/// A 5-bit group's values as eight byte vectors (0..32), ordered as a 4-bit group's unpacked
/// nibbles: vector i < 4 holds chunk i's low nibbles, 4 + c chunk c's high ones; each byte b
/// gets its fifth bit, bit i of `qh[b]` ([`Q5x4::q`]), at bit 4. 16-bit shifts (x86 has no
/// byte shift for V8 to lower an 8-bit one to) leave each byte's own bit there under the mask.
#[inline(always)]
pub(super) fn five_bit_bytes(g: &Q5x4) -> [v128; 2 * ROWS] {
    let q = chunks(&g.q4);
    // SAFETY: `qh` is 16 bytes; an unaligned-safe load.
    let h = unsafe { v128_load(g.qh.as_ptr() as *const v128) };
    let (low4, bit4) = (u8x16_splat(0xF), u8x16_splat(0x10));
    let fifth = [u16x8_shl(h, 4), u16x8_shl(h, 3), u16x8_shl(h, 2), u16x8_shl(h, 1), h, u16x8_shr(h, 1), u16x8_shr(h, 2), u16x8_shr(h, 3)];
    std::array::from_fn(|i| {
        let nibbles = if i < ROWS { v128_and(q[i], low4) } else { v128_and(u16x8_shr(q[i - ROWS], 4), low4) };
        v128_or(nibbles, v128_and(fifth[i], bit4))
    })
}

/// How a 4-bit kernel unpacks a group's nibbles (`weights`; `weights5` with their fifth bits)
/// and a block's activations and sums their products: `isum`'s lane r is row r's exact block
/// sum. The loops around are shared.
pub(super) trait NibbleDot {
    type W: Copy;
    type A;
    fn weights(g: &Q4x4) -> Self::W;
    fn weights5(g: &Q5x4) -> Self::W;
    fn acts(ab: &ActBlock) -> Self::A;
    fn isum(w: &Self::W, a: &Self::A) -> v128;
}

/// The groups [`NibbleDot`] kernels take: 4-bit, or 5-bit (a 4-bit group and fifth bits).
pub(super) trait Nibbles {
    /// The group's scales, mins and low four bits.
    fn low(&self) -> &Q4x4;
    fn unpack<K: NibbleDot>(&self) -> K::W;
}

impl Nibbles for Q4x4 {
    #[inline(always)]
    fn low(&self) -> &Q4x4 {
        self
    }
    #[inline(always)]
    fn unpack<K: NibbleDot>(&self) -> K::W {
        K::weights(self)
    }
}

impl Nibbles for Q5x4 {
    #[inline(always)]
    fn low(&self) -> &Q4x4 {
        &self.q4
    }
    #[inline(always)]
    fn unpack<K: NibbleDot>(&self) -> K::W {
        K::weights5(self)
    }
}

/// Nibbles and bytes widened to i16 lanes, multiplied with `i32x4.dot_i16x8_s`: a chunk's even
/// (odd) bytes against the block's activations 4c and 4c + 2 (4c + 1 and 4c + 3) in every lane
/// pair.
struct Widened;

impl NibbleDot for Widened {
    type W = [[v128; 4]; ROWS];
    type A = [[v128; 4]; ROWS];
    #[inline(always)]
    fn weights(g: &Q4x4) -> Self::W {
        chunks(g).map(split_nibbles)
    }
    #[inline(always)]
    fn weights5(g: &Q5x4) -> Self::W {
        // Each byte vector's even and odd bytes as i16 lanes, in `split_nibbles`' order.
        let v = five_bit_bytes(g);
        let low8 = u16x8_splat(0xFF);
        std::array::from_fn(|c| [v128_and(v[c], low8), u16x8_shr(v[c], 8), v128_and(v[ROWS + c], low8), u16x8_shr(v[ROWS + c], 8)])
    }
    #[inline(always)]
    fn acts(ab: &ActBlock) -> Self::A {
        let [e0, o0, e1, o1] = split_i8x32(ab.qs.as_ptr());
        let lane = |v: v128, c: usize| match c {
            0 => i32x4_shuffle::<0, 0, 0, 0>(v, v),
            1 => i32x4_shuffle::<1, 1, 1, 1>(v, v),
            2 => i32x4_shuffle::<2, 2, 2, 2>(v, v),
            _ => i32x4_shuffle::<3, 3, 3, 3>(v, v),
        };
        std::array::from_fn(|c| [lane(e0, c), lane(o0, c), lane(e1, c), lane(o1, c)])
    }
    #[inline(always)]
    fn isum(w: &Self::W, a: &Self::A) -> v128 {
        let part = |c: usize| i32x4_add(dot2(&w[c], &a[c], 0), dot2(&w[c], &a[c], 1));
        i32x4_add(i32x4_add(part(0), part(1)), i32x4_add(part(2), part(3)))
    }
}

pub fn q4(w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<Widened, _>(w, acts, out)
}

pub fn q4_groups(ws: &[&[Q4x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_groups_with::<Widened, _>(ws, acts, out)
}

pub fn q5(w: &[Q5x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_with::<Widened, _>(w, acts, out)
}

pub fn q5_groups(ws: &[&[Q5x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    q4_groups_with::<Widened, _>(ws, acts, out)
}

/// `$body` once for each listed `$k`, a constant in each: the lockstep (and tile) loops'
/// accumulators then stay wasm locals (registers, or V8's own stack), where a loop over a count
/// known only at run time keeps them in linear memory, loaded and stored for every group and
/// block (the relaxed 4-bit kernel alone in Chromium, one thread, SmolLM2's groups: 16.2-16.7 ->
/// 19.1-20.8 GB/s, in cache and from 86 MB alike).
macro_rules! unroll {
    ($k:ident in [$($i:literal)*] => $body:block) => {{
        $({
            let $k: usize = $i;
            $body
        })*
    }};
}

// The lists `unroll!` is given.
const _: () = assert!(LOCKSTEP == 4 && TILE == 4);

/// Groups a one-token product sums at once, block by block. Wasm has no prefetch instruction
/// and a decode step reads every weight from memory once: groups from evenly spaced places of
/// a thread's share keep that many sequential reads in flight for the hardware prefetchers
/// (each stops at a 4 KiB page), where one group at a time is one. How many pays depends on
/// the machine. On a 2-core Intel host with AVX-VNNI and 300 MiB of L3 (sessions 26-37),
/// sixteen beat a whole group at a time from eight places (SmolLM2 decode in Chromium, one
/// thread 60-63 -> 85-99 tok/s, two 125-127 -> 163-172), and 32 were slower. On a 2-core AMD
/// Zen 3 host without VNNI and with 32 MiB of L3 (the weights come from DRAM), SmolLM2 decode
/// on two threads with 16, 8, 4 and 2 groups gave 32-43, 55-67, 77-80 and 75-78 tok/s, the
/// products alone 52-83, 91-127, 110-162 and 109-114 (one thread: 29, 51, 49-51, 45). Fewer
/// streams, and fewer accumulators for V8 to keep in sixteen registers (the two were not
/// separated): four.
pub const LOCKSTEP: usize = 4;

/// One block of one group (`isum`: its rows' sums, `(d, m)`: its scales and mins) against one
/// token: `acc += (d * d_act) * isum`, `accm += m * dsum`.
#[inline(always)]
fn q4_step(isum: v128, (d, m): (v128, v128), ad: v128, adsum: v128, acc: &mut v128, accm: &mut v128) {
    *acc = f32x4_add(*acc, f32x4_mul(f32x4_mul(d, ad), f32x4_convert_i32x4(isum)));
    *accm = f32x4_add(*accm, f32x4_mul(m, adsum));
}

/// The 4-bit (and 5-bit) kernel with `K`'s products.
#[inline(always)]
pub(super) fn q4_with<K: NibbleDot, G: Nibbles>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    if acts.len() == 1 {
        return q4_groups_with::<K, G>(&[w], acts, &mut out[..1]);
    }
    // Closures would not inherit the relaxed build's target feature: plain generic functions.
    #[inline(always)]
    fn step<K: NibbleDot>(wq: &K::W, sc: (v128, v128), ab: &ActBlock, acc: &mut v128, accm: &mut v128) {
        q4_step(K::isum(wq, &K::acts(ab)), sc, f32x4_splat(ab.d), f32x4_splat(ab.dsum), acc, accm);
    }
    // The tile's tokens, unrolled for each count (see `unroll!`).
    macro_rules! tile {
        ($($t:literal)*) => {{
            let (mut acc, mut accm) = ([f32x4_splat(0.0); TILE], [f32x4_splat(0.0); TILE]);
            for (b, g) in w.iter().enumerate() {
                let (wq, sc) = (g.unpack::<K>(), scales_mins(g.low()));
                unroll!(t in [$($t)*] => { step::<K>(&wq, sc, &acts[t][b], &mut acc[t], &mut accm[t]) });
            }
            unroll!(t in [$($t)*] => { store_sum(acc[t], accm[t], &mut out[t]) });
        }};
    }
    match acts.len() {
        2 => tile!(0 1),
        3 => tile!(0 1 2),
        n => {
            assert_eq!(n, TILE, "a tile is 1 to {TILE} tokens");
            tile!(0 1 2 3)
        }
    }
}

/// [`groups_with`] for 4- and 5-bit groups with `K`'s products.
#[inline(always)]
pub(super) fn q4_groups_with<K: NibbleDot, G: Nibbles>(ws: &[&[G]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    groups_with::<Nibble<K, G>>(ws, acts, out)
}

/// How [`groups_with`] sums a kind of group: a block of a group unpacked once (`unpack`: its
/// values and its scales) for every token, a token's block as the products take it (`acts`),
/// and one block of one group against one token (`step`); `tile`: one group against 2 to
/// [`TILE`] tokens.
trait SetKernel {
    type G;
    type W;
    type S: Copy;
    type A;
    fn unpack(g: &Self::G) -> (Self::W, Self::S);
    fn acts(ab: &ActBlock) -> Self::A;
    fn step(w: &Self::W, s: Self::S, a: &Self::A, ad: v128, adsum: v128, acc: &mut v128, accm: &mut v128);
    fn tile(w: &[Self::G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]);
}

/// 4- and 5-bit groups `G` with `K`'s products.
struct Nibble<K, G>(std::marker::PhantomData<(K, G)>);

impl<K: NibbleDot, G: Nibbles> SetKernel for Nibble<K, G> {
    type G = G;
    type W = K::W;
    type S = (v128, v128);
    type A = K::A;
    #[inline(always)]
    fn unpack(g: &G) -> (K::W, (v128, v128)) {
        (g.unpack::<K>(), scales_mins(g.low()))
    }
    #[inline(always)]
    fn acts(ab: &ActBlock) -> K::A {
        K::acts(ab)
    }
    #[inline(always)]
    fn step(w: &K::W, s: (v128, v128), a: &K::A, ad: v128, adsum: v128, acc: &mut v128, accm: &mut v128) {
        q4_step(K::isum(w, a), s, ad, adsum, acc, accm);
    }
    #[inline(always)]
    fn tile(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        q4_with::<K, G>(w, acts, out)
    }
}

/// 8-bit groups `G`.
struct Bytes<G>(std::marker::PhantomData<G>);

impl<G: Q8Group> SetKernel for Bytes<G> {
    type G = G;
    type W = [[v128; 4]; ROWS];
    type S = [v128; 3];
    type A = [v128; 4];
    #[inline(always)]
    fn unpack(g: &G) -> (Self::W, [v128; 3]) {
        (std::array::from_fn(|r| split_i8x32(g.qs()[r].as_ptr())), q8_scales(g))
    }
    #[inline(always)]
    fn acts(ab: &ActBlock) -> [v128; 4] {
        split_i8x32(ab.qs.as_ptr())
    }
    #[inline(always)]
    fn step(w: &Self::W, s: [v128; 3], a: &[v128; 4], ad: v128, adsum: v128, acc: &mut v128, accm: &mut v128) {
        q8_step::<G>(w, s, a, ad, adsum, acc, accm);
    }
    #[inline(always)]
    fn tile(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        q8(w, acts, out)
    }
}

/// `out[t * ws.len() + k]` = group `ws[k]` . token t (decode: one token, or a few rows), at
/// most [`LOCKSTEP`] groups summed together block by block, each block unpacked once for all
/// the tokens; each group's sums are those of the one-group kernels ([`q4_with`], [`q8`]).
#[inline(always)]
fn groups_with<S: SetKernel>(ws: &[&[S::G]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    let (n, nb) = (ws.len(), acts[0].len());
    assert!(
        n <= LOCKSTEP && (1..=TILE).contains(&acts.len()) && out.len() == n * acts.len() && ws.iter().all(|w| w.len() >= nb) && acts.iter().all(|a| a.len() == nb),
        "at most {LOCKSTEP} groups and {TILE} tokens, each group of the activations' blocks"
    );
    // The set's groups, unrolled, against the tokens of each count (see `unroll!`).
    macro_rules! lockstep {
        ($($t:literal)*) => {{
            let (mut acc, mut accm) = ([[f32x4_splat(0.0); LOCKSTEP]; TILE], [[f32x4_splat(0.0); LOCKSTEP]; TILE]);
            for b in 0..nb {
                let a = [$(S::acts(&acts[$t][b]),)*];
                let ad = [$(f32x4_splat(acts[$t][b].d),)*];
                let adsum = [$(f32x4_splat(acts[$t][b].dsum),)*];
                unroll!(k in [0 1 2 3] => {
                    // SAFETY: k < LOCKSTEP = n and b < nb <= ws[k].len() (asserted above).
                    let (w, sc) = S::unpack(unsafe { ws.get_unchecked(k).get_unchecked(b) });
                    $(S::step(&w, sc, &a[$t], ad[$t], adsum[$t], &mut acc[$t][k], &mut accm[$t][k]);)*
                });
            }
            unroll!(t in [$($t)*] => { store_sums(&acc[t], &accm[t], &mut out[t * n..(t + 1) * n]) });
        }};
    }
    if n == LOCKSTEP {
        match acts.len() {
            1 => lockstep!(0),
            2 => lockstep!(0 1),
            3 => lockstep!(0 1 2),
            _ => lockstep!(0 1 2 3),
        }
        return;
    }
    // A ragged set (the last of a share): one token block by block, several group by group
    // (a plain loop: a closure would not inherit the relaxed build's target feature).
    if acts.len() == 1 {
        let (mut acc, mut accm) = ([f32x4_splat(0.0); LOCKSTEP], [f32x4_splat(0.0); LOCKSTEP]);
        for (b, ab) in acts[0].iter().enumerate() {
            let (a, ad, adsum) = (S::acts(ab), f32x4_splat(ab.d), f32x4_splat(ab.dsum));
            for k in 0..n {
                // SAFETY: k < n = ws.len(), and b < nb <= ws[k].len() (asserted above).
                let (w, sc) = S::unpack(unsafe { ws.get_unchecked(k).get_unchecked(b) });
                S::step(&w, sc, &a, ad, adsum, &mut acc[k], &mut accm[k]);
            }
        }
        return store_sums(&acc, &accm, out);
    }
    let mut tile = [[0f32; ROWS]; TILE];
    for (k, w) in ws.iter().enumerate() {
        S::tile(&w[..nb], acts, &mut tile[..acts.len()]);
        for (t, vals) in tile[..acts.len()].iter().enumerate() {
            out[t * n + k] = *vals;
        }
    }
}

/// `out[k] = acc[k] + accm[k]` for each of `out`'s groups.
#[inline(always)]
fn store_sums(acc: &[v128], accm: &[v128], out: &mut [[f32; ROWS]]) {
    for (k, o) in out.iter_mut().enumerate() {
        store_sum(acc[k], accm[k], o);
    }
}

#[inline(always)]
fn store_sum(acc: v128, accm: v128, out: &mut [f32; ROWS]) {
    // SAFETY: `out` is four f32.
    unsafe { v128_store(out.as_mut_ptr() as *mut v128, f32x4_add(acc, accm)) };
}

/// A group's scales: `d`, `d` of the high halves (`d` again unless `HALVES`), mins (0 unless `MIN`).
#[inline(always)]
fn q8_scales<G: Q8Group>(g: &G) -> [v128; 3] {
    let d = scales(g.d());
    [d, if G::HALVES { scales(&g.d()[ROWS..]) } else { d }, if G::MIN { scales(g.m()) } else { f32x4_splat(0.0) }]
}

/// One block of one 8-bit group (`wq`: its rows split by [`split_i8x32`]) against one token.
#[inline(always)]
fn q8_step<G: Q8Group>(wq: &[[v128; 4]; ROWS], [d, d_hi, m]: [v128; 3], a: &[v128; 4], ad: v128, adsum: v128, acc: &mut v128, accm: &mut v128) {
    if G::HALVES {
        let lo = reduce4(std::array::from_fn(|r| dot2(&wq[r], a, 0)));
        let hi = reduce4(std::array::from_fn(|r| dot2(&wq[r], a, 1)));
        *acc = f32x4_add(*acc, f32x4_mul(f32x4_mul(d, ad), f32x4_convert_i32x4(lo)));
        *acc = f32x4_add(*acc, f32x4_mul(f32x4_mul(d_hi, ad), f32x4_convert_i32x4(hi)));
    } else {
        let isum = reduce4(std::array::from_fn(|r| i32x4_add(dot2(&wq[r], a, 0), dot2(&wq[r], a, 1))));
        *acc = f32x4_add(*acc, f32x4_mul(f32x4_mul(d, ad), f32x4_convert_i32x4(isum)));
    }
    if G::MIN {
        *accm = f32x4_add(*accm, f32x4_mul(m, adsum));
    }
}

pub fn q8<G: Q8Group>(w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    if acts.len() == 1 {
        return q8_groups(&[w], acts, &mut out[..1]);
    }
    let n = acts.len();
    let step = |wq: &[[v128; 4]; ROWS], sc: [v128; 3], t: usize, b: usize, acc: &mut v128, accm: &mut v128| {
        let ab = &acts[t][b];
        q8_step::<G>(wq, sc, &split_i8x32(ab.qs.as_ptr()), f32x4_splat(ab.d), f32x4_splat(ab.dsum), acc, accm);
    };
    let weights = |g: &G| -> [[v128; 4]; ROWS] { std::array::from_fn(|r| split_i8x32(g.qs()[r].as_ptr())) };
    // As in `q4_with`.
    macro_rules! tile {
        ($($t:literal)*) => {{
            let (mut acc, mut accm) = ([f32x4_splat(0.0); TILE], [f32x4_splat(0.0); TILE]);
            for (b, g) in w.iter().enumerate() {
                let (wq, sc) = (weights(g), q8_scales(g));
                unroll!(t in [$($t)*] => { step(&wq, sc, t, b, &mut acc[t], &mut accm[t]) });
            }
            unroll!(t in [$($t)*] => { store_sum(acc[t], accm[t], &mut out[t]) });
        }};
    }
    match n {
        2 => tile!(0 1),
        3 => tile!(0 1 2),
        _ => {
            assert_eq!(n, TILE, "a tile is 1 to {TILE} tokens");
            tile!(0 1 2 3)
        }
    }
}

/// [`groups_with`] for the 8-bit groups.
pub fn q8_groups<G: Q8Group>(ws: &[&[G]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
    groups_with::<Bytes<G>>(ws, acts, out)
}

/// [`super::quantize_row`] in 4-lane registers, the same bits: the largest magnitude by
/// `f32x4.pmax` (`m < a ? a : m`: a NaN lane keeps m, as the scalar comparison does), round half
/// to even, then saturating conversions down to bytes (NaN to 0), which is what `as i8` does
/// value by value. The compiled scalar form took 3.3 ns a value in Chromium, this 0.9.
pub fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    for (xb, ob) in x.chunks_exact(super::QK).zip(out.iter_mut()) {
        // SAFETY: eight 16-byte loads within the block's 32 f32; unaligned-safe.
        let v: [v128; 8] = std::array::from_fn(|i| unsafe { v128_load(xb.as_ptr().add(4 * i) as *const v128) });
        let m = v.iter().fold(f32x4_splat(0.0), |m, &vi| f32x4_pmax(m, f32x4_abs(vi)));
        let m = f32x4_pmax(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
        let amax = f32x4_extract_lane::<0>(f32x4_pmax(m, i32x4_shuffle::<1, 0, 3, 2>(m, m)));
        let d = amax / 127.0;
        let id = f32x4_splat(if d > 0.0 { 1.0 / d } else { 0.0 });
        let q: [v128; 8] = std::array::from_fn(|i| i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v[i], id))));
        let h: [v128; 4] = std::array::from_fn(|i| i16x8_narrow_i32x4(q[2 * i], q[2 * i + 1]));
        let bytes = [i8x16_narrow_i16x8(h[0], h[1]), i8x16_narrow_i16x8(h[2], h[3])];
        let widen = |b: v128| i32x4_extadd_pairwise_i16x8(i16x8_extadd_pairwise_i8x16(b));
        let s = i32x4_add(widen(bytes[0]), widen(bytes[1]));
        let s = i32x4_add(s, i32x4_shuffle::<2, 3, 0, 1>(s, s));
        let sum = i32x4_extract_lane::<0>(i32x4_add(s, i32x4_shuffle::<1, 0, 3, 2>(s, s)));
        // SAFETY: `qs` is 32 bytes; unaligned-safe stores.
        unsafe {
            v128_store(ob.qs.as_mut_ptr() as *mut v128, bytes[0]);
            v128_store(ob.qs.as_mut_ptr().add(16) as *mut v128, bytes[1]);
        }
        ob.d = d;
        ob.dsum = d * sum as f32;
    }
}
