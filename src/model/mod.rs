//! Model configuration from GGUF metadata. One file per architecture maps its metadata keys and
//! tensor names onto the shared [`Config`].

pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];
