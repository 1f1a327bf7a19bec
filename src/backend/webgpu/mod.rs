//! The WebGPU backend: device context, weight repacking, one typed launcher per shader, and the
//! model's forward pass on the GPU behind the engine's [`crate::engine::ForwardModel`].

mod batch;
mod context;
pub mod kernels;
mod model;
mod profile;
pub mod weights;

pub use batch::{batch_to_words, batch_words, sums_temperature};
pub use context::{AdapterInfo, GpuContext, GpuOptions, KvType};
pub use model::{GpuModel, GpuPending, PendingModel, StepCounters};
pub use profile::{GpuTime, KernelTimes};
