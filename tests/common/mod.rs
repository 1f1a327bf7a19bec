//! Paths shared by the native integration tests. Models live in `models/` (fetched by
//! `make models`); reference data in `../shared/reference/` beside the checkout.
#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// Path of a model file; panics with the fix when it is missing (a test never skips silently).
pub fn model_path(file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(file);
    assert!(p.exists(), "{} is missing: run `make models` first", p.display());
    p
}

/// Path of a file under `../shared/reference/`.
pub fn reference_path(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference").join(rel);
    assert!(p.exists(), "{} is missing: the checkout must sit beside shared/", p.display());
    p
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}
