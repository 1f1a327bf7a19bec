//! The WebGPU engine: device context, weight repacking, one typed launcher per shader, and the
//! model's forward pass on the GPU.

mod context;
pub mod kernels;
mod model;
mod session;
pub mod weights;

pub use context::{AdapterInfo, GpuContext, GpuOptions};
pub use model::{batch_words, Batch, EngineLimits, GpuModel, ModelOptions, Readback, DEFAULT_KV_BUDGET};
pub use session::GpuSession;
