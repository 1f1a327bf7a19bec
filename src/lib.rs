//! ferrolm: quantized LLM inference (GGUF) on WebGPU, in the browser and natively.
//!
//! Module map (see README.md, "Architecture"):
//! - [`gguf`]: file parsing, quant blocks, CPU dequantization, a writer for synthetic models
//! - [`model`]: model configuration read from GGUF metadata, one file per architecture
//! - [`tokenizer`], [`chat`]: text <-> token ids, chat templates
//! - [`cpu`]: the exact f32 reference forward pass, the oracle for every GPU test
//! - [`generate`]: one sequence's decode loop and output side (sampler, stops, detokenizer)
//! - [`kv_cache`], [`engine`]: the paged KV pool with prefix caching, and continuous batching

pub mod bench;
pub mod chat;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod sampler;
pub mod stop;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
