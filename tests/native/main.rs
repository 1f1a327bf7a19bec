//! The native integration tests, one module per subject, in one test binary: one build and one
//! link instead of one per file, and every test shares the harness's threads. Run one subject
//! with a filter: `cargo test --release --test native -- engine::`.
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "../cpu_cases/mod.rs"]
mod cpu_cases;
#[path = "../engine_cases/mod.rs"]
mod engine_cases;
#[path = "../kernel_cases/mod.rs"]
mod kernel_cases;

mod chat;
mod chat_sandbox;
mod cli;
mod cpu_backend;
mod dequant;
mod engine;
mod fuzz_smoke;
mod gemma3_cpu;
mod gemma3_gpu;
mod gguf;
mod gpu_counters;
mod kernels;
mod long_context;
mod qwen2;
mod reference_cpu;
mod reference_gpu;
mod sampler;
mod sampling_kernels;
mod serve;
mod soak;
mod speculative;
mod structured;
mod tokenizer;
