//! GGUF files: header parsing with hard caps, typed metadata, quant block formats and CPU
//! dequantization, and a writer for synthetic test models.

mod metadata;
pub mod quant;
mod reader;
mod types;
mod writer;

pub use metadata::{Metadata, Value};
pub use quant::{dequantize, q4k_scale_min};
pub use reader::{ByteSource, Gguf, TensorInfo};
pub use types::{GgmlType, SUPPORTED_TYPES};
pub use writer::GgufWriter;
