//! A weight matrix repacked once at load for the CPU kernels: groups of four rows interleaved
//! block by block, in one of four block formats chosen by the GGUF type (no f32 copy of
//! quantized weights). Integer values are kept as they are; scales become f16.

use bytemuck::Zeroable;
use half::f16;

use super::kernels::{h2f, ActBlock, Q4x4, Q5x4, Q8Group, Q8x4, Q8x4Halves, Q8x4Min, Target, QK, ROWS, TILE};
use super::threads::{Counter, Shared, Worker};
use crate::error::{Error, Result};
use crate::gguf::quant::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0};
use crate::gguf::{q4k_scale_min, ByteSource, GgmlType, TensorInfo};

enum Packed {
    Q4(Vec<Q4x4>),
    /// Q5_0 and Q5_1 in wasm ([`FIVE_BIT`]).
    Q5(Vec<Q5x4>),
    Q8(Vec<Q8x4>),
    Q8Min(Vec<Q8x4Min>),
    Q8Halves(Vec<Q8x4Halves>),
    /// F32, F16 and BF16 matrices, row-major f32 (rare in quantized files; exact).
    F32(Vec<f32>),
}

/// Whether Q5_0 and Q5_1 matrices keep 5 bits ([`Q5x4`]). In wasm they do: 5-bit values fit
/// the relaxed dot product's 7-bit operand, so a group and block costs a 4-bit one plus its
/// fifth bits, and Gemma 3's Q5_0 matrices read 47.6 MB a token instead of 67.4 as 8-bit
/// groups. Natively (AVX2, NEON) they widen to 8 bits, whose kernels have no unpacking.
const FIVE_BIT: bool = cfg!(target_arch = "wasm32");

/// `[rows][cols]` (GGUF `[out][in]`), repacked.
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    packed: Packed,
}

/// 32 consecutive values of one row: `d[half] * q + m` (half = which 16 of the 32).
struct Run {
    q: [i8; QK],
    d: [f32; 2],
    m: f32,
}

/// Where a product writes: token t's output r at `y[t * stride + first + r]` (so q, k and v land
/// side by side in one row per token, whether one stacked matrix wrote them or three).
#[derive(Clone, Copy)]
pub struct Out<'s, 'a> {
    pub y: &'s Shared<'a, f32>,
    pub stride: usize,
    pub first: usize,
}

impl<'s, 'a> Out<'s, 'a> {
    /// Rows of `width` outputs a token, from the start.
    pub fn rows(y: &'s Shared<'a, f32>, width: usize) -> Self {
        Out { y, stride: width, first: 0 }
    }

    /// Token `t`'s outputs `rows`.
    ///
    /// # Safety
    /// As [`Shared::slice_mut`]: no other thread touches them until the next barrier.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, t: usize, rows: std::ops::Range<usize>) -> &mut [f32] {
        let at = t * self.stride + self.first;
        self.y.slice_mut(at + rows.start..at + rows.end)
    }
}

/// Weight groups kept together while tokens stream past them (they stay in cache).
const GROUP_CHUNK: usize = 16;

/// Groups a one-token product hands the kernels at once, from evenly spaced places of its
/// share: the wasm kernels sum that many groups block by block, to keep as many sequential
/// reads in flight (no prefetch instruction there). Natively the kernels prefetch ahead of one
/// stream, and more streams measured slower (one thread 110-136 -> 78-85 tok/s).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
const DECODE_STREAMS: usize = super::kernels::simd128::LOCKSTEP;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
const DECODE_STREAMS: usize = 1;

/// Tokens a product takes set by set ([`decode_set`]: decode, a few sequences' decode rows, a
/// verification step), reading each weight from memory once; more (prefill) take
/// [`GROUP_CHUNK`]s of groups that stay in cache while tiles of tokens stream past them. In
/// wasm a tile's lockstep sets read several places at once where a chunk reads one: two concurrent
/// SmolLM2 streams in Chromium (2 threads) went from 0.77-1.07x one stream's tok/s to 1.15-1.32x.
const SET_TOKENS: usize = 2 * TILE;

/// Outputs of one tile of tokens against one decode set.
const SET_SUMS: usize = TILE * DECODE_STREAMS;

/// Decode sets a thread claims at once ([`QMatrix::matmul_claimed`]): 16 groups (four sets in
/// wasm), 23-61 KB of
/// SmolLM2's 4-bit weights (a few microseconds), so a claim's atomic add is noise and the
/// threads finish within one claim of each other.
const CLAIM_SETS: usize = 16 / DECODE_STREAMS;

impl QMatrix {
    /// Reads and repacks matrix `info` (`dims = [cols, rows]`), four rows at a time.
    pub fn load<S: ByteSource + ?Sized>(source: &S, info: &TensorInfo) -> Result<QMatrix> {
        let (cols, rows) = match info.dims[..] {
            [c, r] => (c as usize, r as usize),
            _ => return Err(Error::InvalidModel(format!("{} is not a matrix", info.name))),
        };
        let row_bytes = info.ty.row_bytes(cols as u64)? as usize;
        let base = info.offset;
        let read_rows = |r0: usize, n: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; row_bytes * n];
            source.read_at(base + (r0 * row_bytes) as u64, &mut buf)?;
            Ok(buf)
        };
        let packed = match info.ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let mut out = vec![0f32; rows * cols];
                let bytes = read_rows(0, rows)?;
                crate::gguf::dequantize(info.ty, &bytes, &mut out)?;
                Packed::F32(out)
            }
            ty => {
                if cols % QK != 0 {
                    return Err(Error::InvalidModel(format!("{}: rows of {cols} values are not whole blocks of {QK}", info.name)));
                }
                let nb = cols / QK;
                let groups = rows.div_ceil(ROWS);
                let mut runs: Vec<Vec<Run>> = (0..ROWS).map(|_| Vec::with_capacity(nb)).collect();
                let mut pack = Packer::new(ty, groups * nb);
                for g in 0..groups {
                    let n = ROWS.min(rows - g * ROWS);
                    let bytes = read_rows(g * ROWS, n)?;
                    for (r, runs) in runs.iter_mut().enumerate() {
                        runs.clear();
                        match bytes.chunks_exact(row_bytes).nth(r) {
                            Some(row) => decode_row(ty, row, runs),
                            None => runs.extend((0..nb).map(|_| Run { q: [0; QK], d: [0.0; 2], m: 0.0 })),
                        }
                    }
                    #[allow(clippy::needless_range_loop)] // block b of each of the four rows
                    for b in 0..nb {
                        pack.push(std::array::from_fn(|r| &runs[r][b])).map_err(|e| Error::InvalidModel(format!("{}: {e}", info.name)))?;
                    }
                }
                pack.0
            }
        };
        Ok(QMatrix { rows, cols, packed })
    }

    /// The rows of `parts` one after another, as one matrix (q, k and v as one product: one
    /// claim loop and fuller decode sets); None unless all share a block format and width and
    /// each has whole groups of rows.
    pub fn stack(parts: &[&QMatrix]) -> Option<QMatrix> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|m| m.cols != cols || m.rows % ROWS != 0) {
            return None;
        }
        fn join<B: Clone>(parts: &[&QMatrix], get: impl Fn(&Packed) -> Option<&Vec<B>>) -> Option<Vec<B>> {
            let mut out = Vec::new();
            for m in parts {
                out.extend_from_slice(get(&m.packed)?);
            }
            Some(out)
        }
        let packed = match parts[0].packed {
            Packed::Q4(_) => Packed::Q4(join(parts, |p| if let Packed::Q4(v) = p { Some(v) } else { None })?),
            Packed::Q5(_) => Packed::Q5(join(parts, |p| if let Packed::Q5(v) = p { Some(v) } else { None })?),
            Packed::Q8(_) => Packed::Q8(join(parts, |p| if let Packed::Q8(v) = p { Some(v) } else { None })?),
            Packed::Q8Min(_) => Packed::Q8Min(join(parts, |p| if let Packed::Q8Min(v) = p { Some(v) } else { None })?),
            Packed::Q8Halves(_) => Packed::Q8Halves(join(parts, |p| if let Packed::Q8Halves(v) = p { Some(v) } else { None })?),
            Packed::F32(_) => return None,
        };
        Some(QMatrix { rows: parts.iter().map(|m| m.rows).sum(), cols, packed })
    }

    /// Bytes the packed weights take (what a decode step reads).
    pub fn bytes(&self) -> usize {
        self.packed_bytes().len()
    }

    /// The packed weights as bytes.
    pub fn packed_bytes(&self) -> &[u8] {
        match &self.packed {
            Packed::Q4(v) => bytemuck::cast_slice(v),
            Packed::Q5(v) => bytemuck::cast_slice(v),
            Packed::Q8(v) => bytemuck::cast_slice(v),
            Packed::Q8Min(v) => bytemuck::cast_slice(v),
            Packed::Q8Halves(v) => bytemuck::cast_slice(v),
            Packed::F32(v) => bytemuck::cast_slice(v),
        }
    }

    pub fn groups(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    /// Row `r` dequantized into `out` (the token embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let (g, lane, nb) = (r / ROWS, r % ROWS, self.cols / QK);
        match &self.packed {
            Packed::Q4(v) => nibble_row(&v[g * nb..(g + 1) * nb], lane, out, |b, j| b.q(lane, j), |b| b),
            Packed::Q5(v) => nibble_row(&v[g * nb..(g + 1) * nb], lane, out, |b, j| b.q(lane, j), |b| &b.q4),
            Packed::Q8(v) => q8_row(&v[g * nb..(g + 1) * nb], lane, out),
            Packed::Q8Min(v) => q8_row(&v[g * nb..(g + 1) * nb], lane, out),
            Packed::Q8Halves(v) => q8_row(&v[g * nb..(g + 1) * nb], lane, out),
            Packed::F32(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
        }
    }

    /// `y = x . rows` for tokens `x: [n][cols]`, on the calling thread (tests, one-off products).
    pub fn matmul_alone(&self, target: Target, x: &[f32]) -> Vec<f32> {
        let (n, nb) = (x.len() / self.cols, self.cols / QK);
        let mut acts = vec![ActBlock::zeroed(); n * nb];
        if nb > 0 {
            for (xt, at) in x.chunks_exact(self.cols).zip(acts.chunks_exact_mut(nb)) {
                target.quantize_row(xt, at);
            }
        }
        let mut y = vec![0f32; n * self.rows];
        self.matmul(target, x, &acts, 0..self.groups(), Out::rows(&Shared::new(&mut y), self.rows));
        y
    }

    /// `y[t][o] = x[t] . row o` for the rows of `groups` and every token: `x: [n][cols]` and its
    /// quantized blocks `acts: [n][cols / 32]`; `y` shared with threads that write other groups.
    pub fn matmul(&self, target: Target, x: &[f32], acts: &[ActBlock], groups: std::ops::Range<usize>, y: Out) {
        let (k, m) = (self.cols, self.rows);
        let n = x.len() / k;
        let nb = k / QK;
        let mut tile = [[0f32; ROWS]; TILE];
        let write = |t: usize, g: usize, vals: &[f32; ROWS]| {
            let (r0, r1) = (g * ROWS, (g * ROWS + ROWS).min(m));
            // SAFETY: this call owns columns of `groups` in every row of y until the caller's next barrier.
            unsafe { y.slice_mut(t, r0..r1) }.copy_from_slice(&vals[..r1 - r0]);
        };
        if n == 0 {
            return;
        }
        if n <= SET_TOKENS && !matches!(self.packed, Packed::F32(_)) {
            let (acts, mut sums) = (token_acts(acts, n, nb), [[0f32; ROWS]; SET_SUMS]);
            for j in 0..decode_sets(groups.len()) {
                self.decode_set(target, &acts[..n], groups.clone(), j, &mut sums, &write);
            }
            return;
        }
        for chunk in groups.clone().step_by(GROUP_CHUNK) {
            let chunk = chunk..(chunk + GROUP_CHUNK).min(groups.end);
            for t0 in (0..n).step_by(TILE) {
                let tn = TILE.min(n - t0);
                for g in chunk.clone() {
                    if let Packed::F32(w) = &self.packed {
                        for t in t0..t0 + tn {
                            let xt = &x[t * k..(t + 1) * k];
                            let vals = std::array::from_fn(|r| if g * ROWS + r < m { crate::backend::reference::ops::dot(xt, &w[(g * ROWS + r) * k..][..k]) } else { 0.0 });
                            write(t, g, &vals);
                        }
                        continue;
                    }
                    let a: [&[ActBlock]; TILE] = std::array::from_fn(|i| if i < tn { &acts[(t0 + i) * nb..(t0 + i + 1) * nb] } else { &[][..] });
                    let out = &mut tile[..tn];
                    let blocks = g * nb..(g + 1) * nb;
                    match &self.packed {
                        Packed::Q4(w) => target.q4(&w[blocks], &a[..tn], out),
                        Packed::Q5(w) => target.q5(&w[blocks], &a[..tn], out),
                        Packed::Q8(w) => target.q8(&w[blocks], &a[..tn], out),
                        Packed::Q8Min(w) => target.q8(&w[blocks], &a[..tn], out),
                        Packed::Q8Halves(w) => target.q8(&w[blocks], &a[..tn], out),
                        Packed::F32(_) => unreachable!("handled above"),
                    }
                    for (i, vals) in out.iter().enumerate() {
                        write(t0 + i, g, vals);
                    }
                }
            }
        }
    }

    /// As [`QMatrix::matmul`] over all of the matrix's groups, shared out among `w`'s pool at
    /// run time ([`Worker::claim`]) where there are at most [`SET_TOKENS`] tokens (decode sets), by
    /// static shares otherwise.
    /// `softcap`: `y = cap * tanh(y / cap)` as each output is written.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_claimed(&self, target: Target, x: &[f32], acts: &[ActBlock], w: &Worker, counters: &[Counter], y: Out, softcap: Option<f32>) {
        let (k, m) = (self.cols, self.rows);
        let n = x.len() / k;
        if n == 0 {
            return;
        }
        if n > SET_TOKENS || matches!(self.packed, Packed::F32(_)) {
            let groups = w.share(self.groups());
            self.matmul(target, x, acts, groups.clone(), y);
            if let Some(cap) = softcap {
                let rows = groups.start * ROWS..(groups.end * ROWS).min(m);
                for t in 0..n {
                    // SAFETY: as in `matmul`: this thread's groups until the next barrier.
                    soft_cap(cap, unsafe { y.slice_mut(t, rows.clone()) });
                }
            }
            return;
        }
        let write = |t: usize, g: usize, vals: &[f32; ROWS]| {
            let (r0, r1) = (g * ROWS, (g * ROWS + ROWS).min(m));
            // SAFETY: a claimed set's groups are this thread's alone until the caller's next barrier.
            let out = unsafe { y.slice_mut(t, r0..r1) };
            out.copy_from_slice(&vals[..r1 - r0]);
            if let Some(cap) = softcap {
                soft_cap(cap, out);
            }
        };
        let (per_claim, acts, mut sums) = (CLAIM_SETS, token_acts(acts, n, k / QK), [[0f32; ROWS]; SET_SUMS]);
        // Shares of whole decode sets: a ragged set takes the wasm kernels' slower loop.
        w.claim(
            self.groups(),
            DECODE_STREAMS,
            counters,
            |len| decode_sets(len).div_ceil(per_claim),
            |share, j| {
                for set in j * per_claim..((j + 1) * per_claim).min(decode_sets(share.len())) {
                    self.decode_set(target, &acts[..n], share.clone(), set, &mut sums, &write);
                }
            },
        );
    }

    /// Set `j` of `groups` for the tokens of `acts` ([`decode_set`]) with `target`'s kernels, a
    /// tile of tokens at a time (the set's weights stay in cache for the second); `sums`: the
    /// kernels' outputs before they are written, kept by the caller for all of a product's sets.
    fn decode_set(&self, target: Target, acts: &[&[ActBlock]], groups: std::ops::Range<usize>, j: usize, sums: &mut [[f32; ROWS]; SET_SUMS], write: &impl Fn(usize, usize, &[f32; ROWS])) {
        let nb = acts[0].len();
        for (i, tile) in acts.chunks(TILE).enumerate() {
            let (out, write) = (&mut sums[..tile.len() * DECODE_STREAMS], |t: usize, g: usize, vals: &[f32; ROWS]| write(i * TILE + t, g, vals));
            match &self.packed {
                Packed::Q4(w) => decode_set(w, nb, groups.clone(), j, out, |ws, out| target.q4_groups(ws, tile, out), write),
                Packed::Q5(w) => decode_set(w, nb, groups.clone(), j, out, |ws, out| target.q5_groups(ws, tile, out), write),
                Packed::Q8(w) => decode_set(w, nb, groups.clone(), j, out, |ws, out| target.q8_groups(ws, tile, out), write),
                Packed::Q8Min(w) => decode_set(w, nb, groups.clone(), j, out, |ws, out| target.q8_groups(ws, tile, out), write),
                Packed::Q8Halves(w) => decode_set(w, nb, groups.clone(), j, out, |ws, out| target.q8_groups(ws, tile, out), write),
                Packed::F32(_) => unreachable!("f32 matrices take the token loop"),
            }
        }
    }
}

/// Each of the first `n` tokens' blocks of `acts` (`[n][nb]`), as the kernels take them.
fn token_acts(acts: &[ActBlock], n: usize, nb: usize) -> [&[ActBlock]; SET_TOKENS] {
    std::array::from_fn(|t| if t < n { &acts[t * nb..(t + 1) * nb] } else { &[][..] })
}

/// `y = cap * tanh(y / cap)` (Gemma's final logit softcap).
fn soft_cap(cap: f32, y: &mut [f32]) {
    y.iter_mut().for_each(|l| *l = cap * libm::tanhf(*l / cap));
}

/// Decode sets of a range of `len` groups ([`decode_set`]): full sets, then one with the rest.
fn decode_sets(len: usize) -> usize {
    len.div_ceil(DECODE_STREAMS)
}

/// Hands `kernel` set `j` of the groups of `groups` (each `nb` blocks of `w`), at most
/// [`DECODE_STREAMS`] groups, and `write`s each group's four outputs for each token (`out`:
/// [`DECODE_STREAMS`] outputs a token, for the kernel).
/// Full sets first: group i of set j is the j-th of the i-th of [`DECODE_STREAMS`] equal runs
/// of the range; the last set holds what is left (fewer than a set). Full sets are what the
/// wasm kernels run fastest (`unroll!`); evenly spaced places with a ragged last set put a
/// whole share through the slower partial sets (72 groups, two threads' share of SmolLM2's q:
/// five sets of 14-15).
fn decode_set<B>(w: &[B], nb: usize, groups: std::ops::Range<usize>, j: usize, out: &mut [[f32; ROWS]], kernel: impl FnOnce(&[&[B]], &mut [[f32; ROWS]]), write: impl Fn(usize, usize, &[f32; ROWS])) {
    let depth = groups.len() / DECODE_STREAMS;
    let mut at = [0usize; DECODE_STREAMS];
    let n = if j < depth {
        at.iter_mut().enumerate().for_each(|(i, a)| *a = groups.start + i * depth + j);
        DECODE_STREAMS
    } else {
        let rest = groups.start + depth * DECODE_STREAMS..groups.end;
        at.iter_mut().zip(rest.clone()).for_each(|(a, g)| *a = g);
        rest.len()
    };
    let mut ws: [&[B]; DECODE_STREAMS] = [&[]; DECODE_STREAMS];
    for (w_i, &g) in ws.iter_mut().zip(&at[..n]) {
        *w_i = &w[g * nb..(g + 1) * nb];
    }
    let tokens = out.len() / DECODE_STREAMS;
    kernel(&ws[..n], &mut out[..tokens * n]);
    for t in 0..tokens {
        for (&g, vals) in at[..n].iter().zip(&out[t * n..]) {
            write(t, g, vals);
        }
    }
}

/// A 4- or 5-bit group's row `lane` dequantized: `value(b, j)` is its value j in block b, `low(b)`
/// holds the scales and mins.
fn nibble_row<B>(v: &[B], lane: usize, out: &mut [f32], value: impl Fn(&B, usize) -> u8, low: impl Fn(&B) -> &Q4x4) {
    for (b, o) in v.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (h2f(low(b).d[lane]), h2f(low(b).m[lane]));
        for (j, o) in o.iter_mut().enumerate() {
            *o = value(b, j) as f32 * d + m;
        }
    }
}

fn q8_row<G: Q8Group>(v: &[G], lane: usize, out: &mut [f32]) {
    let f = |h: u16| f16::from_bits(h).to_f32();
    for (b, o) in v.iter().zip(out.chunks_exact_mut(QK)) {
        let m = if G::MIN { f(b.m()[lane]) } else { 0.0 };
        for (j, (o, &q)) in o.iter_mut().zip(&b.qs()[lane]).enumerate() {
            let d = if G::HALVES && j >= QK / 2 { f(b.d()[ROWS + lane]) } else { f(b.d()[lane]) };
            *o = if G::MIN { q as f32 * d + m } else { q as f32 * d };
        }
    }
}

/// The packed blocks of one matrix, in the format its GGUF type maps to.
struct Packer(Packed);

impl Packer {
    fn new(ty: GgmlType, n: usize) -> Packer {
        Packer(match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Packed::Q4(Vec::with_capacity(n)),
            GgmlType::Q5_0 | GgmlType::Q5_1 if FIVE_BIT => Packed::Q5(Vec::with_capacity(n)),
            GgmlType::Q5_1 => Packed::Q8Min(Vec::with_capacity(n)),
            GgmlType::Q6_K => Packed::Q8Halves(Vec::with_capacity(n)),
            _ => Packed::Q8(Vec::with_capacity(n)),
        })
    }

    /// Appends the block of four rows' runs.
    fn push(&mut self, runs: [&Run; ROWS]) -> std::result::Result<(), String> {
        let h = |v: f32| -> std::result::Result<u16, String> {
            let x = f16::from_f32(v);
            if x.is_finite() {
                Ok(x.to_bits())
            } else {
                Err(format!("a block scale of {v} does not fit in f16; the file is corrupt"))
            }
        };
        match &mut self.0 {
            Packed::Q4(v) => {
                let mut b = Q4x4::zeroed();
                for (r, run) in runs.iter().enumerate() {
                    (b.d[r], b.m[r]) = (h(run.d[0])?, h(run.m)?);
                    for (j, &q) in run.q.iter().enumerate() {
                        b.set_q(r, j, q as u8);
                    }
                }
                v.push(b);
            }
            Packed::Q5(v) => {
                let mut b = Q5x4::zeroed();
                for (r, run) in runs.iter().enumerate() {
                    (b.q4.d[r], b.q4.m[r]) = (h(run.d[0])?, h(run.m)?);
                    for (j, &q) in run.q.iter().enumerate() {
                        b.set_q(r, j, q as u8);
                    }
                }
                v.push(b);
            }
            Packed::Q8(v) => {
                let mut b = Q8x4::zeroed();
                for (r, run) in runs.iter().enumerate() {
                    (b.d[r], b.qs[r]) = (h(run.d[0])?, run.q);
                }
                v.push(b);
            }
            Packed::Q8Min(v) => {
                let mut b = Q8x4Min::zeroed();
                for (r, run) in runs.iter().enumerate() {
                    (b.d[r], b.m[r], b.qs[r]) = (h(run.d[0])?, h(run.m)?, run.q);
                }
                v.push(b);
            }
            Packed::Q8Halves(v) => {
                let mut b = Q8x4Halves::zeroed();
                for (r, run) in runs.iter().enumerate() {
                    (b.d[r], b.d[ROWS + r], b.qs[r]) = (h(run.d[0])?, h(run.d[1])?, run.q);
                }
                v.push(b);
            }
            Packed::F32(_) => unreachable!("f32 matrices are not packed"),
        }
        Ok(())
    }
}

/// Splits one row of GGUF blocks into runs of 32 integer values with their scales.
fn decode_row(ty: GgmlType, row: &[u8], out: &mut Vec<Run>) {
    fn each<B: bytemuck::Pod>(row: &[u8], mut f: impl FnMut(B)) {
        row.chunks_exact(std::mem::size_of::<B>()).for_each(|c| f(bytemuck::pod_read_unaligned(c)));
    }
    let nib = |qs: &[u8; 16]| -> [i32; QK] { std::array::from_fn(|j| if j < 16 { (qs[j] & 0xF) as i32 } else { (qs[j - 16] >> 4) as i32 }) };
    let fifth = |qh: [u8; 4]| -> [i32; QK] {
        let h = u32::from_le_bytes(qh);
        std::array::from_fn(|j| (((h >> j) & 1) << 4) as i32)
    };
    let run = |q: [i32; QK], d: f32, m: f32| Run { q: q.map(|v| v as i8), d: [d; 2], m };
    match ty {
        GgmlType::Q4_0 => each(row, |b: BlockQ4_0| out.push(run(nib(&b.qs), b.d.to_f32(), -8.0 * b.d.to_f32()))),
        GgmlType::Q4_1 => each(row, |b: BlockQ4_1| out.push(run(nib(&b.qs), b.d.to_f32(), b.m.to_f32()))),
        GgmlType::Q5_0 => each(row, |b: BlockQ5_0| {
            let (lo, hi, d) = (nib(&b.qs), fifth(b.qh), b.d.to_f32());
            // 5-bit groups keep the values unsigned with a min of -16 d (as Q4_0's -8 d; exact
            // in f16); 8-bit groups take them signed.
            let (offset, m) = if FIVE_BIT { (0, -16.0 * d) } else { (16, 0.0) };
            out.push(run(std::array::from_fn(|j| (lo[j] | hi[j]) - offset), d, m))
        }),
        GgmlType::Q5_1 => each(row, |b: BlockQ5_1| {
            let (lo, hi) = (nib(&b.qs), fifth(b.qh));
            out.push(run(std::array::from_fn(|j| lo[j] | hi[j]), b.d.to_f32(), b.m.to_f32()))
        }),
        GgmlType::Q8_0 => each(row, |b: BlockQ8_0| out.push(run(b.qs.map(|v| v as i32), b.d.to_f32(), 0.0))),
        GgmlType::Q4_K => each(row, |b: BlockQ4K| {
            for (q, d, m) in q4k_runs(&b) {
                out.push(run(q, d, m));
            }
        }),
        GgmlType::Q6_K => each(row, |b: BlockQ6K| {
            let d = b.d.to_f32();
            for i in 0..8 {
                let (half, k) = (i / 4, i % 4);
                let (ql, qh) = (&b.ql[64 * half..], &b.qh[32 * half..]);
                let q = std::array::from_fn(|l| {
                    let (lo, shift) = match k {
                        0 => (ql[l] & 0xF, 0),
                        1 => (ql[l + 32] & 0xF, 2),
                        2 => (ql[l] >> 4, 4),
                        _ => (ql[l + 32] >> 4, 6),
                    };
                    (lo | (((qh[l] >> shift) & 3) << 4)) as i32 - 32
                });
                out.push(Run { q: q.map(|v: i32| v as i8), d: [d * b.scales[2 * i] as f32, d * b.scales[2 * i + 1] as f32], m: 0.0 });
            }
        }),
        _ => unreachable!("{ty} rows are not packed"),
    }
}

/// Q4_K's eight runs: 4-bit values, scale `d * sc`, min `-dmin * m` (its dequantization).
fn q4k_runs(b: &BlockQ4K) -> impl Iterator<Item = ([i32; QK], f32, f32)> + '_ {
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    (0..8).map(move |j| {
        let (sc, m) = q4k_scale_min(j, &b.scales);
        let qs = &b.qs[32 * (j / 2)..][..32];
        let q = std::array::from_fn(|l| if j % 2 == 0 { (qs[l] & 0xF) as i32 } else { (qs[l] >> 4) as i32 });
        (q, d * sc as f32, -(dmin * m as f32))
    })
}
