//! The quantized SIMD CPU backend: weights repacked once into interleaved 4-bit and 8-bit groups,
//! 8-bit activations, integer dot products (`kernels`: scalar, wasm simd128 and relaxed SIMD, x86_64 AVX2, aarch64 NEON), every
//! thread of a pool on every step. For machines without a real GPU, natively and in the browser.

mod attention;
pub mod forward;
pub mod kernels;
mod math;
pub mod threads;
pub mod weights;

use std::cell::RefCell;

use attention::LayerKv;
use forward::{Scratch, Step, Weights};
use kernels::Target;
use threads::Pool;

use crate::engine::{picks_from_logits, Batch, ForwardModel, LastPicks, Limits, ModelOptions, Readback, Ready};
use crate::error::Result;
use crate::gguf::{ByteSource, Gguf};
use crate::model::Config;

/// A model on the CPU backend behind the engine's trait: repacked weights, a paged KV pool
/// (8-bit keys, f32 values; grown as blocks are used) and a thread pool.
pub struct SimdModel {
    weights: Weights,
    kv: RefCell<Vec<LayerKv>>,
    /// The step's shared buffers, kept from step to step.
    scratch: RefCell<Scratch>,
    pool: Pool,
    target: Target,
    limits: Limits,
    /// The last step's argmax picks, for chained tokens.
    last: LastPicks,
}

impl SimdModel {
    /// Loads and repacks a model for `threads` threads (natively, 0 means one per core).
    pub fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S, opts: &ModelOptions, threads: usize) -> Result<SimdModel> {
        let weights = Weights::load(gguf, source)?;
        // A verified row costs a fraction of a step (weights are read once for up to four).
        let limits = Limits::for_cpu(&weights.config, opts, 4);
        let threads = if threads == 0 { default_threads() } else { threads };
        Ok(SimdModel { kv: RefCell::new(weights.new_pool()), scratch: RefCell::default(), pool: Pool::new(threads)?, target: Target::detect(), weights, limits, last: LastPicks::default() })
    }

    /// Uses `target`'s kernels instead of the fastest (tests compare them).
    pub fn with_target(mut self, target: Target) -> SimdModel {
        self.target = target;
        self
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn target(&self) -> Target {
        self.target
    }

    /// Bytes of packed weights a decode step reads.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.weights.bytes_per_token()
    }

    /// Milliseconds a decode step's matrix products take alone ([`Weights::matmuls_ms`]).
    pub fn matmuls_ms(&self) -> f64 {
        self.weights.matmuls_ms(&self.pool, self.target, 5)
    }

    /// The read bandwidth this model's threads reach on what a decode step reads (bytes/s):
    /// the best of a few passes over the packed weights themselves, each thread reading its
    /// share of every matrix from several interleaved places at once (in wasm, which has no
    /// prefetch instruction, one stream read about half of what sixteen do), in runs of one
    /// to sixteen cache lines. The weights, not a buffer of fixed size: where the last-level
    /// cache holds the model, its bandwidth is the limit decode can reach, and where it does
    /// not, memory's (the CI-class host's 2 threads read 55 GB/s over SmolLM2's 96 MB of
    /// weights and 42 over Gemma 3's 275 MB; 53-57 over 64 MiB). The limit decode speed is
    /// measured against.
    pub fn read_bandwidth(&self) -> f64 {
        let words: Vec<&[u64]> = self.weights.matrices_per_token().map(|m| bytemuck::pod_align_to::<u8, u64>(m.packed_bytes()).1).collect();
        let mut best = 0f64;
        // (places, words read from one place at a time)
        for (streams, run) in [(16, 8), (16, 32), (4, 128)] {
            for _ in 0..3 {
                let read = std::sync::atomic::AtomicUsize::new(0);
                let t0 = crate::clock::now_ms();
                self.pool.run(|w| {
                    // Eight independent sums, so the loop is bound by loads, not by one add chain.
                    let mut acc = [0u64; 8];
                    let mut bytes = 0;
                    for m in &words {
                        let part = &m[w.share(m.len())];
                        let per = part.len() / streams / run * run;
                        for i in (0..per).step_by(run) {
                            for s in 0..streams {
                                for line in part[s * per + i..][..run].chunks_exact(8) {
                                    #[cfg(target_arch = "x86_64")]
                                    kernels::avx2::prefetch(line.as_ptr());
                                    for j in 0..8 {
                                        acc[j] = acc[j].wrapping_add(line[j]);
                                    }
                                }
                            }
                        }
                        bytes += streams * per * 8;
                    }
                    std::hint::black_box(acc);
                    read.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                });
                let secs = (crate::clock::now_ms() - t0) / 1e3;
                best = best.max(read.into_inner() as f64 / secs.max(1e-9));
            }
        }
        best
    }
}

fn default_threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
    #[cfg(target_arch = "wasm32")]
    1
}

impl ForwardModel for SimdModel {
    type Pending = Ready;

    fn config(&self) -> &Config {
        &self.weights.config
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn describe(&self) -> String {
        format!("CPU ({} kernels, {} thread{}, {:.1} MB of weights)", self.target.name(), self.threads(), if self.threads() == 1 { "" } else { "s" }, self.weights.bytes() as f64 / 1e6)
    }

    /// Computes the whole step now.
    fn submit(&self, b: &Batch, read: Readback) -> Result<Ready> {
        b.validate(&self.limits, self.weights.config.vocab_size)?;
        let tokens = self.last.resolve(b.tokens)?;
        let b = &Batch { tokens: &tokens, ..*b };
        let bs = self.limits.block_size as usize;
        let slot = |t: usize, pos: usize| b.block_tables[b.seq_ids[t] as usize][pos / bs] as usize * bs + pos % bs;
        let step = Step { tokens: b.tokens, positions: b.positions, slot: &slot, logit_rows: b.logit_rows };
        let mut scratch = self.scratch.borrow_mut();
        let logits = self.weights.forward(&self.pool, self.target, &step, &mut self.kv.borrow_mut(), &mut scratch)?;
        let picks = picks_from_logits(logits, self.weights.config.vocab_size, read, b)?;
        self.last.remember(&picks);
        Ok(Ready(picks))
    }
}
