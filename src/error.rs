//! One error type for the whole crate. Every message says what is wrong and, where it helps,
//! what to do about it; `wasm.rs` turns these into `JsError`s with the same text.

/// Crate-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The header section of the file is longer than the bytes handed to the parser; the caller
    /// may read more of the file (`needed` bytes at least) and try again.
    #[error("GGUF header needs at least {needed} bytes but only {have} are available")]
    NeedMoreBytes { have: usize, needed: usize },

    #[error("not a GGUF file: {0}")]
    NotGguf(String),

    #[error("malformed GGUF file: {0}; the file is corrupt or truncated, download it again")]
    MalformedGguf(String),

    #[error("unsupported GGUF version {0}: ferrolm reads versions 2 and 3; re-convert the model with a current llama.cpp")]
    UnsupportedVersion(u32),

    #[error("tensor '{name}' has unsupported type {ty}: ferrolm supports {supported}; choose a GGUF with a supported quantization")]
    UnsupportedTensorType { name: String, ty: String, supported: &'static str },

    #[error("GGUF metadata key '{0}' is missing; the file is incomplete or not a model of the expected architecture")]
    MissingMetadata(String),

    #[error("GGUF metadata key '{key}' has type {found}, expected {expected}")]
    MetadataType { key: String, expected: &'static str, found: String },

    #[error("unsupported model architecture '{name}': ferrolm runs {supported}")]
    UnsupportedArchitecture { name: String, supported: String },

    #[error("the GPU engine does not support {0} yet; use the CPU reference (--device reference)")]
    UnsupportedOnGpu(&'static str),

    #[error("tensor '{0}' is missing from the model file")]
    MissingTensor(String),

    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<u64>, found: Vec<u64> },

    #[error("invalid model: {0}")]
    InvalidModel(String),

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("chat template error: {0}")]
    ChatTemplate(String),

    #[error("the prompt has {tokens} tokens but the context holds {context}; shorten the prompt or raise the context length")]
    PromptTooLong { tokens: usize, context: usize },

    #[error("the prompt has {bytes} bytes, more than the context can hold (at most {limit} bytes for this model and context length); shorten the prompt or raise the context length")]
    PromptTooLarge { bytes: usize, limit: usize },

    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("the model's logits for the next token are all NaN or -inf (or every token that scores is forbidden), so no token can be chosen; the model file may be damaged or its numbers overflow: compare with --device reference, or try another quantization of the model")]
    NoFiniteLogits,

    #[error("WebGPU is not available: {0}. Use a browser with WebGPU (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows), or natively a Vulkan, Metal or DX12 driver (on Linux without a GPU: apt install mesa-vulkan-drivers); the CLI also runs with --device cpu")]
    NoGpu(String),

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("the GPU device was lost ({0}); requests in flight failed and this engine cannot run again: create the engine again to get a new device")]
    DeviceLost(String),

    #[error("{what} needs {bytes} bytes but this GPU allows at most {limit} bytes per buffer; use a smaller model or quantization")]
    ModelTooLarge { what: String, bytes: u64, limit: u64 },

    #[error("the KV cache is full: {needed} blocks of {block_size} tokens are needed but {available} can be had while other requests hold the rest; wait for them to finish or load the model with a larger KV budget")]
    KvCacheFull { needed: usize, available: usize, block_size: usize },

    #[error("the output constraint failed: {0}")]
    Constraint(String),

    #[error("invalid option {option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },
}

impl Error {
    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        Error::MalformedGguf(msg.into())
    }
}
