//! ferrolm: quantized LLM inference (GGUF) on WebGPU, in the browser and natively.
//!
//! Modules in dependency order; each imports only from those above it (docs/ARCHITECTURE.md):
//! - [`error`], [`clock`]: the crate's error type; wall-clock milliseconds
//! - [`gguf`]: file parsing, quant blocks, CPU dequantization, a writer for synthetic models
//! - [`model`]: model configuration read from GGUF metadata, one file per architecture
//! - [`tokenizer`], [`chat`]: text <-> token ids, chat templates
//! - [`sample`]: sampling, stop strings, structured output (llguidance), and one request's output
//!   side ([`sample::Decoder`])
//! - [`engine`]: the backend trait, the paged KV pool with prefix caching, continuous batching,
//!   speculative decoding
//! - [`backend`]: the engine's backends: the exact f32 reference and WebGPU
//! - [`api`]: backend choice, benchmarks, and the browser boundary (`api::wasm`)

pub mod api;
pub mod backend;
pub mod chat;
pub mod clock;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod model;
pub mod sample;
pub mod tokenizer;

pub use error::{Error, Result};
