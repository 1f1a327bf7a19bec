//! One typed launcher per shader in `shaders/`. A launcher builds an [`Op`]: a cached pipeline, a
//! bind group made once, and how its grid grows with the batch. The forward pass is a list of
//! Ops encoded into one compute pass per step.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wgpu::util::DeviceExt;

use super::weights::{GpuTensor, TensorPart};
use crate::gguf::GgmlType;
use crate::model::Activation;

const BATCH_WGSL: &str = include_str!("../../../shaders/batch.wgsl");

/// Browsers want subgroup use declared; naga (native) rejects the directive and needs none.
pub const SUBGROUP_ENABLE: &str = if cfg!(target_arch = "wasm32") { "enable subgroups;\n" } else { "" };

fn quant_source(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => include_str!("../../../shaders/quant_f32.wgsl"),
        GgmlType::F16 => include_str!("../../../shaders/quant_f16.wgsl"),
        GgmlType::Q4_0 => include_str!("../../../shaders/quant_q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../../shaders/quant_q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("../../../shaders/quant_q5_0.wgsl"),
        GgmlType::Q5_1 => include_str!("../../../shaders/quant_q5_1.wgsl"),
        GgmlType::Q8_0 => include_str!("../../../shaders/quant_q8_0.wgsl"),
        GgmlType::Q4_K => include_str!("../../../shaders/quant_q4_k.wgsl"),
        GgmlType::Q6_K => include_str!("../../../shaders/quant_q6_k.wgsl"),
        other => unreachable!("{other} is refused at upload (GPU_MATRIX_TYPES)"),
    }
}

/// Which batch count sizes a grid.
#[derive(Clone, Copy, Debug)]
pub enum Count {
    Tokens,
    LogitRows,
}

#[derive(Clone, Copy, Debug)]
enum Grid {
    /// `(x, ceil(n / per), 1)`.
    Rows { x: u32, per: u32, of: Count },
    /// `(ceil(n * threads / wg), 1, 1)`: one thread per item part, `wg` per workgroup.
    Flat { threads: u32, wg: u32, of: Count },
    /// `(n, 1, 1)`: one workgroup per token or logit row.
    PerItem { of: Count },
    /// `(heads, n, 1)`.
    Heads { heads: u32 },
    /// `(x, 1, 1)` whatever the batch.
    Fixed { x: u32 },
    /// `(ceil(span / (per * 64)), heads, n)`: `per` cached positions per thread up to the
    /// step's KV span (largest position + 1, at most `max`).
    Span { heads: u32, per: u32, max: u32 },
}

/// A pipeline compiled on first use. CPU JITs (SwiftShader) take up to a second per pipeline,
/// and some variants (the LM head over several logit rows) serve only batching and speculation;
/// [`Op::prepare`] compiles at load the ones a single sequence needs.
struct LazyPipeline {
    device: wgpu::Device,
    label: String,
    module: wgpu::ShaderModule,
    layout: Rc<wgpu::PipelineLayout>,
    constants: Vec<(String, f64)>,
    pipeline: std::cell::OnceCell<wgpu::ComputePipeline>,
}

impl LazyPipeline {
    fn get(&self) -> &wgpu::ComputePipeline {
        self.pipeline.get_or_init(|| {
            let constants: Vec<(&str, f64)> = self.constants.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&self.label),
                layout: Some(&self.layout),
                module: &self.module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, zero_initialize_workgroup_memory: false },
                cache: None,
            })
        })
    }
}

/// A pipeline and the grid it runs with, used for batches of at most `max_n` items.
struct Variant {
    pipeline: Rc<LazyPipeline>,
    grid: Grid,
    max_n: u32,
}

/// One recorded dispatch: a bind group made once, and one or more specializations of the kernel
/// (a decode GEMV and a prefill GEMM share bindings and differ in their override constants).
pub struct Op {
    pub label: &'static str,
    variants: Vec<Variant>,
    bind: wgpu::BindGroup,
}

impl Op {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, n_logit_rows: u32) {
        self.encode_span(pass, n_tokens, n_logit_rows, u32::MAX)
    }

    /// Compiles the pipeline a batch of `n_tokens` tokens and `n_logit_rows` logit rows runs.
    pub fn prepare(&self, n_tokens: u32, n_logit_rows: u32) {
        if let Some(v) = self.variant(n_tokens, n_logit_rows) {
            v.pipeline.get();
        }
    }

    /// Compiles what one sequence runs: decode (1 token) and prefill (up to `max_tokens`), with
    /// one logit row.
    pub fn prepare_single_sequence(&self, max_tokens: u32) {
        self.prepare(1, 1);
        self.prepare(max_tokens, 1);
    }

    fn variant(&self, n_tokens: u32, n_logit_rows: u32) -> Option<&Variant> {
        let n_of = |g: Grid| match g {
            Grid::Rows { of, .. } | Grid::Flat { of, .. } | Grid::PerItem { of } => count(of, n_tokens, n_logit_rows),
            Grid::Heads { .. } | Grid::Span { .. } => n_tokens,
            Grid::Fixed { .. } => 1,
        };
        self.variants.iter().find(|v| n_of(v.grid) <= v.max_n)
    }

    /// As [`Op::encode`], with the step's KV span (largest position + 1) for span grids.
    pub fn encode_span(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, n_logit_rows: u32, span: u32) {
        let Some(v) = self.variant(n_tokens, n_logit_rows) else { return };
        let count = |c: Count| count(c, n_tokens, n_logit_rows);
        let (x, y, z) = match v.grid {
            Grid::Rows { x, per, of } => (x, count(of).div_ceil(per), 1),
            Grid::Flat { threads, wg, of } => ((count(of) * threads).div_ceil(wg), 1, 1),
            Grid::PerItem { of } => (count(of), 1, 1),
            Grid::Heads { heads } => (heads, n_tokens, 1),
            Grid::Fixed { x } => (x, 1, 1),
            Grid::Span { heads, per, max } => (span.min(max).div_ceil(per * 64), heads, n_tokens),
        };
        if x == 0 || y == 0 || z == 0 {
            return;
        }
        pass.set_pipeline(v.pipeline.get());
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

fn count(c: Count, n_tokens: u32, n_logit_rows: u32) -> u32 {
    match c {
        Count::Tokens => n_tokens,
        Count::LogitRows => n_logit_rows,
    }
}

/// Where a matmul writes: row stride and first column of `y`.
#[derive(Clone, Copy, Debug)]
pub struct OutCols {
    pub stride: u32,
    pub col: u32,
}

/// Shapes shared by the attention kernels.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub qkv_stride: u32,
}

/// Cached positions per workgroup of the split decode attention (CHUNK of attention.wgsl and
/// attn_combine.wgsl).
const ATTN_CHUNK: u32 = 256;
/// Batches up to this many tokens run the split decode attention; larger ones the tiled kernel.
pub const ATTN_SPLIT_MAX_TOKENS: u32 = 16;

/// How a model's attention runs ([`Kernels::attention_plan`]).
#[derive(Clone, Copy, Debug)]
pub struct AttnPlan {
    /// Three barrier-free passes through a scores buffer (CPU-emulated adapters).
    pub passes: bool,
    /// Positions per sequence.
    pub context: u32,
    /// Scratch entries per (token, head): scores (passes, `context`) or per-chunk softmax states
    /// (split decode, one per chunk of the context).
    pub scratch_stride: u32,
    /// Floats of the scratch buffer.
    pub scratch_floats: u64,
}

/// Pipeline cache and launchers. Pipelines are created once per (shader, quant type, overrides)
/// with explicit layouts, so specializations of one kernel share a bind group.
pub struct Kernels {
    device: wgpu::Device,
    batch: wgpu::Buffer,
    /// CPU-emulated adapters (lavapipe, SwiftShader) run one thread per matmul row best; GPUs want
    /// many threads per row.
    cpu_like: bool,
    /// Lanes per row the matmul may sum with subgroup shuffles (0: workgroup memory).
    subgroup_rows: u32,
    pipelines: RefCell<HashMap<String, Rc<LazyPipeline>>>,
    layouts: RefCell<HashMap<Vec<bool>, (Rc<wgpu::BindGroupLayout>, Rc<wgpu::PipelineLayout>)>>,
}

/// Candidates the top-k kernel returns per row (shaders/topk.wgsl MAX_K).
pub const TOPK_MAX: usize = 64;
/// Words of top-k output per row.
pub const TOPK_WORDS: usize = 2 * TOPK_MAX + 2;

/// Tokens per prefill matmul workgroup: each dequantized weight group is reused this many times.
const MATMUL_TN: u32 = 8;

/// Access of a kernel's storage bindings after the uniform at binding 0, in binding order.
#[derive(Clone, Copy)]
enum Access {
    Read,
    ReadWrite,
}
use Access::{Read, ReadWrite};

impl Kernels {
    /// `batch` is the step's batch description buffer the kernels read (see batch.wgsl).
    pub fn new(device: &wgpu::Device, batch: &wgpu::Buffer, cpu_like: bool, subgroup_rows: u32) -> Kernels {
        Kernels {
            device: device.clone(),
            batch: batch.clone(),
            cpu_like,
            subgroup_rows,
            pipelines: RefCell::new(HashMap::new()),
            layouts: RefCell::new(HashMap::new()),
        }
    }

    fn layout(&self, access: &[Access]) -> (Rc<wgpu::BindGroupLayout>, Rc<wgpu::PipelineLayout>) {
        let key: Vec<bool> = access.iter().map(|a| matches!(a, ReadWrite)).collect();
        if let Some(l) = self.layouts.borrow().get(&key) {
            return l.clone();
        }
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
        for (i, &rw) in key.iter().enumerate() {
            entries.push(entry(i as u32 + 1, wgpu::BufferBindingType::Storage { read_only: !rw }));
        }
        let bgl = Rc::new(self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries }));
        let pl = Rc::new(self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        }));
        self.layouts.borrow_mut().insert(key, (bgl.clone(), pl.clone()));
        (bgl, pl)
    }

    fn pipeline(&self, kernel: &str, body: &str, quant: Option<GgmlType>, constants: &[(&str, f64)], access: &[Access]) -> Rc<LazyPipeline> {
        let key = format!("{kernel}/{quant:?}/{constants:?}");
        if let Some(p) = self.pipelines.borrow().get(&key) {
            return p.clone();
        }
        // Kernels that read the batch description get its accessors (batch.wgsl).
        let prelude = if body.contains("var<storage, read> batch") { BATCH_WGSL } else { "" };
        let attn = if body.contains("AttnParams") { include_str!("../../../shaders/attn_params.wgsl") } else { "" };
        // Kernels that sum lanes get the subgroup or the workgroup-memory reduction.
        let subgroup = body.contains("reduce_lanes(") && constants.iter().any(|&(n, v)| n == "TPR" && v as u32 <= self.subgroup_rows);
        let reduce = match (body.contains("reduce_lanes("), subgroup) {
            (true, true) => include_str!("../../../shaders/reduce_subgroup.wgsl"),
            (true, false) => include_str!("../../../shaders/reduce_workgroup.wgsl"),
            _ => "",
        };
        let enable = if subgroup { SUBGROUP_ENABLE } else { "" };
        // Weight-reading kernels get their quant type's helpers and the shared x-slice helpers.
        let quant = quant.map(|q| format!("{}\n{}", include_str!("../../../shaders/x32.wgsl"), quant_source(q))).unwrap_or_default();
        let source = format!("{enable}{quant}\n{attn}\n{prelude}\n{body}\n{reduce}");
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let (_, layout) = self.layout(access);
        let pipeline = Rc::new(LazyPipeline {
            device: self.device.clone(),
            label: kernel.to_string(),
            module,
            layout,
            constants: constants.iter().map(|&(n, v)| (n.to_string(), v)).collect(),
            pipeline: Default::default(),
        });
        self.pipelines.borrow_mut().insert(key, pipeline.clone());
        pipeline
    }

    /// Builds an Op: a uniform with `params`, the bind group over `buffers` (+ the batch buffer
    /// when `access` says so) and the kernel's variants.
    fn op(&self, label: &'static str, variants: Vec<Variant>, params: &[u32], buffers: &[&wgpu::Buffer], access: &[Access]) -> Op {
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        let batch = Some(&self.batch).filter(|_| access.len() > buffers.len());
        for (i, b) in buffers.iter().copied().chain(batch).enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        let (layout, _) = self.layout(access);
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(label), layout: &layout, entries: &entries });
        Op { label, variants, bind }
    }

    /// One pipeline with one grid, for any batch size.
    fn single(&self, label: &'static str, body: &str, quant: Option<GgmlType>, constants: &[(&str, f64)], access: &[Access], grid: Grid) -> Vec<Variant> {
        vec![Variant { pipeline: self.pipeline(label, body, quant, constants, access), grid, max_n: u32::MAX }]
    }

    /// `y[t][out.col + r] (+)= x[t] . W[r]` for every token (or logit row) `t`; one Op per part
    /// of `w`. With `swiglu`, `w` (one part) holds gate rows then up rows and
    /// `y = silu(gate) * up`.
    pub fn matmul(&self, w: &GpuTensor, x: &wgpu::Buffer, y: &wgpu::Buffer, out: OutCols, accumulate: bool, of: Count, swiglu: bool) -> Vec<Op> {
        let glu = swiglu.then_some(Activation::Silu);
        w.parts.iter().map(|p| self.matmul_part(w, p, x, y, OutCols { stride: out.stride, col: out.col + p.row0 }, accumulate, of, glu)).collect()
    }

    /// The gated FFN's first matmul: `w` (one part) holds gate rows then up rows and
    /// `y = act(gate) * up` (SiLU: SwiGLU, GELU with tanh: GeGLU).
    pub fn matmul_gated(&self, w: &GpuTensor, x: &wgpu::Buffer, y: &wgpu::Buffer, stride: u32, act: Activation) -> Op {
        assert!(w.parts.len() == 1, "fused gate/up weights are uploaded unsplit");
        self.matmul_part(w, &w.parts[0], x, y, OutCols { stride, col: 0 }, false, Count::Tokens, Some(act))
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul_part(&self, w: &GpuTensor, part: &TensorPart, x: &wgpu::Buffer, y: &wgpu::Buffer, out: OutCols, accumulate: bool, of: Count, glu: Option<Activation>) -> Op {
        let swiglu = glu.is_some();
        let m = if swiglu { part.rows / 2 } else { part.rows };
        let access = [Read, Read, ReadWrite, Read];
        let swiglu_c = ("SWIGLU", swiglu as u32 as f64);
        let gelu_c = ("GELU", (glu == Some(Activation::GeluTanh)) as u32 as f64);
        // Each variant: (kernel, source, tokens per workgroup, extra constants, rows per
        // workgroup, largest batch it serves). A decode GEMV and a prefill GEMM per adapter kind.
        let variants: Vec<Variant> = if self.cpu_like {
            let body = include_str!("../../../shaders/matvec.wgsl");
            // (tokens per thread, largest batch): 8 weight rows share each x slice; batches
            // share each weight block across 4 tokens.
            [(1u32, 1u32), (4, u32::MAX)]
                .iter()
                .map(|&(tn, max_n)| {
                    let outs = if swiglu { 4 } else { 8 };
                    let threads = m.div_ceil(outs);
                    // Small workgroups, so both cores (or all) get work on small matrices; one
                    // size for all, so a quant type's matrices share a pipeline (CPU JITs take
                    // up to a second per pipeline; 64 was no faster on the large ones).
                    let wg = 16;
                    let c = [("TN", tn as f64), ("WG", wg as f64)];
                    let pipeline = self.pipeline("matvec", body, Some(w.ty), &c, &access);
                    Variant { pipeline, grid: Grid::Rows { x: threads.div_ceil(wg), per: tn, of }, max_n }
                })
                .collect()
        } else {
            let body = include_str!("../../../shaders/matmul.wgsl");
            let tpr = (1u32 << (w.k / 32).max(1).ilog2()).min(16);
            // Decode batches of up to 8 sequences get TN = 4 (measured faster than TN = 8 there).
            [(1u32, 1u32), (4, 8), (MATMUL_TN, u32::MAX)]
                .iter()
                .map(|&(tn, max_n)| {
                    let pipeline = self.pipeline("matmul", body, Some(w.ty), &[("TN", tn as f64), ("TPR", tpr as f64), swiglu_c, gelu_c], &access);
                    Variant { pipeline, grid: Grid::Rows { x: m.div_ceil(64 / tpr), per: tn, of }, max_n }
                })
                .collect()
        };
        // matvec.wgsl takes the gate form as a uniform (one pipeline for both forms).
        let glu_p = match glu {
            None => 0,
            Some(Activation::Silu) => 1,
            Some(Activation::GeluTanh) => 2,
        };
        let params = [w.k, m, out.stride, out.col, part.scale_off, accumulate as u32, matches!(of, Count::LogitRows) as u32, glu_p];
        self.op("matmul", variants, &params, &[&part.buffer, x, y], &access)
    }

    /// `y[t] = scale * dequant(W[token t])`, one Op per part of `w` (each fills the tokens whose
    /// row it holds); with `direct`, `y` gets every row in order (tests).
    pub fn embed(&self, w: &GpuTensor, y: &wgpu::Buffer, scale: f32, direct: bool) -> Vec<Op> {
        let threads = w.k / 32;
        let access = [Read, ReadWrite, Read];
        let body = include_str!("../../../shaders/embed.wgsl");
        w.parts
            .iter()
            .map(|p| {
                let grid = if direct { Grid::Fixed { x: (p.rows * threads).div_ceil(64) } } else { Grid::Flat { threads, wg: 64, of: Count::Tokens } };
                let variants = self.single("embed", body, Some(w.ty), &[("DIRECT", direct as u32 as f64)], &access, grid);
                let params = [w.k, p.scale_off, p.rows, scale.to_bits(), p.row0, 0, 0, 0];
                self.op("embed", variants, &params, &[&p.buffer, y], &access)
            })
            .collect()
    }

    /// RMSNorm of each token's row of width `d`; `gather` reads the batch's logit rows instead.
    pub fn rmsnorm(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32, gather: bool) -> Op {
        self.rmsnorm_into(x, weight, y, d, eps, gather, false)
    }

    /// `y[t] += rmsnorm(x[t]) * weight`: a post-norm added to the residual stream.
    pub fn rmsnorm_add(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32) -> Op {
        self.rmsnorm_into(x, weight, y, d, eps, false, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_into(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32, gather: bool, add: bool) -> Op {
        let of = if gather { Count::LogitRows } else { Count::Tokens };
        let access = [Read, Read, ReadWrite, Read];
        let serial = self.cpu_like;
        let (wg, grid) = if serial { (4, Grid::Flat { threads: 1, wg: 4, of }) } else { (64, Grid::PerItem { of }) };
        let c = [("ADD", add as u32 as f64), ("SERIAL", serial as u32 as f64), ("WG", wg as f64)];
        let variants = self.single("rmsnorm", include_str!("../../../shaders/rmsnorm.wgsl"), None, &c, &access, grid);
        self.op("rmsnorm", variants, &[d, eps.to_bits(), gather as u32, 0], &[x, weight, y], &access)
    }

    /// `y[t][i] += bias[i]` for `i < width` in every token's row of `stride` values.
    pub fn bias_add(&self, y: &wgpu::Buffer, bias: &wgpu::Buffer, width: u32, stride: u32) -> Op {
        let access = [ReadWrite, Read, Read];
        let variants = self.single("bias_add", include_str!("../../../shaders/bias_add.wgsl"), None, &[], &access, Grid::PerItem { of: Count::Tokens });
        self.op("bias_add", variants, &[width, stride, 0, 0], &[y, bias], &access)
    }

    /// RMSNorm of each query and key head in place in `qkv`; `weight` holds the query norm's
    /// head_dim weights, then the key norm's.
    pub fn head_norm(&self, qkv: &wgpu::Buffer, weight: &wgpu::Buffer, dims: AttnDims, eps: f32) -> Op {
        let access = [ReadWrite, Read, Read];
        let grid = Grid::Heads { heads: dims.n_heads + dims.n_kv_heads };
        let variants = self.single("head_norm", include_str!("../../../shaders/head_norm.wgsl"), None, &[], &access, grid);
        let params = [dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.qkv_stride, eps.to_bits(), 0, 0, 0];
        self.op("head_norm", variants, &params, &[qkv, weight], &access)
    }

    /// RoPE on q (in place in `qkv`) and k, and K/V into the layer's cache.
    pub fn rope_kv(&self, qkv: &wgpu::Buffer, rope: &wgpu::Buffer, k_cache: &wgpu::Buffer, v_cache: &wgpu::Buffer, dims: AttnDims, neox: bool) -> Op {
        let access = [ReadWrite, Read, ReadWrite, ReadWrite, Read];
        let grid = Grid::PerItem { of: Count::Tokens };
        let variants = self.single("rope_kv", include_str!("../../../shaders/rope_kv.wgsl"), None, &[("NEOX", neox as u32 as f64)], &access, grid);
        let params = [dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.qkv_stride];
        self.op("rope_kv", variants, &params, &[qkv, rope, k_cache, v_cache], &access)
    }

    /// How attention runs for a model of `context` positions and batches of up to `tokens`,
    /// and the scratch buffer it needs.
    pub fn attention_plan(&self, tokens: u32, dims: AttnDims, context: u32, max_binding: u64) -> AttnPlan {
        let scores = tokens as u64 * dims.n_heads as u64 * context as u64;
        if self.cpu_like && dims.head_dim % 4 == 0 && scores * 4 <= max_binding {
            return AttnPlan { passes: true, context, scratch_stride: context, scratch_floats: scores };
        }
        let n_chunks = context.div_ceil(ATTN_CHUNK);
        let records = tokens.min(ATTN_SPLIT_MAX_TOKENS) as u64 * dims.n_heads as u64 * n_chunks as u64;
        AttnPlan { passes: false, context, scratch_stride: n_chunks, scratch_floats: records * (dims.head_dim as u64 + 2) }
    }

    /// Causal attention of every token's query heads over its sequence's cached K/V, through
    /// `scratch` ([`AttnPlan::scratch_floats`] floats). GPUs: decode batches split the context
    /// into chunks and merge them (flash-decoding), larger batches run tiled. CPU-emulated
    /// adapters: three barrier-free passes through a scores buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(&self, qkv: &wgpu::Buffer, k_cache: &wgpu::Buffer, v_cache: &wgpu::Buffer, out: &wgpu::Buffer, dims: AttnDims, scale: f32, window: u32, plan: &AttnPlan, scratch: &wgpu::Buffer) -> Vec<Op> {
        let params = [dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.qkv_stride, scale.to_bits(), window, plan.scratch_stride, 0];
        if !plan.passes {
            let chunk = [("CHUNK", ATTN_CHUNK as f64)];
            let access = [Read, Read, Read, ReadWrite, ReadWrite, Read];
            let split = Variant {
                pipeline: self.pipeline("attention", include_str!("../../../shaders/attention.wgsl"), None, &chunk, &access),
                grid: Grid::Span { heads: dims.n_heads, per: ATTN_CHUNK / 64, max: plan.context },
                max_n: ATTN_SPLIT_MAX_TOKENS,
            };
            let tiled = Variant {
                pipeline: self.pipeline("attn_tiled", include_str!("../../../shaders/attn_tiled.wgsl"), None, &[], &access),
                grid: Grid::Rows { x: dims.n_heads, per: 8, of: Count::Tokens },
                max_n: u32::MAX,
            };
            let attend = self.op("attention", vec![split, tiled], &params, &[qkv, k_cache, v_cache, out, scratch], &access);
            let access = [Read, ReadWrite, Read];
            let combine = Variant {
                pipeline: self.pipeline("attn_combine", include_str!("../../../shaders/attn_combine.wgsl"), None, &chunk, &access),
                grid: Grid::Heads { heads: dims.n_heads },
                max_n: ATTN_SPLIT_MAX_TOKENS,
            };
            return vec![attend, self.op("attention", vec![combine], &params, &[scratch, out], &access)];
        }
        let s = scratch;
        // Query heads per thread: the most (up to 4) that share one KV head, so K and V rows
        // are loaded once for all of them.
        let group = dims.n_heads / dims.n_kv_heads;
        let qh = (1..=4u32).rev().find(|q| group % q == 0).unwrap_or(1);
        let c = [("QH", qh as f64)];
        let grid = Grid::Span { heads: dims.n_heads / qh, per: 4, max: plan.context };
        let access = [Read, Read, ReadWrite, Read];
        let scores_op = self.op("attention", self.single("attn_scores", include_str!("../../../shaders/attn_scores.wgsl"), None, &c, &access, grid), &params, &[qkv, k_cache, s], &access);
        let grid = Grid::Flat { threads: dims.n_heads, wg: 16, of: Count::Tokens };
        let access = [ReadWrite, Read];
        let softmax_op = self.op("attention", self.single("attn_softmax", include_str!("../../../shaders/attn_softmax.wgsl"), None, &[], &access, grid), &params, &[s], &access);
        let grid = Grid::Flat { threads: dims.n_heads / qh * dims.head_dim / 4, wg: 16, of: Count::Tokens };
        let access = [Read, Read, ReadWrite, Read];
        let pv_op = self.op("attention", self.single("attn_pv", include_str!("../../../shaders/attn_pv.wgsl"), None, &c, &access, grid), &params, &[s, v_cache, out], &access);
        vec![scores_op, softmax_op, pv_op]
    }

    /// Index of the largest logit of each logit row.
    pub fn argmax(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, vocab: u32) -> Op {
        let access = [Read, ReadWrite, Read];
        let grid = Grid::PerItem { of: Count::LogitRows };
        let variants = self.single("argmax", include_str!("../../../shaders/argmax.wgsl"), None, &[], &access, grid);
        self.op("argmax", variants, &[vocab, 0, 0, 0], &[logits, result], &access)
    }

    /// The [`TOPK_MAX`] largest logits of each logit row, sorted, and the row's log-sum-exp
    /// ([`TOPK_WORDS`] words per row: id/logit pairs, lse, count).
    pub fn topk(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, vocab: u32) -> Op {
        let access = [Read, ReadWrite, Read];
        let grid = Grid::PerItem { of: Count::LogitRows };
        let variants = self.single("topk", include_str!("../../../shaders/topk.wgsl"), None, &[], &access, grid);
        self.op("topk", variants, &[vocab, TOPK_MAX as u32, 0, 0], &[logits, result], &access)
    }

    /// Streaming read of `n_vec4` 16-byte words of `data` by `workgroups` x 64 threads.
    pub fn read_bandwidth(&self, data: &wgpu::Buffer, sink: &wgpu::Buffer, n_vec4: u32, workgroups: u32) -> Op {
        let access = [Read, ReadWrite];
        let variants = self.single("read_bandwidth", include_str!("../../../shaders/read_bandwidth.wgsl"), None, &[], &access, Grid::Fixed { x: workgroups });
        self.op("read_bandwidth", variants, &[n_vec4, 0, 0, 0], &[data, sink], &access)
    }

    /// The arithmetic probe: `workgroups` x 16 threads each run the decode GEMV's Q4_1 inner loop
    /// over 8 rows of `k` values with no storage reads; `unread` only fills the unread bindings.
    /// Returns the Op and the multiply-adds one run does.
    pub fn dequant_probe(&self, unread: &wgpu::Buffer, sink: &wgpu::Buffer, k: u32, workgroups: u32) -> (Op, u64) {
        let access = [Read, Read, ReadWrite];
        let body = include_str!("../../../shaders/dequant_probe.wgsl");
        let variants = self.single("dequant_probe", body, Some(GgmlType::Q4_1), &[], &access, Grid::Fixed { x: workgroups });
        let op = self.op("dequant_probe", variants, &[k, 0, 0, 0], &[unread, unread, sink], &access);
        (op, workgroups as u64 * 16 * 8 * k as u64)
    }
}
