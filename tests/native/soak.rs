//! A long run as a web app drives the engine: bursts of 1-8 concurrent requests of mixed
//! lengths and sampling settings, a fifth of them cancelled at random points, on a small
//! synthetic model. Every request ends exactly once, no step loop hangs, the KV pool is back to
//! no block in use after each burst, and the GPU engine's readback buffers stop growing after
//! warm-up. `FERROLM_SOAK_REQUESTS` sets the length (default 1,000; `make soak` runs 20,000).
//! And a fault: a GPU device lost mid-request fails the step with `DeviceLost`, not a panic or
//! a hang, and a new engine runs.

use std::collections::BTreeSet;

use ferrolm::api::bench::{synthetic_llama, LlamaShape};
use ferrolm::backend::cpu::SimdModel;
use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions};
use ferrolm::engine::{Engine, Event, ForwardModel, ModelOptions, Request};
use ferrolm::gguf::Gguf;
use ferrolm::sample::{GenerateOptions, SamplingParams, SpecMethod, Speculative};
use ferrolm::tokenizer::Tokenizer;
use ferrolm::Error;

const SHAPE: LlamaShape = LlamaShape { n_layers: 2, d_model: 64, n_heads: 2, n_kv_heads: 1, ffn_dim: 128, vocab: 256 };

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn requests() -> usize {
    std::env::var("FERROLM_SOAK_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn options(rng: &mut Rng) -> GenerateOptions {
    let mut o = GenerateOptions { max_tokens: 1 + rng.below(40), ignore_eos: rng.below(2) == 0, ..Default::default() };
    match rng.below(5) {
        0 => {}
        1 => o.sampling = SamplingParams { temperature: 0.8, top_p: 0.9, seed: Some(rng.below(1000) as u64), ..SamplingParams::greedy() },
        2 => o.sampling = SamplingParams { temperature: 1.2, top_k: 5, repeat_penalty: 1.1, ..SamplingParams::greedy() },
        3 => o.stop = vec![format!("t{}", rng.below(256))],
        _ => o.speculative = Some(Speculative { method: SpecMethod::Ngram, k: 2 }),
    }
    o
}

/// Runs the soak; returns (requests, cancelled, most KV blocks in use at once).
fn soak<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, total: usize, mut after_burst: impl FnMut(&Engine<M>, usize)) -> (usize, usize, usize) {
    let mut rng = Rng(0x5EED_50A4);
    let (mut submitted, mut cancelled, mut max_used) = (0, 0, 0);
    let mut burst = 0;
    while submitted < total {
        let n = (1 + burst % 8).min(total - submitted);
        let mut live = BTreeSet::new();
        let mut to_cancel = Vec::new();
        for _ in 0..n {
            let prompt: Vec<u32> = (0..1 + rng.below(120)).map(|_| rng.below(256) as u32).collect();
            let id = engine.submit(tok, Request { prompt, opts: options(&mut rng) }).expect("valid request");
            live.insert(id);
            if rng.below(5) == 0 {
                to_cancel.push((id, rng.below(12)));
            }
        }
        submitted += n;
        let mut steps = 0;
        while !engine.is_idle() {
            for e in pollster::block_on(engine.step(tok)).expect("a step") {
                if let Event::Done { id, .. } = e {
                    assert!(live.remove(&id), "request {id} ended twice");
                }
            }
            max_used = max_used.max(engine.pool().stats().used);
            for &(id, at) in &to_cancel {
                if at == steps && live.contains(&id) {
                    if let Some(Event::Done { .. }) = engine.cancel(tok, id) {
                        live.remove(&id);
                        cancelled += 1;
                    }
                }
            }
            steps += 1;
            assert!(steps < 2000, "burst {burst} did not finish");
        }
        assert!(live.is_empty(), "requests {live:?} never ended");
        assert_eq!(engine.pool().stats().used, 0, "KV blocks still in use after burst {burst}");
        after_burst(engine, burst);
        burst += 1;
    }
    (submitted, cancelled, max_used)
}

fn model_bytes() -> (Vec<u8>, Tokenizer) {
    let bytes = synthetic_llama(SHAPE);
    let tok = Tokenizer::from_gguf(&Gguf::read(&bytes[..]).unwrap().metadata).unwrap();
    (bytes, tok)
}

#[test]
fn soak_on_the_cpu_backend() {
    let (bytes, tok) = model_bytes();
    let model = SimdModel::load(&Gguf::read(&bytes[..]).unwrap(), &bytes[..], &ModelOptions::new(256, 64), 2).unwrap();
    let mut engine = Engine::new(model);
    let (n, cancelled, max_used) = soak(&mut engine, &tok, requests(), |_, _| {});
    println!("CPU soak: {n} requests, {cancelled} cancelled, at most {max_used} KV blocks in use, {} steps", engine.stats().steps);
    assert!(cancelled >= n / 10, "only {cancelled} of {n} cancelled");
}

#[test]
fn soak_on_the_gpu_backend() {
    let (bytes, tok) = model_bytes();
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let model = pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, &bytes[..], &ModelOptions::new(256, 64)).await.unwrap() });
    let mut engine = Engine::new(model);
    let total = requests() / 4;
    let mut warm = None;
    let (n, cancelled, max_used) = soak(&mut engine, &tok, total, |e, burst| {
        let buffers = e.model().counters().readback_buffers;
        match warm {
            None if burst == 16 => warm = Some(buffers),
            Some(w) => assert_eq!(buffers, w, "readback buffers grew after warm-up (burst {burst})"),
            None => {}
        }
    });
    println!("GPU soak: {n} requests, {cancelled} cancelled, at most {max_used} KV blocks in use, readback buffers {:?}", warm);
    assert!(warm.is_some(), "too short to warm up");
}

#[test]
fn a_lost_gpu_device_fails_the_step_and_a_new_engine_runs() {
    let (bytes, tok) = model_bytes();
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let load = || pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, &bytes[..], &ModelOptions::new(256, 64)).await.unwrap() });
    let run = |engine: &mut Engine<GpuModel>, steps: usize| -> Result<usize, Error> {
        let mut done = 0;
        for _ in 0..steps {
            done += pollster::block_on(engine.step(&tok))?.iter().filter(|e| matches!(e, Event::Done { .. })).count();
        }
        Ok(done)
    };
    let request = || Request { prompt: vec![1, 2, 3], opts: GenerateOptions { max_tokens: 8, ignore_eos: true, ..Default::default() } };
    let mut engine = Engine::new(load());
    for _ in 0..3 {
        engine.submit(&tok, request()).unwrap();
    }
    run(&mut engine, 2).unwrap();
    engine.model().ctx.destroy();
    match run(&mut engine, 1) {
        Err(e @ Error::DeviceLost(_)) => println!("after destroy: {e}"),
        other => panic!("a step on a destroyed device gave {other:?}, not DeviceLost"),
    }
    // Later steps keep failing the same way; a new engine (new device) runs.
    assert!(matches!(run(&mut engine, 1), Err(Error::DeviceLost(_))));
    let mut fresh = Engine::new(load());
    fresh.submit(&tok, request()).unwrap();
    assert_eq!(run(&mut fresh, 12).unwrap(), 1, "the new engine did not finish its request");
}
