//! The WebGPU backend: device context, weight repacking, one typed launcher per shader, and the
//! model's forward pass on the GPU behind the engine's [`crate::engine::ForwardModel`].

mod context;
pub mod kernels;
mod model;
mod profile;
pub mod weights;

pub use context::{AdapterInfo, GpuContext, GpuOptions, KvType};
pub use model::{batch_to_words, batch_words, sums_temperature, GpuModel, GpuPending, PendingModel, StepCounters};
pub use profile::{GpuTime, KernelTimes};
