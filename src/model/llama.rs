//! The llama architecture (Llama 2/3, SmolLM, Mistral-style GQA): metadata keys under `llama.`.

use super::{Arch, Config, RopeStyle};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

pub(super) fn config(gguf: &Gguf) -> Result<Config> {
    let m = &gguf.metadata;
    let key = |k: &str| format!("llama.{k}");
    let d_model = m.get_u32(&key("embedding_length"))? as usize;
    let n_heads = m.get_u32(&key("attention.head_count"))? as usize;
    let n_kv_heads = m.opt_u32(&key("attention.head_count_kv"))?.unwrap_or(n_heads as u32) as usize;
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || d_model % n_heads != 0 {
        return Err(Error::InvalidModel(format!(
            "{n_heads} query heads, {n_kv_heads} KV heads and width {d_model} do not divide evenly"
        )));
    }
    let head_dim = m.opt_u32(&key("attention.key_length"))?.map(|v| v as usize).unwrap_or(d_model / n_heads);
    let vocab_size = match m.opt_u32(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => m.get_array("tokenizer.ggml.tokens")?.len(),
    };
    let cfg = Config {
        arch: Arch::Llama,
        n_layers: m.get_u32(&key("block_count"))? as usize,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: m.get_u32(&key("feed_forward_length"))? as usize,
        vocab_size,
        context_len: m.get_u32(&key("context_length"))? as usize,
        rope_base: m.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_style: RopeStyle::Normal,
        norm_eps: m.opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        tied_embeddings: gguf.tensor(super::names::OUTPUT).is_none(),
    };
    if head_dim % 2 != 0 || cfg.n_layers == 0 || cfg.n_layers > 1024 || vocab_size == 0 {
        return Err(Error::InvalidModel(format!("implausible llama configuration: {cfg:?}")));
    }
    Ok(cfg)
}
