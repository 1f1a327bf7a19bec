//! One typed launcher per shader in `shaders/`. A launcher builds an [`Op`]: a cached pipeline, a
//! bind group made once over a uniform of the kernel's params struct, and how its grid grows with
//! the batch. The forward pass is a list of Ops encoded into one compute pass per step.
//!
//! Each kernel family's launchers and `#[repr(C)]` params structs (field for field the WGSL
//! uniform) live in their own file; this one holds the pipeline cache and the plumbing.

mod attention;
mod bias;
mod embed;
mod matmul;
mod norm;
mod probes;
mod rope;
mod sampling;
mod shader;

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use wgpu::util::DeviceExt;

use super::context::KvType;
use crate::gguf::GgmlType;
use shader::{Access, Shader};

pub use attention::{AttnDims, AttnPlan, ATTN_SPLIT_MAX_TOKENS};
pub use matmul::{logit_partial_group, LogitPartials, Norm, OutCols};
pub use rope::{QkNorm, QkvBias, RopeKv};
pub use sampling::{sample_rows, SampleEdit, SampleRow, TOPK_MAX, TOPK_WORDS};

/// Browsers want subgroup use declared; naga (native) rejects the directive and needs none.
pub const SUBGROUP_ENABLE: &str = if cfg!(target_arch = "wasm32") { "enable subgroups;\n" } else { "" };

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
    /// `(heads, n, 1)` when the step's KV span is longer than `chunk`, else no launch (the
    /// split attention's merge: one chunk needs none).
    Merge { heads: u32, chunk: u32 },
    /// `(x, 1, 1)` whatever the batch.
    Fixed { x: u32 },
    /// `(ceil(span / (per * 64)), heads, n)`: `per` cached positions per thread up to the
    /// step's KV span (largest position + 1, at most `max`).
    Span { heads: u32, per: u32, max: u32 },
}

/// Override constants of one specialization, by WGSL name; all are integers or booleans (0/1).
type Overrides = Vec<(&'static str, u32)>;

/// What a pipeline is compiled from: the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: Shader,
    quant: Option<GgmlType>,
    overrides: Overrides,
}

/// A pipeline compiled on first use. CPU JITs (SwiftShader) take up to a second per pipeline,
/// and some variants (the LM head over several logit rows) serve only batching and speculation;
/// [`Op::prepare`] compiles at load the ones a single sequence needs.
struct LazyPipeline {
    device: wgpu::Device,
    shader: Shader,
    module: wgpu::ShaderModule,
    layout: Rc<wgpu::PipelineLayout>,
    overrides: Overrides,
    pipeline: OnceCell<wgpu::ComputePipeline>,
}

impl LazyPipeline {
    fn get(&self) -> &wgpu::ComputePipeline {
        self.pipeline.get_or_init(|| {
            let constants: Vec<(&str, f64)> = self.overrides.iter().map(|&(n, v)| (n, v as f64)).collect();
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(self.shader.label()),
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
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, n_logit_rows: u32) -> bool {
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
            Grid::Merge { .. } | Grid::Span { .. } => n_tokens,
            Grid::Fixed { .. } => 1,
        };
        self.variants.iter().find(|v| n_of(v.grid) <= v.max_n)
    }

    /// As [`Op::encode`], with the step's KV span (largest position + 1) for span grids.
    /// Returns whether it dispatched (an empty grid does not).
    pub fn encode_span(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, n_logit_rows: u32, span: u32) -> bool {
        let Some(v) = self.variant(n_tokens, n_logit_rows) else {
            return false;
        };
        let count = |c: Count| count(c, n_tokens, n_logit_rows);
        let (x, y, z) = match v.grid {
            Grid::Rows { x, per, of } => (x, count(of).div_ceil(per), 1),
            Grid::Flat { threads, wg, of } => ((count(of) * threads).div_ceil(wg), 1, 1),
            Grid::PerItem { of } => (count(of), 1, 1),
            Grid::Merge { heads, chunk } => (if span > chunk { heads } else { 0 }, n_tokens, 1),
            Grid::Fixed { x } => (x, 1, 1),
            Grid::Span { heads, per, max } => (span.min(max).div_ceil(per * 64), heads, n_tokens),
        };
        if x == 0 || y == 0 || z == 0 {
            return false;
        }
        pass.set_pipeline(v.pipeline.get());
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(x, y, z);
        true
    }
}

fn count(c: Count, n_tokens: u32, n_logit_rows: u32) -> u32 {
    match c {
        Count::Tokens => n_tokens,
        Count::LogitRows => n_logit_rows,
    }
}

/// A bind group layout and the pipeline layout over it.
type Layout = (Rc<wgpu::BindGroupLayout>, Rc<wgpu::PipelineLayout>);

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
    /// The KV cache's element type the cache-reading and -writing kernels are compiled for.
    kv: KvType,
    pipelines: RefCell<HashMap<PipelineKey, Rc<LazyPipeline>>>,
    layouts: RefCell<HashMap<&'static [Access], Layout>>,
    /// Stand-ins for writable bindings a kernel's variant leaves unused (the KV cache of a matmul
    /// without RoPE): two, since browsers refuse one buffer in two writable bindings.
    spare: [wgpu::Buffer; 2],
}

impl Kernels {
    /// `batch` is the step's batch description buffer the kernels read (see batch.wgsl).
    pub fn new(device: &wgpu::Device, batch: &wgpu::Buffer, cpu_like: bool, subgroup_rows: u32, kv: KvType) -> Kernels {
        let spare = || device.create_buffer(&wgpu::BufferDescriptor { label: Some("unused binding"), size: 16, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
        Kernels { device: device.clone(), batch: batch.clone(), cpu_like, subgroup_rows, kv, pipelines: RefCell::new(HashMap::new()), layouts: RefCell::new(HashMap::new()), spare: [spare(), spare()] }
    }

    fn layout(&self, access: &'static [Access]) -> Layout {
        if let Some(l) = self.layouts.borrow().get(access) {
            return l.clone();
        }
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
        for (i, &a) in access.iter().enumerate() {
            entries.push(entry(i as u32 + 1, wgpu::BufferBindingType::Storage { read_only: a == Access::Read }));
        }
        let bgl = Rc::new(self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries }));
        let pl = Rc::new(self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: None, bind_group_layouts: &[Some(&bgl)], immediate_size: 0 }));
        self.layouts.borrow_mut().insert(access, (bgl.clone(), pl.clone()));
        (bgl, pl)
    }

    /// The pipeline of `shader` specialized for `quant` (weight-reading shaders) and `overrides`.
    fn pipeline(&self, shader: Shader, quant: Option<GgmlType>, overrides: &[(&'static str, u32)]) -> Rc<LazyPipeline> {
        let needs = shader.needs();
        assert_eq!(quant.is_some(), needs.quant, "{shader:?} takes a quant type exactly when it reads weights");
        let key = PipelineKey { shader, quant, overrides: overrides.to_vec() };
        if let Some(p) = self.pipelines.borrow().get(&key) {
            return p.clone();
        }
        let prelude = if needs.batch { shader::BATCH_WGSL } else { "" };
        let attn = if needs.attn_params { shader::ATTN_PARAMS_WGSL } else { "" };
        let mm = if needs.matmul_params { shader::MATMUL_PARAMS_WGSL } else { "" };
        let kv = match (needs.kv, self.kv) {
            (true, KvType::F16) => shader::KV_F16_WGSL,
            (true, KvType::F32) => shader::KV_F32_WGSL,
            (false, _) => "",
        };
        // Lane sums use subgroup shuffles when a row's lanes (TPR) fit the adapter's subgroups.
        let subgroup = needs.reduce_lanes && overrides.iter().any(|&(n, v)| n == "TPR" && v <= self.subgroup_rows);
        let reduce = match (needs.reduce_lanes, subgroup) {
            (true, true) => shader::REDUCE_SUBGROUP_WGSL,
            (true, false) => shader::REDUCE_WORKGROUP_WGSL,
            _ => "",
        };
        let enable = if subgroup { SUBGROUP_ENABLE } else { "" };
        let rope_store = if needs.rope_store { shader::ROPE_STORE_WGSL } else { "" };
        let quant = quant.map(|q| format!("{}\n{}", shader::X32_WGSL, shader::quant_source(q))).unwrap_or_default();
        let source = format!("{enable}{quant}\n{attn}{mm}\n{kv}\n{prelude}\n{}\n{reduce}\n{rope_store}", shader.source());
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(shader.label()), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let (_, layout) = self.layout(shader.access());
        let pipeline = Rc::new(LazyPipeline { device: self.device.clone(), shader, module, layout, overrides: key.overrides.clone(), pipeline: OnceCell::new() });
        self.pipelines.borrow_mut().insert(key, pipeline.clone());
        pipeline
    }

    /// Builds an Op: a uniform holding `params`, and the bind group over `buffers` (+ the batch
    /// buffer when the variants' shader reads it). All variants share the bindings.
    fn op<P: bytemuck::Pod>(&self, label: &'static str, variants: Vec<Variant>, params: &P, buffers: &[&wgpu::Buffer]) -> Op {
        let shader = variants[0].pipeline.shader;
        let access = shader.access();
        assert!(variants.iter().all(|v| v.pipeline.shader.access() == access), "{label}: variants with different bindings");
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytemuck::bytes_of(params), usage: wgpu::BufferUsages::UNIFORM });
        let batch = Some(&self.batch).filter(|_| shader.needs().batch);
        assert_eq!(buffers.len() + batch.is_some() as usize, access.len(), "{label}: buffers for {shader:?}");
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in buffers.iter().copied().chain(batch).enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        let (layout, _) = self.layout(access);
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(label), layout: &layout, entries: &entries });
        Op { label, variants, bind }
    }

    /// One pipeline with one grid, for any batch size.
    fn single(&self, shader: Shader, quant: Option<GgmlType>, overrides: &[(&'static str, u32)], grid: Grid) -> Vec<Variant> {
        vec![Variant { pipeline: self.pipeline(shader, quant, overrides), grid, max_n: u32::MAX }]
    }
}
