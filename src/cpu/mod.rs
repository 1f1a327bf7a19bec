//! The f32 reference forward pass on the CPU: the oracle for kernel and model tests, and a
//! fallback engine for the CLI (`--device cpu`).

mod forward;
pub mod ops;

pub use forward::{CpuModel, KvCache, Logits};
