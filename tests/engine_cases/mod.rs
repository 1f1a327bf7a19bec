//! Batching-engine scenarios shared by the native tests (tests/native/engine.rs,
//! tests/native/speculative.rs) and the browser tests (tests/browser.rs): the same code on every
//! backend (the f32 reference, and WebGPU on lavapipe and SwiftShader).
#![allow(dead_code)]

use std::collections::BTreeMap;

use ferrolm::engine::{Batch, Engine, Event, ForwardModel, PendingStep, Picks, Readback, Request, RequestId, RequestStats};
use ferrolm::sample::{FinishReason, GenerateOptions, Generation, SamplingParams, SpecMethod, Speculative, TokenLogprob};
use ferrolm::tokenizer::Tokenizer;

/// Prompts of different lengths and topics.
pub const PROMPTS: [&str; 4] = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a little robot who", "Water boils at"];

/// A text of well over 300 tokens for the shared-prefix case.
pub fn long_text() -> String {
    let base = "The printing press was invented around 1440 by Johannes Gutenberg, a goldsmith from Mainz, Germany. \
By combining movable metal type, oil-based ink, and a wooden screw press, he made books far cheaper than scribes could. ";
    base.repeat(8)
}

/// Tokens each request of the small-pool case generates: with its prompt, 2 blocks of 16 at
/// least, so the 4 requests together need twice the 4-block pool.
pub const SMALL_POOL_TOKENS: usize = 20;

pub fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, ignore_eos: true, ..Default::default() }
}

pub struct Outcome {
    pub generation: Generation,
    pub stats: RequestStats,
}

/// Runs `requests` together through the engine; results by submission order.
pub async fn run_together<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, requests: Vec<Request>) -> Vec<Outcome> {
    let ids: Vec<RequestId> = requests.into_iter().map(|r| engine.submit(tok, r).unwrap()).collect();
    let mut done = BTreeMap::new();
    engine
        .run(tok, |e| {
            if let Event::Done { id, generation, stats } = e {
                done.insert(id, Outcome { generation: *generation, stats });
            }
        })
        .await
        .unwrap();
    ids.iter().map(|id| done.remove(id).expect("every request finishes")).collect()
}

/// One request alone on a cold cache.
pub async fn run_alone<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, req: Request) -> Outcome {
    engine.clear_prefix_cache();
    run_together(engine, tok, vec![req]).await.remove(0)
}

pub fn requests(tok: &Tokenizer, max_tokens: usize) -> Vec<Request> {
    PROMPTS.iter().map(|p| Request { prompt: tok.encode_prompt(p, false).unwrap(), opts: greedy(max_tokens) }).collect()
}

/// Each prompt's tokens alone on a cold cache.
pub async fn each_alone<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, max_tokens: usize) -> Vec<Vec<u32>> {
    let mut alone = Vec::new();
    for r in requests(tok, max_tokens) {
        alone.push(run_alone(engine, tok, r).await.generation.tokens);
    }
    alone
}

/// Submits the prompts together and checks each gets exactly the tokens `alone` lists. The
/// pool must be back to no block in use afterwards.
pub async fn together_equals<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, max_tokens: usize, alone: &[Vec<u32>]) {
    engine.clear_prefix_cache();
    let together = run_together(engine, tok, requests(tok, max_tokens)).await;
    assert_eq!(together.len(), alone.len());
    for (i, (t, a)) in together.iter().zip(alone).enumerate() {
        assert_eq!(&t.generation.tokens, a, "prompt {:?}: batched tokens differ from the request alone", PROMPTS[i]);
        assert_eq!(t.generation.tokens.len(), max_tokens, "prompt {:?}: ended early", PROMPTS[i]);
    }
    assert_eq!(engine.pool().stats().used, 0, "blocks still held after every request finished");
}

/// The shared-prefix case: `first` runs, then `second` shares its first 96 tokens (6 full KV
/// blocks, more than one 64-token step). Returns the second request's outcome (greedy, 4
/// tokens, top-5 logprobs per token).
pub async fn prefix_hit<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) -> (Outcome, Vec<u32>) {
    let ids = tok.encode_prompt(&long_text(), false).unwrap();
    assert!(ids.len() > 300, "the long text has only {} tokens", ids.len());
    let prefix = &ids[..96];
    let with = |suffix: &str| -> Vec<u32> { prefix.iter().copied().chain(tok.encode(suffix, false).unwrap()).collect() };
    let first = Request { prompt: with(" The first question is why"), opts: greedy(1) };
    let second_prompt = with(" In short, the press");
    let second = Request { prompt: second_prompt.clone(), opts: GenerateOptions { logprobs: Some(5), ..greedy(4) } };
    engine.clear_prefix_cache();
    run_together(engine, tok, vec![first]).await;
    let hot = run_together(engine, tok, vec![second]).await.remove(0);
    assert!(hot.stats.cached_tokens >= 96, "only {} of the 96 shared tokens came from the prefix cache", hot.stats.cached_tokens);
    (hot, second_prompt)
}

/// Logprobs of two runs agree within the GPU tolerance, token for token.
pub fn assert_logprobs_close(a: &[TokenLogprob], b: &[TokenLogprob], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.token, y.token);
        assert_eq!(x.top.len(), y.top.len(), "different numbers of alternatives");
        assert!((x.logprob - y.logprob).abs() <= tol, "logprob {} vs {}", x.logprob, y.logprob);
        for (p, q) in x.top.iter().zip(&y.top) {
            assert_eq!(p.0, q.0, "top alternatives differ");
            assert!((p.1 - q.1).abs() <= tol, "alternative logprob {} vs {}", p.1, q.1);
        }
    }
}

/// Cancelling a running request frees its blocks at once; the other request still finishes
/// and the pool ends with no block in use.
pub async fn cancel_frees_blocks<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    engine.clear_prefix_cache();
    let baseline = engine.pool().stats().used;
    let reqs = requests(tok, 16);
    let keep = engine.submit(tok, reqs[0].clone()).unwrap();
    let gone = engine.submit(tok, reqs[2].clone()).unwrap();
    let mut tokens_seen = 0;
    while tokens_seen < 6 {
        for e in engine.step(tok).await.unwrap() {
            if matches!(e, Event::Token { id, .. } if id == gone) {
                tokens_seen += 1;
            }
        }
    }
    let used_before = engine.pool().stats().used;
    let Some(Event::Done { generation, .. }) = engine.cancel(tok, gone) else { panic!("cancel found no request") };
    assert_eq!(generation.finish_reason, FinishReason::Cancelled);
    assert!(generation.tokens.len() >= 6);
    let used_after = engine.pool().stats().used;
    assert!(used_after < used_before, "cancel freed no block ({used_before} -> {used_after})");
    assert!(engine.cancel(tok, gone).is_none(), "a cancelled request is gone");
    let mut finished = false;
    engine
        .run(tok, |e| {
            if let Event::Done { id, generation, .. } = e {
                assert_eq!(id, keep);
                assert_eq!(generation.tokens.len(), 16);
                finished = true;
            }
        })
        .await
        .unwrap();
    assert!(finished);
    assert_eq!(engine.pool().stats().used, baseline, "block count not back to the baseline");
}

/// A prompt whose continuation repeats its own text: where prompt lookup shines.
pub const CODE_PROMPT: &str = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\ndef div(a, b):\n";

pub fn speculative(method: SpecMethod, k: usize) -> Option<Speculative> {
    Some(Speculative { method, k })
}

/// Greedy decoding with n-gram and with draft-model speculation gives exactly `want` (the
/// plain greedy tokens) for every prompt; returns the total (drafted, accepted) per method.
/// The engine must have a draft model.
pub async fn speculative_greedy_identity<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, prompts: &[Vec<u32>], want: &[Vec<u32>]) -> Vec<(usize, usize)> {
    // The speculation itself, wherever its cost pays or not.
    engine.set_draft_always(true);
    let mut totals = Vec::new();
    for method in [SpecMethod::Ngram, SpecMethod::Draft] {
        let (mut drafted, mut accepted) = (0, 0);
        for (prompt, want) in prompts.iter().zip(want) {
            engine.clear_prefix_cache();
            let opts = GenerateOptions { speculative: speculative(method, 4), ..greedy(want.len()) };
            let out = run_together(engine, tok, vec![Request { prompt: prompt.clone(), opts }]).await.remove(0);
            assert_eq!(&out.generation.tokens, want, "{method:?} speculation changed the greedy output for prompt {prompt:?}");
            assert!(out.stats.accepted <= out.stats.drafted);
            drafted += out.stats.drafted;
            accepted += out.stats.accepted;
        }
        assert!(accepted > 0, "{method:?}: no draft was ever kept, the speculative path went unexercised");
        totals.push((drafted, accepted));
    }
    assert_eq!(engine.draft_pool().expect("a draft model").stats().used, 0, "the draft model's blocks were not released");
    totals
}

/// One sequence driven straight through the backend trait, without the engine: its KV goes to
/// the pool's blocks in order (0, 1, ...), so nothing else may use the model meanwhile.
pub struct RawSequence<'m, M: ForwardModel> {
    model: &'m M,
    len: usize,
}

impl<'m, M: ForwardModel> RawSequence<'m, M> {
    pub fn new(model: &'m M) -> Self {
        RawSequence { model, len: 0 }
    }

    /// Appends `tokens` (in chunks a step takes) and returns `read` for the last one.
    pub async fn extend(&mut self, tokens: &[u32], read: Readback) -> Picks {
        let limits = *self.model.limits();
        let table: Vec<u32> = (0..limits.context.div_ceil(limits.block_size)).collect();
        let mut out = Picks::Nothing;
        let n_chunks = tokens.len().div_ceil(limits.max_batch_tokens as usize);
        for (i, chunk) in tokens.chunks(limits.max_batch_tokens as usize).enumerate() {
            let last = i + 1 == n_chunks;
            let positions: Vec<u32> = (self.len..self.len + chunk.len()).map(|p| p as u32).collect();
            let rows = if last { vec![chunk.len() as u32 - 1] } else { Vec::new() };
            let batch = Batch { tokens: chunk, positions: &positions, seq_ids: &vec![0; chunk.len()], logit_rows: &rows, block_tables: &[&table], masks: None, sampling: None };
            out = self.model.submit(&batch, if last { read } else { Readback::Nothing }).unwrap().read().await.unwrap();
            self.len += chunk.len();
        }
        out
    }

    /// The argmax after `tokens`.
    pub async fn greedy(&mut self, tokens: &[u32]) -> u32 {
        match self.extend(tokens, Readback::Argmax).await {
            Picks::Tokens(t) => t[0],
            other => panic!("an argmax step returned {other:?}"),
        }
    }
}

/// Greedy continuation of `prompt`, `n` tokens (no tokenizer involved).
pub async fn raw_greedy<M: ForwardModel>(model: &M, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = RawSequence::new(model);
    let mut out = vec![seq.greedy(prompt).await];
    while out.len() < n {
        let next = seq.greedy(&[*out.last().unwrap()]).await;
        out.push(next);
    }
    out
}

/// Eight requests that end in different ways: max_tokens (1, 2, 9, 12 tokens), EOS (a chat
/// turn the model closes itself) and stop strings. Batches take the first `n`.
pub fn ending_requests(tok: &Tokenizer) -> Vec<Request> {
    let prompt = |p: &str| tok.encode_prompt(p, false).unwrap();
    let turn =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nReply with one word: is water wet?<|im_end|>\n<|im_start|>assistant\n";
    let turn = tok.encode_prompt(turn, true).unwrap();
    let stop = |s: &str, max_tokens| GenerateOptions { stop: vec![s.to_string()], ..greedy(max_tokens) };
    vec![
        Request { prompt: prompt(PROMPTS[0]), opts: greedy(12) },
        Request { prompt: turn, opts: GenerateOptions { ignore_eos: false, ..greedy(40) } },
        Request { prompt: prompt(PROMPTS[1]), opts: stop(" return", 40) },
        Request { prompt: prompt(PROMPTS[2]), opts: greedy(1) },
        Request { prompt: prompt(PROMPTS[3]), opts: greedy(2) },
        Request { prompt: prompt(PROMPTS[0]), opts: stop(".", 40) },
        Request { prompt: tok.encode_prompt(&long_text(), false).unwrap()[..100].to_vec(), opts: greedy(5) },
        Request { prompt: prompt(PROMPTS[2]), opts: greedy(9) },
    ]
}

/// What a request reported: each token event `(token, text)`, then its tokens, text and
/// finish reason.
pub type Report = (Vec<(u32, String)>, Vec<u32>, String, FinishReason);

/// Runs `requests` together and collects every request's report, by submission order.
pub async fn reports<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, requests: Vec<Request>) -> Vec<Report> {
    engine.clear_prefix_cache();
    let ids: Vec<RequestId> = requests.into_iter().map(|r| engine.submit(tok, r).unwrap()).collect();
    let mut events: BTreeMap<RequestId, Vec<(u32, String)>> = BTreeMap::new();
    let mut done = BTreeMap::new();
    engine
        .run(tok, |e| match e {
            Event::Token { id, token, text, .. } => events.entry(id).or_default().push((token, text)),
            Event::Done { id, generation, .. } => {
                done.insert(id, (generation.tokens, generation.text, generation.finish_reason));
            }
        })
        .await
        .unwrap();
    assert_eq!(engine.pool().stats().used, 0, "blocks still held after every request finished");
    ids.iter()
        .map(|id| {
            let (tokens, text, reason) = done.remove(id).expect("every request finishes");
            (events.remove(id).unwrap_or_default(), tokens, text, reason)
        })
        .collect()
}

/// Seeded sampled requests the backend draws itself (temperature alone, top-p, top-k past the
/// 64 candidates with min-p, one with a stop string, one with penalties and logit bias, one with
/// logprobs, typical-p), greedy with a repetition penalty, and a plain greedy one riding along.
pub fn sampled_requests(tok: &Tokenizer) -> Vec<Request> {
    let prompt = |p: &str| tok.encode_prompt(p, false).unwrap();
    let sampled = |seed, temperature, top_k, top_p, min_p, max_tokens| GenerateOptions {
        max_tokens,
        sampling: SamplingParams { temperature, top_k, top_p, min_p, seed: Some(seed), ..SamplingParams::default() },
        ..GenerateOptions::default()
    };
    vec![
        Request { prompt: prompt(PROMPTS[2]), opts: sampled(1, 1.0, 0, 1.0, 0.0, 7) },
        Request { prompt: prompt(PROMPTS[0]), opts: sampled(2, 0.7, 0, 0.9, 0.0, 6) },
        Request { prompt: prompt(PROMPTS[1]), opts: sampled(3, 1.2, 200, 0.95, 0.05, 5) },
        Request { prompt: prompt(PROMPTS[3]), opts: greedy(4) },
        Request { prompt: prompt(PROMPTS[2]), opts: GenerateOptions { stop: vec![" that".into()], ..sampled(4, 0.9, 0, 1.0, 0.0, 8) } },
        // Penalties and logit bias, edited on the device: the window counts the chained token.
        Request {
            prompt: prompt(PROMPTS[1]),
            opts: GenerateOptions {
                sampling: SamplingParams {
                    repeat_penalty: 1.3,
                    frequency_penalty: 0.3,
                    presence_penalty: 0.2,
                    repeat_last_n: 8,
                    logit_bias: vec![(198, -3.0)],
                    ..sampled(5, 0.8, 0, 0.95, 0.0, 7).sampling
                },
                ..sampled(5, 0.8, 0, 0.95, 0.0, 7)
            },
        },
        Request { prompt: prompt(PROMPTS[3]), opts: GenerateOptions { sampling: SamplingParams { repeat_penalty: 1.5, repeat_last_n: 6, ..SamplingParams::greedy() }, ..greedy(6) } },
        // Logprobs (read with the token), and typical-p.
        Request { prompt: prompt(PROMPTS[0]), opts: GenerateOptions { logprobs: Some(2), ..sampled(6, 0.9, 0, 0.95, 0.0, 5) } },
        Request { prompt: prompt(PROMPTS[1]), opts: GenerateOptions { sampling: SamplingParams { typical_p: 0.9, ..sampled(7, 1.0, 30, 1.0, 0.0, 5).sampling }, ..sampled(7, 1.0, 30, 1.0, 0.0, 5) } },
    ]
}

/// [`sampled_requests`] together: pipelined == step by step, token event for token event, with
/// steps chained (the sampled token stays on the device); returns the reports as JSON.
pub async fn sampled_pipelined_equals_sync<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) -> serde_json::Value {
    engine.set_pipelined(false);
    let sync = reports(engine, tok, sampled_requests(tok)).await;
    engine.set_pipelined(true);
    let chained = engine.stats().chained_steps;
    let piped = reports(engine, tok, sampled_requests(tok)).await;
    assert!(engine.stats().chained_steps > chained, "no sampled step was chained");
    for (i, (s, p)) in sync.iter().zip(&piped).enumerate() {
        assert_eq!(s, p, "sampled request {i}: pipelined output differs from step-by-step");
    }
    println!("{}: sampled endings {:?}", engine.model().describe(), sync.iter().map(|r| (r.1.len(), r.3)).collect::<Vec<_>>());
    reports_json(&sync)
}

/// Pipelined decoding (the next step submitted before the one in flight is read) reports
/// exactly what step-by-step decoding reports, token event for token event, for batches of
/// each size in `sizes` over [`ending_requests`]; the pipelined runs really chained steps.
/// Returns the reports of the last batch as JSON (recorded for the browser test).
pub async fn pipelined_equals_sync<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, sizes: &[usize]) -> serde_json::Value {
    let mut last = Vec::new();
    for &n in sizes {
        let requests: Vec<Request> = ending_requests(tok).into_iter().take(n).collect();
        engine.set_pipelined(false);
        let sync = reports(engine, tok, requests.clone()).await;
        engine.set_pipelined(true);
        let chained = engine.stats().chained_steps;
        let piped = reports(engine, tok, requests).await;
        let chained = engine.stats().chained_steps - chained;
        println!("{}: batch of {n}: {chained} chained steps; endings {:?}", engine.model().describe(), sync.iter().map(|r| (r.1.len(), r.3)).collect::<Vec<_>>());
        assert!(chained > 0, "batch of {n}: no step was chained, pipelining went unexercised");
        for (i, (s, p)) in sync.iter().zip(&piped).enumerate() {
            assert_eq!(s, p, "batch of {n}, request {i}: pipelined output differs from step-by-step");
        }
        if n == 8 {
            // Every ending occurred: max_tokens, EOS before max_tokens, and the stop strings.
            assert_eq!(sync[0].1.len(), 12);
            assert!(sync[1].3 == FinishReason::Stop && sync[1].1.len() < 40, "the chat turn did not end with EOS: {:?}", sync[1]);
            for i in [2, 5] {
                assert!(sync[i].3 == FinishReason::Stop && sync[i].1.len() < 40, "request {i} did not end on its stop string: {:?}", sync[i]);
            }
        }
        last = sync;
    }
    reports_json(&last)
}

/// Reports as JSON: each request's tokens, text and finish reason.
pub fn reports_json(reports: &[Report]) -> serde_json::Value {
    reports.iter().map(|r| serde_json::json!({ "tokens": r.1, "text": r.2, "finish_reason": r.3.as_str() })).collect()
}
