//! The quantized CPU forward pass: the reference's math over repacked weights, with 8-bit
//! activations into every matrix, run by every thread of the pool at once (each takes a share
//! of each operation's rows; barriers order the operations that read others' results).

use bytemuck::Zeroable;

use super::kernels::{ActBlock, Target, QK};
use super::math::{attend, gated_mul};
use super::threads::{Pool, Shared, Worker};
use super::weights::QMatrix;
use crate::backend::reference::ops::{add_assign, rmsnorm, rmsnorm_in_place};
use crate::error::{Error, Result};
use crate::gguf::{dequantize, ByteSource, Gguf};
use crate::model::{names, Config, RopeStyle};

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    attn_post_norm: Option<Vec<f32>>,
    ffn_post_norm: Option<Vec<f32>>,
    qkv_bias: Option<[Vec<f32>; 3]>,
}

/// A model's weights, repacked for the CPU kernels.
pub struct Weights {
    pub config: Config,
    token_embd: QMatrix,
    output_norm: Vec<f32>,
    /// None when tied to the token embedding.
    output: Option<QMatrix>,
    layers: Vec<Layer>,
}

/// One layer's keys and values by KV slot, `[slot][kv_dim]`, grown as slots are used.
#[derive(Clone, Default)]
pub struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The tokens of one forward and where their sequences' K/V live.
pub struct Step<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// KV slot of (token index in this step, a position of the same sequence).
    pub slot: &'a (dyn Fn(usize, usize) -> usize + Sync),
    pub logit_rows: &'a [u32],
}

impl Weights {
    pub fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S) -> Result<Weights> {
        let config = Config::from_gguf(gguf)?;
        let vector = |name: &str| -> Result<Vec<f32>> {
            let info = config.tensor(gguf, name)?;
            let mut out = vec![0f32; info.n_elements() as usize];
            dequantize(info.ty, &gguf.tensor_data(source, info)?, &mut out)?;
            Ok(out)
        };
        let matrix = |name: &str| QMatrix::load(source, config.tensor(gguf, name)?);
        let layers = (0..config.n_layers)
            .map(|l| {
                let n = |s: &str| names::layer(l, s);
                let opt = |wanted: bool, s: &str| if wanted { vector(&n(s)).map(Some) } else { Ok(None) };
                Ok(Layer {
                    attn_norm: vector(&n(names::ATTN_NORM))?,
                    wq: matrix(&n(names::ATTN_Q))?,
                    wk: matrix(&n(names::ATTN_K))?,
                    wv: matrix(&n(names::ATTN_V))?,
                    wo: matrix(&n(names::ATTN_OUT))?,
                    ffn_norm: vector(&n(names::FFN_NORM))?,
                    w_gate: matrix(&n(names::FFN_GATE))?,
                    w_up: matrix(&n(names::FFN_UP))?,
                    w_down: matrix(&n(names::FFN_DOWN))?,
                    q_norm: opt(config.qk_norm, names::ATTN_Q_NORM)?,
                    k_norm: opt(config.qk_norm, names::ATTN_K_NORM)?,
                    attn_post_norm: opt(config.post_norms, names::ATTN_POST_NORM)?,
                    ffn_post_norm: opt(config.post_norms, names::FFN_POST_NORM)?,
                    qkv_bias: if config.qkv_bias { Some([vector(&n(names::ATTN_Q_BIAS))?, vector(&n(names::ATTN_K_BIAS))?, vector(&n(names::ATTN_V_BIAS))?]) } else { None },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = if config.tied_embeddings { None } else { Some(matrix(names::OUTPUT)?) };
        Ok(Weights { token_embd: matrix(names::TOKEN_EMBD)?, output_norm: vector(names::OUTPUT_NORM)?, output, layers, config })
    }

    /// Bytes of packed matrices one decode step reads (the embedding lookup aside).
    pub fn bytes_per_token(&self) -> usize {
        let head = self.output.as_ref().unwrap_or(&self.token_embd).bytes();
        head + self.layers.iter().map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|m| m.bytes()).sum::<usize>()).sum::<usize>()
    }

    /// Bytes of every packed weight (resident memory of the model).
    pub fn bytes(&self) -> usize {
        self.bytes_per_token() + if self.output.is_some() { self.token_embd.bytes() } else { 0 }
    }

    pub fn new_pool(&self) -> Vec<LayerKv> {
        vec![LayerKv::default(); self.config.n_layers]
    }

    /// Runs the step's tokens, writes their K/V into their slots of `kv` (grown to fit) and
    /// returns the logits of `step.logit_rows`, `[rows][vocab]`.
    pub fn forward(&self, pool: &Pool, target: Target, step: &Step, kv: &mut [LayerKv]) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = step.tokens.len();
        let (d, qd, kvd, f, vocab) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim, c.vocab_size);
        if n == 0 {
            return Err(Error::InvalidOption { option: "tokens", reason: "forward needs at least one token".into() });
        }
        if let Some(&t) = step.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id: t, vocab });
        }
        let slots = (0..n).map(|t| (step.slot)(t, step.positions[t] as usize) + 1).max().unwrap_or(0);
        for l in kv.iter_mut() {
            if l.k.len() < slots * kvd {
                l.k.resize(slots * kvd, 0.0);
                l.v.resize(slots * kvd, 0.0);
            }
        }
        let m = step.logit_rows.len();
        let widest = d.max(qd).max(f);
        let (mut x, mut h, mut proj) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        let (mut q, mut k, mut v, mut attn) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd], vec![0f32; n * qd]);
        let (mut gate, mut up) = (vec![0f32; n * f], vec![0f32; n * f]);
        let mut acts = vec![ActBlock::zeroed(); n * widest.div_ceil(QK)];
        let (mut normed, mut logits) = (vec![0f32; m * d], vec![0f32; m * vocab]);
        let kv_shared: Vec<(Shared<f32>, Shared<f32>)> = kv.iter_mut().map(|l| (Shared::new(&mut l.k), Shared::new(&mut l.v))).collect();
        let b = Buffers {
            x: Shared::new(&mut x),
            h: Shared::new(&mut h),
            proj: Shared::new(&mut proj),
            q: Shared::new(&mut q),
            k: Shared::new(&mut k),
            v: Shared::new(&mut v),
            attn: Shared::new(&mut attn),
            gate: Shared::new(&mut gate),
            up: Shared::new(&mut up),
            acts: Shared::new(&mut acts),
            normed: Shared::new(&mut normed),
            logits: Shared::new(&mut logits),
        };
        pool.run(|w| self.forward_on(w, target, step, &b, &kv_shared));
        Ok(logits)
    }

    /// One thread's part of [`Weights::forward`].
    fn forward_on(&self, w: &Worker, target: Target, step: &Step, b: &Buffers, kv: &[(Shared<f32>, Shared<f32>)]) {
        let c = &self.config;
        let n = step.tokens.len();
        let (d, qd, kvd, f, hd) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        let mine = w.share(n);
        // SAFETY (every block below): between two barriers a thread writes only rows of its own
        // share (tokens, output groups or heads) and reads only what no thread writes.
        let quantize = |src: &Shared<f32>, t: usize, width: usize| {
            let nb = width / QK;
            target.quantize_row(unsafe { src.slice(t * width..(t + 1) * width) }, unsafe { b.acts.slice_mut(t * nb..(t + 1) * nb) });
        };
        let matmul = |mat: &QMatrix, input: &Shared<f32>, width: usize, out: &Shared<f32>| {
            let (x, acts) = unsafe { (&s_all(input)[..n * width], &s_all(&b.acts)[..n * (width / QK)]) };
            mat.matmul(target, x, acts, w.share(mat.groups()), out);
        };
        let (mut scores, mut rows_of_t, mut rope_table) = (Vec::new(), Vec::new(), Vec::new());

        for t in mine.clone() {
            let xt = row(&b.x, t, d);
            self.token_embd.row(step.tokens[t] as usize, xt);
            if c.embed_scale != 1.0 {
                xt.iter_mut().for_each(|e| *e *= c.embed_scale);
            }
        }
        for (l, lw) in self.layers.iter().enumerate() {
            let la = c.layer_attention(l);
            for t in mine.clone() {
                rmsnorm(row(&b.h, t, d), row(&b.x, t, d), &lw.attn_norm, c.norm_eps);
                quantize(&b.h, t, d);
            }
            w.barrier();
            matmul(&lw.wq, &b.h, d, &b.q);
            matmul(&lw.wk, &b.h, d, &b.k);
            matmul(&lw.wv, &b.h, d, &b.v);
            w.barrier();
            for t in mine.clone() {
                let (qt, kt, vt) = (row(&b.q, t, qd), row(&b.k, t, kvd), row(&b.v, t, kvd));
                if let Some([bq, bk, bv]) = &lw.qkv_bias {
                    add_assign(qt, bq);
                    add_assign(kt, bk);
                    add_assign(vt, bv);
                }
                if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                    rmsnorm_in_place(qt, qn, c.norm_eps);
                    rmsnorm_in_place(kt, kn, c.norm_eps);
                }
                let pos = step.positions[t] as usize;
                rope_angles(&mut rope_table, hd, pos as f64 * la.rope_freq_scale as f64, la.rope_base);
                rope(qt, &rope_table, hd, c.rope_style);
                rope(kt, &rope_table, hd, c.rope_style);
                let s = (step.slot)(t, pos);
                unsafe { kv[l].0.slice_mut(s * kvd..(s + 1) * kvd) }.copy_from_slice(kt);
                unsafe { kv[l].1.slice_mut(s * kvd..(s + 1) * kvd) }.copy_from_slice(vt);
            }
            w.barrier();
            let (keys, values, queries) = unsafe { (s_all(&kv[l].0), s_all(&kv[l].1), s_all(&b.q)) };
            let mut rows_for = usize::MAX;
            for i in w.share(n * c.n_heads) {
                let (t, head) = (i / c.n_heads, i % c.n_heads);
                if rows_for != t {
                    // The K/V rows token t attends to, shared by its heads.
                    let len = step.positions[t] as usize + 1;
                    let first = la.window.map_or(0, |w| len.saturating_sub(w));
                    rows_of_t.clear();
                    rows_of_t.extend((first..len).map(|p| (step.slot)(t, p) * kvd));
                    rows_for = t;
                }
                let out = unsafe { b.attn.slice_mut(t * qd + head * hd..t * qd + (head + 1) * hd) };
                let qh = &queries[t * qd + head * hd..][..hd];
                let off = head / (c.n_heads / c.n_kv_heads) * hd;
                attend(target, out, qh, keys, values, &rows_of_t, off, c.attn_scale, &mut scores);
            }
            w.barrier();
            for t in mine.clone() {
                quantize(&b.attn, t, qd);
            }
            w.barrier();
            matmul(&lw.wo, &b.attn, qd, &b.proj);
            w.barrier();
            for t in mine.clone() {
                let p = row(&b.proj, t, d);
                if let Some(pn) = &lw.attn_post_norm {
                    rmsnorm_in_place(p, pn, c.norm_eps);
                }
                add_assign(row(&b.x, t, d), p);
                rmsnorm(row(&b.h, t, d), row(&b.x, t, d), &lw.ffn_norm, c.norm_eps);
                quantize(&b.h, t, d);
            }
            w.barrier();
            matmul(&lw.w_gate, &b.h, d, &b.gate);
            matmul(&lw.w_up, &b.h, d, &b.up);
            w.barrier();
            for t in mine.clone() {
                let (g, u) = (row(&b.gate, t, f), row(&b.up, t, f));
                gated_mul(target, c.activation, g, u);
                quantize(&b.gate, t, f);
            }
            w.barrier();
            matmul(&lw.w_down, &b.gate, f, &b.proj);
            w.barrier();
            for t in mine.clone() {
                let p = row(&b.proj, t, d);
                if let Some(pn) = &lw.ffn_post_norm {
                    rmsnorm_in_place(p, pn, c.norm_eps);
                }
                add_assign(row(&b.x, t, d), p);
            }
        }
        w.barrier();
        let m = step.logit_rows.len();
        for i in w.share(m) {
            let r = step.logit_rows[i] as usize;
            rmsnorm(row(&b.normed, i, d), unsafe { &s_all(&b.x)[r * d..(r + 1) * d] }, &self.output_norm, c.norm_eps);
            quantize(&b.normed, i, d);
        }
        w.barrier();
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        let (x, acts) = unsafe { (&s_all(&b.normed)[..m * d], &s_all(&b.acts)[..m * (d / QK)]) };
        head.matmul(target, x, acts, w.share(head.groups()), &b.logits);
        if let Some(cap) = c.final_logit_softcap {
            w.barrier();
            let all = m * c.vocab_size;
            unsafe { b.logits.slice_mut(w.share(all)) }.iter_mut().for_each(|l| *l = cap * libm::tanhf(*l / cap));
        }
    }
}

/// The step's activations, shared by the pool's threads.
struct Buffers<'a> {
    x: Shared<'a, f32>,
    h: Shared<'a, f32>,
    proj: Shared<'a, f32>,
    q: Shared<'a, f32>,
    k: Shared<'a, f32>,
    v: Shared<'a, f32>,
    attn: Shared<'a, f32>,
    gate: Shared<'a, f32>,
    up: Shared<'a, f32>,
    acts: Shared<'a, ActBlock>,
    normed: Shared<'a, f32>,
    logits: Shared<'a, f32>,
}

/// Row `t` of a `[rows][width]` buffer, for the thread that owns it until the next barrier
/// (private to `forward_on`, which keeps that so).
#[allow(clippy::mut_from_ref)]
fn row<'b>(s: &'b Shared<'_, f32>, t: usize, width: usize) -> &'b mut [f32] {
    // SAFETY: see above.
    unsafe { s.slice_mut(t * width..(t + 1) * width) }
}

/// # Safety
/// As [`Shared::all`].
unsafe fn s_all<'b, T>(s: &'b Shared<'_, T>) -> &'b [T] {
    s.all()
}

/// cos and sin of each frequency of a head at `pos` (the reference's f64 formula, with libm's
/// functions so every target gets the same bits).
fn rope_angles(table: &mut Vec<(f32, f32)>, head_dim: usize, pos: f64, base: f32) {
    table.clear();
    table.extend((0..head_dim / 2).map(|i| {
        let (sin, cos) = libm::sincos(pos * libm::pow(base as f64, -2.0 * i as f64 / head_dim as f64));
        (cos as f32, sin as f32)
    }));
}

fn rope(x: &mut [f32], table: &[(f32, f32)], head_dim: usize, style: RopeStyle) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in table.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}
