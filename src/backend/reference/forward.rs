//! The exact f32 reference forward pass: dequantized weights, f32 activations, f32 KV cache,
//! plain softmax attention. Written for clarity, not speed; every other backend is tested
//! against it. One forward serves both caches: a contiguous [`KvCache`] (one sequence, position
//! = slot) and the engine's paged pool (slot = block table lookup).

use super::ops::{add_assign, gelu_mul, matmul, rmsnorm, rmsnorm_in_place, rope, silu_mul, softmax};
use crate::error::{Error, Result};
use crate::gguf::{dequantize, ByteSource, Gguf};
use crate::model::{names, Activation, Config};

/// One transformer block's weights, dequantized. Matrices are `[out][in]`.
struct Layer {
    attn_norm: Vec<f32>, // [d]
    wq: Vec<f32>,        // [q_dim][d]
    wk: Vec<f32>,        // [kv_dim][d]
    wv: Vec<f32>,        // [kv_dim][d]
    wo: Vec<f32>,        // [d][q_dim]
    ffn_norm: Vec<f32>,  // [d]
    w_gate: Vec<f32>,    // [ffn][d]
    w_up: Vec<f32>,      // [ffn][d]
    w_down: Vec<f32>,    // [d][ffn]
    // Present when the config asks for them (Gemma 3).
    q_norm: Option<Vec<f32>>,         // [head_dim]
    k_norm: Option<Vec<f32>>,         // [head_dim]
    attn_post_norm: Option<Vec<f32>>, // [d]
    ffn_post_norm: Option<Vec<f32>>,  // [d]
    qkv_bias: Option<[Vec<f32>; 3]>,  // [q_dim], [kv_dim], [kv_dim] (Qwen2)
}

pub struct CpuModel {
    pub config: Config,
    token_embd: Vec<f32>,     // [vocab][d]
    output_norm: Vec<f32>,    // [d]
    output: Option<Vec<f32>>, // [vocab][d]; None when tied to token_embd
    layers: Vec<Layer>,
}

/// One layer's keys and values by KV slot, `[slot][kv_dim]`; grown as slots are written.
#[derive(Clone, Default)]
pub struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerKv {
    fn write(&mut self, slot: usize, k: &[f32], v: &[f32]) {
        let (kvd, end) = (k.len(), (slot + 1) * k.len());
        if self.k.len() < end {
            self.k.resize(end, 0.0);
            self.v.resize(end, 0.0);
        }
        self.k[slot * kvd..end].copy_from_slice(k);
        self.v[slot * kvd..end].copy_from_slice(v);
    }
}

/// The tokens of one forward: ids, positions, and where each position's K/V lives.
pub struct Rows<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// KV slot of (token index in this forward, earlier position of the same sequence).
    pub slot: &'a dyn Fn(usize, usize) -> usize,
    /// Token indices whose logits are returned.
    pub logit_rows: &'a [u32],
}

/// One sequence's keys and values, position = slot.
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
}

impl KvCache {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on (speculative rollback, or reuse of a prefix).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for l in &mut self.layers {
            l.k.truncate(len * self.kv_dim);
            l.v.truncate(len * self.kv_dim);
        }
        self.len = len;
    }
}

/// Which positions' logits `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

impl CpuModel {
    /// Dequantizes every weight of a supported model into f32.
    pub fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S) -> Result<CpuModel> {
        let config = Config::from_gguf(gguf)?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let info = config.tensor(gguf, name)?;
            let bytes = gguf.tensor_data(source, info)?;
            let mut out = vec![0f32; info.n_elements() as usize];
            dequantize(info.ty, &bytes, &mut out)?;
            Ok(out)
        };
        let layers = (0..config.n_layers)
            .map(|l| {
                let r = |n: &str| read(&names::layer(l, n));
                let opt = |wanted: bool, n: &str| if wanted { r(n).map(Some) } else { Ok(None) };
                Ok(Layer {
                    attn_norm: r(names::ATTN_NORM)?,
                    wq: r(names::ATTN_Q)?,
                    wk: r(names::ATTN_K)?,
                    wv: r(names::ATTN_V)?,
                    wo: r(names::ATTN_OUT)?,
                    ffn_norm: r(names::FFN_NORM)?,
                    w_gate: r(names::FFN_GATE)?,
                    w_up: r(names::FFN_UP)?,
                    w_down: r(names::FFN_DOWN)?,
                    q_norm: opt(config.qk_norm, names::ATTN_Q_NORM)?,
                    k_norm: opt(config.qk_norm, names::ATTN_K_NORM)?,
                    attn_post_norm: opt(config.post_norms, names::ATTN_POST_NORM)?,
                    ffn_post_norm: opt(config.post_norms, names::FFN_POST_NORM)?,
                    qkv_bias: if config.qkv_bias { Some([r(names::ATTN_Q_BIAS)?, r(names::ATTN_K_BIAS)?, r(names::ATTN_V_BIAS)?]) } else { None },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuModel { token_embd: read(names::TOKEN_EMBD)?, output_norm: read(names::OUTPUT_NORM)?, output: if config.tied_embeddings { None } else { Some(read(names::OUTPUT)?) }, layers, config })
    }

    /// An empty cache for up to `capacity` positions (at most the trained context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.config.context_len);
        KvCache { layers: vec![LayerKv::default(); self.config.n_layers], len: 0, capacity, kv_dim: self.config.kv_dim() }
    }

    /// Empty per-layer K/V for a paged pool (grown as blocks are written).
    pub fn new_pool(&self) -> Vec<LayerKv> {
        vec![LayerKv::default(); self.config.n_layers]
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their K/V to the cache and returns
    /// logits, `[n][vocab]` for `Logits::All` or `[vocab]` for `Logits::Last`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let (n, pos0) = (tokens.len(), cache.len);
        if pos0 + n > cache.capacity {
            return Err(Error::PromptTooLong { tokens: pos0 + n, context: cache.capacity });
        }
        let positions: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
        let logit_rows: Vec<u32> = match which {
            Logits::All => (0..n as u32).collect(),
            Logits::Last => vec![n.saturating_sub(1) as u32],
        };
        let logits = self.forward_rows(&Rows { tokens, positions: &positions, slot: &|_, pos| pos, logit_rows: &logit_rows }, &mut cache.layers)?;
        cache.len += n;
        Ok(logits)
    }

    /// Runs `rows.tokens` at their positions, writes their K/V into their slots of `kv` and
    /// returns the logits of `rows.logit_rows`, `[rows][vocab]`. A token attends to the slots of
    /// its own sequence's positions up to its own (earlier tokens of the same forward included).
    pub fn forward_rows(&self, rows: &Rows, kv: &mut [LayerKv]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (n, d, hd) = (rows.tokens.len(), c.d_model, c.head_dim);
        let (qd, kvd, f) = (c.q_dim(), c.kv_dim(), c.ffn_dim);
        if n == 0 {
            return Err(Error::InvalidOption { option: "tokens", reason: "forward needs at least one token".into() });
        }

        // x: [n][d], the residual stream.
        let mut x = Vec::with_capacity(n * d);
        for &t in rows.tokens {
            if t as usize >= c.vocab_size {
                return Err(Error::TokenOutOfRange { id: t, vocab: c.vocab_size });
            }
            x.extend(self.token_embd[t as usize * d..(t as usize + 1) * d].iter().map(|e| e * c.embed_scale));
        }
        let mut h = vec![0f32; n * d];
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let (mut gate, mut up) = (vec![0f32; n * f], vec![0f32; n * f]);

        for (l, w) in self.layers.iter().enumerate() {
            let la = c.layer_attention(l);
            rmsnorm(&mut h, &x, &w.attn_norm, c.norm_eps);
            matmul(&mut q, &h, &w.wq, n, d, qd);
            matmul(&mut k, &h, &w.wk, n, d, kvd);
            matmul(&mut v, &h, &w.wv, n, d, kvd);
            if let Some([bq, bk, bv]) = &w.qkv_bias {
                for (y, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                    for row in y.chunks_exact_mut(b.len()) {
                        add_assign(row, b);
                    }
                }
            }
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                rmsnorm_in_place(&mut q, qn, c.norm_eps);
                rmsnorm_in_place(&mut k, kn, c.norm_eps);
            }
            for (t, &p) in rows.positions.iter().enumerate() {
                let pos = p as f64 * la.rope_freq_scale as f64;
                rope(&mut q[t * qd..(t + 1) * qd], hd, pos, la.rope_base, c.rope_style);
                rope(&mut k[t * kvd..(t + 1) * kvd], hd, pos, la.rope_base, c.rope_style);
                kv[l].write((rows.slot)(t, p as usize), &k[t * kvd..(t + 1) * kvd], &v[t * kvd..(t + 1) * kvd]);
            }
            attention(&mut attn, &q, &kv[l], c, rows, la.window);
            matmul(&mut proj, &attn, &w.wo, n, qd, d);
            if let Some(pn) = &w.attn_post_norm {
                rmsnorm_in_place(&mut proj, pn, c.norm_eps);
            }
            add_assign(&mut x, &proj);

            rmsnorm(&mut h, &x, &w.ffn_norm, c.norm_eps);
            matmul(&mut gate, &h, &w.w_gate, n, d, f);
            matmul(&mut up, &h, &w.w_up, n, d, f);
            match c.activation {
                Activation::Silu => silu_mul(&mut gate, &up),
                Activation::GeluTanh => gelu_mul(&mut gate, &up),
            }
            matmul(&mut proj, &gate, &w.w_down, n, f, d);
            if let Some(pn) = &w.ffn_post_norm {
                rmsnorm_in_place(&mut proj, pn, c.norm_eps);
            }
            add_assign(&mut x, &proj);
        }

        let picked: Vec<f32> = rows.logit_rows.iter().flat_map(|&r| &x[r as usize * d..(r as usize + 1) * d]).copied().collect();
        let m = rows.logit_rows.len();
        let mut normed = vec![0f32; m * d];
        rmsnorm(&mut normed, &picked, &self.output_norm, c.norm_eps);
        let head = self.output.as_deref().unwrap_or(&self.token_embd);
        let mut logits = vec![0f32; m * c.vocab_size];
        matmul(&mut logits, &normed, head, m, d, c.vocab_size);
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|l| *l = cap * libm::tanhf(*l / cap));
        }
        Ok(logits)
    }
}

/// Causal grouped-query attention of `q: [n][n_heads][hd]` over the cached K/V of each token's
/// sequence, positions `0..=pos` (the last `window` of them when given).
fn attention(out: &mut [f32], q: &[f32], kv: &LayerKv, c: &Config, rows: &Rows, window: Option<usize>) {
    let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.n_heads / c.n_kv_heads;
    let (mut scores, mut slots) = (Vec::new(), Vec::new());
    for (t, (qt, ot)) in q.chunks_exact(qd).zip(out.chunks_exact_mut(qd)).enumerate() {
        let len = rows.positions[t] as usize + 1;
        let first = window.map_or(0, |w| len.saturating_sub(w));
        slots.clear();
        slots.extend((first..len).map(|p| (rows.slot)(t, p) * kvd));
        for (h, (qh, oh)) in qt.chunks_exact(hd).zip(ot.chunks_exact_mut(hd)).enumerate() {
            let kv_off = (h / group) * hd;
            scores.clear();
            scores.extend(slots.iter().map(|&s| super::ops::dot(qh, &kv.k[s + kv_off..][..hd]) * c.attn_scale));
            softmax(&mut scores);
            oh.fill(0.0);
            for (&s, &a) in slots.iter().zip(&scores) {
                for (o, vv) in oh.iter_mut().zip(&kv.v[s + kv_off..][..hd]) {
                    *o += a * vv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{attention, LayerKv, Rows};
    use crate::model::{Activation, Arch, Config, RopeStyle};

    /// A query under a window of w attends exactly as it would with only the last w keys cached.
    #[test]
    fn sliding_window_sees_only_the_last_positions() {
        let c = Config {
            arch: Arch::Gemma3,
            n_layers: 1,
            d_model: 8,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            ffn_dim: 8,
            vocab_size: 4,
            context_len: 16,
            rope_base: 10000.0,
            rope_style: RopeStyle::Neox,
            norm_eps: 1e-6,
            tied_embeddings: true,
            rope_freq_scale: 1.0,
            embed_scale: 1.0,
            attn_scale: 0.5,
            activation: Activation::GeluTanh,
            qk_norm: false,
            post_norms: false,
            sliding_window: None,
            final_logit_softcap: None,
            qkv_bias: false,
        };
        let (len, w) = (10, 3);
        let val = |i: usize| ((i * 37 % 17) as f32 - 8.0) / 4.0;
        let k: Vec<f32> = (0..len * 4).map(val).collect();
        let v: Vec<f32> = (0..len * 4).map(|i| val(i + 5)).collect();
        let q: Vec<f32> = (0..8).map(|i| val(i + 11)).collect();
        let run = |k: &[f32], v: &[f32], pos: u32, window: Option<usize>| {
            let kv = LayerKv { k: k.to_vec(), v: v.to_vec() };
            let rows = Rows { tokens: &[0], positions: &[pos], slot: &|_, p| p, logit_rows: &[] };
            let mut out = vec![0f32; 8];
            attention(&mut out, &q, &kv, &c, &rows, window);
            out
        };
        let windowed = run(&k, &v, len as u32 - 1, Some(w));
        let recent = run(&k[(len - w) * 4..], &v[(len - w) * 4..], w as u32 - 1, None);
        assert_eq!(windowed, recent);
        assert_ne!(windowed, run(&k, &v, len as u32 - 1, None));
    }
}
