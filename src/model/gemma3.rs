//! Gemma 3 (`gemma3.` keys), as llama.cpp's `llm_build_gemma3` runs it: token embeddings times
//! sqrt(d_model); per layer attn_norm, q/k RMSNorm per head, NeoX RoPE, attention,
//! post_attention_norm, residual add, ffn_norm, GeGLU (tanh GELU), post_ffw_norm, residual add.
//! Gemma's RMSNorm multiplies by (1 + w); the GGUF converter already stored 1 + w, so every norm
//! here is a plain RMSNorm.

use super::{read_common, Activation, Arch, Config, RopeStyle, SlidingWindow};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Neither is in the GGUF: llama.cpp hard-codes five local layers to one global (the global layer
/// last in each run of six) and RoPE base 10000 on the local ones.
const SWA_PERIOD: usize = 6;
const SWA_ROPE_BASE: f32 = 10000.0;

pub(super) fn config(gguf: &Gguf) -> Result<Config> {
    let m = &gguf.metadata;
    // Defaults are the converter's for keys Gemma's config.json may omit.
    let mut c = read_common(gguf, Arch::Gemma3, 1e-6, 1_000_000.0)?;
    c.rope_style = RopeStyle::Neox;
    c.rope_freq_scale = 1.0 / linear_rope_factor(gguf)?;
    c.embed_scale = (c.d_model as f32).sqrt();
    // query_pre_attn_scalar is not stored either; llama.cpp uses head_dim, except d_model / n_heads
    // for the 27B model, which it recognizes by its 62 layers.
    if c.n_layers == 62 {
        c.attn_scale = 1.0 / ((c.d_model / c.n_heads) as f32).sqrt();
    }
    c.activation = Activation::GeluTanh;
    c.qk_norm = true;
    c.post_norms = true;
    // Without the key (or with 0) every layer is global, as in llama.cpp.
    c.sliding_window = match m.opt_u32("gemma3.attention.sliding_window")? {
        Some(size) if size > 0 => Some(SlidingWindow { size: size as usize, period: SWA_PERIOD, rope_base: SWA_ROPE_BASE }),
        _ => None,
    };
    // Released Gemma 3 models have none; honoured when a converter wrote one.
    c.final_logit_softcap = m.opt_f32("gemma3.final_logit_softcapping")?.filter(|&cap| cap > 0.0);
    Ok(c)
}

/// The linear RoPE scaling factor of the global layers (Gemma 3 4B and larger use 8), 1 when
/// absent. Other scaling types would need more than a position multiplier, so they are refused.
fn linear_rope_factor(gguf: &Gguf) -> Result<f32> {
    let m = &gguf.metadata;
    match m.opt_str("gemma3.rope.scaling.type")? {
        None | Some("none") | Some("linear") => {}
        Some(other) => return Err(Error::InvalidModel(format!("RoPE scaling '{other}' is not supported; ferrolm implements linear scaling only"))),
    }
    let factor = match m.opt_f32("gemma3.rope.scaling.factor")? {
        Some(f) => Some(f),
        None => m.opt_f32("gemma3.rope.scale_linear")?,
    };
    match factor {
        None | Some(0.0) => Ok(1.0),
        Some(f) if f.is_finite() && f > 0.0 => Ok(f),
        Some(f) => Err(Error::InvalidModel(format!("RoPE scaling factor {f} is not a positive number"))),
    }
}
