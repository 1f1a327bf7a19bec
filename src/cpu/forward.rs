//! The exact f32 reference forward pass: dequantized weights, f32 activations, f32 KV cache,
//! plain softmax attention. Slow on purpose-free clarity; the GPU engine is tested against it.

use super::ops::{add_assign, matmul, rmsnorm, rope, silu_mul, softmax};
use crate::error::{Error, Result};
use crate::gguf::{dequantize, ByteSource, Gguf};
use crate::model::{names, Config};

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
}

pub struct CpuModel {
    pub config: Config,
    token_embd: Vec<f32>,     // [vocab][d]
    output_norm: Vec<f32>,    // [d]
    output: Option<Vec<f32>>, // [vocab][d]; None when tied to token_embd
    layers: Vec<Layer>,
}

/// Per-layer keys and values of every position so far, `[pos][kv_dim]`.
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
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
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            k.truncate(len * self.kv_dim);
            v.truncate(len * self.kv_dim);
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
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuModel {
            token_embd: read(names::TOKEN_EMBD)?,
            output_norm: read(names::OUTPUT_NORM)?,
            output: if config.tied_embeddings { None } else { Some(read(names::OUTPUT)?) },
            layers,
            config,
        })
    }

    /// An empty cache for up to `capacity` positions (at most the trained context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.config.context_len);
        let n = self.config.n_layers;
        KvCache { k: vec![Vec::new(); n], v: vec![Vec::new(); n], len: 0, capacity, kv_dim: self.config.kv_dim() }
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their K/V to the cache and returns
    /// logits, `[n][vocab]` for `Logits::All` or `[vocab]` for `Logits::Last`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let c = &self.config;
        let (n, d, hd) = (tokens.len(), c.d_model, c.head_dim);
        let (qd, kvd, f) = (c.q_dim(), c.kv_dim(), c.ffn_dim);
        let pos0 = cache.len;
        if pos0 + n > cache.capacity {
            return Err(Error::PromptTooLong { tokens: pos0 + n, context: cache.capacity });
        }
        if n == 0 {
            return Err(Error::InvalidOption { option: "tokens", reason: "forward needs at least one token".into() });
        }

        // x: [n][d], the residual stream.
        let mut x = Vec::with_capacity(n * d);
        for &t in tokens {
            if t as usize >= c.vocab_size {
                return Err(Error::TokenOutOfRange { id: t, vocab: c.vocab_size });
            }
            x.extend_from_slice(&self.token_embd[t as usize * d..(t as usize + 1) * d]);
        }
        let mut h = vec![0f32; n * d];
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let (mut gate, mut up) = (vec![0f32; n * f], vec![0f32; n * f]);

        for (l, w) in self.layers.iter().enumerate() {
            rmsnorm(&mut h, &x, &w.attn_norm, c.norm_eps);
            matmul(&mut q, &h, &w.wq, n, d, qd);
            matmul(&mut k, &h, &w.wk, n, d, kvd);
            matmul(&mut v, &h, &w.wv, n, d, kvd);
            for t in 0..n {
                rope(&mut q[t * qd..(t + 1) * qd], hd, pos0 + t, c.rope_base, c.rope_style);
                rope(&mut k[t * kvd..(t + 1) * kvd], hd, pos0 + t, c.rope_base, c.rope_style);
            }
            cache.k[l].extend_from_slice(&k);
            cache.v[l].extend_from_slice(&v);
            attention(&mut attn, &q, &cache.k[l], &cache.v[l], c, pos0);
            matmul(&mut proj, &attn, &w.wo, n, qd, d);
            add_assign(&mut x, &proj);

            rmsnorm(&mut h, &x, &w.ffn_norm, c.norm_eps);
            matmul(&mut gate, &h, &w.w_gate, n, d, f);
            matmul(&mut up, &h, &w.w_up, n, d, f);
            silu_mul(&mut gate, &up);
            matmul(&mut proj, &gate, &w.w_down, n, f, d);
            add_assign(&mut x, &proj);
        }
        cache.len += n;

        let rows = match which {
            Logits::All => &x[..],
            Logits::Last => &x[(n - 1) * d..],
        };
        let m = rows.len() / d;
        let mut normed = vec![0f32; m * d];
        rmsnorm(&mut normed, rows, &self.output_norm, c.norm_eps);
        let head = self.output.as_deref().unwrap_or(&self.token_embd);
        let mut logits = vec![0f32; m * c.vocab_size];
        matmul(&mut logits, &normed, head, m, d, c.vocab_size);
        Ok(logits)
    }
}

/// Causal grouped-query attention of `q: [n][n_heads][hd]` (positions `pos0..pos0+n`) over the
/// cached `k, v: [pos0+n][n_kv_heads][hd]`.
fn attention(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], c: &Config, pos0: usize) {
    let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.n_heads / c.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = Vec::new();
    for (t, (qt, ot)) in q.chunks_exact(qd).zip(out.chunks_exact_mut(qd)).enumerate() {
        let len = pos0 + t + 1;
        for (h, (qh, oh)) in qt.chunks_exact(hd).zip(ot.chunks_exact_mut(hd)).enumerate() {
            let kv_off = (h / group) * hd;
            scores.clear();
            scores.extend((0..len).map(|p| super::ops::dot(qh, &k[p * kvd + kv_off..][..hd]) * scale));
            softmax(&mut scores);
            oh.fill(0.0);
            for (p, &a) in scores.iter().enumerate() {
                for (o, vv) in oh.iter_mut().zip(&v[p * kvd + kv_off..][..hd]) {
                    *o += a * vv;
                }
            }
        }
    }
}
