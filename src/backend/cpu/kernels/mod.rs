//! Quantized matrix-vector kernels. Weights are repacked at load into groups of four rows
//! interleaved block by block (one activation load serves four rows); activations are quantized
//! to 8 bits per block of 32, so the inner loops are integer dot products. Every target
//! (`scalar`, `simd128`, `relaxed`, `avx2`, `neon`) has the same functions and computes the same integer sums and
//! the same f32 operations in the same order, so their results are identical bit for bit. The
//! 5-bit groups are wasm's alone (natively Q5 matrices widen to 8 bits): `avx2` and `neon` have
//! no kernels for them, and run `scalar`'s if asked.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
pub mod relaxed;
pub mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod simd128;

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per quantization block (weights and activations).
pub const QK: usize = 32;
/// Rows interleaved in one weight group.
pub const ROWS: usize = 4;
/// Tokens one pass over a weight group serves (prefill reuses each weight load this often).
pub const TILE: usize = 4;

/// Four rows' 4-bit blocks: row r's value j is `d[r] * q + m[r]` (Q4_0, Q4_1, Q4_K), q where
/// [`Q4x4::q`] finds it: values j and j + 16 share a byte (low and high nibble); natively
/// `qs[r]` holds row r's bytes, in wasm `qs[c]` holds four bytes of each row (values 4c..4c + 4),
/// so that each i32 lane of a 16-byte product is one row's sum and no reduction across lanes
/// is needed (wasm has no horizontal adds).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Q4x4 {
    pub d: [u16; ROWS],
    pub m: [u16; ROWS],
    pub qs: [[u8; 16]; ROWS],
}

impl Q4x4 {
    /// Whether `qs[c]` holds four bytes of each row (wasm) rather than one row (natively).
    pub const LANES_ARE_ROWS: bool = cfg!(target_arch = "wasm32");

    /// The byte of the flattened `qs` and the shift of row `r`'s value `j`.
    #[inline(always)]
    fn place(r: usize, j: usize) -> (usize, u32) {
        place_in(Self::LANES_ARE_ROWS, r, j)
    }

    /// Row `r`'s value `j` (`j` < 32; a value 0..16).
    #[inline(always)]
    pub fn q(&self, r: usize, j: usize) -> u8 {
        let (byte, shift) = Self::place(r, j);
        (self.qs[byte / 16][byte % 16] >> shift) & 0xF
    }

    /// Sets row `r`'s value `j` to `v` (0..16) in a group whose value is still 0.
    pub fn set_q(&mut self, r: usize, j: usize, v: u8) {
        let (byte, shift) = Self::place(r, j);
        self.qs[byte / 16][byte % 16] |= (v & 0xF) << shift;
    }
}

/// Four rows' 5-bit blocks (Q5_0 and Q5_1 in wasm, where a 5-bit value fits the relaxed dot
/// product's 7-bit operand): row r's value j is `d[r] * q + m[r]` (Q5_0's min is `-16 d`), q's
/// low four bits where a [`Q4x4`] keeps them (`q4`, with the scales and mins), its fifth bit in
/// `qh` ([`Q5x4::q`] says where): 96 bytes for 128 values, where 8-bit groups take 136.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Q5x4 {
    pub q4: Q4x4,
    pub qh: [u8; 16],
}

impl Q5x4 {
    /// Where row r's value j keeps its fifth bit: bit i of `qh[b]`, where b is the byte of its
    /// nibble within its 16-byte chunk c of `q4` and i is c for a low nibble, 4 + c for a high
    /// one. In wasm's layout, that is byte b of the kernels' i-th vector of unpacked nibbles.
    #[inline(always)]
    fn place(r: usize, j: usize) -> (usize, u32) {
        let (byte, shift) = Q4x4::place(r, j);
        (byte % 16, (byte / 16) as u32 + shift)
    }

    /// Row `r`'s value `j` (`j` < 32; a value 0..32).
    #[inline(always)]
    pub fn q(&self, r: usize, j: usize) -> u8 {
        let (b, i) = Self::place(r, j);
        self.q4.q(r, j) | (((self.qh[b] >> i) & 1) << 4)
    }

    /// Sets row `r`'s value `j` to `v` (0..32) in a group whose value is still 0.
    pub fn set_q(&mut self, r: usize, j: usize, v: u8) {
        self.q4.set_q(r, j, v & 0xF);
        let (b, i) = Self::place(r, j);
        self.qh[b] |= ((v >> 4) & 1) << i;
    }
}

/// [`Q4x4::place`] for either layout.
#[inline(always)]
fn place_in(lanes_are_rows: bool, r: usize, j: usize) -> (usize, u32) {
    let (k, shift) = (j % 16, 4 * (j / 16) as u32);
    let byte = if lanes_are_rows { 16 * (k / 4) + 4 * r + k % 4 } else { 16 * r + k };
    (byte, shift)
}

/// Four rows' 8-bit blocks: value j is `d[r] * qs[r][j]` (Q8_0, Q5_0).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Q8x4 {
    pub d: [u16; ROWS],
    pub qs: [[i8; QK]; ROWS],
}

/// [`Q8x4`] plus a min: value j is `d[r] * qs[r][j] + m[r]` (Q5_1).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Q8x4Min {
    pub d: [u16; ROWS],
    pub m: [u16; ROWS],
    pub qs: [[i8; QK]; ROWS],
}

/// [`Q8x4`] with a scale per half block: values 0..16 of row r use `d[r]`, 16..32 use
/// `d[ROWS + r]` (Q6_K, whose sub-blocks are 16 values).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Q8x4Halves {
    pub d: [u16; 2 * ROWS],
    pub qs: [[i8; QK]; ROWS],
}

const _: () = assert!(std::mem::size_of::<Q4x4>() == 80);
const _: () = assert!(std::mem::size_of::<Q5x4>() == 96);
const _: () = assert!(std::mem::size_of::<Q8x4>() == 136);
const _: () = assert!(std::mem::size_of::<Q8x4Min>() == 144);
const _: () = assert!(std::mem::size_of::<Q8x4Halves>() == 144);

/// The 8-bit weight groups differ only in their scales; one kernel serves them all.
pub trait Q8Group: Pod {
    const HALVES: bool;
    const MIN: bool;
    fn qs(&self) -> &[[i8; QK]; ROWS];
    /// Scales: `ROWS` values, or `2 * ROWS` (low halves, then high halves) when `HALVES`.
    fn d(&self) -> &[u16];
    /// Mins when `MIN`.
    fn m(&self) -> &[u16; ROWS];
}

impl Q8Group for Q8x4 {
    const HALVES: bool = false;
    const MIN: bool = false;
    fn qs(&self) -> &[[i8; QK]; ROWS] {
        &self.qs
    }
    fn d(&self) -> &[u16] {
        &self.d
    }
    fn m(&self) -> &[u16; ROWS] {
        &[0; ROWS]
    }
}

impl Q8Group for Q8x4Min {
    const HALVES: bool = false;
    const MIN: bool = true;
    fn qs(&self) -> &[[i8; QK]; ROWS] {
        &self.qs
    }
    fn d(&self) -> &[u16] {
        &self.d
    }
    fn m(&self) -> &[u16; ROWS] {
        &self.m
    }
}

impl Q8Group for Q8x4Halves {
    const HALVES: bool = true;
    const MIN: bool = false;
    fn qs(&self) -> &[[i8; QK]; ROWS] {
        &self.qs
    }
    fn d(&self) -> &[u16] {
        &self.d
    }
    fn m(&self) -> &[u16; ROWS] {
        &[0; ROWS]
    }
}

/// One block of a quantized activation row: `x[j] ~ d * qs[j]`, and `dsum = d * sum(qs)` for
/// the min terms.
#[repr(C, align(16))]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct ActBlock {
    pub qs: [i8; QK],
    pub d: f32,
    pub dsum: f32,
    _pad: [f32; 2],
}

/// Quantizes `x` (a multiple of [`QK`] values) into `out`, one block per 32 values: the scale
/// maps the block's largest magnitude to 127 (ggml's Q8_0 scale). Rounds half to even: one
/// instruction where the target has it (`f32.nearest`, SSE4.1's `roundps`: see
/// [`Target::quantize_row`]), where ggml's half-away-from-zero is a libm call in wasm; the two
/// differ only on exact halves.
#[inline(always)]
pub fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let mut amax = 0f32;
        for v in xb {
            let a = v.abs();
            amax = if a > amax { a } else { amax };
        }
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in ob.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        ob.d = d;
        ob.dsum = d * sum as f32;
    }
}

/// Exact f16 -> f32 for the scales (finite by construction: the repack refuses others).
#[inline(always)]
pub fn h2f(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// The fastest kernels this machine runs, picked once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Scalar,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
    Relaxed,
    /// Relaxed SIMD with the 4- and 5-bit products added in 16-bit lanes before widening: faster
    /// where the browser has no VNNI instruction for the 32-bit form ([`relaxed::pick`]).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
    Relaxed16,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 with AVX-VNNI's byte dot products.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX2 with AVX-512 VNNI's byte dot products (256-bit registers).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Target {
    pub fn detect() -> Target {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
        return relaxed::pick();
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128", not(feature = "relaxed-simd")))]
        return Target::Simd128;
        #[cfg(target_arch = "x86_64")]
        if let Some(&best) = Target::x86().last() {
            return best;
        }
        #[cfg(target_arch = "aarch64")]
        return Target::Neon;
        #[allow(unreachable_code)]
        Target::Scalar
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Scalar => "scalar",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => "simd128",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed => "relaxed-simd",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed16 => "relaxed-simd-i16",
            #[cfg(target_arch = "x86_64")]
            Target::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Target::AvxVnni => "avx2+avx-vnni",
            #[cfg(target_arch = "x86_64")]
            Target::Avx512Vnni => "avx2+avx512-vnni",
            #[cfg(target_arch = "aarch64")]
            Target::Neon => "neon",
        }
    }

    /// The x86-64 targets this CPU runs, fastest last.
    #[cfg(target_arch = "x86_64")]
    fn x86() -> Vec<Target> {
        use std::is_x86_feature_detected as has;
        let mut v = Vec::new();
        if has!("avx2") && has!("f16c") {
            v.push(Target::Avx2);
            if has!("avx512vnni") && has!("avx512vl") {
                v.push(Target::Avx512Vnni);
            }
            if has!("avxvnni") {
                v.push(Target::AvxVnni);
            }
        }
        v
    }

    /// Whether this target's kernels are x86-64's AVX2 ones (the elementwise functions run
    /// their AVX2 builds).
    pub fn is_avx2(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return matches!(self, Target::Avx2 | Target::AvxVnni | Target::Avx512Vnni);
        #[allow(unreachable_code)]
        false
    }

    /// Every target this machine can run (the kernel tests compare them).
    pub fn available() -> Vec<Target> {
        let mut v = vec![Target::Scalar];
        // A relaxed-SIMD build also runs the plain simd128 kernels (what other builds run).
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
        v.extend([Target::Simd128, Target::Relaxed, Target::Relaxed16]);
        #[cfg(target_arch = "x86_64")]
        v.extend(Target::x86());
        #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))))]
        if Target::detect() != Target::Scalar {
            v.push(Target::detect());
        }
        v
    }

    /// `out[t][r] = row r of the group . token t`, for each token's blocks in `acts` (at most
    /// [`TILE`] tokens).
    pub fn q4(self, w: &[Q4x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        debug_assert!(acts.len() <= TILE && out.len() == acts.len() && acts.iter().all(|a| a.len() == w.len()));
        match self {
            Target::Scalar => scalar::q4(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::q4(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed => relaxed::q4(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed16 => relaxed::q4_16(w, acts, out),
            // SAFETY: `x86` lists these targets only on CPUs with their features.
            #[cfg(target_arch = "x86_64")]
            Target::Avx2 => unsafe { avx2::q4(w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Target::AvxVnni => unsafe { avx2::q4_avx_vnni(w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Target::Avx512Vnni => unsafe { avx2::q4_avx512_vnni(w, acts, out) },
            // SAFETY: NEON is baseline on aarch64.
            #[cfg(target_arch = "aarch64")]
            Target::Neon => unsafe { neon::q4(w, acts, out) },
        }
    }

    /// `out[t * ws.len() + k][r] = row r of group ws[k] . token t`, for the 1 to [`TILE`] tokens
    /// of `acts` (decode: one token, or a few decode rows or a verification step). Wasm sums up
    /// to four groups together block by block (`simd128::LOCKSTEP`: more reads in flight),
    /// each block unpacked once for all the tokens; other targets take one group after another
    /// (they prefetch). The same sums as [`Target::q4`].
    pub fn q4_groups(self, ws: &[&[Q4x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        debug_assert!(groups_shape(ws, acts, out));
        match self {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::q4_groups(ws, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed => relaxed::q4_groups(ws, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed16 => relaxed::q4_groups_16(ws, acts, out),
            _ => group_by_group(ws, acts, out, |w, tile| self.q4(w, acts, tile)),
        }
    }

    /// [`Target::q4`] for the 5-bit groups (wasm's; natively Q5 matrices are 8-bit groups, and
    /// the native targets would run the portable kernel).
    pub fn q5(self, w: &[Q5x4], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        debug_assert!(acts.len() <= TILE && out.len() == acts.len() && acts.iter().all(|a| a.len() == w.len()));
        match self {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::q5(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed => relaxed::q5(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed16 => relaxed::q5_16(w, acts, out),
            _ => scalar::q5(w, acts, out),
        }
    }

    /// [`Target::q4_groups`] for the 5-bit groups.
    pub fn q5_groups(self, ws: &[&[Q5x4]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        debug_assert!(groups_shape(ws, acts, out));
        match self {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::q5_groups(ws, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed => relaxed::q5_groups(ws, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed16 => relaxed::q5_groups_16(ws, acts, out),
            _ => group_by_group(ws, acts, out, |w, tile| self.q5(w, acts, tile)),
        }
    }

    /// [`Target::q4_groups`] for the 8-bit groups.
    pub fn q8_groups<G: Q8Group>(self, ws: &[&[G]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        debug_assert!(groups_shape(ws, acts, out));
        match self {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::q8_groups(ws, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed | Target::Relaxed16 => relaxed::q8_groups(ws, acts, out),
            _ => group_by_group(ws, acts, out, |w, tile| self.q8(w, acts, tile)),
        }
    }

    /// [`quantize_row`] compiled for this target: x86-64's baseline has no rounding instruction,
    /// so there each value was a call to libm's `rintf` (4% of a decode step on one thread).
    /// The same bits everywhere.
    pub fn quantize_row(self, x: &[f32], out: &mut [ActBlock]) {
        match self {
            // SAFETY: as in `q4`.
            #[cfg(target_arch = "x86_64")]
            t if t.is_avx2() => unsafe { avx2::quantize_row(x, out) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::quantize_row(x, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed | Target::Relaxed16 => simd128::quantize_row(x, out),
            _ => quantize_row(x, out),
        }
    }

    /// [`Target::q4`] for the 8-bit groups.
    pub fn q8<G: Q8Group>(self, w: &[G], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]]) {
        debug_assert!(acts.len() <= TILE && out.len() == acts.len() && acts.iter().all(|a| a.len() == w.len()));
        match self {
            Target::Scalar => scalar::q8(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Target::Simd128 => simd128::q8(w, acts, out),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Target::Relaxed | Target::Relaxed16 => relaxed::q8(w, acts, out),
            // SAFETY: as in `q4`.
            #[cfg(target_arch = "x86_64")]
            Target::Avx2 => unsafe { avx2::q8(w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Target::AvxVnni => unsafe { avx2::q8_avx_vnni(w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Target::Avx512Vnni => unsafe { avx2::q8_avx512_vnni(w, acts, out) },
            // SAFETY: as in `q4`.
            #[cfg(target_arch = "aarch64")]
            Target::Neon => unsafe { neon::q8(w, acts, out) },
        }
    }
}

/// Whether `out` holds one row of outputs per token for every group of `ws`, and every group
/// has each token's blocks ([`Target::q4_groups`]).
fn groups_shape<B>(ws: &[&[B]], acts: &[&[ActBlock]], out: &[[f32; ROWS]]) -> bool {
    (1..=TILE).contains(&acts.len()) && out.len() == acts.len() * ws.len() && ws.iter().all(|w| acts.iter().all(|a| a.len() == w.len()))
}

/// [`Target::q4_groups`] as one tile product (`product(group, outputs)`) a group.
fn group_by_group<B>(ws: &[&[B]], acts: &[&[ActBlock]], out: &mut [[f32; ROWS]], mut product: impl FnMut(&[B], &mut [[f32; ROWS]])) {
    let mut tile = [[0f32; ROWS]; TILE];
    for (k, w) in ws.iter().enumerate() {
        product(w, &mut tile[..acts.len()]);
        for (t, vals) in tile[..acts.len()].iter().enumerate() {
            out[t * ws.len() + k] = *vals;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{place_in, Q5x4, QK, ROWS};
    use bytemuck::Zeroable;

    /// Both 4-bit layouts give every (row, value) its own nibble, values j and j + 16 share a
    /// byte, and with lanes as rows each 4-byte lane of a 16-byte chunk is one row's (what the
    /// wasm kernels' per-lane sums rely on; the browser tests run those kernels).
    #[test]
    fn q4_layouts_place_each_value_once() {
        for lanes_are_rows in [false, true] {
            let mut seen = [[false; 2]; 64];
            for r in 0..ROWS {
                for j in 0..QK {
                    let (byte, shift) = place_in(lanes_are_rows, r, j);
                    assert!(!seen[byte][shift as usize / 4], "row {r} value {j} shares a nibble");
                    seen[byte][shift as usize / 4] = true;
                    assert_eq!(place_in(lanes_are_rows, r, j % 16).0, byte);
                    if lanes_are_rows {
                        assert_eq!((byte % 16 / 4, byte / 16), (r, j % 16 / 4), "row {r} value {j}");
                    } else {
                        assert_eq!(byte / 16, r);
                    }
                }
            }
            assert!(seen.iter().flatten().all(|&s| s));
        }
    }

    /// Every (row, value) of a 5-bit group has its own fifth bit, and `q` gives back what
    /// `set_q` stored (the fifth bit included).
    #[test]
    fn q5_fifth_bits_are_one_each() {
        let mut seen = [[false; 8]; 16];
        let mut g = Q5x4::zeroed();
        for r in 0..ROWS {
            for j in 0..QK {
                let (b, i) = Q5x4::place(r, j);
                assert!(!seen[b][i as usize], "row {r} value {j} shares a fifth bit");
                seen[b][i as usize] = true;
                g.set_q(r, j, ((7 * r + 3 * j) % 32) as u8);
            }
        }
        assert!(seen.iter().flatten().all(|&s| s));
        for r in 0..ROWS {
            for j in 0..QK {
                assert_eq!(g.q(r, j), ((7 * r + 3 * j) % 32) as u8, "row {r} value {j}");
            }
        }
    }
}
