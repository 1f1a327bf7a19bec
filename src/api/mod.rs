//! The API layer: the only place that chooses a backend. The CLI and the wasm boundary load a
//! model onto the device asked for and drive it through one engine, whatever the backend.

pub mod bench;
pub mod fuzz;
pub mod request;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
pub mod tools;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

use crate::backend::cpu::SimdModel;
use crate::backend::reference::ReferenceModel;
use crate::backend::webgpu::{GpuContext, GpuModel, GpuOptions};
use crate::engine::{Engine, EngineStats, Event, ModelOptions, Request, RequestId};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf};
use crate::model::Config;
use crate::sample::Generation;
use crate::tokenizer::Tokenizer;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The quantized SIMD CPU backend.
    Cpu,
    /// The exact f32 reference on the CPU (the oracle; slow).
    Reference,
    /// The WebGPU backend.
    Gpu,
}

/// How to load a model.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Context length in tokens (capped at the model's trained length).
    pub context: usize,
    pub gpu: GpuOptions,
    /// Bytes for the KV pool (None: [`crate::engine::DEFAULT_KV_BUDGET`]).
    pub kv_budget_bytes: Option<u64>,
    /// CPU backend threads (0: one per core natively, one in the browser).
    pub threads: usize,
    /// GPU: read each step before submitting the next (see [`Engine::set_pipelined`]).
    pub sync: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Gpu, context: 2048, gpu: GpuOptions::default(), kv_budget_bytes: None, threads: 0, sync: false }
    }
}

impl LoadOptions {
    fn model_options(&self, gguf: &Gguf) -> Result<ModelOptions> {
        let context = self.context.min(Config::from_gguf(gguf)?.context_len).max(1);
        // A CPU forward's cost is linear in its tokens: a longer chunk saves a weight pass per
        // prompt; on a GPU 128 tokens already fill the device.
        let chunk = if self.device == Device::Cpu { 256 } else { 128 };
        Ok(ModelOptions { kv_budget_bytes: self.kv_budget_bytes, ..ModelOptions::new(context as u32, chunk) })
    }
}

/// A model loaded on one backend and served by the engine.
pub enum Runtime {
    Cpu(Box<Engine<SimdModel>>),
    Reference(Box<Engine<ReferenceModel>>),
    Gpu(Box<Engine<GpuModel>>),
}

/// Runs `$body` with `$e` bound to the engine, whichever backend it runs on.
macro_rules! with_engine {
    ($runtime:expr, $e:ident => $body:expr) => {
        match $runtime {
            Runtime::Cpu($e) => $body,
            Runtime::Reference($e) => $body,
            Runtime::Gpu($e) => $body,
        }
    };
}

impl Runtime {
    pub async fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S, opts: LoadOptions) -> Result<Runtime> {
        Ok(Self::load_alongside(gguf, source, opts, async {}).await?.0)
    }

    /// As [`Runtime::load`], running `work` (the caller's own CPU work) while the GPU finishes
    /// the uploads and pipeline compiles the load queued.
    pub async fn load_alongside<S: ByteSource + ?Sized, R>(gguf: &Gguf, source: &S, opts: LoadOptions, work: impl std::future::Future<Output = R>) -> Result<(Runtime, R)> {
        let model_opts = opts.model_options(gguf)?;
        Ok(match opts.device {
            Device::Cpu => (Runtime::Cpu(Box::new(Engine::new(SimdModel::load(gguf, source, &model_opts, opts.threads)?))), work.await),
            Device::Reference => (Runtime::Reference(Box::new(Engine::new(ReferenceModel::load(gguf, source, &model_opts)?))), work.await),
            Device::Gpu => {
                let pending = GpuModel::record(GpuContext::new(opts.gpu).await?, gguf, source, &model_opts)?;
                let r = work.await;
                let mut engine = Engine::new(pending.ready().await?);
                engine.set_pipelined(!opts.sync);
                (Runtime::Gpu(Box::new(engine)), r)
            }
        })
    }

    /// Loads the model that drafts for `speculative: draft` requests on this runtime's backend,
    /// sized like the main model.
    pub async fn load_draft<S: ByteSource + ?Sized>(&mut self, gguf: &Gguf, source: &S, opts: LoadOptions) -> Result<()> {
        let model_opts = opts.model_options(gguf)?;
        match self {
            Runtime::Cpu(e) => {
                let threads = e.model().threads();
                e.set_draft_model(SimdModel::load(gguf, source, &model_opts, threads)?)
            }
            Runtime::Reference(e) => e.set_draft_model(ReferenceModel::load(gguf, source, &model_opts)?),
            Runtime::Gpu(e) => e.set_draft_model(GpuModel::load(GpuContext::new(opts.gpu).await?, gguf, source, &model_opts).await?),
        }
    }

    pub fn config(&self) -> &Config {
        with_engine!(self, e => crate::engine::ForwardModel::config(e.model()))
    }

    /// The context length requests are served in, in tokens.
    pub fn context(&self) -> usize {
        with_engine!(self, e => crate::engine::ForwardModel::limits(e.model()).context as usize)
    }

    /// CPU backend threads (1 on the others).
    pub fn threads(&self) -> usize {
        match self {
            Runtime::Cpu(e) => e.model().threads(),
            _ => 1,
        }
    }

    /// Destroys the GPU device, as a driver reset would (fault tests): every later step fails
    /// with `DeviceLost`. The CPU backends have no device to lose.
    pub fn lose_device(&self) -> Result<()> {
        match self {
            Runtime::Gpu(e) => {
                e.model().ctx.destroy();
                Ok(())
            }
            _ => Err(Error::InvalidOption { option: "device", reason: "this engine runs on the CPU: it has no GPU device to lose".into() }),
        }
    }

    /// See [`Engine::set_draft_always`].
    pub fn set_draft_always(&mut self, always: bool) {
        with_engine!(self, e => e.set_draft_always(always))
    }

    pub fn kv_map(&self) -> crate::engine::KvMap {
        with_engine!(self, e => e.kv_map())
    }

    /// One line naming the backend and device.
    pub fn describe(&self) -> String {
        with_engine!(self, e => crate::engine::ForwardModel::describe(e.model()))
    }

    pub fn submit(&mut self, tokenizer: &Tokenizer, req: Request) -> Result<RequestId> {
        with_engine!(self, e => e.submit(tokenizer, req))
    }

    pub async fn step(&mut self, tokenizer: &Tokenizer) -> Result<Vec<Event>> {
        with_engine!(self, e => e.step(tokenizer).await)
    }

    pub fn cancel(&mut self, tokenizer: &Tokenizer, id: RequestId) -> Option<Event> {
        with_engine!(self, e => e.cancel(tokenizer, id))
    }

    pub fn is_idle(&self) -> bool {
        with_engine!(self, e => e.is_idle())
    }

    pub fn stats(&self) -> EngineStats {
        with_engine!(self, e => e.stats())
    }

    /// Runs steps until every request has finished, passing each event to `on_event`.
    pub async fn run(&mut self, tokenizer: &Tokenizer, on_event: impl FnMut(Event)) -> Result<()> {
        with_engine!(self, e => e.run(tokenizer, on_event).await)
    }

    /// One request through the engine (see [`Engine::generate`]).
    pub async fn generate(&mut self, tokenizer: &Tokenizer, req: Request, on_text: impl FnMut(&str)) -> Result<Generation> {
        with_engine!(self, e => e.generate(tokenizer, req, on_text).await)
    }

    /// Teacher-forced logits of every position, `[n][vocab]`.
    pub async fn score(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        with_engine!(self, e => e.score(tokens).await)
    }
}
