//! Speculative decoding on the quantized CPU backend and WebGPU (lavapipe on CI; the f32
//! reference runs the engine scenarios elsewhere): greedy identity with both drafters, and KV rollback exactness after rejected drafts.

mod common;
#[path = "engine_cases/mod.rs"]
mod engine_cases;

use engine_cases::*;
use ferrolm::chat::{render_chat, ChatMessage, ChatTemplate};
use ferrolm::engine::{Engine, ForwardModel, ModelOptions, Request};
use ferrolm::gguf::Gguf;
use ferrolm::sample::{GenerateOptions, SpecMethod};
use ferrolm::tokenizer::Tokenizer;

fn opts() -> ModelOptions {
    ModelOptions::new(512, 64)
}

/// The reference prompts plus the repetitive-code prompt, as token ids.
fn prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut out: Vec<Vec<u32>> = reference["cases"].as_array().unwrap().iter().map(|c| serde_json::from_value(c["prompt_tokens"].clone()).unwrap()).collect();
    out.push(tok.encode_prompt(CODE_PROMPT, false).unwrap());
    out
}

/// Greedy output (`n` tokens a prompt) is token for token the same with n-gram and with
/// draft-model speculation (the same GGUF drafting); the plain tokens are recorded for the
/// browser test as `artifact` (it checks the first 12).
async fn greedy_identity<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, artifact: &str, n: usize) {
    let prompts = prompts(tok);
    let mut want = Vec::new();
    for p in &prompts {
        want.push(run_alone(engine, tok, Request { prompt: p.clone(), opts: greedy(n) }).await.generation.tokens);
    }
    let totals = speculative_greedy_identity(engine, tok, &prompts, &want).await;
    println!("{}: (drafted, accepted): ngram {:?}, draft model {:?}", engine.model().describe(), totals[0], totals[1]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(artifact), serde_json::json!({ "prompts": prompts, "tokens": want }).to_string()).unwrap();
}

#[test]
fn speculative_greedy_equals_plain_greedy_on_cpu() {
    let (mut engine, tok) = common::cpu_engine(opts());
    engine.set_draft_model(common::cpu_model(opts())).unwrap();
    pollster::block_on(greedy_identity(&mut engine, &tok, "speculative-plain-cpu.json", 24));
}

#[test]
fn speculative_greedy_equals_plain_greedy_on_gpu() {
    let (mut engine, tok) = common::gpu_engine(opts());
    engine.set_draft_model(common::gpu_model(opts())).unwrap();
    // 12 tokens (what the browser compares): lavapipe decodes at ~5 tokens a second.
    pollster::block_on(greedy_identity(&mut engine, &tok, "speculative-plain-gpu.json", 12));
}

/// After rejected drafts the KV cache is rolled back exactly: every later position's top-5
/// logprobs equal a non-speculative run's, and the tokens are the same.
async fn rollback_case<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    let s = rollback_with(engine, tok, SpecMethod::Ngram).await;
    assert!(s.forwards < s.generated_tokens, "speculation saved no forward");
}

/// The code-edit chat request plain and with `method` drafting (6 at most): the same tokens and
/// top-5 logprobs, with at least 2 drafts rejected. Returns the speculative run's stats.
async fn rollback_with<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, method: SpecMethod) -> ferrolm::engine::RequestStats {
    // A chat request to edit code: the answer copies much of the prompt, so drafts are both kept
    // and rejected.
    let gguf = Gguf::read(&std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap()).unwrap();
    let template = ChatTemplate::from_gguf(&gguf.metadata, tok).unwrap();
    let text = render_chat(template.as_ref(), &[ChatMessage { role: "user".into(), content: ferrolm::api::bench::CODE_EDIT_PROMPT.into() }], None, true, usize::MAX).unwrap();
    let prompt = tok.encode_prompt(&text, true).unwrap();
    let opts = GenerateOptions { logprobs: Some(5), ..greedy(40) };
    let plain = run_alone(engine, tok, Request { prompt: prompt.clone(), opts: opts.clone() }).await;
    let spec_opts = GenerateOptions { speculative: speculative(method, 6), ..opts };
    let spec = run_alone(engine, tok, Request { prompt, opts: spec_opts }).await;
    let s = spec.stats.clone();
    println!("{}: {method:?} on the code-edit prompt: drafted {}, accepted {}, {} forwards for {} tokens", engine.model().describe(), s.drafted, s.accepted, s.forwards, s.generated_tokens);
    assert!(s.drafted >= s.accepted + 2, "fewer than 2 rejected drafts: the rollback went unexercised");
    assert_eq!(spec.generation.tokens, plain.generation.tokens);
    assert!(!plain.generation.tokens.is_empty());
    assert_logprobs_close(&spec.generation.logprobs, &plain.generation.logprobs, 1e-3);
    s
}

#[test]
fn rollback_after_rejection_matches_plain_logits_on_cpu() {
    let (mut engine, tok) = common::cpu_engine(opts());
    pollster::block_on(rollback_case(&mut engine, &tok));
}

#[test]
fn rollback_after_rejection_matches_plain_logits_on_gpu() {
    let (mut engine, tok) = common::gpu_engine(opts());
    pollster::block_on(rollback_case(&mut engine, &tok));
}

/// A draft model that disagrees with the target (random weights, SmolLM2's vocabulary size):
/// nearly every draft is rejected, so the draft-model drafter's rejection and the rollback of
/// both KV caches really run, and the output is still token for token the plain output.
#[test]
fn a_disagreeing_draft_model_is_rejected_and_rolled_back_exactly() {
    let (mut engine, tok) = common::cpu_engine(opts());
    let shape = ferrolm::api::bench::LlamaShape { n_layers: 2, d_model: 128, n_heads: 2, n_kv_heads: 1, ffn_dim: 256, vocab: 49152 };
    let bytes = ferrolm::api::bench::synthetic_llama(shape);
    let gguf = Gguf::read(&bytes[..]).unwrap();
    engine.set_draft_model(ferrolm::backend::cpu::SimdModel::load(&gguf, &bytes[..], &opts(), 2).unwrap()).unwrap();
    let s = pollster::block_on(rollback_with(&mut engine, &tok, SpecMethod::Draft));
    assert!(s.drafted >= 5 * s.accepted.max(1), "a random draft model had {} of {} drafts accepted", s.accepted, s.drafted);
}

/// Bad speculative options are refused at submission with the option named.
#[test]
fn bad_speculative_options_are_clear_errors() {
    let (mut engine, tok) = common::reference_engine(opts());
    let req = |method, k| Request { prompt: vec![1, 2, 3], opts: GenerateOptions { speculative: speculative(method, k), ..greedy(4) } };
    let err = engine.submit(&tok, req(SpecMethod::Ngram, 0)).unwrap_err().to_string();
    assert!(err.contains("draft_k"), "{err}");
    let err = engine.submit(&tok, req(SpecMethod::Draft, 4)).unwrap_err().to_string();
    assert!(err.contains("draft model"), "{err}");
}
