//! Browser tests: the same library code in headless Chromium (wasm-bindgen-test). Model files
//! come from the local server `make test-browser` starts (FERROLM_TEST_SERVER).
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use engine_cases::RawSequence;
use ferrolm::backend::cpu::SimdModel;

use ferrolm::backend::webgpu::{batch_to_words, batch_words, GpuContext, GpuModel, GpuOptions};
use ferrolm::engine::{Batch, Engine, ForwardModel, Limits, ModelOptions, PendingStep, Picks, Readback};
use ferrolm::gguf::{Gguf, GgufWriter, Value};
use ferrolm::model::Config;
use ferrolm::sample::{FinishReason, GenerateOptions, Grammar, Sampler, SamplingParams, TokenLogprob, TopLogits};
use ferrolm::tokenizer::Tokenizer;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

#[path = "cpu_cases/mod.rs"]
mod cpu_cases;
#[path = "engine_cases/mod.rs"]
mod engine_cases;
#[path = "forced_cases/mod.rs"]
mod forced_cases;
#[path = "kernel_cases/mod.rs"]
mod kernel_cases;

wasm_bindgen_test_configure!(run_in_browser);

const SERVER: &str = match option_env!("FERROLM_TEST_SERVER") {
    Some(s) => s,
    None => "http://127.0.0.1:8765",
};
const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKENIZER_GOLDEN: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/smollm2-135m/tokenizer-golden.json"));
const FORCED_LOGITS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/smollm2-135m/forced-logits.json"));
const SMOLLM2_LONG: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/smollm2-135m/forced-logits-long.json"));
const GEMMA3_LONG: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/gemma3-270m/forced-logits-long.json"));
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

thread_local! {
    static CACHE: std::cell::RefCell<Option<Rc<Vec<u8>>>> = const { std::cell::RefCell::new(None) };
}

/// The SmolLM2 file, fetched once per test run.
async fn smollm2() -> Rc<Vec<u8>> {
    if let Some(b) = CACHE.with(|c| c.borrow().clone()) {
        return b;
    }
    let url = format!("{SERVER}/models/{SMOLLM2}");
    let window = web_sys::window().expect("tests run in a window");
    let resp: web_sys::Response =
        JsFuture::from(window.fetch_with_str(&url)).await.unwrap_or_else(|e| panic!("fetching {url} failed ({e:?}): is `make test-browser` serving models/?")).dyn_into().unwrap();
    assert!(resp.ok(), "GET {url}: HTTP {} (run `make models`)", resp.status());
    let buf = JsFuture::from(resp.array_buffer().unwrap()).await.unwrap();
    let bytes = Rc::new(js_sys::Uint8Array::new(&buf).to_vec());
    CACHE.with(|c| *c.borrow_mut() = Some(bytes.clone()));
    bytes
}

#[wasm_bindgen_test]
async fn tokenizer_golden_in_browser() {
    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let rows: serde_json::Value = serde_json::from_str(TOKENIZER_GOLDEN).unwrap();
    for row in rows.as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let want: Vec<u32> = row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "encoding {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "decoding {want:?}");
    }
}

async fn fetch_json(path: &str) -> serde_json::Value {
    let url = format!("{SERVER}/{path}");
    let window = web_sys::window().unwrap();
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str(&url)).await.unwrap().dyn_into().unwrap();
    assert!(resp.ok(), "GET {url}: HTTP {} (the native tests write it: run `make test-native` first)", resp.status());
    let text = JsFuture::from(resp.text().unwrap()).await.unwrap().as_string().unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn gpu_model(bytes: &[u8]) -> GpuModel {
    let gguf = Gguf::read(bytes).unwrap();
    // No optional features: the engine must work without them (SwiftShader has no shader-f16).
    let opts = GpuOptions::portable();
    let ctx = GpuContext::new(opts).await.unwrap();
    web_sys::console::log_1(&format!("adapter: {:?}", ctx.info).into());
    GpuModel::load(ctx, &gguf, bytes, &ModelOptions::new(512, 64)).await.unwrap()
}

#[wasm_bindgen_test]
async fn gpu_forced_logits_match_reference_in_browser() {
    let bytes = smollm2().await;
    let mut engine = Engine::new(gpu_model(&bytes).await);
    let vocab = engine.model().config.vocab_size;
    let reference: serde_json::Value = serde_json::from_str(FORCED_LOGITS).unwrap();
    let mut worst = 0f64;
    // The two shortest cases: natively (lavapipe) all four run through the same shaders, and
    // SwiftShader takes about a second a position.
    for case in reference["cases"].as_array().unwrap().iter().take(2) {
        let logits = engine.score_from(&forced_cases::tokens(case).2, forced_cases::first_position(case)).await.unwrap();
        worst = worst.max(forced_cases::check_exact("browser GPU", case, vocab, &logits).0);
    }
    web_sys::console::log_1(&format!("browser GPU worst top-5 logit diff {worst:.5}").into());
}

#[wasm_bindgen_test]
async fn gpu_greedy_in_browser_equals_native() {
    let native = fetch_json("target/test-artifacts/greedy-native.json").await;
    let bytes = smollm2().await;
    let model = gpu_model(&bytes).await;
    // The first prompt: SwiftShader decodes a few tokens a second, and natively both run.
    for rec in native.as_array().unwrap().iter().take(1) {
        let prompt: Vec<u32> = rec["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = rec["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = engine_cases::raw_greedy(&model, &prompt, want.len()).await;
        assert_eq!(got, want, "browser greedy differs from native for prompt {prompt:?}");
        // Same seed, same options: the same sampled tokens as natively.
        let want: Vec<u32> = rec["sampled"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let params = SamplingParams { temperature: 0.8, top_p: 0.95, seed: Some(11), ..Default::default() };
        let mut sampler = Sampler::new(params, 49152).unwrap();
        let mut s = RawSequence::new(&model);
        let mut history = prompt.clone();
        let mut feed = prompt.clone();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let Picks::Logits(logits) = s.extend(&feed, Readback::Logits).await else { panic!("logits asked for") };
            let next = sampler.sample(&logits, &history);
            history.push(next);
            got.push(next);
            feed = vec![next];
        }
        assert_eq!(got, want, "browser sampling differs from native for prompt {prompt:?}");
        // Top-k sampling from the GPU top-k kernel's candidates.
        let want: Vec<u32> = rec["sampled_top"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let params = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: Some(12), ..Default::default() };
        let mut sampler = Sampler::new(params, 49152).unwrap();
        let mut s = RawSequence::new(&model);
        let mut feed = prompt.clone();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let Picks::Top(top) = s.extend(&feed, Readback::Top(40)).await else { panic!("top-k asked for") };
            let next = sampler.sample_top(&top[0]);
            got.push(next);
            feed = vec![next];
        }
        assert_eq!(got, want, "browser top-k sampling differs from native for prompt {prompt:?}");
    }
}

/// Kernels on SwiftShader: repacked real tensors dequantized on the GPU equal the CPU bit for bit,
/// and the decode/prefill matmuls match the CPU matmul on them.
#[wasm_bindgen_test]
async fn kernels_match_cpu_in_browser() {
    use ferrolm::backend::reference::ops;
    use ferrolm::backend::webgpu::kernels::{Count, Kernels, Op, OutCols};
    use ferrolm::backend::webgpu::weights::GpuTensor;
    use ferrolm::gguf::dequantize;
    use wgpu::util::DeviceExt;

    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    // Portable (no optional features, the adapter's own shapes), then the GPU shapes with
    // subgroups where the adapter has them (`enable subgroups;` in the browser).
    let portable = GpuOptions::portable();
    for (opts, cpu_like) in [(portable, None), (GpuOptions::default(), Some(false))] {
        let ctx = GpuContext::new(opts).await.unwrap();
        let dev = &ctx.device;
        let limits = Limits { max_batch_tokens: 8, context: 16, max_seqs: 1, block_size: 16, n_blocks: 1, kv_bytes_per_token: 0, max_logit_rows: 8, max_draft: 0 };
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let buf = |data: &[f32]| dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(data), usage: storage });
        let batch = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: batch_words(&limits) as u64 * 4, usage: storage, mapped_at_creation: false });
        let kernels = Kernels::new(dev, &batch, cpu_like.unwrap_or(ctx.info.cpu_like), ctx.info.subgroup_rows, ctx.kv);
        web_sys::console::log_1(&format!("kernels: cpu_like={cpu_like:?} subgroups={} subgroup_rows={}", ctx.info.subgroups, ctx.info.subgroup_rows).into());
        let run = |ops: &[Op], n: usize| {
            let ids: Vec<u32> = (0..n as u32).collect();
            let table = [0u32];
            let b = Batch { tokens: &ids, positions: &ids, seq_ids: &vec![0; n], logit_rows: &ids, block_tables: &[&table], masks: None, sampling: None };
            ctx.queue.write_buffer(&batch, 0, bytemuck::cast_slice(&batch_to_words(&b, &limits, Readback::Argmax)));
            let mut enc = dev.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for op in ops {
                    op.encode(&mut pass, n as u32, n as u32);
                }
            }
            ctx.queue.submit([enc.finish()]);
        };
        // Real Q4_1 / Q8_0 tensors, and synthetic blocks of the 5-bit and K-quant types.
        let mut cases: Vec<(String, ferrolm::gguf::GgmlType, Vec<u8>, usize, usize)> = ["blk.0.attn_q.weight", "blk.3.ffn_down.weight"]
            .iter()
            .map(|&name| {
                let info = gguf.tensor(name).unwrap();
                (name.to_string(), info.ty, gguf.tensor_data(&bytes[..], info).unwrap(), info.dims[0] as usize, info.dims[1] as usize)
            })
            .collect();
        for ty in [ferrolm::gguf::GgmlType::Q5_0, ferrolm::gguf::GgmlType::Q4_K, ferrolm::gguf::GgmlType::Q6_K] {
            let (k, m) = (512usize, 24usize);
            let n_bytes = ty.row_bytes(k as u64).unwrap() as usize * m;
            let mut data: Vec<u8> = (0..n_bytes).map(|i| ((i * 2654435761) >> 13) as u8).collect();
            // Small finite f16 super-scales: the high byte of each f16 scale field.
            let highs: &[usize] = match ty {
                ferrolm::gguf::GgmlType::Q5_0 => &[1],
                ferrolm::gguf::GgmlType::Q4_K => &[1, 3],
                _ => &[209],
            };
            for block in data.chunks_mut(ty.type_size() as usize) {
                for &i in highs {
                    block[i] = (block[i] & 0x83) | 0x14;
                }
            }
            cases.push((format!("random {ty}"), ty, data, k, m));
        }
        for (name, ty, data, k, m) in cases {
            let name = name.as_str();
            let mut cpu = vec![0f32; k * m];
            dequantize(ty, &data, &mut cpu).unwrap();
            let w = GpuTensor::upload(dev, &ctx.queue, 128 << 20, name, ty, &data, m, k, true).unwrap();
            let out = buf(&vec![0f32; k * m]);
            run(&kernels.embed(&w, &out, 1.0, true), 1);
            let gpu: Vec<f32> = bytemuck::cast_slice(&ctx.read_buffer(&out, 0, out.size()).await.unwrap()).to_vec();
            assert!(gpu.iter().zip(&cpu).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: GPU dequantization differs");
            for n in [1usize, 5] {
                let x: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let (xb, yb) = (buf(&x), buf(&vec![0f32; n * m]));
                run(&kernels.matmul(&w, &xb, &yb, OutCols { stride: m as u32, col: 0 }, false, Count::Tokens, false), n);
                let got: Vec<f32> = bytemuck::cast_slice(&ctx.read_buffer(&yb, 0, yb.size()).await.unwrap()).to_vec();
                let mut want = vec![0f32; n * m];
                ops::matmul(&mut want, &x, &cpu, n, k, m);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
                assert!(worst < 1e-4, "{name} n={n}: worst relative difference {worst}");
                // GPU shapes: this matrix as a greedy LM head (partial maxima and sums, then the argmax over them).
                if let Some(group) = ferrolm::backend::webgpu::kernels::logit_partial_group(cpu_like.unwrap_or(true), k as u32) {
                    let partials = ferrolm::backend::webgpu::kernels::LogitPartials { group, offset: (n * m) as u32 };
                    let (lb, rb, unused) = (buf(&vec![0f32; n * (m + 2 * m.div_ceil(group as usize))]), buf(&vec![0f32; n]), buf(&vec![0f32; n * m.div_ceil(32)]));
                    let mut ops = kernels.lm_head_partials(&w, &xb, None, &lb, m as u32, partials, None).unwrap();
                    ops.push(kernels.argmax(&lb, &rb, &unused, m as u32, false, Some(partials)));
                    run(&ops, n);
                    let got: Vec<u32> = bytemuck::cast_slice(&ctx.read_buffer(&rb, 0, rb.size()).await.unwrap()).to_vec();
                    let logits: Vec<f32> = bytemuck::cast_slice(&ctx.read_buffer(&lb, 0, (n * m * 4) as u64).await.unwrap()).to_vec();
                    let want: Vec<u32> = logits.chunks(m).map(ferrolm::sample::argmax).collect();
                    assert_eq!(got, want, "{name} n={n}: argmax over the LM head's partial maxima");
                    // The same head under masks that forbid every third token: the argmax of the allowed ones.
                    let words = m.div_ceil(32);
                    let masks: Vec<u32> = (0..n * words).map(|i| (0..32).filter(|b| !((i % words) * 32 + b).is_multiple_of(3)).fold(0, |w, b| w | 1 << b)).collect();
                    let mut ops = kernels.lm_head_partials(&w, &xb, None, &lb, m as u32, partials, Some(&buf(bytemuck::cast_slice(&masks)))).unwrap();
                    ops.push(kernels.argmax(&lb, &rb, &unused, m as u32, false, Some(partials)));
                    run(&ops, n);
                    let got: Vec<u32> = bytemuck::cast_slice(&ctx.read_buffer(&rb, 0, rb.size()).await.unwrap()).to_vec();
                    let masked: Vec<f32> = logits.iter().enumerate().map(|(j, &l)| if (j % m).is_multiple_of(3) { -3.4e38 } else { l }).collect();
                    let want: Vec<u32> = masked.chunks(m).map(ferrolm::sample::argmax).collect();
                    assert_eq!(got, want, "{name} n={n}: argmax over the masked LM head's partial maxima");
                }
            }
        }
    }
}

/// Attention on SwiftShader against the exact f64 value (tests/kernel_cases): the GPU shapes
/// (split decode over three chunks, tiled prefill with mixed-sequence tiles) and the CPU-adapter
/// passes, for one grouped-query shape.
#[wasm_bindgen_test]
async fn attention_matches_cpu_in_browser() {
    use ferrolm::backend::webgpu::kernels::Kernels;
    use kernel_cases::{block_tables, decode_batch, kv_words, prefill_batch, random, random_kv, reference, shapes, worst_difference, LIMITS};
    use wgpu::util::DeviceExt;

    let tables = block_tables();
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| &t[..]).collect();
    let ctx = GpuContext::new(GpuOptions::default()).await.unwrap();
    let dev = &ctx.device;
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buf = |data: &[f32]| dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(data), usage: storage });
    let batch = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: batch_words(&LIMITS) as u64 * 4, usage: storage, mapped_at_creation: false });
    let dims = shapes()[0];
    let slots = (LIMITS.n_blocks * LIMITS.block_size * dims.n_kv_heads * dims.head_dim) as usize;
    // The default f16 cache (the kernels compile for the context's type).
    let (k, v) = (random_kv(ctx.kv, slots, 60), random_kv(ctx.kv, slots, 61));
    let (kb, vb) = (buf(bytemuck::cast_slice(&kv_words(ctx.kv, &k))), buf(bytemuck::cast_slice(&kv_words(ctx.kv, &v))));
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    for cpu_like in [false, true] {
        let kernels = Kernels::new(dev, &batch, cpu_like, ctx.info.subgroup_rows, ctx.kv);
        let plan = kernels.attention_plan(LIMITS.max_batch_tokens, dims, LIMITS.context, ctx.info.max_binding_size);
        assert_eq!(plan.passes, cpu_like);
        let scratch = buf(&vec![0f32; plan.scratch_floats as usize]);
        for (name, items, window) in [("decode", decode_batch(), 0u32), ("prefill", prefill_batch(), 100)] {
            let n = items.len();
            let qkv = random(n * dims.qkv_stride as usize, 62 + n as u64);
            let (qb, ob) = (buf(&qkv), buf(&vec![0f32; n * (dims.n_heads * dims.head_dim) as usize]));
            let (tokens, positions, seq_ids) = (vec![0u32; n], items.iter().map(|i| i.1).collect::<Vec<_>>(), items.iter().map(|i| i.0).collect::<Vec<_>>());
            let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &[], block_tables: &table_refs, masks: None, sampling: None };
            ctx.queue.write_buffer(&batch, 0, bytemuck::cast_slice(&batch_to_words(&b, &LIMITS, Readback::Argmax)));
            let mut enc = dev.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for op in kernels.attention(&qb, &kb, &vb, &ob, dims, scale, window, &plan, &scratch) {
                    op.encode_span(&mut pass, n as u32, 0, b.span());
                }
            }
            ctx.queue.submit([enc.finish()]);
            let got: Vec<f32> = bytemuck::cast_slice(&ctx.read_buffer(&ob, 0, ob.size()).await.unwrap()).to_vec();
            let worst = worst_difference(&got, &reference(dims, &items, &qkv, &k, &v, &tables, scale, window));
            assert!(worst <= 2e-5, "{name} window={window} cpu_like={cpu_like}: worst relative difference {worst}");
        }
    }
}

#[wasm_bindgen_test]
fn malformed_gguf_is_an_error_not_a_panic_in_browser() {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()));
    w.tensor_f32("x", &[4], &[1.0, 2.0, 3.0, 4.0]);
    let bytes = w.to_bytes();
    let g = Gguf::parse(&bytes, bytes.len() as u64).unwrap();
    // Every cut before the end of the tensor data is an error (the padding after it is optional).
    let end = (g.tensors[0].offset + g.tensors[0].n_bytes) as usize;
    for cut in 0..end {
        assert!(Gguf::parse(&bytes[..cut], cut as u64).is_err(), "truncated at {cut} parsed");
    }
    assert_eq!(g.tensors[0].dims, vec![4]);
    let err = ferrolm::model::Config::from_gguf(&g).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

async fn gpu_model_with(bytes: &[u8], opts: ModelOptions) -> (GpuModel, Tokenizer) {
    let gguf = Gguf::read(bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let ctx = GpuContext::new(GpuOptions::portable()).await.unwrap();
    (GpuModel::load(ctx, &gguf, bytes, &opts).await.unwrap(), tok)
}

fn small_pool() -> ModelOptions {
    ModelOptions { context: 64, max_batch_tokens: 64, max_seqs: 4, kv_budget_bytes: Some(0) }
}

/// 512 positions, 32 MB of KV (~700 SmolLM2 tokens).
fn browser_pool() -> ModelOptions {
    ModelOptions { kv_budget_bytes: Some(32 << 20), ..ModelOptions::new(512, 64) }
}

/// On a pool too small for them (waiting and preemption), 4 requests get exactly the tokens
/// the native run of the backend recorded for each alone (`engine-small-pool-{backend}.json`),
/// and a sequence at the context end stops with `length`.
async fn small_pool_scenarios<M: ForwardModel>(backend: &str, model: M, tok: &Tokenizer) {
    let native = fetch_json(&format!("target/test-artifacts/engine-small-pool-{backend}.json")).await;
    let alone: Vec<Vec<u32>> = serde_json::from_value(native["alone"].clone()).unwrap();
    let mut engine = Engine::new(model);
    engine_cases::together_equals(&mut engine, tok, engine_cases::SMALL_POOL_TOKENS, &alone).await;
    assert!(engine.stats().preemptions > 0);
    let prompt: Vec<u32> = tok.encode_prompt(&engine_cases::long_text(), false).unwrap()[..60].to_vec();
    let out = engine_cases::run_alone(&mut engine, tok, ferrolm::engine::Request { prompt, opts: engine_cases::greedy(100) }).await;
    assert_eq!((out.generation.finish_reason, out.generation.tokens.len()), (ferrolm::sample::FinishReason::Length, 5));
}

/// The engine scenarios on one backend in Chromium, against the native runs' records for
/// that backend (`engine-*-{backend}.json`): cancelling frees blocks; a 96-token shared
/// prefix comes from the prefix cache with the cold run's tokens and top-5 logprobs; n-gram
/// and draft-model speculation keep greedy output (the first 12 tokens of the last
/// `spec_prompts` prompts; none: no draft model is loaded); pipelined decoding reports what
/// step-by-step decoding reported natively, greedy and seeded sampling.
async fn engine_scenarios<M: ForwardModel>(backend: &str, spec_prompts: usize, mut load: impl FnMut(ModelOptions) -> M, tok: &Tokenizer) {
    let mut engine = Engine::new(load(browser_pool()));
    engine_cases::cancel_frees_blocks(&mut engine, tok).await;
    let native = fetch_json(&format!("target/test-artifacts/engine-prefix-cold-{backend}.json")).await;
    let cold: Vec<TokenLogprob> = serde_json::from_value(native["logprobs"].clone()).unwrap();
    let (hot, prompt) = engine_cases::prefix_hit(&mut engine, tok).await;
    assert_eq!(serde_json::to_value(&prompt).unwrap(), native["prompt"]);
    engine_cases::assert_logprobs_close(&hot.generation.logprobs, &cold, 2e-3);

    if spec_prompts > 0 {
        let native = fetch_json(&format!("target/test-artifacts/speculative-plain-{backend}.json")).await;
        let prompts: Vec<Vec<u32>> = serde_json::from_value(native["prompts"].clone()).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value::<Vec<Vec<u32>>>(native["tokens"].clone()).unwrap().into_iter().map(|t| t[..12].to_vec()).collect();
        let skip = prompts.len().saturating_sub(spec_prompts);
        let (prompts, want) = (&prompts[skip..], &want[skip..]);
        engine.set_draft_model(load(browser_pool())).unwrap();
        let totals = engine_cases::speculative_greedy_identity(&mut engine, tok, prompts, want).await;
        web_sys::console::log_1(&format!("{backend}: browser speculation (drafted, accepted): ngram {:?}, draft {:?}", totals[0], totals[1]).into());
    }

    // Pipelined (the GPU's default): the native step-by-step reports of four requests ending
    // on max_tokens, EOS and stop strings.
    let native = fetch_json(&format!("target/test-artifacts/engine-endings-{backend}.json")).await;
    engine.set_pipelined(true);
    let chained = engine.stats().chained_steps;
    let got = engine_cases::reports(&mut engine, tok, engine_cases::ending_requests(tok).into_iter().take(4).collect()).await;
    assert_eq!(engine_cases::reports_json(&got), native, "{backend}: pipelined in the browser differs from step by step natively");
    assert!(engine.stats().chained_steps > chained, "{backend}: no step was chained");

    // Seeded sampling drawn by the backend (the GPU's sample kernel), pipelined: the native
    // step-by-step reports.
    let native = fetch_json(&format!("target/test-artifacts/engine-sampled-{backend}.json")).await;
    let got = engine_cases::reports(&mut engine, tok, engine_cases::sampled_requests(tok)).await;
    assert_eq!(engine_cases::reports_json(&got), native, "{backend}: seeded sampling in the browser differs from native");
}

#[wasm_bindgen_test]
async fn engine_scenarios_on_gpu_in_browser() {
    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    // Loading is async on the GPU: the model is loaded up front. A small KV pool: SwiftShader's
    // memory is the tab's.
    let mut model = Some(gpu_model_with(&bytes, browser_pool()).await.0);
    // No speculation and no small pool here (about a minute and 35 s on SwiftShader): they are
    // engine code, checked in Chromium on the CPU backend and on the GPU backend natively
    // (lavapipe runs the same shaders).
    engine_scenarios("gpu", 0, |_| model.take().expect("one model"), &tok).await;
}

/// The CPU backend's wasm simd128 and relaxed-SIMD kernels (this build has both; the npm
/// package's plain binary only the first) equal the scalar ones bit for bit, and the scalar
/// ones the exact dequantization within the 8-bit bound, for every type.
#[wasm_bindgen_test]
fn cpu_kernels_match_scalar_in_browser() {
    for tokens in [1, 2, 3, 4, 6, 9] {
        let report = cpu_cases::check_cpu_kernels(tokens);
        for target in ["simd128", "relaxed-simd", "relaxed-simd-i16"] {
            assert!(report.iter().any(|l| l.contains(&format!("Q4_1: {target} == scalar"))), "{target} was not compared: {report:?}");
        }
    }
}

/// A backend whose reads let the page's event loop run once a second. The CPU backend computes
/// synchronously and its steps resolve at once, so a whole scoring or scenario would otherwise
/// keep the page from answering the test runner's polls; past chromedriver's 30 s the run
/// fails ("Timed out receiving message from renderer").
struct Yielding<M>(M);

struct YieldingStep<P>(P);

thread_local! {
    /// When the page's event loop last ran between steps (ms).
    static LAST_YIELD: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

impl<P: PendingStep> PendingStep for YieldingStep<P> {
    async fn read(self) -> ferrolm::Result<Picks> {
        if js_sys::Date::now() - LAST_YIELD.get() > 1000.0 {
            let tick = js_sys::Promise::new(&mut |resolve, _| {
                web_sys::window().expect("tests run in a window").set_timeout_with_callback(&resolve).expect("setTimeout");
            });
            JsFuture::from(tick).await.expect("a timer");
            LAST_YIELD.set(js_sys::Date::now());
        }
        self.0.read().await
    }
}

impl<M: ForwardModel> ForwardModel for Yielding<M> {
    type Pending = YieldingStep<M::Pending>;

    fn config(&self) -> &Config {
        self.0.config()
    }

    fn limits(&self) -> &Limits {
        self.0.limits()
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    fn submit(&self, batch: &Batch, read: Readback) -> ferrolm::Result<Self::Pending> {
        self.0.submit(batch, read).map(YieldingStep)
    }

    fn overlaps_steps(&self) -> bool {
        self.0.overlaps_steps()
    }
}

/// The engine scenarios on the CPU backend in wasm (one thread): the same tokens as the native
/// CPU backend (AVX2 there, simd128 here: the kernels agree bit for bit).
#[wasm_bindgen_test]
async fn engine_scenarios_on_cpu_in_browser() {
    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let load = |opts| Yielding(SimdModel::load(&gguf, &bytes[..], &opts, 1).unwrap());
    small_pool_scenarios("cpu", load(small_pool()), &tok).await;
    engine_scenarios("cpu", usize::MAX, load, &tok).await;
}

/// A model file from the test server.
async fn fetch_model(name: &str) -> Vec<u8> {
    let url = format!("{SERVER}/models/{name}");
    let resp: web_sys::Response = JsFuture::from(web_sys::window().unwrap().fetch_with_str(&url)).await.unwrap().dyn_into().unwrap();
    assert!(resp.ok(), "GET {url}: HTTP {} (run `make models`)", resp.status());
    js_sys::Uint8Array::new(&JsFuture::from(resp.array_buffer().unwrap()).await.unwrap()).to_vec()
}

/// The long case in `json` and the logits `engine` gives from its prompt's last position on.
async fn long_scored<M: ForwardModel>(engine: &mut Engine<M>, json: &str) -> (serde_json::Value, Vec<f32>) {
    let case = serde_json::from_str::<serde_json::Value>(json).unwrap()["cases"][0].clone();
    let logits = engine.score_from(&forced_cases::tokens(&case).2, forced_cases::first_position(&case)).await.unwrap();
    (case, logits)
}

fn long_opts() -> ModelOptions {
    ModelOptions::new(1280, 128)
}

/// Long context on the CPU backend (simd128, one thread), as natively
/// (tests/native/long_context.rs): SmolLM2's ~1,050-token case as close to the exact reference as llama.cpp, Gemma 3's across
/// its 512-token sliding window in agreement with llama.cpp.
#[wasm_bindgen_test]
async fn long_context_on_cpu_in_browser() {
    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let (case, logits) = long_scored(&mut Engine::new(Yielding(SimdModel::load(&gguf, &bytes[..], &long_opts(), 1).unwrap())), SMOLLM2_LONG).await;
    let r = forced_cases::check_close("browser CPU backend", &case, 49152, &logits, &forced_cases::EIGHT_BIT_VS_EXACT);
    let bytes = fetch_model(GEMMA3).await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let (case, logits) = long_scored(&mut Engine::new(Yielding(SimdModel::load(&gguf, &bytes[..], &long_opts(), 1).unwrap())), GEMMA3_LONG).await;
    let g = forced_cases::check_close("browser CPU backend Gemma 3", &case, 262144, &logits, &forced_cases::VS_LLAMACPP);
    web_sys::console::log_1(&format!("long context, browser CPU backend: SmolLM2 {r:?}, Gemma 3 {g:?} (agree, positions, NLL ratio)").into());
}

/// Long context on WebGPU (SwiftShader, no optional features, the default f16 KV cache):
/// SmolLM2's case within the f16 cache's tolerance of the exact f32 reference, Gemma 3's in
/// agreement with llama.cpp. Minutes on SwiftShader: `make
/// test-long` runs it, not `make test`.
#[wasm_bindgen_test]
#[ignore = "minutes on SwiftShader: make test-long"]
async fn long_context_on_webgpu_in_browser() {
    let bytes = smollm2().await;
    let (case, logits) = long_scored(&mut Engine::new(gpu_model_with(&bytes, long_opts()).await.0), SMOLLM2_LONG).await;
    let r = forced_cases::check_exact_within("browser WebGPU", &case, 49152, &logits, forced_cases::F16_KV_TOP5);
    let bytes = fetch_model(GEMMA3).await;
    let (case, logits) = long_scored(&mut Engine::new(gpu_model_with(&bytes, long_opts()).await.0), GEMMA3_LONG).await;
    let g = forced_cases::check_close("browser WebGPU Gemma 3", &case, 262144, &logits, &forced_cases::VS_LLAMACPP);
    web_sys::console::log_1(&format!("long context, browser WebGPU: SmolLM2 (worst, NLL ratio) {r:?}, Gemma 3 {g:?}").into());
}

/// Gemma 3 270M (K-quants, 262k vocabulary, split embedding) on SwiftShader: the top-5 logits of
/// the reference positions equal the native GPU engine's within 0.02, argmax included. Two of
/// the three cases (natively all three run, through the same shaders): the 262k-row LM head
/// makes each position about a second on SwiftShader.
#[wasm_bindgen_test]
async fn gemma3_in_browser_matches_native() {
    let native = fetch_json("target/test-artifacts/gemma3-gpu-native.json").await;
    let bytes = fetch_model(GEMMA3).await;
    let mut engine = Engine::new(gpu_model_with(&bytes, ModelOptions::new(256, 64)).await.0);
    drop(bytes);
    let vocab = engine.model().config.vocab_size;
    let mut worst = 0f32;
    for case in native.as_array().unwrap().iter().take(2) {
        let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let positions: Vec<usize> = serde_json::from_value(case["positions"].clone()).unwrap();
        let want: Vec<Vec<(u32, f32)>> = serde_json::from_value(case["top5"].clone()).unwrap();
        let from = positions[0];
        let logits = engine.score_from(&tokens, from).await.unwrap();
        for (&pos, want) in positions.iter().zip(&want) {
            let row = &logits[(pos - from) * vocab..(pos - from + 1) * vocab];
            let got = TopLogits::from_logits(row, 5).top;
            assert_eq!(got[0].0, want[0].0, "argmax differs from native at position {pos}");
            for &(id, l) in want {
                worst = worst.max((row[id as usize] - l).abs());
            }
        }
    }
    web_sys::console::log_1(&format!("gemma3 browser vs native: worst top-5 logit difference {worst:.5}").into());
    assert!(worst <= 0.02, "browser logits differ from native by {worst}");
}

/// The native structured-output records (tests/native/structured.rs: 22 JSON Schemas greedy and
/// sampled, validated there with boon; regex, Lark and any-JSON-object cases, matched there with
/// the regex crate) run through `engine` together: the same tokens, ending by the grammar, and
/// JSON that parses where JSON was asked for.
async fn structured_equals_native<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, record: &str) -> usize {
    let native = fetch_json(&format!("target/test-artifacts/{record}")).await;
    let mut requests = Vec::new();
    let mut want: Vec<Vec<u32>> = Vec::new();
    let mut is_json = Vec::new();
    for case in native.as_array().unwrap() {
        let seed = case["seed"].as_u64();
        let sampling = match seed {
            Some(seed) => SamplingParams { temperature: 0.8, top_p: 0.95, seed: Some(seed), ..Default::default() },
            None => SamplingParams::greedy(),
        };
        let g = &case["grammar"];
        let grammar = match (g.get("json_schema"), g["regex"].as_str(), g["lark"].as_str()) {
            (Some(schema), _, _) => Grammar::JsonSchema(schema.clone()),
            (_, Some(rx), _) => Grammar::Regex(rx.into()),
            (_, _, Some(lark)) => Grammar::Lark(lark.into()),
            _ => Grammar::JsonObject,
        };
        let json = matches!(grammar, Grammar::JsonSchema(_) | Grammar::JsonObject);
        let opts = GenerateOptions { max_tokens: 160, sampling, grammar: Some(grammar), ..Default::default() };
        requests.push(ferrolm::engine::Request { prompt: serde_json::from_value(case["prompt"].clone()).unwrap(), opts });
        want.push(serde_json::from_value(case["tokens"].clone()).unwrap());
        is_json.push(json);
    }
    let out = engine_cases::run_together(engine, tok, requests).await;
    assert_eq!(out.len(), want.len());
    for ((o, w), json) in out.iter().zip(&want).zip(is_json) {
        assert_eq!(&o.generation.tokens, w, "{record}: tokens differ from the native run's ({})", o.generation.text);
        assert_eq!(o.generation.finish_reason, FinishReason::Stop);
        if json {
            serde_json::from_str::<serde_json::Value>(&o.generation.text).unwrap_or_else(|e| panic!("{record}: not JSON ({e}): {}", o.generation.text));
        }
    }
    out.len()
}

/// Structured output in Chromium: the CPU backend (simd128) gives the native CPU backend's
/// tokens for every schema, regex and Lark case; on SwiftShader a greedy and a sampled case,
/// batched, go through the GPU's masked sample kernel (the greedy row at temperature 0) and
/// give the native GPU engine's tokens.
#[wasm_bindgen_test]
async fn structured_output_in_browser_equals_native() {
    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let mut cpu = Engine::new(SimdModel::load(&gguf, &bytes[..], &ModelOptions::new(1024, 256), 1).unwrap());
    let n = structured_equals_native(&mut cpu, &tok, "structured-cpu.json").await;
    let g = structured_equals_native(&mut cpu, &tok, "structured-grammars-cpu.json").await;
    drop(cpu);
    let mut gpu = Engine::new(gpu_model_with(&bytes, ModelOptions::new(256, 64)).await.0);
    let before = gpu.model().counters();
    let c = structured_equals_native(&mut gpu, &tok, "structured-gpu.json").await;
    let read = gpu.model().counters().since(&before);
    assert!(read.bytes_read <= 4 * 2 * read.steps, "the GPU cases read more than their tokens: {read:?}");
    web_sys::console::log_1(&format!("structured output: {n} schema and {g} regex/Lark/JSON-object CPU cases and {c} GPU cases equal native").into());
}
