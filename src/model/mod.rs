//! Model configuration from GGUF metadata. One file per architecture maps its metadata keys and
//! tensor names onto the shared [`Config`]; the CPU reference and the GPU engine read only this.

mod llama;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};

/// Architectures ferrolm can run (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
}

/// How RoPE pairs dimensions inside a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x[2i], x[2i+1]): GGML "normal" rope, used by llama-family GGUFs.
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX style.
    Neox,
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
}

impl Config {
    /// Reads the configuration of a supported architecture and checks every tensor it needs is
    /// present, of a supported type and of the expected shape.
    pub fn from_gguf(gguf: &Gguf) -> Result<Config> {
        let arch = gguf.architecture()?;
        let config = match arch {
            "llama" => llama::config(gguf)?,
            other => return Err(Error::UnsupportedArchitecture(other.to_string())),
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
        }
        out
    }

    /// Looks a tensor up and refuses types ferrolm cannot compute with.
    pub fn tensor<'g>(&self, gguf: &'g Gguf, name: &str) -> Result<&'g TensorInfo> {
        let t = gguf.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if !t.ty.is_supported() {
            return Err(Error::UnsupportedTensorType {
                name: name.to_string(),
                ty: t.ty.name(),
                supported: crate::gguf::SUPPORTED_TYPES,
            });
        }
        Ok(t)
    }

    /// Bytes of weights one decode step reads (every matrix once, the embedding row aside).
    pub fn weight_bytes_per_token(&self, gguf: &Gguf) -> u64 {
        let head = if self.tied_embeddings { names::TOKEN_EMBD } else { names::OUTPUT };
        gguf.tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.") || t.name == head || t.name == names::OUTPUT_NORM)
            .map(|t| t.n_bytes)
            .sum()
    }
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

    pub fn layer(l: usize, name: &str) -> String {
        format!("blk.{l}.{name}")
    }
}
