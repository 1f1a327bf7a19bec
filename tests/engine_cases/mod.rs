//! Batching-engine scenarios shared by the native tests (tests/engine.rs) and the browser tests
//! (tests/browser.rs), kept in a folder so it is no test crate of its own: the same code on lavapipe and on SwiftShader.
#![allow(dead_code)]

use std::collections::BTreeMap;

use ferrolm::engine::{Engine, Event, Request, RequestId, RequestStats};
use ferrolm::generate::{FinishReason, GenerateOptions, Generation, TokenLogprob};
use ferrolm::gpu::GpuModel;
use ferrolm::tokenizer::Tokenizer;

/// Prompts of different lengths and topics.
pub const PROMPTS: [&str; 4] = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a little robot who", "Water boils at"];

/// A text of well over 300 tokens for the shared-prefix case.
pub fn long_text() -> String {
    let base = "The printing press was invented around 1440 by Johannes Gutenberg, a goldsmith from Mainz, Germany. \
By combining movable metal type, oil-based ink, and a wooden screw press, he made books far cheaper than scribes could. ";
    base.repeat(8)
}

pub fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, ignore_eos: true, ..Default::default() }
}

pub struct Outcome {
    pub generation: Generation,
    pub stats: RequestStats,
}

/// Runs `requests` together through one engine; results by submission order.
pub async fn run_together(engine: &mut Engine, model: &GpuModel, tok: &Tokenizer, requests: Vec<Request>) -> Vec<Outcome> {
    let ids: Vec<RequestId> = requests.into_iter().map(|r| engine.submit(model, tok, r).unwrap()).collect();
    let mut done = BTreeMap::new();
    engine
        .run(model, tok, |e| {
            if let Event::Done { id, generation, stats } = e {
                done.insert(id, Outcome { generation: *generation, stats });
            }
        })
        .await
        .unwrap();
    ids.iter().map(|id| done.remove(id).expect("every request finishes")).collect()
}

/// One request alone on a cold cache.
pub async fn run_alone(model: &GpuModel, tok: &Tokenizer, req: Request) -> Outcome {
    model.pool.borrow_mut().clear_cache();
    run_together(&mut Engine::new(), model, tok, vec![req]).await.remove(0)
}

pub fn requests(tok: &Tokenizer, max_tokens: usize) -> Vec<Request> {
    PROMPTS.iter().map(|p| Request { prompt: tok.encode_prompt(p, false).unwrap(), opts: greedy(max_tokens) }).collect()
}

/// Submits the prompts together and checks each gets exactly the tokens `alone` lists; returns
/// the engine for its stats. The pool must be back to no block in use afterwards.
pub async fn together_equals(model: &GpuModel, tok: &Tokenizer, max_tokens: usize, alone: &[Vec<u32>]) -> Engine {
    model.pool.borrow_mut().clear_cache();
    let mut engine = Engine::new();
    let together = run_together(&mut engine, model, tok, requests(tok, max_tokens)).await;
    for (i, (t, a)) in together.iter().zip(alone).enumerate() {
        assert_eq!(&t.generation.tokens, a, "prompt {:?}: batched tokens differ from the request alone", PROMPTS[i]);
    }
    assert_eq!(model.pool.borrow().stats().used, 0, "blocks still held after every request finished");
    engine
}

/// The shared-prefix case: `first` runs, then `second` shares its first 300 tokens. Returns
/// the second request's outcome (greedy, 4 tokens, top-5 logprobs per token).
pub async fn prefix_hit(model: &GpuModel, tok: &Tokenizer) -> (Outcome, Vec<u32>) {
    let ids = tok.encode_prompt(&long_text(), false).unwrap();
    assert!(ids.len() > 300, "the long text has only {} tokens", ids.len());
    let prefix = &ids[..300];
    let with = |suffix: &str| -> Vec<u32> { prefix.iter().copied().chain(tok.encode(suffix, false).unwrap()).collect() };
    let first = Request { prompt: with(" The first question is why"), opts: greedy(1) };
    let second_prompt = with(" In short, the press");
    let second = Request { prompt: second_prompt.clone(), opts: GenerateOptions { logprobs: Some(5), ..greedy(4) } };
    model.pool.borrow_mut().clear_cache();
    let mut engine = Engine::new();
    run_together(&mut engine, model, tok, vec![first]).await;
    let hot = run_together(&mut engine, model, tok, vec![second]).await.remove(0);
    assert!(hot.stats.cached_tokens >= 288, "only {} of the 300 shared tokens came from the prefix cache", hot.stats.cached_tokens);
    assert!(engine.stats(model).prefix_hit_rate > 0.4, "prefix hit rate {}", engine.stats(model).prefix_hit_rate);
    (hot, second_prompt)
}

/// Logprobs of two runs agree within the GPU tolerance, token for token.
pub fn assert_logprobs_close(a: &[TokenLogprob], b: &[TokenLogprob], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.token, y.token);
        assert!((x.logprob - y.logprob).abs() <= tol, "logprob {} vs {}", x.logprob, y.logprob);
        for (p, q) in x.top.iter().zip(&y.top) {
            assert_eq!(p.0, q.0, "top alternatives differ");
            assert!((p.1 - q.1).abs() <= tol, "alternative logprob {} vs {}", p.1, q.1);
        }
    }
}

/// Cancelling a running request frees its blocks at once; the other request still finishes
/// and the pool ends with no block in use.
pub async fn cancel_frees_blocks(model: &GpuModel, tok: &Tokenizer) {
    model.pool.borrow_mut().clear_cache();
    let baseline = model.pool.borrow().stats().used;
    let mut engine = Engine::new();
    let reqs = requests(tok, 40);
    let keep = engine.submit(model, tok, reqs[0].clone()).unwrap();
    let gone = engine.submit(model, tok, reqs[2].clone()).unwrap();
    let mut tokens_seen = 0;
    while tokens_seen < 6 {
        for e in engine.step(model, tok).await.unwrap() {
            if matches!(e, Event::Token { id, .. } if id == gone) {
                tokens_seen += 1;
            }
        }
    }
    let used_before = model.pool.borrow().stats().used;
    let Some(Event::Done { generation, .. }) = engine.cancel(model, tok, gone) else { panic!("cancel found no request") };
    assert_eq!(generation.finish_reason, FinishReason::Cancelled);
    assert!(generation.tokens.len() >= 6);
    let used_after = model.pool.borrow().stats().used;
    assert!(used_after < used_before, "cancel freed no block ({used_before} -> {used_after})");
    assert!(engine.cancel(model, tok, gone).is_none(), "a cancelled request is gone");
    let mut finished = false;
    engine
        .run(model, tok, |e| {
            if let Event::Done { id, generation, .. } = e {
                assert_eq!(id, keep);
                assert_eq!(generation.tokens.len(), 40);
                finished = true;
            }
        })
        .await
        .unwrap();
    assert!(finished);
    assert_eq!(model.pool.borrow().stats().used, baseline, "block count not back to the baseline");
}

/// A prompt whose continuation repeats its own text: where prompt lookup shines.
pub const CODE_PROMPT: &str = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\ndef div(a, b):\n";

pub fn speculative(method: ferrolm::engine::SpecMethod, k: usize) -> Option<ferrolm::engine::Speculative> {
    Some(ferrolm::engine::Speculative { method, k })
}

/// Greedy decoding with n-gram and with draft-model speculation gives exactly `want` (the
/// plain greedy tokens) for every prompt; returns the total (drafted, accepted) per method.
pub async fn speculative_greedy_identity(model: &GpuModel, draft: std::rc::Rc<GpuModel>, tok: &Tokenizer, prompts: &[Vec<u32>], want: &[Vec<u32>]) -> Vec<(usize, usize)> {
    use ferrolm::engine::SpecMethod;
    let mut totals = Vec::new();
    for method in [SpecMethod::Ngram, SpecMethod::Draft] {
        let (mut drafted, mut accepted) = (0, 0);
        for (prompt, want) in prompts.iter().zip(want) {
            model.pool.borrow_mut().clear_cache();
            let mut engine = Engine::new();
            engine.set_draft_model(model, draft.clone()).unwrap();
            let opts = GenerateOptions { speculative: speculative(method, 4), ..greedy(want.len()) };
            let out = run_together(&mut engine, model, tok, vec![Request { prompt: prompt.clone(), opts }]).await.remove(0);
            assert_eq!(&out.generation.tokens, want, "{method:?} speculation changed the greedy output for prompt {prompt:?}");
            assert!(out.stats.accepted <= out.stats.drafted);
            drafted += out.stats.drafted;
            accepted += out.stats.accepted;
        }
        assert!(accepted > 0, "{method:?}: no draft was ever kept, the speculative path went unexercised");
        totals.push((drafted, accepted));
    }
    assert_eq!(draft.pool.borrow().stats().used, 0, "the draft model's blocks were not released");
    totals
}
