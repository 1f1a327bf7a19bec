//! Speculative decoding on the GPU engine (lavapipe on CI): greedy identity with both drafters,
//! and KV rollback exactness after rejected drafts.

mod common;
#[path = "engine_cases/mod.rs"]
mod engine_cases;

use std::rc::Rc;

use engine_cases::*;
use ferrolm::chat::{render_chat, ChatMessage, ChatTemplate};
use ferrolm::engine::{Engine, Request, SpecMethod};
use ferrolm::generate::GenerateOptions;
use ferrolm::gguf::Gguf;
use ferrolm::gpu::{GpuContext, GpuModel, GpuOptions, ModelOptions};
use ferrolm::tokenizer::Tokenizer;

fn load() -> (GpuModel, Tokenizer) {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let opts = ModelOptions::new(512, 64);
    let model = pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, &file, &opts).await.unwrap() });
    (model, tok)
}

/// The reference prompts plus the repetitive-code prompt, as token ids.
fn prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut out: Vec<Vec<u32>> = reference["cases"].as_array().unwrap().iter().map(|c| serde_json::from_value(c["prompt_tokens"].clone()).unwrap()).collect();
    out.push(tok.encode_prompt(CODE_PROMPT, false).unwrap());
    out
}

/// Greedy output is token for token the same with n-gram and with draft-model speculation (the
/// same GGUF drafting); the plain tokens are recorded for the browser test.
#[test]
fn speculative_greedy_equals_plain_greedy() {
    let (model, tok) = load();
    let (draft, _) = load();
    let draft = Rc::new(draft);
    let prompts = prompts(&tok);
    pollster::block_on(async {
        let mut want = Vec::new();
        for p in &prompts {
            want.push(run_alone(&model, &tok, Request { prompt: p.clone(), opts: greedy(24) }).await.generation.tokens);
        }
        let totals = speculative_greedy_identity(&model, draft, &tok, &prompts, &want).await;
        println!("(drafted, accepted): ngram {:?}, draft model {:?}", totals[0], totals[1]);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("speculative-plain.json"), serde_json::json!({ "prompts": prompts, "tokens": want }).to_string()).unwrap();
    });
}

/// After rejected drafts the KV cache is rolled back exactly: every later position's top-5
/// logprobs equal a non-speculative run's, and the tokens are the same.
#[test]
fn rollback_after_rejection_matches_plain_logits() {
    let (model, tok) = load();
    // A chat request to edit code: the answer copies much of the prompt, so drafts are both kept
    // and rejected.
    let gguf = Gguf::read(&std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap()).unwrap();
    let template = ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap();
    let text = render_chat(template.as_ref(), &[ChatMessage { role: "user".into(), content: ferrolm::bench::CODE_EDIT_PROMPT.into() }], true).unwrap();
    let prompt = tok.encode_prompt(&text, true).unwrap();
    let opts = GenerateOptions { logprobs: Some(5), ..greedy(40) };
    pollster::block_on(async {
        let plain = run_alone(&model, &tok, Request { prompt: prompt.clone(), opts: opts.clone() }).await;
        model.pool.borrow_mut().clear_cache();
        let spec_opts = GenerateOptions { speculative: speculative(SpecMethod::Ngram, 6), ..opts };
        let spec = run_together(&mut Engine::new(), &model, &tok, vec![Request { prompt, opts: spec_opts }]).await.remove(0);
        let s = &spec.stats;
        println!("ngram on the code-edit prompt: drafted {}, accepted {}, {} forwards for {} tokens", s.drafted, s.accepted, s.forwards, s.generated_tokens);
        assert!(s.drafted >= s.accepted + 2, "fewer than 2 rejected drafts: the rollback went unexercised");
        assert!(s.forwards < s.generated_tokens, "speculation saved no forward");
        assert_logprobs_close(&spec.generation.logprobs, &plain.generation.logprobs, 1e-3);
    });
}

/// Bad speculative options are refused at submission with the option named.
#[test]
fn bad_speculative_options_are_clear_errors() {
    let (model, tok) = load();
    let mut engine = Engine::new();
    let req = |method, k| Request { prompt: vec![1, 2, 3], opts: GenerateOptions { speculative: speculative(method, k), ..greedy(4) } };
    let err = engine.submit(&model, &tok, req(SpecMethod::Ngram, 0)).unwrap_err().to_string();
    assert!(err.contains("draft_k"), "{err}");
    let err = engine.submit(&model, &tok, req(SpecMethod::Draft, 4)).unwrap_err().to_string();
    assert!(err.contains("draft model"), "{err}");
}
