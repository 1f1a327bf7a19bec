//! The qwen2 architecture (Qwen2, Qwen2.5): llama's block with biases on the q/k/v projections
//! and NeoX-style RoPE; metadata keys under `qwen2.`.

use super::{read_common, Arch, Config, RopeStyle};
use crate::error::Result;
use crate::gguf::Gguf;

pub(super) fn config(gguf: &Gguf) -> Result<Config> {
    let mut c = read_common(gguf, Arch::Qwen2, 1e-6, 1_000_000.0)?;
    c.rope_style = RopeStyle::Neox;
    c.qkv_bias = true;
    Ok(c)
}
