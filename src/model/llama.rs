//! The llama architecture (Llama 2/3, SmolLM, Mistral-style GQA): metadata keys under `llama.`.

use super::{read_common, Arch, Config};
use crate::error::Result;
use crate::gguf::Gguf;

pub(super) fn config(gguf: &Gguf) -> Result<Config> {
    read_common(gguf, Arch::Llama, 1e-5, 10000.0)
}
