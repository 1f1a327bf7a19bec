//! The quantized CPU forward pass: the reference's math over repacked weights, with 8-bit
//! activations into every matrix, run by every thread of the pool at once (each takes a share
//! of each operation's rows; barriers order the operations that read others' results).

use bytemuck::Zeroable;

use super::attention::{max_chunks, splits, Attention, LayerKv, Local, PAGE};
use super::kernels::{ActBlock, Q8x4, Target, QK, ROWS};
use super::math::{gated_mul, quantize_fine};
use super::threads::{Claims, Counter, Pool, Shared, Worker};
use super::weights::{Out, QMatrix};
use crate::backend::reference::ops::{add_assign, rmsnorm, rmsnorm_in_place};
use crate::error::{Error, Result};
use crate::gguf::{dequantize, ByteSource, Gguf};
use crate::model::{names, Config, RopeStyle};

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v: one matrix of their rows stacked where their block formats match (one
    /// product: one claim loop, full decode sets instead of three ragged ones; SmolLM2 decode
    /// on two threads in Chromium +6%), else the three. Either way their outputs lie side by
    /// side, `[token][q | k | v]`.
    qkv: Vec<QMatrix>,
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

impl Layer {
    /// q, k and v of every token into `y`'s rows of `width`, `[token][q | k | v]`, each matrix a
    /// claimed product (operation `op(i)` for the i-th).
    #[allow(clippy::too_many_arguments)]
    fn qkv_products<'c>(&self, target: Target, x: &[f32], acts: &[ActBlock], w: &Worker, op: impl Fn(usize) -> &'c [Counter], y: &Shared<f32>, width: usize) {
        let mut first = 0;
        for (i, m) in self.qkv.iter().enumerate() {
            m.matmul_claimed(target, x, acts, w, op(i), Out { y, stride: width, first }, None);
            first += m.rows;
        }
    }
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

/// A step's buffers that all threads share (and its claims' counters, reset each step), kept
/// from step to step and grown to the largest step seen: allocating them every step (up to a
/// few MB with several logit rows) left wasm's allocator with holes that later steps' sizes did
/// not fit, so memory kept stepping up.
/// Every element a step reads is written in that step first.
#[derive(Default)]
pub struct Scratch {
    claims: Claims,
    qkv: Vec<f32>,
    queries: Vec<ActBlock>,
    parts: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: Vec<ActBlock>,
    logits: Vec<f32>,
}

/// The first `n` elements of `v`, grown (zeroed) to hold them.
fn first<T: Zeroable + Clone>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::zeroed());
    }
    &mut v[..n]
}

/// The tokens of one forward and where their sequences' K/V live.
pub struct Step<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// KV slot of (token index in this step, a position of the same sequence). Positions
    /// 4i..4i+4 of a sequence take four consecutive slots from a multiple of four (the
    /// engine's KV blocks are whole groups of four).
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
                let (wq, wk, wv) = (matrix(&n(names::ATTN_Q))?, matrix(&n(names::ATTN_K))?, matrix(&n(names::ATTN_V))?);
                Ok(Layer {
                    attn_norm: vector(&n(names::ATTN_NORM))?,
                    qkv: QMatrix::stack(&[&wq, &wk, &wv]).map_or_else(|| vec![wq, wk, wv], |m| vec![m]),
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

    /// The packed matrices one decode step reads, in order (the embedding lookup aside).
    pub fn matrices_per_token(&self) -> impl Iterator<Item = &QMatrix> {
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        self.layers.iter().flat_map(|l| l.qkv.iter().chain([&l.wo, &l.w_gate, &l.w_up, &l.w_down])).chain([head])
    }

    /// Bytes of packed matrices one decode step reads.
    pub fn bytes_per_token(&self) -> usize {
        self.matrices_per_token().map(|m| m.bytes()).sum()
    }

    /// Bytes of every packed weight (resident memory of the model).
    pub fn bytes(&self) -> usize {
        self.bytes_per_token() + if self.output.is_some() { self.token_embd.bytes() } else { 0 }
    }

    /// Milliseconds one decode step's matrix products take alone (best of `passes`): the same
    /// kernels, thread shares and barriers between dependent products as [`Weights::forward`]
    /// for one token, nothing else. Decode time above it is norms, attention, activations,
    /// barriers around them and the host's work per token.
    pub fn matmuls_ms(&self, pool: &Pool, target: Target, passes: usize) -> f64 {
        let c = &self.config;
        let qkv = c.q_dim() + 2 * c.kv_dim();
        let widest = c.d_model.max(qkv).max(c.ffn_dim).max(c.vocab_size);
        let (x, acts) = (vec![0f32; widest], vec![ActBlock::zeroed(); widest.div_ceil(QK)]);
        // One output per product of a group (two at most), as the forward has.
        let mut out = vec![0f32; 2 * widest];
        let outs: Vec<Shared<f32>> = out.chunks_exact_mut(widest).map(Shared::new).collect();
        let mut best = f64::INFINITY;
        for _ in 0..passes.max(1) {
            let claims = Claims::new(CLAIMED_PER_LAYER * c.n_layers + 1, pool.threads());
            let t0 = crate::clock::now_ms();
            pool.run(|w| {
                let mm = |m: &QMatrix, out| m.matmul(target, &x[..m.cols], &acts[..m.cols / QK], w.share(m.groups()), Out::rows(out, m.rows));
                let claimed = |m: &QMatrix, op: usize, out: Out| m.matmul_claimed(target, &x[..m.cols], &acts[..m.cols / QK], w, claims.op(op), out, None);
                for (l, lw) in self.layers.iter().enumerate() {
                    let op = CLAIMED_PER_LAYER * l;
                    lw.qkv_products(target, &x[..c.d_model], &acts[..c.d_model / QK], w, |i| claims.op(op + i), &outs[0], qkv);
                    w.barrier();
                    claimed(&lw.wo, op + 3, Out::rows(&outs[0], lw.wo.rows));
                    w.barrier();
                    [&lw.w_gate, &lw.w_up].into_iter().zip(&outs).for_each(|(m, out)| mm(m, out));
                    w.barrier();
                    claimed(&lw.w_down, op + 4, Out::rows(&outs[0], lw.w_down.rows));
                    w.barrier();
                }
                let head = self.output.as_ref().unwrap_or(&self.token_embd);
                claimed(head, CLAIMED_PER_LAYER * c.n_layers, Out::rows(&outs[0], head.rows));
            });
            best = best.min(crate::clock::now_ms() - t0);
        }
        best
    }

    pub fn new_pool(&self) -> Vec<LayerKv> {
        vec![LayerKv::default(); self.config.n_layers]
    }

    /// Runs the step's tokens, writes their K/V into their slots of `kv` (grown to fit) and
    /// returns the logits of `step.logit_rows`, `[rows][vocab]` (in `scratch`).
    pub fn forward<'s>(&self, pool: &Pool, target: Target, step: &Step, kv: &mut [LayerKv], scratch: &'s mut Scratch) -> Result<&'s mut [f32]> {
        let c = &self.config;
        let n = step.tokens.len();
        let (d, qd, kvd, f, vocab) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim, c.vocab_size);
        if n == 0 {
            return Err(Error::InvalidOption { option: "tokens", reason: "forward needs at least one token".into() });
        }
        if let Some(&t) = step.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id: t, vocab });
        }
        let slots = (0..n).map(|t| (step.slot)(t, step.positions[t] as usize) + 1).max().unwrap_or(0).next_multiple_of(PAGE);
        let key_blocks = slots / ROWS * c.n_kv_heads * c.head_dim.div_ceil(QK);
        for l in kv.iter_mut() {
            if l.v.len() < slots * kvd {
                l.v.resize(slots * kvd, 0.0);
            }
            if l.k.len() < key_blocks {
                l.k.resize(key_blocks, Q8x4::zeroed());
            }
        }
        let m = step.logit_rows.len();
        let widest = d.max(qd).max(f);
        let rope = RopeTables::new(c, step.positions);
        let s = scratch;
        let kv_shared: Vec<(Shared<Q8x4>, Shared<f32>)> = kv.iter_mut().map(|l| (Shared::new(&mut l.k), Shared::new(&mut l.v))).collect();
        let parts = if splits(n, c.n_kv_heads, pool.threads()) { n * c.n_heads * max_chunks(step.positions) * (c.head_dim + 2) } else { 0 };
        let b = Buffers {
            qkv: Shared::new(first(&mut s.qkv, n * (qd + 2 * kvd))),
            queries: Shared::new(first(&mut s.queries, n * c.n_heads * 2 * c.head_dim.div_ceil(QK))),
            parts: Shared::new(first(&mut s.parts, parts)),
            attn: Shared::new(first(&mut s.attn, n * qd)),
            proj: Shared::new(first(&mut s.proj, n * d)),
            gate: Shared::new(first(&mut s.gate, n * f)),
            up: Shared::new(first(&mut s.up, n * f)),
            acts: Shared::new(first(&mut s.acts, n * widest.div_ceil(QK))),
            logits: Shared::new(first(&mut s.logits, m * vocab)),
        };
        s.claims.reset(CLAIMED_PER_LAYER * c.n_layers + 1, pool.threads());
        let claims = &s.claims;
        pool.run(|w| self.forward_on(w, target, step, &rope, &b, &kv_shared, claims));
        Ok(&mut s.logits[..m * vocab])
    }

    /// One thread's part of [`Weights::forward`]. Every thread keeps the whole residual stream
    /// and normalizes and quantizes each matrix's input itself: a few microseconds repeated
    /// instead of one thread working while the others wait at a barrier. Six barriers a layer
    /// remain, after each product or step whose output other threads read.
    #[allow(clippy::too_many_arguments)]
    fn forward_on(&self, w: &Worker, target: Target, step: &Step, rope: &RopeTables, b: &Buffers, kv: &[(Shared<Q8x4>, Shared<f32>)], claims: &Claims) {
        let c = &self.config;
        let n = step.tokens.len();
        let (d, qd, kvd, f, hd, eps) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim, c.norm_eps);
        let width = qd + 2 * kvd;
        let mut x = vec![0f32; n * d];
        let (mut h, mut h_acts) = (vec![0f32; n * d], vec![ActBlock::zeroed(); n * (d / QK)]);
        let mut tmp = vec![0f32; d];
        // A head zero-padded to whole blocks and a key head's 8-bit blocks.
        let nbh = hd.div_ceil(QK);
        let (mut head_pad, mut head_acts) = (vec![0f32; nbh * QK], vec![ActBlock::zeroed(); nbh]);
        // Attention's own buffers, and the heads it merges where it shares out chunks.
        let (mut local, split, max_chunks) = (Local::default(), splits(n, c.n_kv_heads, w.count), max_chunks(step.positions));
        let (mut merged, mut merged_acts) = if split { (vec![0f32; n * qd], vec![ActBlock::zeroed(); n * (qd / QK)]) } else { (Vec::new(), Vec::new()) };
        // SAFETY (every shared access below): between two barriers a thread writes only its own
        // share (output groups, heads or blocks) and reads only what no thread writes.
        let all_acts = |width: usize| -> &[ActBlock] { unsafe { &s_all(&b.acts)[..n * (width / QK)] } };

        for (t, xt) in x.chunks_exact_mut(d).enumerate() {
            self.token_embd.row(step.tokens[t] as usize, xt);
            if c.embed_scale != 1.0 {
                xt.iter_mut().for_each(|e| *e *= c.embed_scale);
            }
        }
        for (l, lw) in self.layers.iter().enumerate() {
            let la = c.layer_attention(l);
            norm_quantize(target, &x, &lw.attn_norm, eps, &mut h, &mut h_acts);
            let op = |i: usize| claims.op(CLAIMED_PER_LAYER * l + i);
            lw.qkv_products(target, &h, &h_acts, w, op, &b.qkv, width);
            w.barrier();
            // Biases, q/k norms and RoPE head by head; each K/V head into its cache slot.
            let heads = c.n_heads + c.n_kv_heads;
            for i in w.share(n * heads) {
                let (t, head) = (i / heads, i % heads);
                let pos = step.positions[t] as usize;
                let table = rope.get(l, t);
                let bias = |j: usize| lw.qkv_bias.as_ref().map(|bs| &bs[j][..]);
                if head < c.n_heads {
                    let qh = unsafe { b.qkv.slice_mut(t * width + head * hd..t * width + (head + 1) * hd) };
                    rotate_head(qh, bias(0).map(|bq| &bq[head * hd..][..hd]), lw.q_norm.as_deref(), eps, table, c.rope_style);
                    head_pad[..hd].copy_from_slice(qh);
                    let at = (t * c.n_heads + head) * 2 * nbh;
                    let (high, low) = unsafe { b.queries.slice_mut(at..at + 2 * nbh) }.split_at_mut(nbh);
                    quantize_fine(&head_pad, high, low);
                } else {
                    let (kh, at) = (head - c.n_heads, t * width + qd + (head - c.n_heads) * hd);
                    let (k, v) = unsafe { (b.qkv.slice_mut(at..at + hd), b.qkv.slice_mut(at + kvd..at + kvd + hd)) };
                    rotate_head(k, bias(1).map(|bk| &bk[kh * hd..][..hd]), lw.k_norm.as_deref(), eps, table, c.rope_style);
                    if let Some(bv) = bias(2) {
                        add_assign(v, &bv[kh * hd..][..hd]);
                    }
                    let slot = (step.slot)(t, pos);
                    head_pad[..hd].copy_from_slice(k);
                    target.quantize_row(&head_pad, &mut head_acts[..nbh]);
                    for (j, ab) in head_acts[..nbh].iter().enumerate() {
                        let (block, lane) = (kv[l].0.ptr(LayerKv::k_group(slot / ROWS, kh, c.n_kv_heads, nbh) + j), slot % ROWS);
                        // SAFETY: lane `lane` of the block is this slot's, which this thread alone writes
                        // and no thread reads until the next barrier; no reference to the whole block is made.
                        unsafe {
                            (*block).qs[lane] = ab.qs;
                            (*block).d[lane] = half::f16::from_f32(ab.d).to_bits();
                        }
                    }
                    let at = LayerKv::v_row(slot, kvd, hd) + LayerKv::v_head(kh, hd);
                    unsafe { kv[l].1.slice_mut(at..at + hd) }.copy_from_slice(v);
                }
            }
            w.barrier();
            let attention = unsafe {
                Attention {
                    target,
                    keys: s_all(&kv[l].0),
                    values: s_all(&kv[l].1),
                    queries: s_all(&b.queries),
                    positions: step.positions,
                    slot: step.slot,
                    window: la.window,
                    heads: c.n_heads,
                    kv_heads: c.n_kv_heads,
                    head_dim: hd,
                    scale: c.attn_scale,
                }
            };
            let (attn, attn_acts) = if split {
                attention.chunks_claimed(w, op(5), n, &b.parts, max_chunks, &mut local);
                w.barrier();
                attention.merge_all(n, unsafe { s_all(&b.parts) }, max_chunks, &mut merged, &mut merged_acts);
                (&merged[..], &merged_acts[..])
            } else {
                attention.spans_claimed(w, op(5), n, &b.attn, &b.acts, &mut local);
                if hd % QK != 0 {
                    // Heads are not whole activation blocks: quantize whole rows after all heads.
                    w.barrier();
                    for t in w.share(n) {
                        target.quantize_row(&unsafe { &s_all(&b.attn)[..n * qd] }[t * qd..(t + 1) * qd], unsafe { b.acts.slice_mut(t * (qd / QK)..(t + 1) * (qd / QK)) });
                    }
                }
                w.barrier();
                unsafe { (&s_all(&b.attn)[..n * qd], all_acts(qd)) }
            };
            lw.wo.matmul_claimed(target, attn, attn_acts, w, op(3), Out::rows(&b.proj, d), None);
            w.barrier();
            add_output(&mut x, unsafe { &s_all(&b.proj)[..n * d] }, lw.attn_post_norm.as_deref(), eps, &mut tmp);
            norm_quantize(target, &x, &lw.ffn_norm, eps, &mut h, &mut h_acts);
            // Whole activation blocks of gate/up rows per thread: each activates and quantizes
            // its own rows, no barrier between.
            let groups = w.share_aligned(lw.w_gate.groups(), QK / ROWS);
            lw.w_gate.matmul(target, &h, &h_acts, groups.clone(), Out::rows(&b.gate, f));
            lw.w_up.matmul(target, &h, &h_acts, groups.clone(), Out::rows(&b.up, f));
            let rows = (groups.start * ROWS).min(f)..(groups.end * ROWS).min(f);
            for t in 0..n {
                let (g, u) = unsafe { (b.gate.slice_mut(t * f + rows.start..t * f + rows.end), b.up.slice(t * f + rows.start..t * f + rows.end)) };
                gated_mul(target, c.activation, g, u);
                let blocks = t * (f / QK) + rows.start / QK..t * (f / QK) + rows.end / QK;
                target.quantize_row(g, unsafe { b.acts.slice_mut(blocks) });
            }
            w.barrier();
            lw.w_down.matmul_claimed(target, unsafe { &s_all(&b.gate)[..n * f] }, all_acts(f), w, op(4), Out::rows(&b.proj, d), None);
            w.barrier();
            add_output(&mut x, unsafe { &s_all(&b.proj)[..n * d] }, lw.ffn_post_norm.as_deref(), eps, &mut tmp);
        }
        let m = step.logit_rows.len();
        let (mut normed, mut acts) = (vec![0f32; m * d], vec![ActBlock::zeroed(); m * (d / QK)]);
        for (i, &r) in step.logit_rows.iter().enumerate() {
            let r = r as usize;
            rmsnorm(&mut normed[i * d..(i + 1) * d], &x[r * d..(r + 1) * d], &self.output_norm, eps);
            target.quantize_row(&normed[i * d..(i + 1) * d], &mut acts[i * (d / QK)..(i + 1) * (d / QK)]);
            // 8-bit quantization turns NaN into 0: a row that is not finite gives NaN logits (no
            // token to choose, an error), not logits of 0 (a silent token 0).
            if normed[i * d..(i + 1) * d].iter().any(|v| !v.is_finite()) {
                acts[i * (d / QK)].d = f32::NAN;
            }
        }
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        head.matmul_claimed(target, &normed, &acts, w, claims.op(CLAIMED_PER_LAYER * c.n_layers), Out::rows(&b.logits, c.vocab_size), c.final_logit_softcap);
    }
}

/// Operations a layer shares out at run time: the products q, k, v, o and down
/// ([`QMatrix::matmul_claimed`]; gate and up stay in static shares: each thread activates the
/// rows it computed), and attention.
const CLAIMED_PER_LAYER: usize = 6;

/// RMSNorm and 8-bit quantization of every token's row of `x` into `h` and `acts`.
fn norm_quantize(target: Target, x: &[f32], norm: &[f32], eps: f32, h: &mut [f32], acts: &mut [ActBlock]) {
    let (d, nb) = (norm.len(), norm.len() / QK);
    for t in 0..x.len() / d {
        let ht = &mut h[t * d..(t + 1) * d];
        rmsnorm(ht, &x[t * d..(t + 1) * d], norm, eps);
        target.quantize_row(ht, &mut acts[t * nb..(t + 1) * nb]);
    }
}

/// `x += proj` row by row, through `post_norm` first where the model has one.
fn add_output(x: &mut [f32], proj: &[f32], post_norm: Option<&[f32]>, eps: f32, tmp: &mut [f32]) {
    let d = tmp.len();
    for (xt, pt) in x.chunks_exact_mut(d).zip(proj.chunks_exact(d)) {
        match post_norm {
            Some(pn) => {
                rmsnorm(tmp, pt, pn, eps);
                add_assign(xt, tmp);
            }
            None => add_assign(xt, pt),
        }
    }
}

/// One head of q or k: bias, RMSNorm over the head (Gemma 3), RoPE.
fn rotate_head(x: &mut [f32], bias: Option<&[f32]>, norm: Option<&[f32]>, eps: f32, table: &[(f32, f32)], style: RopeStyle) {
    if let Some(bias) = bias {
        add_assign(x, bias);
    }
    if let Some(norm) = norm {
        rmsnorm_in_place(x, norm, eps);
    }
    rope(x, table, x.len(), style);
}

/// The step's activations that threads share: each writes its part, the others read it after
/// a barrier.
struct Buffers<'a> {
    /// `[token][q | k | v]`.
    qkv: Shared<'a, f32>,
    /// The query heads' `quantize_fine` blocks, `[token][head][high, low][block]`.
    queries: Shared<'a, ActBlock>,
    /// Chunks of attention a thread shares out ([`Attention::chunks_claimed`]).
    parts: Shared<'a, f32>,
    attn: Shared<'a, f32>,
    proj: Shared<'a, f32>,
    gate: Shared<'a, f32>,
    up: Shared<'a, f32>,
    acts: Shared<'a, ActBlock>,
    logits: Shared<'a, f32>,
}

/// # Safety
/// As [`Shared::all`].
unsafe fn s_all<'b, T>(s: &'b Shared<'_, T>) -> &'b [T] {
    s.all()
}

/// cos and sin of each frequency of a head at each token's position, for each distinct RoPE
/// of the model's layers (Gemma 3's local and global layers differ): computed once a step, not
/// per layer and head. The reference's f64 formula with libm's functions, so every target gets
/// the same bits.
struct RopeTables {
    /// Index into `tables` per layer.
    layer: Vec<usize>,
    /// `[rope][token][head_dim / 2]`.
    tables: Vec<(f32, f32)>,
    per_rope: usize,
    half: usize,
}

impl RopeTables {
    fn new(c: &Config, positions: &[u32]) -> RopeTables {
        let half = c.head_dim / 2;
        let mut kinds: Vec<(f32, f32)> = Vec::new();
        let layer = (0..c.n_layers)
            .map(|l| {
                let la = c.layer_attention(l);
                let kind = (la.rope_freq_scale, la.rope_base);
                kinds.iter().position(|&k| k == kind).unwrap_or_else(|| {
                    kinds.push(kind);
                    kinds.len() - 1
                })
            })
            .collect();
        let mut tables = Vec::with_capacity(kinds.len() * positions.len() * half);
        for &(scale, base) in &kinds {
            let inv_freq: Vec<f64> = (0..half).map(|i| libm::pow(base as f64, -2.0 * i as f64 / c.head_dim as f64)).collect();
            for &pos in positions {
                let pos = pos as f64 * scale as f64;
                tables.extend(inv_freq.iter().map(|&fr| {
                    let (sin, cos) = libm::sincos(pos * fr);
                    (cos as f32, sin as f32)
                }));
            }
        }
        RopeTables { layer, tables, per_rope: positions.len() * half, half }
    }

    fn get(&self, layer: usize, token: usize) -> &[(f32, f32)] {
        &self.tables[self.layer[layer] * self.per_rope + token * self.half..][..self.half]
    }
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
