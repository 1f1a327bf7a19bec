//! Fuzz targets over the untrusted inputs: a model file (through its config, tokenizer and chat
//! template, and loaded and run on the CPU backend and the reference), a chat template alone,
//! and a request's JSON. Each takes any bytes and must return:
//! errors are expected, a panic, a hang or unbounded memory is a bug. `fuzz/` runs them under
//! libFuzzer (`make fuzz`); tests/native/fuzz_smoke.rs runs their seed corpora and seeded
//! mutations of them in `make test`.

use std::future::Future;
use std::task::{Context, Waker};

use super::request::{options_from_json, SubmitInput};
use crate::backend::cpu::SimdModel;
use crate::backend::reference::ReferenceModel;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::engine::{Engine, ForwardModel, ModelOptions};
use crate::gguf::Gguf;
use crate::model::Config;
use crate::tokenizer::Tokenizer;

/// Output bound for the template targets: what 1,024 tokens of 64 bytes hold.
const MAX_PROMPT_BYTES: usize = 1024 * 64;

fn chat() -> [ChatMessage; 2] {
    [ChatMessage { role: "system".into(), content: "Be brief.".into() }, ChatMessage { role: "user".into(), content: "Hi <|im_start|> é 12".into() }]
}

/// A GGUF file: header, metadata, tensor table, the model config read from them, and every
/// tensor's bytes (bounded by the file).
pub fn gguf(data: &[u8]) {
    let Ok(gguf) = Gguf::read(data) else { return };
    let _ = Config::from_gguf(&gguf);
    for info in &gguf.tensors {
        let _ = gguf.tensor_data(data, info);
    }
}

/// A GGUF file's tokenizer and chat template, used on a short text and chat.
pub fn tokenizer(data: &[u8]) {
    let Ok(gguf) = Gguf::read(data) else { return };
    let Ok(tok) = Tokenizer::from_gguf(&gguf.metadata) else { return };
    if let Ok(ids) = tok.encode_request("Hello <|im_start|> world 123 é", true, 1024) {
        let _ = tok.decode(&ids);
    }
    if let Ok(Some(template)) = ChatTemplate::from_gguf(&gguf.metadata, &tok) {
        let _ = template.render(&chat(), None, true, MAX_PROMPT_BYTES);
    }
}

/// A GGUF file loaded on the CPU backend (one thread) and on the reference, each scoring a few
/// tokens: the weights' repacking and the forward must refuse what they cannot run.
pub fn model(data: &[u8]) {
    let Ok(gguf) = Gguf::read(data) else { return };
    let opts = ModelOptions::new(64, 16);
    if let Ok(cpu) = SimdModel::load(&gguf, data, &opts, 1) {
        score_a_few(cpu);
    }
    if let Ok(reference) = ReferenceModel::load(&gguf, data, &opts) {
        score_a_few(reference);
    }
}

/// Teacher-forced logits of five tokens spread over the vocabulary (on these backends a step's
/// future is ready when first polled).
fn score_a_few<M: ForwardModel>(model: M) {
    let vocab = model.config().vocab_size;
    let tokens: Vec<u32> = (0..5).map(|i| (i * 7919 % vocab) as u32).collect();
    let mut engine = Engine::new(model);
    let mut step = std::pin::pin!(engine.score(&tokens));
    let _ = step.as_mut().poll(&mut Context::from_waker(Waker::noop()));
}

/// A chat template's source, compiled and rendered.
pub fn chat_template(data: &[u8]) {
    let source = String::from_utf8_lossy(data);
    if let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") {
        let _ = template.render(&chat(), None, true, MAX_PROMPT_BYTES);
    }
}

/// A request's JSON: the options and the input as the wasm boundary parses them.
pub fn request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = options_from_json(text);
    let _ = serde_json::from_str::<SubmitInput>(text);
}

/// A fuzz target: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets by name, for the fuzz crate and the smoke test.
pub const TARGETS: [(&str, Target); 5] = [("gguf", gguf), ("model", model), ("tokenizer", tokenizer), ("chat_template", chat_template), ("request", request)];
