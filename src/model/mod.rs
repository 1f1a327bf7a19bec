//! Model configuration from GGUF metadata. One file per architecture maps its metadata keys and
//! tensor names onto the shared [`Config`]; the CPU reference and the GPU engine read only this.

mod gemma3;
mod llama;
mod qwen2;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};

/// Architectures ferrolm can run (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma3"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
    Qwen2,
}

impl Arch {
    /// The `general.architecture` value, also the prefix of its metadata keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// How RoPE pairs dimensions inside a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x[2i], x[2i+1]): GGML "normal" rope, used by llama-family GGUFs.
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX style.
    Neox,
}

/// The nonlinearity of the gated FFN, applied to the gate before it multiplies the up projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (llama).
    Silu,
    /// GeGLU with GELU's tanh approximation (Gemma; ggml's `gelu`).
    GeluTanh,
}

/// Interleaved local attention (Gemma 3): in every run of `period` layers all but the last see only
/// the `size` most recent positions (their own included) and use their own RoPE base.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingWindow {
    pub size: usize,
    pub period: usize,
    pub rope_base: f32,
}

/// How one layer attends: its key span and its RoPE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerAttention {
    /// `Some(w)`: a query at position p sees keys at p - w + 1 ..= p; `None`: every earlier key.
    pub window: Option<usize>,
    pub rope_base: f32,
    /// Linear RoPE scaling: angles use position * this.
    pub rope_freq_scale: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Trained context length (`<arch>.context_length`).
    pub context_len: usize,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub norm_eps: f32,
    /// No `output.weight`: the LM head is the token embedding.
    pub tied_embeddings: bool,
    // The fields below are where architectures differ; llama's values leave its math unchanged.
    /// Linear RoPE scaling of the full-attention layers (1 = none).
    pub rope_freq_scale: f32,
    /// Token embeddings are multiplied by this (Gemma: sqrt(d_model)).
    pub embed_scale: f32,
    /// Attention logits are q.k times this.
    pub attn_scale: f32,
    pub activation: Activation,
    /// RMSNorm of every query and key head before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs before their residual adds (`post_attention_norm`,
    /// `post_ffw_norm`).
    pub post_norms: bool,
    pub sliding_window: Option<SlidingWindow>,
    /// Logits become `cap * tanh(logits / cap)`.
    pub final_logit_softcap: Option<f32>,
    /// Biases on the q, k and v projections (`attn_q.bias`, ...: Qwen2).
    pub qkv_bias: bool,
}

impl Config {
    /// Reads the configuration of a supported architecture and checks every tensor it needs is
    /// present, of a supported type and of the expected shape.
    pub fn from_gguf(gguf: &Gguf) -> Result<Config> {
        let arch = gguf.architecture()?;
        let config = match arch {
            "llama" => llama::config(gguf)?,
            "gemma3" => gemma3::config(gguf)?,
            "qwen2" => qwen2::config(gguf)?,
            other => return Err(Error::UnsupportedArchitecture { name: other.to_string(), supported: SUPPORTED_ARCHITECTURES.join(", ") }),
        };
        for (name, dims) in config.expected_tensors() {
            let t = config.tensor(gguf, &name)?;
            if t.dims != dims {
                return Err(Error::TensorShape { name, expected: dims, found: t.dims.clone() });
            }
        }
        Ok(config)
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Key span and RoPE of layer `l`.
    pub fn layer_attention(&self, l: usize) -> LayerAttention {
        match self.sliding_window {
            Some(sw) if l % sw.period != sw.period - 1 => LayerAttention { window: Some(sw.size), rope_base: sw.rope_base, rope_freq_scale: 1.0 },
            _ => LayerAttention { window: None, rope_base: self.rope_base, rope_freq_scale: self.rope_freq_scale },
        }
    }

    /// Every tensor the forward pass reads, with its GGUF dims (`[in, out]` for matrices).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (d, q, kv, f, v) = (self.d_model as u64, self.q_dim() as u64, self.kv_dim() as u64, self.ffn_dim as u64, self.vocab_size as u64);
        let mut out = vec![(names::TOKEN_EMBD.to_string(), vec![d, v]), (names::OUTPUT_NORM.to_string(), vec![d])];
        if !self.tied_embeddings {
            out.push((names::OUTPUT.to_string(), vec![d, v]));
        }
        for l in 0..self.n_layers {
            let p = |s: &str| names::layer(l, s);
            out.extend([
                (p(names::ATTN_NORM), vec![d]),
                (p(names::ATTN_Q), vec![d, q]),
                (p(names::ATTN_K), vec![d, kv]),
                (p(names::ATTN_V), vec![d, kv]),
                (p(names::ATTN_OUT), vec![q, d]),
                (p(names::FFN_NORM), vec![d]),
                (p(names::FFN_GATE), vec![d, f]),
                (p(names::FFN_UP), vec![d, f]),
                (p(names::FFN_DOWN), vec![f, d]),
            ]);
            if self.qk_norm {
                let hd = self.head_dim as u64;
                out.extend([(p(names::ATTN_Q_NORM), vec![hd]), (p(names::ATTN_K_NORM), vec![hd])]);
            }
            if self.qkv_bias {
                out.extend([(p(names::ATTN_Q_BIAS), vec![q]), (p(names::ATTN_K_BIAS), vec![kv]), (p(names::ATTN_V_BIAS), vec![kv])]);
            }
            if self.post_norms {
                out.extend([(p(names::ATTN_POST_NORM), vec![d]), (p(names::FFN_POST_NORM), vec![d])]);
            }
        }
        out
    }

    /// Looks a tensor up and refuses types ferrolm cannot compute with.
    pub fn tensor<'g>(&self, gguf: &'g Gguf, name: &str) -> Result<&'g TensorInfo> {
        let t = gguf.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if !t.ty.is_supported() {
            return Err(Error::UnsupportedTensorType { name: name.to_string(), ty: t.ty.name(), supported: crate::gguf::SUPPORTED_TYPES });
        }
        Ok(t)
    }

    /// Bytes of weights one decode step reads (every matrix once, the embedding row aside).
    pub fn weight_bytes_per_token(&self, gguf: &Gguf) -> u64 {
        self.decode_tensors(gguf).map(|t| t.n_bytes).sum()
    }

    /// Weight values one decode step multiplies (every matrix once): its multiply-adds.
    pub fn weight_values_per_token(&self, gguf: &Gguf) -> u64 {
        self.decode_tensors(gguf).filter(|t| t.dims.len() == 2).map(|t| t.n_elements()).sum()
    }

    /// The tensors a decode step reads whole: every layer's, the final norm and the LM head.
    fn decode_tensors<'a>(&self, gguf: &'a Gguf) -> impl Iterator<Item = &'a crate::gguf::TensorInfo> {
        let head = if self.tied_embeddings { names::TOKEN_EMBD } else { names::OUTPUT };
        gguf.tensors.iter().filter(move |t| t.name.starts_with("blk.") || t.name == head || t.name == names::OUTPUT_NORM)
    }
}

/// The metadata every architecture shares, under `<arch>.`, with that architecture's defaults for
/// the optional keys; the architecture-specific fields take llama's values.
fn read_common(gguf: &Gguf, arch: Arch, default_eps: f32, default_rope_base: f32) -> Result<Config> {
    let m = &gguf.metadata;
    let key = |k: &str| format!("{}.{k}", arch.name());
    let d_model = m.get_u32(&key("embedding_length"))? as usize;
    let n_heads = m.get_u32(&key("attention.head_count"))? as usize;
    let n_kv_heads = m.opt_u32(&key("attention.head_count_kv"))?.unwrap_or(n_heads as u32) as usize;
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) || !d_model.is_multiple_of(n_heads) {
        return Err(Error::InvalidModel(format!("{n_heads} query heads, {n_kv_heads} KV heads and width {d_model} do not divide evenly")));
    }
    let head_dim = m.opt_u32(&key("attention.key_length"))?.map(|v| v as usize).unwrap_or(d_model / n_heads);
    let vocab_size = match m.opt_u32(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => m.get_array("tokenizer.ggml.tokens")?.len(),
    };
    let cfg = Config {
        arch,
        n_layers: m.get_u32(&key("block_count"))? as usize,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: m.get_u32(&key("feed_forward_length"))? as usize,
        vocab_size,
        context_len: m.get_u32(&key("context_length"))? as usize,
        rope_base: m.opt_f32(&key("rope.freq_base"))?.unwrap_or(default_rope_base),
        rope_style: RopeStyle::Normal,
        norm_eps: m.opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(default_eps),
        tied_embeddings: gguf.tensor(names::OUTPUT).is_none(),
        rope_freq_scale: 1.0,
        embed_scale: 1.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        activation: Activation::Silu,
        qk_norm: false,
        post_norms: false,
        sliding_window: None,
        final_logit_softcap: None,
        qkv_bias: false,
    };
    if head_dim == 0 || head_dim % 2 != 0 || cfg.n_layers == 0 || cfg.n_layers > 1024 || vocab_size == 0 || cfg.context_len == 0 {
        return Err(Error::InvalidModel(format!("implausible {} configuration: {cfg:?}", arch.name())));
    }
    // Either would make every logit NaN rather than fail.
    let rope_ok = cfg.rope_base.is_finite() && cfg.rope_base > 0.0;
    let eps_ok = cfg.norm_eps.is_finite() && cfg.norm_eps >= 0.0;
    if !rope_ok || !eps_ok {
        return Err(Error::InvalidModel(format!("RoPE base {} and RMSNorm epsilon {} must be finite, the base positive and epsilon not negative", cfg.rope_base, cfg.norm_eps)));
    }
    Ok(cfg)
}

/// GGUF tensor names shared by the llama family.
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const OUTPUT: &str = "output.weight";
    pub const ATTN_NORM: &str = "attn_norm.weight";
    pub const ATTN_Q: &str = "attn_q.weight";
    pub const ATTN_K: &str = "attn_k.weight";
    pub const ATTN_V: &str = "attn_v.weight";
    pub const ATTN_OUT: &str = "attn_output.weight";
    pub const FFN_NORM: &str = "ffn_norm.weight";
    pub const FFN_GATE: &str = "ffn_gate.weight";
    pub const FFN_UP: &str = "ffn_up.weight";
    pub const FFN_DOWN: &str = "ffn_down.weight";
    pub const ATTN_Q_NORM: &str = "attn_q_norm.weight";
    pub const ATTN_K_NORM: &str = "attn_k_norm.weight";
    pub const ATTN_POST_NORM: &str = "post_attention_norm.weight";
    pub const FFN_POST_NORM: &str = "post_ffw_norm.weight";
    pub const ATTN_Q_BIAS: &str = "attn_q.bias";
    pub const ATTN_K_BIAS: &str = "attn_k.bias";
    pub const ATTN_V_BIAS: &str = "attn_v.bias";

    pub fn layer(l: usize, name: &str) -> String {
        format!("blk.{l}.{name}")
    }
}
