//! What one step of steady greedy decode costs the host on the GPU engine, counted on small
//! synthetic models: launches per layer, one pass, one submission, no wait with the GPU idle
//! (pipelined; one a step without), and only the batch words that changed written; and the
//! GPU time of a step (alone, and of each in steady decode) and of each kernel where the adapter
//! has timestamp queries.

use ferrolm::api::bench::{bench_sampling, decode_counters, synthetic_llama, LlamaShape};
use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions, StepCounters};
use ferrolm::engine::{Batch, Engine, ModelOptions};
use ferrolm::gguf::Gguf;
use ferrolm::sample::SamplingParams;
use ferrolm::tokenizer::Tokenizer;

fn decode_step(n_layers: u32, gpu_shapes: bool, pipelined: bool) -> StepCounters {
    sampled_step(n_layers, gpu_shapes, pipelined, &SamplingParams::greedy())
}

fn sampled_step(n_layers: u32, gpu_shapes: bool, pipelined: bool, sampling: &SamplingParams) -> StepCounters {
    let shape = LlamaShape { n_layers, d_model: 64, n_heads: 2, n_kv_heads: 1, ffn_dim: 128, vocab: 256 };
    let bytes = synthetic_llama(shape);
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let model =
        pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions { gpu_shapes, ..GpuOptions::default() }).await.unwrap(), &gguf, &bytes[..], &ModelOptions::new(256, 64)).await.unwrap() });
    let mut engine = Engine::new(model);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37) % 256).collect();
    let n = 32;
    let (c, wall_ms) = pollster::block_on(decode_counters(&mut engine, &tok, &prompt, n, pipelined, sampling)).unwrap();
    assert_eq!(c.steps, n as u64, "{c:?}");
    // lavapipe has timestamp queries: every step's pass was timed, with its own readback.
    assert!(c.timed_steps == c.steps && c.gpu_ms > 0.0, "{c:?}");
    println!("GPU busy {:.2} ({:.3} of {:.3} ms a step)", c.gpu_ms / wall_ms, c.gpu_ms / n as f64, wall_ms / n as f64);
    c
}

#[test]
fn a_decode_step_is_one_pass_one_submit_no_idle_wait_and_a_few_bytes() {
    // GPU shapes: normed q/k/v with RoPE + KV write, attention (one pass: the span fits one
    // chunk), output, normed gate/up, down; then embedding, normed LM head, argmax. CPU-like
    // adapters add the two norms and run attention in three passes; their LM head has its own
    // norm.
    for (gpu_shapes, max_per_layer, max_fixed) in [(true, 5, 3), (false, 9, 4)] {
        let (small, large) = (decode_step(2, gpu_shapes, true), decode_step(6, gpu_shapes, true));
        for c in [&small, &large] {
            println!("gpu_shapes={gpu_shapes}: {}", c.per_step());
            // Each step is read while the next is queued: the GPU never waits for the host.
            assert_eq!((c.passes, c.submits, c.blocking_waits), (c.steps, c.steps, 0), "{c:?}");
            // The header, the token, its position; a block-table entry every 16 tokens.
            let per_step = c.bytes_written as f64 / c.steps as f64;
            assert!(per_step <= 64.0, "{per_step} bytes written per step");
            assert_eq!(c.bytes_read, 4 * c.steps, "{c:?}");
        }
        assert_eq!(small.dispatches % small.steps, 0);
        let per_layer = (large.dispatches - small.dispatches) / large.steps / 4;
        let fixed = small.dispatches / small.steps - 2 * per_layer;
        println!("gpu_shapes={gpu_shapes}: {per_layer} dispatches per layer + {fixed}");
        assert!(per_layer <= max_per_layer && fixed <= max_fixed, "gpu_shapes={gpu_shapes}: {per_layer} per layer + {fixed}");
    }
    // Step by step (`--sync`), every read waits with nothing queued.
    let sync = decode_step(2, true, false);
    assert_eq!(sync.blocking_waits, sync.steps, "{sync:?}");

    // Sampled decode (temperature 0.7, top-p 0.9): the GPU draws the token, so the step is the
    // greedy one with the sample kernel for the argmax, the 48-byte sampling row written, 4
    // bytes read back (not the 1 KB logits row), and pipelined the same way.
    let greedy = decode_step(2, true, true);
    let sampled = sampled_step(2, true, true, &bench_sampling());
    println!("sampled: {}", sampled.per_step());
    assert_eq!((sampled.passes, sampled.submits, sampled.blocking_waits), (sampled.steps, sampled.steps, 0), "{sampled:?}");
    assert_eq!((sampled.dispatches, sampled.bytes_read), (greedy.dispatches, greedy.bytes_read), "{sampled:?}");
    assert_eq!(sampled.bytes_written, greedy.bytes_written + 48 * sampled.steps, "{sampled:?} vs {greedy:?}");
}

/// Timestamp queries (lavapipe has them) time a decode step as the engine encodes it, and each
/// kernel of a step in a pass of its own: the same kernel labels, in the same order, as the
/// CPU-timed profile, each with a GPU time.
#[test]
fn timestamps_time_the_step_and_each_kernel() {
    let shape = LlamaShape { n_layers: 2, d_model: 64, n_heads: 2, n_kv_heads: 1, ffn_dim: 128, vocab: 256 };
    let bytes = synthetic_llama(shape);
    let gguf = Gguf::read(&bytes[..]).unwrap();
    let model = pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, &bytes[..], &ModelOptions::new(256, 64)).await.unwrap() });
    assert!(model.ctx.info.timestamps, "lavapipe offers timestamp queries: {:?}", model.ctx.info);
    let table: Vec<u32> = (0..4).collect();
    let step = Batch { tokens: &[1], positions: &[40], seq_ids: &[0], logit_rows: &[0], block_tables: &[&table], masks: None, sampling: None };
    let t = pollster::block_on(model.gpu_time(&step)).unwrap().expect("a GPU time");
    assert!(t.step_ms > 0.0, "{t:?}");
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37) % 256).collect();
    let ([prefill, decode], gpu) = model.profile_prompt(&tokens).unwrap();
    assert!(gpu, "the profile used GPU timestamps");
    let cpu = model.profile(&step).unwrap();
    let labels = |k: &[(&'static str, f64)]| k.iter().map(|e| e.0).collect::<Vec<_>>();
    println!("decode step: {:.3} GPU ms; per kernel: {decode:?}", t.step_ms);
    for kernels in [&t.kernels, &prefill, &decode] {
        assert_eq!(labels(kernels), labels(&cpu));
        assert!(kernels.iter().all(|k| k.1 >= 0.0) && kernels.iter().map(|k| k.1).sum::<f64>() > 0.0, "{kernels:?}");
    }
}
