//! The paged KV pool, prefix cache and batching engine: allocator and hash-table unit tests, then
//! the engine's scenarios on every backend: the f32 reference, the quantized CPU backend and
//! WebGPU (lavapipe on CI).

use crate::common;
use crate::engine_cases;

use engine_cases::*;
use ferrolm::engine::{BlockPool, Engine, ForwardModel, ModelOptions, Request};
use ferrolm::sample::{FinishReason, GenerateOptions};
use ferrolm::tokenizer::Tokenizer;

fn write_artifact(name: &str, value: serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), value.to_string()).unwrap();
}

/// The pool of the small-pool cases: 64 positions, 4 blocks of 16 (one full context).
pub fn small_pool() -> ModelOptions {
    ModelOptions { context: 64, max_batch_tokens: 64, max_seqs: 4, kv_budget_bytes: Some(0) }
}

/// Defines `$name::reference`, `$name::cpu` and `$name::gpu`: the same engine scenario on each
/// backend, each with an engine sized by `$opts`.
macro_rules! on_each_backend {
    ($(#[$doc:meta])* $name:ident($opts:expr) => $case:ident) => {
        $(#[$doc])*
        mod $name {
            use super::*;
            #[test]
            fn reference() {
                let (mut engine, tok) = common::reference_engine($opts);
                pollster::block_on($case(&mut engine, &tok));
            }
            #[test]
            fn cpu() {
                let (mut engine, tok) = common::cpu_engine($opts);
                pollster::block_on($case(&mut engine, &tok));
            }
            #[test]
            fn gpu() {
                let (mut engine, tok) = common::gpu_engine($opts);
                pollster::block_on($case(&mut engine, &tok));
            }
        }
    };
}

#[test]
fn allocator_counts_references_and_frees() {
    let mut pool = BlockPool::new(3, 4);
    let a = pool.allocate().unwrap();
    let b = pool.allocate().unwrap();
    let c = pool.allocate().unwrap();
    assert_eq!((a, b, c), (0, 1, 2));
    assert!(pool.allocate().is_none(), "a full pool of referenced blocks allocates nothing");
    pool.retain(b);
    pool.release(b);
    assert_eq!(pool.refs(b), 1);
    pool.release(b);
    assert_eq!(pool.stats().free, 1);
    assert_eq!(pool.allocate(), Some(b), "a released uncached block is reused");
    pool.release_all(&[a, b, c]);
    assert_eq!(pool.stats().used, 0);
    assert_eq!(pool.available(), 3);
}

#[test]
fn prefix_cache_finds_chains_evicts_lru_and_forgets_stale_children() {
    let mut pool = BlockPool::new(4, 2);
    let seq = [1u32, 2, 3, 4, 5, 6];
    // A sequence of three full blocks, registered as it fills.
    let blocks: Vec<u32> = (0..3).map(|_| pool.allocate().unwrap()).collect();
    let mut key = 0;
    for i in 0..3 {
        key = pool.register(blocks[i], i.checked_sub(1).map(|p| blocks[p]), key, &seq[2 * i..2 * i + 2]);
    }
    pool.release_all(&blocks);
    assert_eq!(pool.stats().cached_free, 3);
    // Same start: all three found (and retained); a different second block stops the walk.
    let hit = pool.lookup(&seq, 3);
    assert_eq!(hit.blocks, blocks);
    pool.release_all(&hit.blocks);
    let hit = pool.lookup(&[1, 2, 9, 9, 5, 6], 3);
    assert_eq!(hit.blocks, vec![blocks[0]]);
    pool.release_all(&hit.blocks);
    // The caller's limit holds.
    let hit = pool.lookup(&seq, 1);
    assert_eq!(hit.blocks.len(), 1);
    pool.release_all(&hit.blocks);
    // Allocation takes the free block first, then evicts the least recently used cached one.
    let free = pool.allocate().unwrap();
    assert_eq!(free, 3);
    let evicted = pool.allocate().unwrap();
    assert_eq!(pool.stats().evictions, 1);
    assert!(blocks.contains(&evicted));
    // Every chain through the evicted block is gone; a block reused for other content is never
    // mistaken for the old parent.
    let hit = pool.lookup(&seq, 3);
    let first_missing = blocks.iter().position(|&b| b == evicted).unwrap();
    assert_eq!(hit.blocks.len(), first_missing, "lookup walked past an evicted block");
    pool.release_all(&hit.blocks);
    pool.release(free);
    pool.release(evicted);
    pool.clear_cache();
    assert_eq!(pool.stats().free, 4);
    assert!(pool.lookup(&seq, 3).blocks.is_empty(), "clear_cache left entries behind");
}

#[test]
fn hash_collisions_are_resolved_by_comparing_tokens() {
    // Every key collides: only the token and parent comparison tells blocks apart.
    let mut pool = BlockPool::with_hasher(4, 2, |_, _| 7);
    let x = pool.allocate().unwrap();
    let y = pool.allocate().unwrap();
    pool.register(x, None, 0, &[1, 2]);
    pool.register(y, None, 0, &[3, 4]);
    pool.release_all(&[x, y]);
    assert_eq!(pool.lookup(&[3, 4], 1).blocks, vec![y]);
    assert_eq!(pool.lookup(&[1, 2], 1).blocks, vec![x]);
    assert!(pool.lookup(&[5, 6], 1).blocks.is_empty());
    // Same tokens under another parent are another block.
    let z = pool.allocate().unwrap();
    pool.register(z, Some(x), 7, &[3, 4]);
    pool.release(z);
    assert_eq!(pool.lookup(&[1, 2, 3, 4], 2).blocks, vec![x, z]);
    assert_eq!(pool.lookup(&[3, 4, 3, 4], 2).blocks, vec![y], "a block was matched under the wrong parent");
}

on_each_backend! {
    /// 4 prompts together produce exactly the greedy tokens each produces alone.
    batched_requests_equal_each_request_alone(ModelOptions::new(512, 64)) => batched_equals_alone
}

async fn batched_equals_alone<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    let alone = each_alone(engine, tok, 12).await;
    let before = engine.stats().steps;
    together_equals(engine, tok, 12, &alone).await;
    // They really ran together: 4 x 12 tokens in little more than the 12 steps (one prefill,
    // 11 decodes) one request takes alone; apart they take 48.
    let steps = engine.stats().steps - before;
    println!("{}: 4 requests together in {steps} steps: {:?}", engine.model().describe(), engine.stats());
    assert!(steps <= 16, "4 x 12 tokens took {steps} steps: the requests did not share steps");
    // Independent truth: a prompt that is a reference case continues as llama.cpp's greedy run
    // does, up to the first position where llama.cpp's argmax differs from the exact f32 one or
    // the f32 top-1 leads by less than 0.5 (a near-tie 8-bit activations may flip).
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut checked = 0;
    for (prompt, tokens) in PROMPTS.iter().zip(&alone) {
        let Some(case) = reference["cases"].as_array().unwrap().iter().find(|c| c["prompt"] == *prompt) else { continue };
        let sure = case["steps"]
            .as_array()
            .unwrap()
            .iter()
            .take_while(|s| s["ref_top5"][0][0] == s["llamacpp_top5"][0][0] && s["ref_top5"][0][1].as_f64().unwrap() - s["ref_top5"][1][1].as_f64().unwrap() >= 0.5)
            .count()
            .min(tokens.len());
        let want: Vec<u32> = serde_json::from_value(case["continuation_tokens"].clone()).unwrap();
        assert_eq!(&tokens[..sure], &want[..sure], "prompt {prompt:?}: greedy tokens differ from the reference continuation");
        checked += sure;
    }
    assert!(checked >= 5, "only {checked} tokens were checked against the reference");
}

on_each_backend! {
    /// A pool of 4 blocks for 4 requests that need 8: admission waits, sequences are preempted
    /// and recomputed, and every request still gets exactly its tokens (recorded for the
    /// browser test).
    small_pool_waits_preempts_and_stays_exact(small_pool()) => small_pool_case
}

async fn small_pool_case<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    assert_eq!(engine.model().limits().n_blocks, 4);
    let alone = each_alone(engine, tok, SMALL_POOL_TOKENS).await;
    let preemptions = engine.stats().preemptions;
    together_equals(engine, tok, SMALL_POOL_TOKENS, &alone).await;
    let stats = engine.stats();
    println!("{}: small pool: {stats:?}", engine.model().describe());
    assert!(stats.preemptions > preemptions, "the small pool never preempted: the case tests nothing");
    write_artifact(&format!("engine-small-pool-{}.json", backend_name(engine)), serde_json::json!({ "alone": alone }));
}

/// "reference", "cpu" or "gpu", for artifact names.
fn backend_name<M: ForwardModel>(engine: &Engine<M>) -> &'static str {
    let describe = engine.model().describe();
    if describe.starts_with("GPU") {
        "gpu"
    } else if describe.starts_with("CPU f32") {
        "reference"
    } else {
        "cpu"
    }
}

on_each_backend! {
    /// A request sharing a 96-token prefix with an earlier one reuses all 96 tokens and gets
    /// the same tokens and top-5 logprobs as a cold run (recorded for the browser test).
    prefix_hit_equals_cold_run(ModelOptions::new(512, 64)) => prefix_hit_case
}

async fn prefix_hit_case<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    let (hot, prompt) = prefix_hit(engine, tok).await;
    let cold = run_alone(engine, tok, Request { prompt: prompt.clone(), opts: GenerateOptions { logprobs: Some(5), ..greedy(4) } }).await;
    assert_eq!(cold.stats.cached_tokens, 0);
    let (h, c) = (&hot.stats, &cold.stats);
    println!("{}: prefix hit: {} of {} prompt tokens cached, TTFT {:.0} ms hot vs {:.0} ms cold", engine.model().describe(), h.cached_tokens, h.prompt_tokens, h.ttft_ms, c.ttft_ms);
    assert_eq!(hot.generation.tokens, cold.generation.tokens);
    assert_logprobs_close(&hot.generation.logprobs, &cold.generation.logprobs, 1e-3);
    write_artifact(&format!("engine-prefix-cold-{}.json", backend_name(engine)), serde_json::json!({ "prompt": prompt, "logprobs": cold.generation.logprobs }));
}

on_each_backend! {
    /// Cancelling a running request frees its blocks at once; the other still finishes.
    cancel_mid_stream_frees_blocks(ModelOptions::new(512, 64)) => cancel_frees_blocks
}

on_each_backend! {
    /// Bad requests are refused at submission with the option named.
    bad_requests_are_clear_errors(small_pool()) => bad_requests
}

async fn bad_requests<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    let long = Request { prompt: vec![1; 65], opts: greedy(4) };
    let err = engine.submit(tok, long).unwrap_err().to_string();
    assert!(err.contains("65 tokens") && err.contains("64"), "{err}");
    let empty = Request { prompt: vec![], opts: greedy(4) };
    assert!(engine.submit(tok, empty).unwrap_err().to_string().contains("empty"));
    let bad_token = Request { prompt: vec![1, 999_999], opts: greedy(4) };
    assert!(engine.submit(tok, bad_token).unwrap_err().to_string().contains("999999"));
    assert!(engine.is_idle());
}

on_each_backend! {
    /// A sequence that reaches the context length stops with `length`: 60 prompt tokens in a
    /// 64-position context leave room for 5 generated tokens (the last one needs no KV slot).
    context_full_stops_with_length(small_pool()) => context_full
}

async fn context_full<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    let prompt: Vec<u32> = tok.encode_prompt(&long_text(), false).unwrap()[..60].to_vec();
    let out = run_alone(engine, tok, Request { prompt, opts: greedy(100) }).await;
    assert_eq!(out.generation.finish_reason, FinishReason::Length);
    assert_eq!(out.generation.tokens.len(), 5);
}

/// Two requests submitted together that share a 180-token prefix: the second waits while the
/// first prefills it, then takes its 11 full blocks from the prefix cache instead of computing
/// them again; both produce what they produce alone (CPU backend, 64-token steps).
#[test]
fn a_prefix_being_prefilled_is_computed_once() {
    let (mut engine, tok) = common::cpu_engine(ModelOptions::new(1024, 64));
    let ids = tok.encode_prompt(&long_text(), false).unwrap();
    let with = |suffix: &str| -> Vec<u32> { ids[..180].iter().copied().chain(tok.encode(suffix, false).unwrap()).collect() };
    let prompts = [with(" The first question is why"), with(" In short, the press")];
    let request = |p: &Vec<u32>| Request { prompt: p.clone(), opts: greedy(6) };
    let mut alone = Vec::new();
    for p in &prompts {
        alone.push(pollster::block_on(run_alone(&mut engine, &tok, request(p))).generation.tokens);
    }
    engine.clear_prefix_cache();
    let together = pollster::block_on(run_together(&mut engine, &tok, prompts.iter().map(request).collect()));
    for (t, a) in together.iter().zip(&alone) {
        assert_eq!(&t.generation.tokens, a, "shared-prefix request differs from its solo run");
    }
    let cached: Vec<usize> = together.iter().map(|t| t.stats.cached_tokens).collect();
    println!("cached tokens of the two requests: {cached:?}");
    assert_eq!(cached, vec![0, 176]);
    assert_eq!(engine.pool().stats().used, 0);
}

/// The demo's map: two requests on a 180-token shared prefix hold its 11 full blocks together
/// (two owners at the same positions, full, counted as shared by the stats of the same moment),
/// and each its own partial blocks.
#[test]
fn kv_map_shows_who_holds_each_block() {
    let (mut engine, tok) = common::cpu_engine(ModelOptions::new(1024, 64));
    let ids = tok.encode_prompt(&long_text(), false).unwrap();
    for suffix in [" The first question is why", " In short, the press"] {
        let prompt = ids[..180].iter().copied().chain(tok.encode(suffix, false).unwrap()).collect();
        engine.submit(&tok, Request { prompt, opts: greedy(8) }).unwrap();
    }
    for step in 0.. {
        if engine.stats().running == 2 && engine.kv_map().blocks.iter().any(|b| b.refs > 1) {
            break;
        }
        assert!(step < 20, "the two requests never held blocks together");
        pollster::block_on(engine.step(&tok)).unwrap();
    }
    let map = engine.kv_map();
    let shared: Vec<_> = map.blocks.iter().filter(|b| b.refs > 1).collect();
    assert_eq!(shared.len(), 180 / 16);
    assert_eq!(map.stats.kv.shared, shared.len());
    assert_eq!(map.stats.kv.used, map.blocks.iter().filter(|b| b.refs > 0).count());
    for b in &shared {
        assert_eq!(b.owners.len(), 2);
        assert_eq!(b.owners[0].1, b.owners[1].1, "a shared block sits at the same position in both");
        assert!(b.cached && b.filled == 16);
    }
    let partial = map.blocks.iter().filter(|b| b.refs == 1 && b.filled < 16).count();
    assert!(partial >= 2, "each request's last block is partly filled ({partial})");
}

/// Pipelining on the CPU backend, forced on (its steps compute at submission, so this checks
/// the engine's side: chaining, rollback of a row whose sequence ended, blocks given back):
/// batches of 1, 4 and 8 requests ending on max_tokens, EOS and stop strings report exactly
/// what step-by-step decoding reports; a cancel while a chained step is in flight frees the
/// request's blocks.
#[test]
fn pipelined_equals_step_by_step_cpu() {
    let (mut engine, tok) = common::cpu_engine(ModelOptions::new(512, 64));
    let reports = pollster::block_on(pipelined_equals_sync(&mut engine, &tok, &[1, 8, 4]));
    write_artifact("engine-endings-cpu.json", reports);
    let sampled = pollster::block_on(sampled_pipelined_equals_sync(&mut engine, &tok));
    write_artifact("engine-sampled-cpu.json", sampled);
    engine.set_pipelined(true);
    pollster::block_on(cancel_frees_blocks(&mut engine, &tok));
}

/// Pipelining on WebGPU (lavapipe), where it is the default: the next step's tokens are the
/// argmax the GPU left, copied on the GPU. A batch of 4 (recorded for the browser test).
#[test]
fn pipelined_equals_step_by_step_gpu() {
    let (mut engine, tok) = common::gpu_engine(ModelOptions::new(512, 64));
    let reports = pollster::block_on(pipelined_equals_sync(&mut engine, &tok, &[4]));
    write_artifact("engine-endings-gpu.json", reports);
    let sampled = pollster::block_on(sampled_pipelined_equals_sync(&mut engine, &tok));
    write_artifact("engine-sampled-gpu.json", sampled);
}

/// Logprobs with sampling (and with greedy, and with penalties and logit bias) come back with
/// the token the GPU drew: the row's candidates, read in the same step, and the drawn token's
/// logit before the row's edits give the same log-probabilities as scoring the text afterwards
/// with whole logit rows; pipelined steps still chain.
#[test]
fn sampled_logprobs_come_with_the_drawn_token_gpu() {
    use ferrolm::sample::SamplingParams;
    let (mut engine, tok) = common::gpu_engine(ModelOptions::new(512, 64));
    engine.set_pipelined(true);
    let prompt = tok.encode_prompt(PROMPTS[2], false).unwrap();
    // Penalties over the whole reply, a bias towards a token of the prompt: drawn tokens the
    // edits changed.
    let edited = SamplingParams { temperature: 0.9, repeat_penalty: 0.7, presence_penalty: -0.5, repeat_last_n: 32, logit_bias: vec![(prompt[3], 1.5)], seed: Some(12), ..Default::default() };
    for sampling in [SamplingParams { temperature: 0.8, top_p: 0.9, seed: Some(11), ..Default::default() }, SamplingParams::greedy(), edited] {
        let chained = engine.stats().chained_steps;
        let penalized = sampling.repeat_penalty != 1.0;
        let opts = GenerateOptions { max_tokens: 10, sampling, logprobs: Some(3), ignore_eos: true, ..Default::default() };
        let g = pollster::block_on(engine.generate(&tok, Request { prompt: prompt.clone(), opts }, |_| {})).unwrap();
        assert!(engine.stats().chained_steps > chained, "no step was chained");
        assert_eq!(g.logprobs.len(), g.tokens.len());
        let all: Vec<u32> = prompt.iter().chain(&g.tokens).copied().collect();
        // A penalty below 1 and a negative presence penalty favour repeats: some drawn token
        // was in its window (its logit edited before the draw).
        let repeats = (0..g.tokens.len()).filter(|&i| all[..prompt.len() + i].iter().rev().take(32).any(|&t| t == g.tokens[i])).count();
        assert!(!penalized || repeats > 0, "no drawn token was edited: {:?}", g.tokens);
        let vocab = engine.model().config().vocab_size;
        let logits = pollster::block_on(engine.score_from(&all[..all.len() - 1], prompt.len() - 1)).unwrap();
        for (i, (lp, row)) in g.logprobs.iter().zip(logits.chunks(vocab)).enumerate() {
            let (want, top) = ferrolm::sample::logprobs(row, g.tokens[i], 3);
            assert_eq!(lp.token, g.tokens[i]);
            assert!((lp.logprob - want).abs() < 2e-3, "token {i}: logprob {} vs {want}", lp.logprob);
            assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), top.iter().map(|t| t.0).collect::<Vec<_>>(), "token {i}");
        }
    }
}

/// SmolLM2 with its final norm's weights NaN: every logit is NaN, so there is no token to
/// choose. Greedy and sampled requests fail with an error that says so on every backend (the
/// GPU's argmax and sampling kernels and the CPU's choice all return "no token"), never with a
/// silent token 0.
#[test]
fn logits_with_no_token_to_choose_are_an_error() {
    use ferrolm::backend::cpu::SimdModel;
    use ferrolm::backend::reference::{CpuModel, ReferenceModel};
    use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions};
    use ferrolm::gguf::{GgmlType, Gguf};
    use ferrolm::sample::SamplingParams;
    let mut bytes = std::fs::read(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let norm = gguf.tensor("output_norm.weight").unwrap().clone();
    assert_eq!(norm.ty, GgmlType::F32);
    bytes[norm.offset as usize..(norm.offset + norm.n_bytes) as usize].copy_from_slice(bytemuck::cast_slice(&vec![f32::NAN; norm.n_elements() as usize]));
    let (tok, bytes) = (common::smollm2_tokenizer(), &bytes[..]);
    let prompt = tok.encode_prompt("The capital of France is", false).unwrap();
    let sampled = GenerateOptions { sampling: SamplingParams { temperature: 0.8, seed: Some(1), ..Default::default() }, ..greedy(4) };
    async fn fails<M: ForwardModel>(mut engine: Engine<M>, tok: &Tokenizer, prompt: &[u32], opts: GenerateOptions) {
        let what = format!("{} {:?}", backend_name(&engine), opts.sampling.temperature);
        match engine.generate(tok, Request { prompt: prompt.to_vec(), opts }, |_| {}).await {
            Ok(g) => panic!("{what}: generated {:?}", g.tokens),
            Err(e) => assert!(e.to_string().contains("all NaN or -inf"), "{what}: {e}"),
        }
    }
    for opts in [greedy(4), sampled] {
        let reference = ReferenceModel::new(std::sync::Arc::new(CpuModel::load(&gguf, bytes).unwrap()), &small_pool());
        pollster::block_on(fails(Engine::new(reference), &tok, &prompt, opts.clone()));
        pollster::block_on(fails(Engine::new(SimdModel::load(&gguf, bytes, &small_pool(), 1).unwrap()), &tok, &prompt, opts.clone()));
        let gpu = pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, bytes, &small_pool()).await.unwrap() });
        pollster::block_on(fails(Engine::new(gpu), &tok, &prompt, opts));
    }
}
