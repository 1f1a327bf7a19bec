//! Each GPU kernel against the CPU reference, natively (lavapipe on CI): on random inputs and on
//! real tensors of the SmolLM2 file. Weight repacking + GPU dequantization is bit-exact.

mod common;
mod kernel_cases;

use ferrolm::cpu::ops;
use ferrolm::gguf::{dequantize, GgmlType, Gguf};
use ferrolm::gpu::kernels::{Count, Kernels, Op, OutCols};
use ferrolm::gpu::weights::GpuTensor;
use ferrolm::gpu::{batch_words, Batch, EngineLimits, GpuContext, GpuOptions};
use kernel_cases::random;
use wgpu::util::DeviceExt;

const LIMITS: EngineLimits = EngineLimits { max_batch_tokens: 32, context: 64, max_seqs: 1, block_size: 16, n_blocks: 4, kv_bytes_per_token: 0 };

struct Harness {
    ctx: GpuContext,
    batch: wgpu::Buffer,
    kernels: Kernels,
    limits: EngineLimits,
}

impl Harness {
    fn new(opts: GpuOptions) -> Harness {
        Self::with_shapes(opts, None)
    }

    /// `cpu_like` forces the kernel shapes for CPU-emulated adapters (Some(true)) or GPUs.
    fn with_shapes(opts: GpuOptions, cpu_like: Option<bool>) -> Harness {
        Self::with_limits(opts, cpu_like, LIMITS)
    }

    fn with_limits(opts: GpuOptions, cpu_like: Option<bool>, limits: EngineLimits) -> Harness {
        let ctx = pollster::block_on(GpuContext::new(opts)).expect("a WebGPU adapter (lavapipe: apt install mesa-vulkan-drivers)");
        let batch = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: batch_words(&limits) as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let kernels = Kernels::new(&ctx.device, &batch, cpu_like.unwrap_or(ctx.info.cpu_like), ctx.info.subgroup_rows);
        Harness { ctx, batch, kernels, limits }
    }

    fn buffer(&self, data: &[f32]) -> wgpu::Buffer {
        self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Runs `ops` for a batch of `tokens` (logit rows: all of them) and reads `out` back.
    fn run(&self, ops: &[Op], tokens: &[u32], out: &wgpu::Buffer) -> Vec<f32> {
        let n = tokens.len();
        let positions: Vec<u32> = (0..n as u32).collect();
        let table: Vec<u32> = (0..self.limits.n_blocks).collect();
        let b = Batch { tokens, positions: &positions, seq_ids: &vec![0; n], logit_rows: &positions, block_tables: &[&table] };
        self.run_batch(ops, &b, out)
    }

    fn run_batch(&self, ops: &[Op], b: &Batch, out: &wgpu::Buffer) -> Vec<f32> {
        let n = b.tokens.len() as u32;
        self.ctx.queue.write_buffer(&self.batch, 0, bytemuck::cast_slice(&b.to_words(&self.limits)));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for op in ops {
                op.encode_span(&mut pass, n, b.logit_rows.len() as u32, b.span());
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        let bytes = pollster::block_on(self.ctx.read_buffer(out, 0, out.size())).unwrap();
        bytemuck::cast_slice(&bytes).to_vec()
    }
}

fn random_blocks(ty: GgmlType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
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
    for ty in ferrolm::gpu::weights::GPU_MATRIX_TYPES.iter().copied() {
        // K-quant rows are whole 256-value super-blocks.
        let (rows, k) = (37, if ty.block_size() == 256 { 512 } else { 96 });
        let data = random_blocks(ty, rows, k, ty.id() as u64 + 1);
        let cpu = cpu_dequant(ty, &data, rows * k);
        for max_binding in [1 << 20, 1500] {
            let w = GpuTensor::upload(&h.ctx.device, &h.ctx.queue, max_binding, "w", ty, &data, rows, k, true).unwrap();
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
        let w = GpuTensor::upload(&h.ctx.device, &h.ctx.queue, 128 << 20, name, info.ty, &data, rows, k, true).unwrap();
        assert_bits_eq(&gpu_dequant(&h, &w), &cpu_dequant(info.ty, &data, rows * k), &format!("{name} ({})", info.ty));
    }
}

fn check_close(gpu: &[f32], cpu: &[f32], tol: f32, what: &str) {
    let worst = kernel_cases::worst_difference(gpu, cpu);
    assert!(worst <= tol, "{what}: worst relative difference {worst}");
}

/// Decode (1 token) and prefill (13 tokens) matmuls, plain, accumulating, split and SwiGLU,
/// against `cpu::ops::matmul` on the dequantized weights; both kernel shapes (CPU-like adapters'
/// matvec, GPUs' matmul), with and without optional features (subgroup shuffles where the
/// adapter has them and widths whose lanes per row fit a subgroup; workgroup memory otherwise).
#[test]
fn matmul_matches_cpu_reference() {
    let portable = GpuOptions::portable();
    for (opts, cpu_like) in [(GpuOptions::default(), true), (GpuOptions::default(), false), (portable, false)] {
        let h = Harness::with_shapes(opts, Some(cpu_like));
        println!("cpu_like={cpu_like} subgroups={} subgroup_rows={}", h.ctx.info.subgroups, h.ctx.info.subgroup_rows);
        for (ty, k) in ferrolm::gpu::weights::GPU_MATRIX_TYPES.iter().flat_map(|&t| if t.block_size() == 256 { [(t, 256), (t, 768)] } else { [(t, 160), (t, 640)] }) {
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
                    let w = GpuTensor::upload(&h.ctx.device, &h.ctx.queue, max_binding, "w", ty, &data, m, k, true).unwrap();
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
                let w = GpuTensor::upload(&h.ctx.device, &h.ctx.queue, 1 << 20, "w", ty, &data, m, k, false).unwrap();
                let (xb, yb) = (h.buffer(&x), h.buffer(&vec![0f32; n * m / 2]));
                let ops = h.kernels.matmul(&w, &xb, &yb, OutCols { stride: (m / 2) as u32, col: 0 }, false, Count::Tokens, true);
                let got = h.run(&ops, &vec![0; n], &yb);
                let mut full = vec![0f32; n * m];
                ops::matmul(&mut full, &x, &wf, n, k, m);
                let mut want = Vec::new();
                for row in full.chunks(m) {
                    let (mut g, u) = (row[..m / 2].to_vec(), &row[m / 2..]);
                    ops::silu_mul(&mut g, u);
                    want.extend(g);
                }
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
    let got = h.run(&[h.kernels.argmax(&lb, &rb, vocab as u32)], &vec![0; n], &rb);
    let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    let want: Vec<u32> = logits.chunks(vocab).map(ferrolm::generate::argmax).collect();
    assert_eq!(got, want);
    assert_eq!(got[1], 10);
}

/// GPU top-64 with its log-sum-exp against the CPU's sorted selection: rows with ties across the
/// threshold (lowest ids must win), -inf, repeated maxima, and vocabularies that are not a
/// multiple of the workgroup or smaller than k.
#[test]
fn topk_matches_cpu_selection_exactly() {
    use ferrolm::gpu::kernels::{TOPK_MAX, TOPK_WORDS};
    use ferrolm::sampler::TopLogits;
    let h = Harness::new(GpuOptions::default());
    for vocab in [1000usize, 49_152 + 7, 40] {
        let n = 4;
        let mut logits = random(n * vocab, vocab as u64);
        // Row 1: many exact ties at the boundary value, row 2: coarse values (ties everywhere)
        // and -inf, row 3: all equal.
        for i in 0..vocab {
            if i % 3 == 0 {
                logits[vocab + i] = 0.5;
            }
            logits[2 * vocab + i] = (logits[2 * vocab + i] * 4.0).round();
            logits[3 * vocab + i] = -1.25;
        }
        logits[2 * vocab + 5] = f32::NEG_INFINITY;
        logits[10] = 9.0;
        logits[vocab - 1] = 9.0;
        let (lb, rb) = (h.buffer(&logits), h.buffer(&vec![0f32; n * TOPK_WORDS]));
        let got = h.run(&[h.kernels.topk(&lb, &rb, vocab as u32)], &vec![0; n], &rb);
        let words: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        for (r, row) in logits.chunks(vocab).enumerate() {
            let gpu = TopLogits::from_words(&words[r * TOPK_WORDS..][..TOPK_WORDS], TOPK_MAX);
            let cpu = TopLogits::from_logits(row, TOPK_MAX);
            assert_eq!(gpu.top, cpu.top, "vocab {vocab} row {r}");
            assert!((gpu.lse - cpu.lse).abs() <= 1e-5 * (1.0 + cpu.lse.abs()), "vocab {vocab} row {r}: lse {} vs {}", gpu.lse, cpu.lse);
        }
    }
}

/// Attention over a paged KV cache against a direct f64 computation (tests/kernel_cases):
/// GQA groups of 1-4 heads, head sizes 32-256, full and sliding windows, three sequences with
/// scattered blocks. A decode batch (the GPU's split-and-merge path over three 256-position chunks) and a
/// prefill batch whose 8-token tiles mix sequences (the GPU's tiled path), each with GPU shapes
/// and with the CPU-adapter passes.
#[test]
fn attention_matches_cpu_over_paged_cache() {
    use kernel_cases::{block_tables, decode_batch, prefill_batch, reference, shapes, worst_difference, LIMITS as ATTN_LIMITS};
    use ferrolm::gpu::kernels::ATTN_SPLIT_MAX_TOKENS;
    let tables = block_tables();
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| &t[..]).collect();
    let (decode, prefill) = (decode_batch(), prefill_batch());
    assert!(decode.len() as u32 <= ATTN_SPLIT_MAX_TOKENS && prefill.len() as u32 > ATTN_SPLIT_MAX_TOKENS);
    for cpu_like in [false, true] {
        let h = Harness::with_limits(GpuOptions::default(), Some(cpu_like), ATTN_LIMITS);
        for dims in shapes() {
            let slots = (ATTN_LIMITS.n_blocks * ATTN_LIMITS.block_size * dims.n_kv_heads * dims.head_dim) as usize;
            let (k, v) = (random(slots, 40 + dims.head_dim as u64), random(slots, 41 + dims.head_dim as u64));
            let plan = h.kernels.attention_plan(ATTN_LIMITS.max_batch_tokens, dims, ATTN_LIMITS.context, h.ctx.info.max_binding_size);
            assert_eq!(plan.passes, cpu_like);
            let scratch = h.buffer(&vec![0f32; plan.scratch_floats as usize]);
            let (kb, vb) = (h.buffer(&k), h.buffer(&v));
            for (name, items) in [("decode", &decode), ("prefill", &prefill)] {
                let n = items.len();
                let qkv = random(n * dims.qkv_stride as usize, 50 + n as u64);
                let (qb, ob) = (h.buffer(&qkv), h.buffer(&vec![0f32; n * (dims.n_heads * dims.head_dim) as usize]));
                let tokens = vec![0u32; n];
                let positions: Vec<u32> = items.iter().map(|i| i.1).collect();
                let seq_ids: Vec<u32> = items.iter().map(|i| i.0).collect();
                let b = Batch { tokens: &tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &[], block_tables: &table_refs };
                for window in [0u32, 100] {
                    let scale = 1.0 / (dims.head_dim as f32).sqrt();
                    let ops = h.kernels.attention(&qb, &kb, &vb, &ob, dims, scale, window, &plan, &scratch);
                    let got = h.run_batch(&ops, &b, &ob);
                    let worst = worst_difference(&got, &reference(dims, items, &qkv, &k, &v, &tables, scale, window));
                    assert!(worst <= 2e-5, "{name} {dims:?} window={window} cpu_like={cpu_like}: worst relative difference {worst}");
                }
            }
        }
    }
}
