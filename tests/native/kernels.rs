//! Each GPU kernel against the CPU reference, natively (lavapipe on CI): on random inputs and on
//! real tensors of the SmolLM2 file. Weight repacking + GPU dequantization is bit-exact.

use crate::common;
use crate::kernel_cases;

use ferrolm::backend::reference::ops;
use ferrolm::backend::webgpu::kernels::{Count, Kernels, Norm, Op, OutCols, QkNorm, QkvBias, RopeKv};
use ferrolm::backend::webgpu::weights::{GpuTensor, GPU_MATRIX_TYPES};
use ferrolm::backend::webgpu::{batch_to_words, batch_words, GpuContext, GpuOptions, KvType};
use ferrolm::engine::{Batch, Limits, Readback};
use ferrolm::gguf::{dequantize, GgmlType, Gguf};
use ferrolm::model::{Activation, RopeStyle};
use ferrolm::sample::RowSampling;
use kernel_cases::random;
use wgpu::util::DeviceExt;

const LIMITS: Limits = Limits { max_batch_tokens: 32, context: 64, max_seqs: 1, block_size: 16, n_blocks: 4, kv_bytes_per_token: 0, max_logit_rows: 32, max_draft: 0 };

pub(crate) struct Harness {
    pub(crate) ctx: GpuContext,
    batch: wgpu::Buffer,
    pub(crate) kernels: Kernels,
    limits: Limits,
}

impl Harness {
    pub(crate) fn new(opts: GpuOptions) -> Harness {
        Self::with_shapes(opts, None)
    }

    /// `cpu_like` forces the kernel shapes for CPU-emulated adapters (Some(true)) or GPUs.
    pub(crate) fn with_shapes(opts: GpuOptions, cpu_like: Option<bool>) -> Harness {
        Self::with_limits(opts, cpu_like, LIMITS)
    }

    pub(crate) fn with_limits(opts: GpuOptions, cpu_like: Option<bool>, limits: Limits) -> Harness {
        let ctx = pollster::block_on(GpuContext::new(opts)).expect("a WebGPU adapter (lavapipe: apt install mesa-vulkan-drivers)");
        let batch = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: batch_words(&limits) as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let kernels = Kernels::new(&ctx.device, &batch, cpu_like.unwrap_or(ctx.info.cpu_like), ctx.info.subgroup_rows, ctx.kv);
        Harness { ctx, batch, kernels, limits }
    }

    pub(crate) fn buffer(&self, data: &[f32]) -> wgpu::Buffer {
        self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Runs `ops` for a batch of `tokens` (logit rows: all of them) and reads `out` back.
    pub(crate) fn run(&self, ops: &[Op], tokens: &[u32], out: &wgpu::Buffer) -> Vec<f32> {
        self.run_rows(ops, tokens, None, out)
    }

    /// [`Harness::run`] as a sampled step with each logit row's sampling.
    pub(crate) fn run_sampled(&self, ops: &[Op], tokens: &[u32], sampling: &[RowSampling], out: &wgpu::Buffer) -> Vec<f32> {
        self.run_rows(ops, tokens, Some(sampling), out)
    }

    fn run_rows(&self, ops: &[Op], tokens: &[u32], sampling: Option<&[RowSampling]>, out: &wgpu::Buffer) -> Vec<f32> {
        let n = tokens.len();
        let positions: Vec<u32> = (0..n as u32).collect();
        let table: Vec<u32> = (0..self.limits.n_blocks).collect();
        let b = Batch { tokens, positions: &positions, seq_ids: &vec![0; n], logit_rows: &positions, block_tables: &[&table], masks: None, sampling };
        self.run_batch(ops, &b, out)
    }

    pub(crate) fn run_batch(&self, ops: &[Op], b: &Batch, out: &wgpu::Buffer) -> Vec<f32> {
        let n = b.tokens.len() as u32;
        // A batch with sampling is a sampled step's (its rows' sums temperatures follow them).
        let read = if b.sampling.is_some() { Readback::Sample } else { Readback::Argmax };
        self.ctx.queue.write_buffer(&self.batch, 0, bytemuck::cast_slice(&batch_to_words(b, &self.limits, read)));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for op in ops {
                op.encode_span(&mut pass, n, b.logit_rows.len() as u32, b.span());
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        self.read(out)
    }

    /// Repacks and uploads `rows` rows of `k` values of type `ty`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upload(&self, max_binding: u64, name: &str, ty: GgmlType, data: &[u8], rows: usize, k: usize, splittable: bool) -> GpuTensor {
        GpuTensor::upload(&self.ctx.device, &self.ctx.queue, max_binding, name, ty, data, rows, k, splittable).unwrap()
    }

    pub(crate) fn words(&self, data: &[u32]) -> wgpu::Buffer {
        self.buffer(bytemuck::cast_slice(data))
    }

    pub(crate) fn read_words(&self, b: &wgpu::Buffer) -> Vec<u32> {
        bytemuck::cast_slice(&self.read(b)).to_vec()
    }

    pub(crate) fn read(&self, b: &wgpu::Buffer) -> Vec<f32> {
        let bytes = pollster::block_on(self.ctx.read_buffer(b, 0, b.size())).unwrap();
        bytemuck::cast_slice(&bytes).to_vec()
    }
}

pub(crate) fn random_blocks(ty: GgmlType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let n = ty.row_bytes(k as u64).unwrap() as usize * rows;
    let mut bytes: Vec<u8> = random(n, seed).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    // Keep every f16 scale field finite and small: exponent bits of the high byte cleared.
    let bs = ty.type_size() as usize;
    let scale_bytes: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q5_0 => &[1],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K => &[1, 3],
        GgmlType::Q6_K => &[209],
        GgmlType::F16 => &[1],
        _ => &[],
    };
    let step = if ty == GgmlType::F16 { 2 } else { bs };
    // K-quant super-scales multiply 6-8 bit sub-scales: keep their values at realistic sizes.
    let exponent = if ty.block_size() == 256 { 0x14 } else { 0x20 };
    for block in bytes.chunks_mut(step) {
        for &i in scale_bytes {
            block[i] = (block[i] & 0x83) | exponent; // |value| in [2^-7, 2^-5), K-quants [2^-10, 2^-8)
        }
    }
    if ty == GgmlType::F32 {
        return random(rows * k, seed).iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    bytes
}

fn cpu_dequant(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize(ty, data, &mut out).unwrap();
    out
}

fn gpu_dequant(h: &Harness, w: &GpuTensor) -> Vec<f32> {
    let out = h.buffer(&vec![0f32; (w.rows * w.k) as usize]);
    let ops = h.kernels.embed(w, &out, 1.0, true);
    h.run(&ops, &[0], &out)
}

fn assert_bits_eq(gpu: &[f32], cpu: &[f32], what: &str) {
    assert_eq!(gpu.len(), cpu.len());
    let bad = gpu.iter().zip(cpu).position(|(a, b)| a.to_bits() != b.to_bits());
    if let Some(i) = bad {
        panic!("{what}: value {i} differs: GPU {} vs CPU {}", gpu[i], cpu[i]);
    }
}

#[test]
fn repack_and_gpu_dequant_are_bit_exact_on_random_blocks_and_split_tensors() {
    let h = Harness::new(GpuOptions::default());
    for ty in GPU_MATRIX_TYPES.iter().copied() {
        // K-quant rows are whole 256-value super-blocks.
        let (rows, k) = (37, if ty.block_size() == 256 { 512 } else { 96 });
        let data = random_blocks(ty, rows, k, ty.id() as u64 + 1);
        let cpu = cpu_dequant(ty, &data, rows * k);
        for max_binding in [1 << 20, 1500] {
            let w = h.upload(max_binding, "w", ty, &data, rows, k, true);
            assert_bits_eq(&gpu_dequant(&h, &w), &cpu, &format!("{ty} with {} parts", w.parts.len()));
        }
    }
}

#[test]
fn gpu_dequant_is_bit_exact_on_real_tensors() {
    let h = Harness::new(GpuOptions::default());
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let gemma_file = std::fs::File::open(common::model_path(common::GEMMA3)).unwrap();
    let gemma = Gguf::read(&gemma_file).unwrap();
    // SmolLM2: Q4_1 and Q8_0; Gemma 3's Q4_K_M mix: Q5_0, Q4_K, Q8_0, Q6_K.
    let smol = ["blk.0.attn_q.weight", "blk.5.ffn_down.weight", "token_embd.weight"].map(|n| (&gguf, &file, n));
    let gem = ["blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight"].map(|n| (&gemma, &gemma_file, n));
    for (gguf, file, name) in smol.into_iter().chain(gem) {
        let info = gguf.tensor(name).unwrap();
        let data = gguf.tensor_data(file, info).unwrap();
        let (k, rows) = (info.dims[0] as usize, (info.n_elements() / info.dims[0]) as usize);
        let w = h.upload(128 << 20, name, info.ty, &data, rows, k, true);
        assert_bits_eq(&gpu_dequant(&h, &w), &cpu_dequant(info.ty, &data, rows * k), &format!("{name} ({})", info.ty));
    }
}

/// `act(gate) * up` of `x . W` for `n` tokens, W's `m` rows holding m/2 gate rows, then m/2 up rows.
fn gated_reference(x: &[f32], w: &[f32], n: usize, k: usize, m: usize, act: Activation) -> Vec<f32> {
    let mut full = vec![0f32; n * m];
    ops::matmul(&mut full, x, w, n, k, m);
    let mut out = Vec::new();
    for row in full.chunks(m) {
        let (mut g, u) = (row[..m / 2].to_vec(), &row[m / 2..]);
        match act {
            Activation::Silu => ops::silu_mul(&mut g, u),
            Activation::GeluTanh => ops::gelu_mul(&mut g, u),
        }
        out.extend(g);
    }
    out
}

fn check_close(gpu: &[f32], cpu: &[f32], tol: f32, what: &str) {
    let worst = kernel_cases::worst_difference(gpu, cpu);
    assert!(worst <= tol, "{what}: worst relative difference {worst}");
}

/// Decode (1 token) and prefill (13 tokens) matmuls, plain, accumulating, split and SwiGLU,
/// against `reference::ops::matmul` on the dequantized weights; both kernel shapes (CPU-like adapters'
/// matvec, GPUs' matmul), with and without optional features (subgroup shuffles where the
/// adapter has them and widths whose lanes per row fit a subgroup; workgroup memory otherwise).
#[test]
fn matmul_matches_cpu_reference() {
    let portable = GpuOptions::portable();
    for (opts, cpu_like) in [(GpuOptions::default(), true), (GpuOptions::default(), false), (portable, false)] {
        let h = Harness::with_shapes(opts, Some(cpu_like));
        println!("cpu_like={cpu_like} subgroups={} subgroup_rows={}", h.ctx.info.subgroups, h.ctx.info.subgroup_rows);
        for (ty, k) in GPU_MATRIX_TYPES.iter().flat_map(|&t| if t.block_size() == 256 { [(t, 256), (t, 768)] } else { [(t, 160), (t, 640)] }) {
            let m = 70;
            // f32 summation order differs from the CPU's; wide Q8_0 rows reach sums of ~100 where
            // that shows at 1e-4 (SwiGLU multiplies two such sums).
            let tol = if k > 160 { 2e-4 } else { 1e-5 };
            let data = random_blocks(ty, m, k, 7 + ty.id() as u64);
            let wf = cpu_dequant(ty, &data, m * k);
            for n in [1usize, 2, 6, 13] {
                let x = random(n * k, n as u64);
                let y0 = random(n * m, 99);
                for (split, accumulate) in [(false, false), (true, true)] {
                    let max_binding = if split { 2000 } else { 1 << 20 };
                    let w = h.upload(max_binding, "w", ty, &data, m, k, true);
                    let (xb, yb) = (h.buffer(&x), h.buffer(&y0));
                    let ops = h.kernels.matmul(&w, &xb, &yb, OutCols { stride: m as u32, col: 0 }, accumulate, Count::Tokens, false);
                    let got = h.run(&ops, &vec![0; n], &yb);
                    let mut want = vec![0f32; n * m];
                    ops::matmul(&mut want, &x, &wf, n, k, m);
                    if accumulate {
                        ops::add_assign(&mut want, &y0);
                    }
                    check_close(&got, &want, tol, &format!("{ty} k={k} n={n} split={split} accumulate={accumulate} cpu_like={cpu_like}"));
                }
                // SwiGLU: rows 0..m/2 gate, m/2..m up.
                let w = h.upload(1 << 20, "w", ty, &data, m, k, false);
                let (xb, yb) = (h.buffer(&x), h.buffer(&vec![0f32; n * m / 2]));
                let ops = h.kernels.matmul(&w, &xb, &yb, OutCols { stride: (m / 2) as u32, col: 0 }, false, Count::Tokens, true);
                let got = h.run(&ops, &vec![0; n], &yb);
                let want = gated_reference(&x, &wf, n, k, m, Activation::Silu);
                check_close(&got, &want, tol, &format!("{ty} k={k} swiglu n={n} cpu_like={cpu_like}"));
            }
        }
    }
}

#[test]
fn rmsnorm_and_argmax_match_cpu() {
    let h = Harness::new(GpuOptions::default());
    let (n, d) = (5, 200);
    let x = random(n * d, 3);
    let w = random(d, 4);
    let (xb, wb, yb) = (h.buffer(&x), h.buffer(&w), h.buffer(&vec![0f32; n * d]));
    let got = h.run(&[h.kernels.rmsnorm(&xb, &wb, &yb, d as u32, 1e-5, false)], &vec![0; n], &yb);
    let mut want = vec![0f32; n * d];
    ops::rmsnorm(&mut want, &x, &w, 1e-5);
    check_close(&got, &want, 1e-5, "rmsnorm");

    // argmax with a tie: the first index wins, as on the CPU.
    let vocab = 1000;
    let mut logits = random(n * vocab, 5);
    logits[vocab + 10] = 7.0;
    logits[vocab + 900] = 7.0;
    let (lb, rb) = (h.buffer(&logits), h.buffer(&vec![0f32; n]));
    let words = vocab.div_ceil(32);
    let unused = h.buffer(&vec![0f32; n * words]);
    let got = h.run(&[h.kernels.argmax(&lb, &rb, &unused, vocab as u32, false, None)], &vec![0; n], &rb);
    let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    let want: Vec<u32> = logits.chunks(vocab).map(ferrolm::sample::argmax).collect();
    assert_eq!(got, want);
    assert_eq!(got[1], 10);

    // Masked (structured output): random allowed sets of about a tenth of the tokens; row 1
    // forbids both tied maxima, row 2 allows one token only.
    let mut allowed: Vec<Vec<bool>> = (0..n).map(|r| random(vocab, 20 + r as u64).iter().map(|v| v.abs() < 0.1).collect()).collect();
    allowed[1][10] = false;
    allowed[1][900] = false;
    allowed[2] = (0..vocab).map(|t| t == 321).collect();
    let mut bits = vec![0u32; n * words];
    for (r, row) in allowed.iter().enumerate() {
        for (t, _) in row.iter().enumerate().filter(|(_, &a)| a) {
            bits[r * words + t / 32] |= 1 << (t % 32);
        }
    }
    let mb = h.buffer(&bits.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>());
    let got = h.run(&[h.kernels.argmax(&lb, &rb, &mb, vocab as u32, true, None)], &vec![0; n], &rb);
    let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    let want: Vec<u32> = logits
        .chunks(vocab)
        .zip(&allowed)
        .map(|(row, ok)| (0..vocab).filter(|&t| ok[t]).fold(None, |best: Option<usize>, t| if best.is_none_or(|b| row[t] > row[b]) { Some(t) } else { best }).unwrap() as u32)
        .collect();
    assert_eq!(got, want, "masked argmax");
    assert_eq!(got[2], 321);
    assert!(got[1] != 10 && got[1] != 900);
}

/// Attention over a paged KV cache against a direct f64 computation (tests/kernel_cases):
/// GQA groups of 1-4 heads, head sizes 32-256, full and sliding windows, three sequences with
/// scattered blocks. Decode batches (the GPU's split-and-merge path over three 256-position
/// chunks, and a span of one chunk written without the merge) and a
/// prefill batch whose 8-token tiles mix sequences (the GPU's tiled path), each with GPU shapes
/// and with the CPU-adapter passes.
#[test]
fn attention_matches_cpu_over_paged_cache() {
    use ferrolm::backend::webgpu::kernels::ATTN_SPLIT_MAX_TOKENS;
    use kernel_cases::{block_tables, decode_batch, kv_words, prefill_batch, random_kv, reference, shapes, worst_difference, LIMITS as ATTN_LIMITS};
    let tables = block_tables();
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| &t[..]).collect();
    let (decode, prefill) = (decode_batch(), prefill_batch());
    // Spans within one chunk: the split attention writes its output with no merge pass.
    let short: Vec<(u32, u32)> = vec![(0, 200), (1, 5), (2, 255)];
    assert!(decode.len() as u32 <= ATTN_SPLIT_MAX_TOKENS && prefill.len() as u32 > ATTN_SPLIT_MAX_TOKENS);
    for (cpu_like, kv) in [(false, KvType::F16), (true, KvType::F16), (false, KvType::F32), (true, KvType::F32)] {
        let h = Harness::with_limits(GpuOptions { kv, ..GpuOptions::default() }, Some(cpu_like), ATTN_LIMITS);
        for dims in shapes() {
            let slots = (ATTN_LIMITS.n_blocks * ATTN_LIMITS.block_size * dims.n_kv_heads * dims.head_dim) as usize;
            let (k, v) = (random_kv(kv, slots, 40 + dims.head_dim as u64), random_kv(kv, slots, 41 + dims.head_dim as u64));
            let plan = h.kernels.attention_plan(ATTN_LIMITS.max_batch_tokens, dims, ATTN_LIMITS.context, h.ctx.info.max_binding_size);
            assert_eq!(plan.passes, cpu_like);
            let scratch = h.buffer(&vec![0f32; plan.scratch_floats as usize]);
            let (kb, vb) = (h.words(&kv_words(kv, &k)), h.words(&kv_words(kv, &v)));
            for (name, items) in [("decode", &decode), ("decode in one chunk", &short), ("prefill", &prefill)] {
                let n = items.len();
                let qkv = random(n * dims.qkv_stride as usize, 50 + n as u64);
                let (qb, ob) = (h.buffer(&qkv), h.buffer(&vec![0f32; n * (dims.n_heads * dims.head_dim) as usize]));
                let tokens = vec![0u32; n];
                let positions: Vec<u32> = items.iter().map(|i| i.1).collect();
                let seq_ids: Vec<u32> = items.iter().map(|i| i.0).collect();
                let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &[], block_tables: &table_refs, masks: None, sampling: None };
                for window in [0u32, 100] {
                    let scale = 1.0 / (dims.head_dim as f32).sqrt();
                    let ops = h.kernels.attention(&qb, &kb, &vb, &ob, dims, scale, window, &plan, &scratch);
                    let got = h.run_batch(&ops, &b, &ob);
                    let worst = worst_difference(&got, &reference(dims, items, &qkv, &k, &v, &tables, scale, window));
                    assert!(worst <= 2e-5, "{name} {dims:?} window={window} cpu_like={cpu_like} {kv:?}: worst relative difference {worst}");
                }
            }
        }
    }
}

/// The gated FFN's fused gate/up matmul in both gate forms (SiLU: SwiGLU, GELU-tanh: GeGLU), for
/// decode and prefill batches, with both kernel shapes: matvec.wgsl takes the form as a uniform,
/// matmul.wgsl as override constants. The output starts as NaN, so every value must be written.
#[test]
fn matmul_gated_matches_cpu_for_silu_and_gelu() {
    for cpu_like in [true, false] {
        let h = Harness::with_shapes(GpuOptions::default(), Some(cpu_like));
        for (ty, k) in [(GgmlType::Q4_1, 160), (GgmlType::Q8_0, 640), (GgmlType::Q4_K, 256), (GgmlType::F32, 96)] {
            // Rows 0..m/2 gate, m/2..m up.
            let m = 70;
            let tol = if k > 160 { 2e-4 } else { 1e-5 };
            let data = random_blocks(ty, m, k, 11 + ty.id() as u64);
            let wf = cpu_dequant(ty, &data, m * k);
            let w = h.upload(1 << 20, "w", ty, &data, m, k, false);
            for n in [1usize, 5, 13] {
                let x = random(n * k, 20 + n as u64);
                for act in [Activation::Silu, Activation::GeluTanh] {
                    let (xb, yb) = (h.buffer(&x), h.buffer(&vec![f32::NAN; n * m / 2]));
                    let got = h.run(&[h.kernels.matmul_gated(&w, &xb, None, &yb, (m / 2) as u32, act)], &vec![0; n], &yb);
                    let want = gated_reference(&x, &wf, n, k, m, act);
                    check_close(&got, &want, tol, &format!("{ty} k={k} n={n} {act:?} cpu_like={cpu_like}"));
                }
            }
        }
    }
}

/// The RMSNorm folded into the matmuls (`matmul_normed`, and `matmul_gated` with a norm) equals
/// `ops::rmsnorm` then `ops::matmul` on the CPU: decode and prefill, and the LM head's form that
/// reads the batch's logit rows.
#[test]
fn matmul_with_folded_rmsnorm_matches_norm_then_matmul() {
    let eps = 1e-5;
    // GPU shapes only: CPU-emulated adapters keep the norm as its own launch.
    {
        let cpu_like = false;
        let h = Harness::with_shapes(GpuOptions::default(), Some(cpu_like));
        assert!(h.kernels.folds_norm());
        for (ty, k) in [(GgmlType::Q4_1, 160), (GgmlType::Q8_0, 640), (GgmlType::Q4_K, 256)] {
            let m = 70;
            let tol = if k > 160 { 3e-4 } else { 2e-5 };
            let data = random_blocks(ty, m, k, 40 + ty.id() as u64);
            let wf = cpu_dequant(ty, &data, m * k);
            let nw = random(k, 41);
            let nwb = h.buffer(&nw);
            let norm = Norm { weight: &nwb, eps };
            let w = h.upload(1 << 20, "w", ty, &data, m, k, false);
            for n in [1usize, 5, 13] {
                let x: Vec<f32> = random(n * k, 50 + n as u64).iter().map(|v| v * 3.0).collect();
                let mut normed = vec![0f32; n * k];
                ops::rmsnorm(&mut normed, &x, &nw, eps);
                let xb = h.buffer(&x);
                let what = format!("{ty} k={k} n={n} cpu_like={cpu_like}");

                let yb = h.buffer(&vec![f32::NAN; n * m]);
                let got = h.run(&h.kernels.matmul_normed(&w, &xb, Some(norm), &yb, OutCols { stride: m as u32, col: 0 }, Count::Tokens), &vec![0; n], &yb);
                let mut want = vec![0f32; n * m];
                ops::matmul(&mut want, &normed, &wf, n, k, m);
                check_close(&got, &want, tol, &format!("normed {what}"));

                let yb = h.buffer(&vec![f32::NAN; n * m / 2]);
                let got = h.run(&[h.kernels.matmul_gated(&w, &xb, Some(norm), &yb, (m / 2) as u32, Activation::Silu)], &vec![0; n], &yb);
                check_close(&got, &gated_reference(&normed, &wf, n, k, m, Activation::Silu), tol, &format!("normed gated {what}"));

                // LM head: output row i from input row logit_rows[i].
                let rows: Vec<u32> = (0..n as u32).rev().step_by(2).collect();
                let yb = h.buffer(&vec![f32::NAN; rows.len() * m]);
                let (tokens, positions) = (vec![0u32; n], (0..n as u32).collect::<Vec<_>>());
                let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &vec![0; n], logit_rows: &rows, block_tables: &[], masks: None, sampling: None };
                let got = h.run_batch(&h.kernels.matmul_normed(&w, &xb, Some(norm), &yb, OutCols { stride: m as u32, col: 0 }, Count::LogitRows), &b, &yb);
                let gathered: Vec<f32> = rows.iter().flat_map(|&r| normed[r as usize * k..][..k].to_vec()).collect();
                let mut want = vec![0f32; rows.len() * m];
                ops::matmul(&mut want, &gathered, &wf, rows.len(), k, m);
                check_close(&got, &want, tol, &format!("normed logit rows {what}"));
            }
        }
    }
}

/// `rmsnorm_add` (Gemma's post-norms: `y += rmsnorm(x) * w`) and the final norm's gather of the
/// batch's logit rows, with both kernel shapes (a thread per row on CPU-like adapters, a
/// workgroup per row on GPUs).
#[test]
fn rmsnorm_add_and_gather_match_cpu() {
    let (n, d, eps) = (7, 200, 1e-6);
    let (x, w, y0) = (random(n * d, 30), random(d, 31), random(n * d, 32));
    for cpu_like in [true, false] {
        let h = Harness::with_shapes(GpuOptions::default(), Some(cpu_like));
        let (xb, wb, yb) = (h.buffer(&x), h.buffer(&w), h.buffer(&y0));
        let got = h.run(&[h.kernels.rmsnorm_add(&xb, &wb, &yb, d as u32, eps)], &vec![0; n], &yb);
        let mut want = vec![0f32; n * d];
        ops::rmsnorm(&mut want, &x, &w, eps);
        ops::add_assign(&mut want, &y0);
        check_close(&got, &want, 1e-5, &format!("rmsnorm_add cpu_like={cpu_like}"));

        // Output row i normalizes input row logit_rows[i].
        let rows = [5u32, 0, 3];
        let yb = h.buffer(&vec![f32::NAN; rows.len() * d]);
        let (tokens, positions) = (vec![0u32; n], (0..n as u32).collect::<Vec<_>>());
        let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &vec![0; n], logit_rows: &rows, block_tables: &[], masks: None, sampling: None };
        let got = h.run_batch(&[h.kernels.rmsnorm(&xb, &wb, &yb, d as u32, eps, true)], &b, &yb);
        let gathered: Vec<f32> = rows.iter().flat_map(|&r| x[r as usize * d..][..d].to_vec()).collect();
        let mut want = vec![0f32; rows.len() * d];
        ops::rmsnorm(&mut want, &gathered, &w, eps);
        check_close(&got, &want, 1e-5, &format!("rmsnorm gather cpu_like={cpu_like}"));
    }
}

/// `bias_add` adds the bias (from `offset` in its buffer) to the first `width` values of each
/// token's row; the rest of each row, and the rows past the batch, keep their values (f32 adds:
/// bit-exact).
#[test]
fn bias_add_matches_cpu() {
    let h = Harness::new(GpuOptions::default());
    let (rows, n, width, stride, offset) = (6, 4, 70, 96, 12);
    let (y0, bias) = (random(rows * stride, 60), random(offset + width, 61));
    let (yb, bb) = (h.buffer(&y0), h.buffer(&bias));
    let got = h.run(&[h.kernels.bias_add(&yb, &bb, width as u32, stride as u32, offset as u32)], &vec![0; n], &yb);
    let mut want = y0.clone();
    for row in want.chunks_mut(stride).take(n) {
        ops::add_assign(&mut row[..width], &bias[offset..]);
    }
    assert_bits_eq(&got, &want, "bias_add");
}

/// `rope_kv` with GGML-normal and NeoX pairs: q rotated in place (k and v stay as they were in
/// qkv), k rotated and v copied, as f16 or f32, into the cache slot the block table gives each token's
/// (sequence, position), every other slot untouched. Two sequences over scattered blocks, one
/// crossing a block boundary within the batch. With Gemma 3's q/k norms first: each query head
/// normalized with the first head_dim weights, each key head with the next head_dim, in place
/// in qkv too, v untouched.
#[test]
fn rope_kv_matches_cpu_and_fills_paged_cache_slots() {
    for kv in [KvType::F16, KvType::F32] {
        rope_kv_case(Harness::with_limits(GpuOptions { kv, ..GpuOptions::default() }, None, ROPE_LIMITS), kv);
    }
}

/// The kernels' table, rope[pos][i] = (cos, sin): ops::rope turns the pairs (1, 0) into exactly
/// that, so the GPU and the CPU rotate by the same f32 values.
fn rope_table(hd: usize, base: f32) -> Vec<f32> {
    let mut table = Vec::new();
    for pos in 0..ROPE_LIMITS.context {
        let mut unit: Vec<f32> = (0..hd).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
        ops::rope(&mut unit, hd, pos as f64, base, RopeStyle::Normal);
        table.extend(unit);
    }
    table
}

const ROPE_LIMITS: Limits = Limits { max_batch_tokens: 32, context: 64, max_seqs: 2, block_size: 16, n_blocks: 8, kv_bytes_per_token: 0, max_logit_rows: 32, max_draft: 0 };

fn rope_kv_case(h: Harness, kv: KvType) {
    let tables: [&[u32]; 2] = [&[5, 2, 7, 0], &[1, 6, 3, 4]];
    let items: Vec<(u32, u32)> = (13..19).map(|p| (0, p)).chain([(1, 0), (1, 50), (1, 63)]).collect();
    let (n, bs, base) = (items.len(), ROPE_LIMITS.block_size, 10000.0);
    let tokens = vec![0u32; n];
    let seq_ids: Vec<u32> = items.iter().map(|i| i.0).collect();
    let positions: Vec<u32> = items.iter().map(|i| i.1).collect();
    let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &[], block_tables: &tables, masks: None, sampling: None };
    for dims in kernel_cases::shapes() {
        let (hd, stride) = (dims.head_dim as usize, dims.qkv_stride as usize);
        let (q_dim, kv_dim) = (dims.n_heads as usize * hd, dims.n_kv_heads as usize * hd);
        let table = rope_table(hd, base);
        let slots = (ROPE_LIMITS.n_blocks * bs) as usize;
        let mut qkv = random(n * stride, 80 + hd as u64);
        // f16's edge cases in the first token's v: its largest value, overflow to infinity,
        // ties to even, values below its smallest normal (flushed to zero), an f32 subnormal.
        let edges = [65504.0, 65519.0, 65520.0, -1e6, 1e-7, 2.9802322e-8, 4.4703484e-8, 1.000_488_3, 1.001_464_8, -0.0, 6.097555e-5, 1e-45];
        qkv[q_dim + kv_dim..][..edges.len()].copy_from_slice(&edges);
        let (k0, v0) = (kernel_cases::random_kv(kv, slots * kv_dim, 81), kernel_cases::random_kv(kv, slots * kv_dim, 82));
        let (eps, norm) = (1e-6, random(2 * hd, 71 + hd as u64));
        for (style, qk_norm) in [(RopeStyle::Normal, false), (RopeStyle::Neox, false), (RopeStyle::Neox, true), (RopeStyle::Normal, true)] {
            let (qb, rb, nb) = (h.buffer(&qkv), h.buffer(&table), h.buffer(&norm));
            let (kb, vb) = (h.words(&kernel_cases::kv_words(kv, &k0)), h.words(&kernel_cases::kv_words(kv, &v0)));
            let rope_kv = RopeKv { table: &rb, k_cache: &kb, v_cache: &vb, dims, neox: style == RopeStyle::Neox };
            let got = h.run_batch(&[h.kernels.rope_kv(&qb, rope_kv, qk_norm.then_some(QkNorm { weight: &nb, eps }))], &b, &qb);
            let (mut want, mut want_k, mut want_v) = (qkv.clone(), k0.clone(), v0.clone());
            for (row, &(seq, pos)) in want.chunks_mut(stride).zip(&items) {
                if qk_norm {
                    let (q, rest) = row.split_at_mut(q_dim);
                    ops::rmsnorm_in_place(q, &norm[..hd], eps);
                    ops::rmsnorm_in_place(&mut rest[..kv_dim], &norm[hd..], eps);
                }
                ops::rope(&mut row[..q_dim], hd, pos as f64, base, style);
                let mut k = row[q_dim..][..kv_dim].to_vec();
                ops::rope(&mut k, hd, pos as f64, base, style);
                let slot = (tables[seq as usize][(pos / bs) as usize] * bs + pos % bs) as usize;
                want_k[slot * kv_dim..][..kv_dim].copy_from_slice(&k);
                want_v[slot * kv_dim..][..kv_dim].copy_from_slice(&row[q_dim + kv_dim..][..kv_dim]);
            }
            let what = format!("{dims:?} {style:?} {kv:?} qk_norm={qk_norm}");
            check_close(&got, &want, if qk_norm { 1e-5 } else { 1e-6 }, &format!("qkv {what}"));
            // v is copied: its cached words are exactly the f32 values, or the f16 ones rounded
            // to nearest even, and slots the batch does not write keep theirs.
            assert_eq!(h.read_words(&vb), kernel_cases::kv_words(kv, &want_v), "v cache {what}");
            // k is rotated (and normalized) on the GPU: within f32 rounding, then within half an
            // f16 step.
            let tol = if kv == KvType::F16 {
                5e-4
            } else if qk_norm {
                1e-5
            } else {
                1e-6
            };
            check_close(&kernel_cases::kv_values(kv, &h.read_words(&kb)), &want_k, tol, &format!("k cache {what}"));
        }
    }
}

/// The q|k|v matmul with RoPE and the KV write in its epilogue equals the matmul followed by
/// `rope_kv`: q in qkv, k and v in their cache slots, every other slot untouched. Both kernel
/// shapes (GPUs' with the folded RMSNorm), GGML-normal and NeoX pairs, f16 and f32 caches,
/// decode and prefill batches over two sequences' scattered blocks, widths giving 4 and 32 rows
/// a workgroup, q, k and v as one matrix or three (Q4_K_M files' mixed types), and with Qwen2's
/// bias (added in the epilogue against `bias_add`).
#[test]
fn matmul_with_folded_rope_kv_matches_matmul_then_rope_kv() {
    for kv in [KvType::F16, KvType::F32] {
        for cpu_like in [true, false] {
            folded_rope_case(&Harness::with_limits(GpuOptions { kv, ..GpuOptions::default() }, Some(cpu_like), ROPE_LIMITS), kv, cpu_like);
        }
    }
}

fn folded_rope_case(h: &Harness, kv: KvType, cpu_like: bool) {
    let tables: [&[u32]; 2] = [&[5, 2, 7, 0], &[1, 6, 3, 4]];
    let items: Vec<(u32, u32)> = (13..19).map(|p| (0, p)).chain([(1, 0), (1, 50), (1, 63)]).collect();
    let slots = (ROPE_LIMITS.n_blocks * ROPE_LIMITS.block_size) as usize;
    let ty = GgmlType::Q4_1;
    for dims in kernel_cases::shapes() {
        let (hd, m) = (dims.head_dim as usize, dims.qkv_stride as usize);
        let (q_dim, kv_dim) = (dims.n_heads as usize * hd, dims.n_kv_heads as usize * hd);
        let rb = h.buffer(&rope_table(hd, 10000.0));
        for k in [96usize, 512] {
            let data = random_blocks(ty, m, k, 90 + k as u64);
            let row_bytes = ty.row_bytes(k as u64).unwrap() as usize;
            let matrix = |r0: usize, rows: usize| h.upload(1 << 20, "qkv", ty, &data[r0 * row_bytes..(r0 + rows) * row_bytes], rows, k, false);
            let whole = vec![(matrix(0, m), 0u32)];
            let parts: Vec<(GpuTensor, u32)> = [(0, q_dim), (q_dim, kv_dim), (q_dim + kv_dim, kv_dim)].iter().map(|&(r0, rows)| (matrix(r0, rows), r0 as u32)).collect();
            // The norm weights, then the q|k|v bias (Qwen2), in one buffer.
            let nwb = h.buffer(&[random(k, 91), random(m, 95)].concat());
            let norm = (!cpu_like).then_some(Norm { weight: &nwb, eps: 1e-5 });
            for (runs, split) in [(&whole, false), (&parts, true)] {
                assert!(h.kernels.folds_rope(runs, dims));
                for n in [1usize, 5, 9] {
                    let (tokens, seq_ids, positions) = (vec![0u32; n], items[..n].iter().map(|i| i.0).collect::<Vec<_>>(), items[..n].iter().map(|i| i.1).collect::<Vec<_>>());
                    let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &[], block_tables: &tables, masks: None, sampling: None };
                    let xb = h.buffer(&random(n * k, 92 + n as u64));
                    let (k0, v0) = (kernel_cases::random_kv(kv, slots * kv_dim, 93), kernel_cases::random_kv(kv, slots * kv_dim, 94));
                    for (neox, biased) in [(false, false), (true, false), (false, true), (true, true)] {
                        let what = format!("{dims:?} k={k} n={n} neox={neox} bias={biased} split={split} {kv:?} cpu_like={cpu_like}");
                        let bias = biased.then_some(QkvBias { buffer: &nwb, offset: k as u32 });
                        let caches = || (h.words(&kernel_cases::kv_words(kv, &k0)), h.words(&kernel_cases::kv_words(kv, &v0)));
                        let (qa, (ka, va)) = (h.buffer(&vec![0f32; n * m]), caches());
                        let mut ops: Vec<Op> = runs.iter().flat_map(|(w, col)| h.kernels.matmul_normed(w, &xb, norm, &qa, OutCols { stride: m as u32, col: *col }, Count::Tokens)).collect();
                        ops.extend(bias.map(|b| h.kernels.bias_add(&qa, b.buffer, m as u32, m as u32, b.offset)));
                        ops.push(h.kernels.rope_kv(&qa, RopeKv { table: &rb, k_cache: &ka, v_cache: &va, dims, neox }, None));
                        let want = h.run_batch(&ops, &b, &qa);
                        let (qb, (kb, vb)) = (h.buffer(&vec![f32::NAN; n * m]), caches());
                        let rope = RopeKv { table: &rb, k_cache: &kb, v_cache: &vb, dims, neox };
                        let ops: Vec<Op> = runs.iter().flat_map(|(w, col)| h.kernels.matmul_rope_kv(w, &xb, norm, &qb, *col, rope, bias)).collect();
                        let got = h.run_batch(&ops, &b, &qb);
                        let q = |rows: &[f32]| rows.chunks(m).flat_map(|r| r[..q_dim].to_vec()).collect::<Vec<_>>();
                        check_close(&q(&got), &q(&want), 1e-6, &format!("q {what}"));
                        // Rotations may round differently in the last f32 bit: an f16 step at most.
                        let tol = if kv == KvType::F32 { 1e-6 } else { 1e-3 };
                        check_close(&kernel_cases::kv_values(kv, &h.read_words(&kb)), &kernel_cases::kv_values(kv, &h.read_words(&ka)), tol, &format!("k cache {what}"));
                        // v is not rotated: the same sums (and bias), so the same words.
                        assert_eq!(h.read_words(&vb), h.read_words(&va), "v cache {what}");
                    }
                }
            }
        }
    }
}
