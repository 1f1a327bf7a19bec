//! Paths shared by the native integration tests. Models live in `models/` (fetched by
//! `make models`); reference data in `../shared/reference/` beside the checkout.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ferrolm::backend::cpu::SimdModel;
use ferrolm::backend::reference::{CpuModel, ReferenceModel};
use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions};
use ferrolm::engine::{Engine, ModelOptions};
use ferrolm::gguf::Gguf;
use ferrolm::tokenizer::Tokenizer;

#[path = "../forced_cases/mod.rs"]
pub mod forced_cases;

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

/// Teacher-forces the first `cases` SmolLM2 reference cases (all: `usize::MAX`) of `file` through
/// `score` (token ids and the first position to read -> `[n - from][vocab]` logits) and checks
/// each as [`forced_cases::check_exact`] does. Prints and returns the worst logit difference.
pub fn check_smollm2_forced_logits_in(file: &str, what: &str, vocab: usize, cases: usize, mut score: impl FnMut(&[u32], usize) -> Vec<f32>) -> f64 {
    let reference = read_json(&reference_path(file));
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap().iter().take(cases) {
        let logits = score(&forced_cases::tokens(case).2, forced_cases::first_position(case));
        let (case_worst, ratio) = forced_cases::check_exact(what, case, vocab, &logits);
        println!("{what} case {:.40?}: worst top-5 logit diff {case_worst:.5}, mean NLL ratio to reference {ratio:.5}", case["prompt"].as_str().unwrap());
        worst = worst.max(case_worst);
    }
    println!("{what}: worst top-5 logit difference over all cases: {worst:.5}");
    worst
}

/// [`check_smollm2_forced_logits_in`] on the short cases, with `score` giving every position.
pub fn check_smollm2_forced_logits(what: &str, vocab: usize, cases: usize, mut score: impl FnMut(&[u32]) -> Vec<f32>) -> f64 {
    check_smollm2_forced_logits_in("smollm2-135m/forced-logits.json", what, vocab, cases, |tokens, from| score(tokens).split_off(from * vocab))
}

/// Runs `tokens` batched, then incrementally (three tokens, then one at a time); returns the largest
/// difference between the two runs' last logits, the incremental cache and its last logits.
pub fn incremental_vs_batched(model: &CpuModel, tokens: &[u32]) -> (f32, ferrolm::backend::reference::KvCache, Vec<f32>) {
    use ferrolm::backend::reference::Logits;
    let all = model.forward(tokens, &mut model.new_cache(16), Logits::All).unwrap();
    let mut inc = model.new_cache(16);
    let mut last = model.forward(&tokens[..3], &mut inc, Logits::Last).unwrap();
    for &t in &tokens[3..] {
        last = model.forward(&[t], &mut inc, Logits::Last).unwrap();
    }
    let want = &all[(tokens.len() - 1) * model.config.vocab_size..];
    let diff = want.iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    (diff, inc, last)
}

/// SmolLM2's tokenizer.
pub fn smollm2_tokenizer() -> Tokenizer {
    let gguf = Gguf::read(&std::fs::File::open(model_path(SMOLLM2)).unwrap()).unwrap();
    Tokenizer::from_gguf(&gguf.metadata).unwrap()
}

/// SmolLM2's f32 weights, dequantized once per test binary.
pub fn smollm2_weights() -> Arc<CpuModel> {
    static WEIGHTS: OnceLock<Arc<CpuModel>> = OnceLock::new();
    WEIGHTS
        .get_or_init(|| {
            let file = std::fs::File::open(model_path(SMOLLM2)).unwrap();
            Arc::new(CpuModel::load(&Gguf::read(&file).unwrap(), &file).unwrap())
        })
        .clone()
}

/// An engine over SmolLM2 on the f32 reference.
pub fn reference_engine(opts: ModelOptions) -> (Engine<ReferenceModel>, Tokenizer) {
    (Engine::new(ReferenceModel::new(smollm2_weights(), &opts)), smollm2_tokenizer())
}

/// SmolLM2 on this machine's WebGPU adapter.
pub fn gpu_model(opts: ModelOptions) -> GpuModel {
    let file = std::fs::File::open(model_path(SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, &file, &opts).await.unwrap() })
}

/// An engine over SmolLM2 on this machine's WebGPU adapter.
pub fn gpu_engine(opts: ModelOptions) -> (Engine<GpuModel>, Tokenizer) {
    (Engine::new(gpu_model(opts)), smollm2_tokenizer())
}

/// SmolLM2 on the quantized CPU backend with two threads (the threaded path on every machine).
pub fn cpu_model(opts: ModelOptions) -> SimdModel {
    let file = std::fs::File::open(model_path(SMOLLM2)).unwrap();
    SimdModel::load(&Gguf::read(&file).unwrap(), &file, &opts, 2).unwrap()
}

/// An engine over SmolLM2 on the quantized CPU backend.
pub fn cpu_engine(opts: ModelOptions) -> (Engine<SimdModel>, Tokenizer) {
    (Engine::new(cpu_model(opts)), smollm2_tokenizer())
}
