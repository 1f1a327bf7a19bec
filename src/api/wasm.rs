//! The browser API: the only file that sees `JsValue`. Inputs are typed; results are plain
//! objects serialized with serde; every error becomes a `JsError` with the crate's message.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::bench::{bench_runs, decode_ceiling, dequant_rate, dispatch_overhead_us, merge, read_bandwidth, step_rows, PRINTING_PRESS_PROMPT};
use super::request::{encode_input, GenerateRequest, Input, SubmitInput};
use super::{Device, LoadOptions, Runtime};
use crate::backend::webgpu::{GpuOptions, KvType};
use crate::chat::ChatTemplate;
use crate::clock::now_ms;
use crate::engine::{Event, ForwardModel, Request, RequestStats};
use crate::gguf::{ByteSource, Gguf};
use crate::model::Config;
use crate::sample::TokenLogprob;
use crate::tokenizer::Tokenizer;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// Whether this is the threaded build (shared memory; `initThreads` starts its workers).
#[wasm_bindgen]
pub fn threaded() -> bool {
    cfg!(feature = "threads")
}

/// Readies `n` CPU backend threads: this one and `n - 1` Web Workers sharing this module's
/// memory (threaded build only; the page must be cross-origin isolated). Await it before loading
/// a model with `threads: n`.
#[cfg(feature = "threads")]
#[wasm_bindgen(js_name = initThreads)]
pub fn init_threads(n: usize) -> js_sys::Promise {
    let workers = n.max(2) - 1;
    crate::backend::cpu::threads::init_web_threads(workers);
    wasm_bindgen_rayon::init_thread_pool(workers)
}

/// A loaded model served by the batching engine, on the GPU, the CPU backend or the reference.
#[wasm_bindgen]
pub struct Engine {
    config: Config,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    runtime: Runtime,
    load: LoadOptions,
    load_ms: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    architecture: String,
    n_layers: usize,
    d_model: usize,
    vocab_size: usize,
    context: usize,
    load_ms: f64,
    has_chat_template: bool,
    backend: String,
    /// "webgpu", "cpu" or "reference".
    device: &'static str,
    threads: usize,
}

#[wasm_bindgen]
impl Engine {
    /// Loads a model gathered in a [`ModelBytes`] (the npm package streams downloads and cache
    /// reads into one, so the page never holds the file twice). `options`: `{device: "gpu" |
    /// "cpu" | "reference", context, portable, kvBudgetBytes, kvType: "f16" | "f32", threads,
    /// startedMs}`, all optional.
    #[wasm_bindgen(js_name = fromBytes)]
    pub async fn from_bytes(bytes: ModelBytes, options: JsValue) -> Result<Engine, JsError> {
        let o: LoadRequest = if options.is_undefined() || options.is_null() {
            LoadRequest::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| JsError::new(&format!("invalid load options: {e}")))?
        };
        let device = match o.device.as_str() {
            "" | "gpu" => Device::Gpu,
            "cpu" => Device::Cpu,
            "reference" => Device::Reference,
            other => return Err(JsError::new(&format!("invalid load options: device \"{other}\"; use \"gpu\", \"cpu\" or \"reference\""))),
        };
        let t0 = o.started_ms.unwrap_or_else(now_ms);
        let mut gguf = Gguf::read(&bytes).map_err(js_err)?;
        let config = Config::from_gguf(&gguf).map_err(js_err)?;
        let context = match o.context as usize {
            0 => config.context_len.min(2048),
            n => n.min(config.context_len),
        };
        let kv = match o.kv_type.as_deref().unwrap_or("f16") {
            "f16" => KvType::F16,
            "f32" => KvType::F32,
            other => return Err(JsError::new(&format!("invalid load options: kvType \"{other}\"; use \"f16\" or \"f32\""))),
        };
        let gpu = GpuOptions { kv, ..if o.portable { GpuOptions::portable() } else { GpuOptions::default() } };
        let load = LoadOptions { device, context, gpu, kv_budget_bytes: o.kv_budget_bytes.map(|b| b.max(0.0) as u64), threads: o.threads.unwrap_or(1), sync: o.sync };
        // The tokenizer (a second for Gemma's 262k-token vocabulary) is built while the GPU
        // process uploads and compiles what the load queued; awaiting a resolved promise first
        // lets the page send those commands (a microtask) before this thread gets busy.
        let text = async {
            let _ = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::resolve(&JsValue::NULL)).await;
            let tokenizer = Tokenizer::from_gguf(&gguf.metadata)?;
            let template = ChatTemplate::from_gguf(&gguf.metadata, &tokenizer)?;
            Ok::<_, crate::Error>((tokenizer, template))
        };
        let (runtime, text) = if device == Device::Gpu {
            Runtime::load_alongside(&gguf, &bytes, load, text).await.map_err(js_err)?
        } else {
            // On the CPU the tokenizer comes first and the vocabulary arrays go before the
            // weights load: wasm memory never shrinks, so what the load frees must come first.
            let text = text.await;
            gguf.release_vocabulary().map_err(js_err)?;
            (Runtime::load(&gguf, &bytes, load).await.map_err(js_err)?, text)
        };
        let (tokenizer, template) = text.map_err(js_err)?;
        Ok(Engine { config, tokenizer, template, runtime, load, load_ms: now_ms() - t0 })
    }

    /// Loads a draft model for `speculative: "draft"` (a smaller model with the same tokenizer,
    /// or the same file) on the main model's backend, sized like the main model.
    #[wasm_bindgen(js_name = loadDraft)]
    pub async fn load_draft(&mut self, bytes: ModelBytes, portable: bool) -> Result<(), JsError> {
        let gguf = Gguf::read(&bytes).map_err(js_err)?;
        let gpu = if portable { GpuOptions::portable() } else { GpuOptions::default() };
        self.runtime.load_draft(&gguf, &bytes, LoadOptions { gpu, ..self.load }).await.map_err(js_err)
    }

    /// Model facts for display.
    pub fn info(&self) -> Result<JsValue, JsError> {
        let info = ModelInfo {
            architecture: format!("{:?}", self.config.arch).to_lowercase(),
            n_layers: self.config.n_layers,
            d_model: self.config.d_model,
            vocab_size: self.config.vocab_size,
            context: self.load.context,
            load_ms: self.load_ms,
            has_chat_template: self.template.is_some(),
            backend: self.runtime.describe(),
            device: match self.runtime {
                Runtime::Gpu(_) => "webgpu",
                Runtime::Cpu(_) => "cpu",
                Runtime::Reference(_) => "reference",
            },
            threads: self.runtime.threads(),
        };
        Ok(serde_wasm_bindgen::to_value(&info)?)
    }

    /// Token ids of `text` (special tokens parsed when `special`).
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, JsError> {
        self.tokenizer.encode(text, special).map_err(js_err)
    }

    /// Benchmarks greedy generation of `gen` tokens from the peer benchmark's prompt, `runs`
    /// times, plus the adapter's read bandwidth, and (when `stream_gen` > 0) the batching engine:
    /// 1-8 concurrent streams and prefix-cache TTFT. Returns the same summary as `ferrolm bench`.
    pub async fn benchmark(&mut self, gen: u32, runs: u32, stream_gen: u32) -> Result<JsValue, JsError> {
        let tok = &self.tokenizer;
        let prompt = tok.encode_prompt(PRINTING_PRESS_PROMPT, false).map_err(js_err)?;
        let (bandwidth, weight_bytes) = backend_bandwidth(&self.runtime).await?;
        let mut summary = match &mut self.runtime {
            Runtime::Gpu(engine) => {
                let model = engine.model();
                let dispatch_us = dispatch_overhead_us(model).await.map_err(js_err)?;
                let alu = dequant_rate(model).await.map_err(js_err)?;
                let info = model.ctx.info.clone();
                let head = serde_json::json!({
                    "adapter": info.name, "backend": info.backend, "driver": info.driver, "dispatch_us": dispatch_us,
                    "weight_values_per_token": model.weight_values, "alu_gmac_s": alu / 1e9,
                    "decode_ceiling_tok_s": decode_ceiling(model, bandwidth, alu),
                });
                // The counters describe the pipelined step; the timed runs use the engine's setting.
                let head = merge(head, step_rows(engine, tok, &prompt, !self.load.sync).await.map_err(js_err)?);
                merge(head, bench_runs(engine, tok, self.template.as_ref(), &prompt, gen as usize, runs as usize, stream_gen as usize).await.map_err(js_err)?)
            }
            Runtime::Cpu(engine) => {
                let model = engine.model();
                let head = serde_json::json!({ "adapter": format!("CPU, {} threads", model.threads()), "backend": model.describe(), "threads": model.threads() });
                let mut out = merge(head, bench_runs(engine, tok, self.template.as_ref(), &prompt, gen as usize, runs as usize, stream_gen as usize).await.map_err(js_err)?);
                // After the runs, when the engine has compiled the kernels' optimized code.
                out["matmul_ceiling_tok_s"] = (1e3 / engine.model().matmuls_ms()).into();
                out
            }
            Runtime::Reference(_) => unreachable!("backend_bandwidth refuses the reference"),
        };
        summary["where"] = "browser".into();
        summary["load_ms"] = self.load_ms.into();
        summary["weight_bytes_per_token"] = weight_bytes.into();
        summary["read_gb_s"] = (bandwidth / 1e9).into();
        summary["mbu"] = (weight_bytes * summary["decode_tok_s"].as_f64().unwrap_or(0.0) / bandwidth).into();
        Ok(JsValue::from_str(&summary.to_string()))
    }

    /// What MBU is measured against: the read bandwidth the backend reaches (bytes/s: the GPU
    /// read probe, or on the CPU backend a pass over a 64 MiB buffer, which stays in wasm
    /// memory) and the weight bytes a decode step reads: `{readBytesPerS, weightBytesPerToken}`.
    #[wasm_bindgen(js_name = measureBandwidth)]
    pub async fn measure_bandwidth(&self) -> Result<JsValue, JsError> {
        let (read_bytes_per_s, weight_bytes_per_token) = backend_bandwidth(&self.runtime).await?;
        Ok(serde_wasm_bindgen::to_value(&Bandwidth { read_bytes_per_s, weight_bytes_per_token })?)
    }

    /// Teacher-forced logits of every position of `tokens`, `[n][vocab]` flattened.
    pub async fn score(&mut self, tokens: Vec<u32>) -> Result<Vec<f32>, JsError> {
        self.runtime.score(&tokens).await.map_err(js_err)
    }
}

/// The largest model file a tab takes: the CPU backend's repacked weights are about as large
/// and live in wasm memory (wasm32 addresses 4 GiB; the rest is code, stacks, the tokenizer and
/// the KV cache), and the file itself is in JavaScript memory while it loads.
const TAB_MAX_BYTES: f64 = 3.5 * (1u64 << 30) as f64;

/// Checks the first bytes of a model file of `file_len` bytes before the rest is downloaded:
/// returns how many bytes the header needs when `prefix` is too short (0 when it passed), or
/// fails with the error the full load would end in: not a GGUF file, an unsupported
/// architecture, or (`device` "gpu") an unsupported FFN tensor type or a gate/up matrix larger
/// than the adapter's `max_binding` bytes per buffer. (A file larger than the tab can hold is refused by `ModelBytes::new`, sooner.)
#[wasm_bindgen(js_name = checkModelHeader)]
pub fn check_model_header(prefix: &[u8], file_len: f64, device: &str, max_binding: f64) -> Result<f64, JsError> {
    let gguf = match Gguf::parse(prefix, file_len as u64) {
        Err(crate::Error::NeedMoreBytes { needed, .. }) => return Ok(needed as f64),
        other => other.map_err(js_err)?,
    };
    match device {
        "gpu" => crate::backend::webgpu::GpuModel::check_header(&gguf, max_binding as u64).map_err(js_err)?,
        _ => {
            Config::from_gguf(&gguf).map_err(js_err)?;
        }
    }
    Ok(0.0)
}

/// Model file bytes gathered chunk by chunk, left in JavaScript memory: the loader copies one
/// tensor at a time into wasm memory to repack or upload it, so after the load (when the chunks
/// are garbage) wasm memory holds the model once, repacked, never the file too. Wasm memory
/// does not shrink, so a file copied into it would stay resident for the tab's life.
#[wasm_bindgen]
pub struct ModelBytes {
    chunks: Vec<js_sys::Uint8Array>,
    /// Offset of each chunk in the file.
    starts: Vec<u64>,
    len: u64,
}

#[wasm_bindgen]
impl ModelBytes {
    /// `expected_len`: the file's size, bounded by what a tab can hold.
    #[wasm_bindgen(constructor)]
    pub fn new(expected_len: f64) -> Result<ModelBytes, JsError> {
        if !(0.0..=TAB_MAX_BYTES).contains(&expected_len) {
            let mb = |b: f64| (b / 1e6).round();
            return Err(JsError::new(&format!("the model file has {} MB; a browser tab can hold at most {} MB: use a smaller model or quantization", mb(expected_len), mb(TAB_MAX_BYTES))));
        }
        Ok(ModelBytes { chunks: Vec::new(), starts: Vec::new(), len: 0 })
    }

    /// Appends the next chunk of the file. It is kept, not copied: do not reuse its buffer.
    pub fn push(&mut self, chunk: js_sys::Uint8Array) -> Result<(), JsError> {
        let n = chunk.length() as u64;
        if self.len + n > TAB_MAX_BYTES as u64 {
            return Err(JsError::new("the model file is larger than a browser tab can hold (3.5 GiB): use a smaller model or quantization"));
        }
        if n > 0 {
            self.starts.push(self.len);
            self.chunks.push(chunk);
            self.len += n;
        }
        Ok(())
    }

    #[wasm_bindgen(getter)]
    pub fn length(&self) -> f64 {
        self.len as f64
    }
}

impl ByteSource for ModelBytes {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len).ok_or_else(|| crate::Error::MalformedGguf(format!("read of {} bytes at {offset} runs past the end", buf.len())))?;
        if buf.is_empty() {
            return Ok(());
        }
        // The chunk holding `offset`, then the following ones until `buf` is full.
        let mut i = self.starts.partition_point(|&s| s <= offset) - 1;
        let (mut pos, mut out) = (offset, 0);
        while pos < end {
            let (chunk, at) = (&self.chunks[i], pos - self.starts[i]);
            let n = (chunk.length() as u64 - at).min(end - pos) as usize;
            chunk.subarray(at as u32, at as u32 + n as u32).copy_to(&mut buf[out..out + n]);
            pos += n as u64;
            out += n;
            i += 1;
        }
        Ok(())
    }
}

/// The backend's read bandwidth (bytes/s: the GPU read probe, or the CPU backend's pass over a
/// 64 MiB buffer) and the weight bytes a decode step reads: what MBU is measured against.
async fn backend_bandwidth(runtime: &Runtime) -> Result<(f64, f64), JsError> {
    match runtime {
        Runtime::Gpu(e) => Ok((read_bandwidth(e.model()).await.map_err(js_err)?, e.model().weight_bytes as f64)),
        Runtime::Cpu(e) => Ok((e.model().read_bandwidth(), e.model().weight_bytes_per_token() as f64)),
        Runtime::Reference(_) => Err(JsError::new("invalid request: bandwidth and benchmarks measure the gpu and cpu backends, not the f32 reference; load with device \"gpu\" or \"cpu\"")),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bandwidth {
    read_bytes_per_s: f64,
    weight_bytes_per_token: f64,
}

/// `Engine.fromBytes` options.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
struct LoadRequest {
    device: String,
    context: u32,
    portable: bool,
    kv_budget_bytes: Option<f64>,
    /// The GPU KV cache's element type: "f16" (default) or "f32".
    kv_type: Option<String>,
    /// CPU backend threads (1 unless this is the threaded build in an isolated page).
    threads: Option<usize>,
    /// `Date.now()` when the download started, so loadMs covers it.
    started_ms: Option<f64>,
    /// WebGPU: read each step before submitting the next (no pipelining).
    sync: bool,
}

/// A step's event for JS.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum JsEvent {
    #[serde(rename_all = "camelCase")]
    Token { id: u32, token: u32, text: String, drafted: bool, rejected: usize },
    #[serde(rename_all = "camelCase")]
    Done { id: u32, finish_reason: &'static str, text: String, tokens: Vec<u32>, logprobs: Vec<TokenLogprob>, stats: RequestStats },
}

/// A request's input and options from JS, checked.
fn parse_request(input: JsValue, options: JsValue) -> Result<(Input, GenerateRequest), JsError> {
    let input: SubmitInput = serde_wasm_bindgen::from_value(input).map_err(|e| JsError::new(&format!("invalid request: {e}")))?;
    let req: GenerateRequest = if options.is_undefined() || options.is_null() {
        GenerateRequest::default()
    } else {
        serde_wasm_bindgen::from_value(options).map_err(|e| JsError::new(&format!("invalid request options: {e}")))?
    };
    Ok((input.into_input().map_err(js_err)?, req))
}

fn js_event(e: Event) -> JsEvent {
    match e {
        Event::Token { id, token, text, drafted, rejected } => JsEvent::Token { id: id as u32, token, text, drafted, rejected },
        Event::Done { id, generation: g, stats } => JsEvent::Done { id: id as u32, finish_reason: g.finish_reason.as_str(), text: g.text, tokens: g.tokens, logprobs: g.logprobs, stats },
    }
}

/// The serving API the npm package's worker drives: requests are queued with `submit`, every
/// `step` runs one batched forward for all of them (continuous batching) and returns their
/// events, `cancel` ends one at once. Calls must not overlap: await each `step` before the next
/// call on the engine.
#[wasm_bindgen]
impl Engine {
    /// Queues a request: `input` is `{prompt}` (raw text) or `{messages: [{role, content}]}`
    /// (rendered with the model's chat template); `options` with OpenAI names (`GenerateRequest`). Returns its id.
    pub fn submit(&mut self, input: JsValue, options: JsValue) -> Result<u32, JsError> {
        let (input, req) = parse_request(input, options)?;
        let tools = req.tools().to_vec();
        let opts = req.into_options().map_err(js_err)?;
        let ids = encode_input(&self.tokenizer, self.template.as_ref(), &input, &tools, self.runtime.context()).map_err(js_err)?;
        let id = self.runtime.submit(&self.tokenizer, Request { prompt: ids, opts }).map_err(js_err)?;
        Ok(id as u32)
    }

    /// The prompt's length in tokens as `submit` would queue it (not limited to the context:
    /// callers compare it with the context to route a long prompt elsewhere).
    #[wasm_bindgen(js_name = countTokens)]
    pub fn count_tokens(&self, input: JsValue, options: JsValue) -> Result<usize, JsError> {
        let (input, req) = parse_request(input, options)?;
        let ids = encode_input(&self.tokenizer, self.template.as_ref(), &input, req.tools(), usize::MAX).map_err(js_err)?;
        Ok(ids.len())
    }

    /// Whether any request is queued or running.
    #[wasm_bindgen(js_name = hasWork)]
    pub fn has_work(&self) -> bool {
        !self.runtime.is_idle()
    }

    /// One batched forward for every running request; returns `[{type: "token", id, token,
    /// text} | {type: "done", id, finishReason, text, tokens, logprobs, stats}]`.
    pub async fn step(&mut self) -> Result<JsValue, JsError> {
        let events: Vec<JsEvent> = self.runtime.step(&self.tokenizer).await.map_err(js_err)?.into_iter().map(js_event).collect();
        Ok(serde_wasm_bindgen::to_value(&events)?)
    }

    /// Ends a request now (its KV blocks are freed); returns its `done` event (finishReason
    /// "cancelled"), or null if it already finished.
    pub fn cancel(&mut self, id: u32) -> Result<JsValue, JsError> {
        match self.runtime.cancel(&self.tokenizer, id as u64) {
            Some(e) => Ok(serde_wasm_bindgen::to_value(&js_event(e))?),
            None => Ok(JsValue::NULL),
        }
    }

    /// The KV block pool block by block (`{blocks: [{refs, cached, owners: [[request, first
    /// position]], filled}], stats}`, stats as `engineStats` at the same moment), for the demo's
    /// map.
    #[wasm_bindgen(js_name = kvMap)]
    pub fn kv_map(&self) -> Result<JsValue, JsError> {
        Ok(serde_wasm_bindgen::to_value(&self.runtime.kv_map())?)
    }

    /// Fault injection for tests: destroys the GPU device as a driver reset would; requests in
    /// flight then fail with a "device was lost" error.
    #[wasm_bindgen(js_name = loseDevice)]
    pub fn lose_device(&self) -> Result<(), JsError> {
        self.runtime.lose_device().map_err(js_err)
    }

    /// Engine figures: running and waiting requests, KV blocks used / free / cached, bytes per
    /// token, prefix hit rate, steps, preemptions.
    #[wasm_bindgen(js_name = engineStats)]
    pub fn engine_stats(&self) -> Result<JsValue, JsError> {
        Ok(serde_wasm_bindgen::to_value(&self.runtime.stats())?)
    }
}
