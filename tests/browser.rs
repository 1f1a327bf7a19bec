//! Browser tests: the same library code in headless Chromium (wasm-bindgen-test). Model files
//! come from the local server `make test-browser` starts (FERROLM_TEST_SERVER).
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use ferrolm::cpu::ops::nll;
use ferrolm::cpu::{CpuModel, Logits};
use ferrolm::generate::Session;
use ferrolm::gpu::{GpuContext, GpuModel, GpuOptions, GpuSession, ModelOptions};
use ferrolm::gguf::{Gguf, GgufWriter, Value};
use ferrolm::tokenizer::Tokenizer;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

#[path = "engine_cases/mod.rs"]
mod engine_cases;
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
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str(&url))
        .await
        .unwrap_or_else(|e| panic!("fetching {url} failed ({e:?}): is `make test-browser` serving models/?"))
        .dyn_into()
        .unwrap();
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

#[wasm_bindgen_test]
async fn cpu_reference_matches_forced_logits_in_browser() {
    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let model = CpuModel::load(&gguf, &bytes[..]).unwrap();
    let reference: serde_json::Value = serde_json::from_str(FORCED_LOGITS).unwrap();
    let case = &reference["cases"][0];
    let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let tokens: Vec<u32> = ids("prompt_tokens").into_iter().chain(ids("continuation_tokens")).collect();
    let mut cache = model.new_cache(tokens.len());
    let logits = model.forward(&tokens, &mut cache, Logits::All).unwrap();
    let vocab = model.config.vocab_size;
    for step in case["steps"].as_array().unwrap() {
        let pos = step["pos"].as_u64().unwrap() as usize;
        for pair in step["ref_top5"].as_array().unwrap() {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            let got = logits[pos * vocab + id] as f64;
            assert!((got - want).abs() <= 0.02, "pos {pos} token {id}: {got} vs {want}");
        }
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
    let model = gpu_model(&bytes).await;
    let vocab = model.config.vocab_size;
    let reference: serde_json::Value = serde_json::from_str(FORCED_LOGITS).unwrap();
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
        let (prompt, cont) = (ids("prompt_tokens"), ids("continuation_tokens"));
        let tokens: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let logits = model.score(&tokens).await.unwrap();
        for step in case["steps"].as_array().unwrap() {
            let pos = step["pos"].as_u64().unwrap() as usize;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            for pair in step["ref_top5"].as_array().unwrap() {
                let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
                let diff = (row[id] as f64 - want).abs();
                worst = worst.max(diff);
                assert!(diff <= 0.02, "pos {pos} token {id}: {} vs {want}", row[id]);
            }
        }
        let mean_nll: f64 = (0..cont.len()).map(|i| nll(&logits[(prompt.len() - 1 + i) * vocab..][..vocab], cont[i] as usize)).sum::<f64>() / cont.len() as f64;
        let ratio = mean_nll / case["mean_nll_ref"].as_f64().unwrap();
        assert!((ratio - 1.0).abs() <= 0.01, "mean NLL ratio {ratio}");
    }
    web_sys::console::log_1(&format!("browser GPU worst top-5 logit diff {worst:.5}").into());
}

#[wasm_bindgen_test]
async fn gpu_greedy_in_browser_equals_native() {
    let native = fetch_json("target/test-artifacts/greedy-native.json").await;
    let bytes = smollm2().await;
    let model = gpu_model(&bytes).await;
    for rec in native.as_array().unwrap() {
        let prompt: Vec<u32> = rec["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = rec["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut s = GpuSession::new(&model);
        let mut next = s.extend_greedy(&prompt).await.unwrap();
        let mut got = vec![next];
        while got.len() < want.len() {
            next = s.extend_greedy(&[next]).await.unwrap();
            got.push(next);
        }
        assert_eq!(got, want, "browser greedy differs from native for prompt {prompt:?}");
        // Same seed, same options: the same sampled tokens as natively.
        let want: Vec<u32> = rec["sampled"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let params = ferrolm::sampler::SamplingParams { temperature: 0.8, top_p: 0.95, seed: Some(11), ..Default::default() };
        let mut sampler = ferrolm::sampler::Sampler::new(params, 49152).unwrap();
        let mut s = GpuSession::new(&model);
        let mut history = prompt.clone();
        let mut logits = s.extend_logits(&prompt).await.unwrap();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let next = sampler.sample(&logits, &history);
            history.push(next);
            got.push(next);
            logits = s.extend_logits(&[next]).await.unwrap();
        }
        assert_eq!(got, want, "browser sampling differs from native for prompt {prompt:?}");
        // Top-k sampling from the GPU top-k kernel's candidates.
        let want: Vec<u32> = rec["sampled_top"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let params = ferrolm::sampler::SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: Some(12), ..Default::default() };
        let mut sampler = ferrolm::sampler::Sampler::new(params, 49152).unwrap();
        let mut s = GpuSession::new(&model);
        let mut feed = prompt.clone();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let next = sampler.sample_top(&s.extend_top(&feed, 40).await.unwrap());
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
    use ferrolm::cpu::ops;
    use ferrolm::gguf::dequantize;
    use ferrolm::gpu::kernels::{Count, Kernels, OutCols};
    use ferrolm::gpu::weights::GpuTensor;
    use ferrolm::gpu::{batch_words, Batch, EngineLimits};
    use wgpu::util::DeviceExt;

    let bytes = smollm2().await;
    let gguf = Gguf::read(&bytes[..]).unwrap();
    // Portable (no optional features, the adapter's own shapes), then the GPU shapes with
    // subgroups where the adapter has them (`enable subgroups;` in the browser).
    let portable = GpuOptions::portable();
    for (opts, cpu_like) in [(portable, None), (GpuOptions::default(), Some(false))] {
    let ctx = GpuContext::new(opts).await.unwrap();
        let dev = &ctx.device;
        let limits = EngineLimits { max_batch_tokens: 8, context: 16, max_seqs: 1, block_size: 16, n_blocks: 1, kv_bytes_per_token: 0 };
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let buf = |data: &[f32]| dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(data), usage: storage });
        let batch = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: batch_words(&limits) as u64 * 4, usage: storage, mapped_at_creation: false });
        let kernels = Kernels::new(dev, &batch, cpu_like.unwrap_or(ctx.info.cpu_like), ctx.info.subgroup_rows);
        web_sys::console::log_1(&format!("kernels: cpu_like={cpu_like:?} subgroups={} subgroup_rows={}", ctx.info.subgroups, ctx.info.subgroup_rows).into());
        let run = |ops: &[ferrolm::gpu::kernels::Op], n: usize| {
            let ids: Vec<u32> = (0..n as u32).collect();
            let table = [0u32];
            let b = Batch { tokens: &ids, positions: &ids, seq_ids: &vec![0; n], logit_rows: &ids, block_tables: &[&table] };
            ctx.queue.write_buffer(&batch, 0, bytemuck::cast_slice(&b.to_words(&limits)));
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
            let highs: &[usize] = match ty { ferrolm::gguf::GgmlType::Q5_0 => &[1], ferrolm::gguf::GgmlType::Q4_K => &[1, 3], _ => &[209] };
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
            }
        }
    }
}

/// Attention on SwiftShader against the exact f64 value (tests/kernel_cases): the GPU shapes
/// (split decode over three chunks, tiled prefill with mixed-sequence tiles) and the CPU-adapter
/// passes, for one grouped-query shape.
#[wasm_bindgen_test]
async fn attention_matches_cpu_in_browser() {
    use ferrolm::gpu::kernels::Kernels;
    use ferrolm::gpu::{batch_words, Batch};
    use kernel_cases::{block_tables, decode_batch, prefill_batch, random, reference, shapes, worst_difference, LIMITS};
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
    let (k, v) = (random(slots, 60), random(slots, 61));
    let (kb, vb) = (buf(&k), buf(&v));
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    for cpu_like in [false, true] {
        let kernels = Kernels::new(dev, &batch, cpu_like, ctx.info.subgroup_rows);
        let plan = kernels.attention_plan(LIMITS.max_batch_tokens, dims, LIMITS.context, ctx.info.max_binding_size);
        assert_eq!(plan.passes, cpu_like);
        let scratch = buf(&vec![0f32; plan.scratch_floats as usize]);
        for (name, items, window) in [("decode", decode_batch(), 0u32), ("prefill", prefill_batch(), 100)] {
            let n = items.len();
            let qkv = random(n * dims.qkv_stride as usize, 62 + n as u64);
            let (qb, ob) = (buf(&qkv), buf(&vec![0f32; n * (dims.n_heads * dims.head_dim) as usize]));
            let (tokens, positions, seq_ids) = (vec![0u32; n], items.iter().map(|i| i.1).collect::<Vec<_>>(), items.iter().map(|i| i.0).collect::<Vec<_>>());
            let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &[], block_tables: &table_refs };
            ctx.queue.write_buffer(&batch, 0, bytemuck::cast_slice(&b.to_words(&LIMITS)));
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

/// The batching engine in Chromium: 4 requests on a pool too small for them (waiting and
/// preemption) get exactly the native engine's single-request tokens; cancelling frees blocks.
#[wasm_bindgen_test]
async fn engine_batches_preempts_and_cancels_in_browser() {
    let native = fetch_json("target/test-artifacts/engine-small-pool.json").await;
    let alone: Vec<Vec<u32>> = serde_json::from_value(native["alone"].clone()).unwrap();
    let bytes = smollm2().await;
    let small = ModelOptions { context: 64, max_batch_tokens: 64, max_seqs: 4, kv_budget_bytes: Some(0) };
    let (model, tok) = gpu_model_with(&bytes, small).await;
    let engine = engine_cases::together_equals(&model, &tok, 24, &alone).await;
    assert!(engine.stats(&model).preemptions > 0);
    drop(model);
    let (model, tok) = gpu_model_with(&bytes, ModelOptions::new(512, 64)).await;
    engine_cases::cancel_frees_blocks(&model, &tok).await;
}

/// A 300-token shared prefix in Chromium: >= 288 tokens from the prefix cache, and the same
/// tokens and top-5 logprobs as the native engine's cold run.
#[wasm_bindgen_test]
async fn prefix_hit_in_browser_equals_native_cold_run() {
    let native = fetch_json("target/test-artifacts/engine-prefix-cold.json").await;
    let cold: Vec<ferrolm::generate::TokenLogprob> = serde_json::from_value(native["logprobs"].clone()).unwrap();
    let bytes = smollm2().await;
    let (model, tok) = gpu_model_with(&bytes, ModelOptions::new(512, 64)).await;
    let (hot, prompt) = engine_cases::prefix_hit(&model, &tok).await;
    assert_eq!(serde_json::to_value(&prompt).unwrap(), native["prompt"]);
    engine_cases::assert_logprobs_close(&hot.generation.logprobs, &cold, 2e-3);
}

/// Speculative decoding in Chromium: with n-gram and with draft-model drafting (the same file
/// loaded twice), greedy output equals the native engine's plain greedy tokens, for the
/// reference prompts and the repetitive-code prompt (the first 12 tokens of each).
#[wasm_bindgen_test]
async fn speculative_greedy_in_browser_equals_native_plain() {
    let native = fetch_json("target/test-artifacts/speculative-plain.json").await;
    let prompts: Vec<Vec<u32>> = serde_json::from_value(native["prompts"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value::<Vec<Vec<u32>>>(native["tokens"].clone()).unwrap().into_iter().map(|t| t[..12].to_vec()).collect();
    let bytes = smollm2().await;
    let (model, tok) = gpu_model_with(&bytes, ModelOptions::new(512, 64)).await;
    let (draft, _) = gpu_model_with(&bytes, ModelOptions::new(512, 64)).await;
    let totals = engine_cases::speculative_greedy_identity(&model, Rc::new(draft), &tok, &prompts, &want).await;
    web_sys::console::log_1(&format!("browser speculation (drafted, accepted): ngram {:?}, draft {:?}", totals[0], totals[1]).into());
}

/// Gemma 3 270M (K-quants, 262k vocabulary, split embedding) on SwiftShader: the top-5 logits of
/// every reference position equal the native GPU engine's within 0.02, argmax included.
#[wasm_bindgen_test]
async fn gemma3_in_browser_matches_native() {
    let native = fetch_json("target/test-artifacts/gemma3-gpu-native.json").await;
    let url = format!("{SERVER}/models/gemma-3-270m-q4_k_m.gguf");
    let resp: web_sys::Response = JsFuture::from(web_sys::window().unwrap().fetch_with_str(&url)).await.unwrap().dyn_into().unwrap();
    assert!(resp.ok(), "GET {url}: HTTP {} (run `make models`)", resp.status());
    let bytes = js_sys::Uint8Array::new(&JsFuture::from(resp.array_buffer().unwrap()).await.unwrap()).to_vec();
    let (model, _) = gpu_model_with(&bytes, ModelOptions::new(256, 64)).await;
    drop(bytes);
    let vocab = model.config.vocab_size;
    let mut worst = 0f32;
    for case in native.as_array().unwrap() {
        let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let positions: Vec<usize> = serde_json::from_value(case["positions"].clone()).unwrap();
        let want: Vec<Vec<(u32, f32)>> = serde_json::from_value(case["top5"].clone()).unwrap();
        let logits = model.score(&tokens).await.unwrap();
        for (&pos, want) in positions.iter().zip(&want) {
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let got = ferrolm::sampler::TopLogits::from_logits(row, 5).top;
            assert_eq!(got[0].0, want[0].0, "argmax differs from native at position {pos}");
            for &(id, l) in want {
                worst = worst.max((row[id as usize] - l).abs());
            }
        }
    }
    web_sys::console::log_1(&format!("gemma3 browser vs native: worst top-5 logit difference {worst:.5}").into());
    assert!(worst <= 0.02, "browser logits differ from native by {worst}");
}
