//! The exact f32 reference forward pass: dequantized weights, f32 activations, f32 KV cache,
//! plain softmax attention. Slow on purpose-free clarity; the GPU engine is tested against it.

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
            for t in 0..n {
                let pos = (pos0 + t) as f64 * la.rope_freq_scale as f64;
                rope(&mut q[t * qd..(t + 1) * qd], hd, pos, la.rope_base, c.rope_style);
                rope(&mut k[t * kvd..(t + 1) * kvd], hd, pos, la.rope_base, c.rope_style);
            }
            cache.k[l].extend_from_slice(&k);
            cache.v[l].extend_from_slice(&v);
            attention(&mut attn, &q, &cache.k[l], &cache.v[l], c, pos0, la.window);
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
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(logits)
    }
}

/// Causal grouped-query attention of `q: [n][n_heads][hd]` (positions `pos0..pos0+n`) over the
/// cached `k, v: [pos0+n][n_kv_heads][hd]`, limited to the last `window` positions when given.
fn attention(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], c: &Config, pos0: usize, window: Option<usize>) {
    let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.n_heads / c.n_kv_heads;
    let mut scores = Vec::new();
    for (t, (qt, ot)) in q.chunks_exact(qd).zip(out.chunks_exact_mut(qd)).enumerate() {
        let len = pos0 + t + 1;
        let first = window.map_or(0, |w| len.saturating_sub(w));
        for (h, (qh, oh)) in qt.chunks_exact(hd).zip(ot.chunks_exact_mut(hd)).enumerate() {
            let kv_off = (h / group) * hd;
            scores.clear();
            scores.extend((first..len).map(|p| super::ops::dot(qh, &k[p * kvd + kv_off..][..hd]) * c.attn_scale));
            softmax(&mut scores);
            oh.fill(0.0);
            for (p, &a) in (first..len).zip(&scores) {
                for (o, vv) in oh.iter_mut().zip(&v[p * kvd + kv_off..][..hd]) {
                    *o += a * vv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::attention;
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
        let mut windowed = vec![0f32; 8];
        attention(&mut windowed, &q, &k, &v, &c, len - 1, Some(w));
        let mut recent = vec![0f32; 8];
        attention(&mut recent, &q, &k[(len - w) * 4..], &v[(len - w) * 4..], &c, w - 1, None);
        assert_eq!(windowed, recent);
        let mut full = vec![0f32; 8];
        attention(&mut full, &q, &k, &v, &c, len - 1, None);
        assert_ne!(windowed, full);
    }
}
