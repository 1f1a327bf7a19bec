//! One typed launcher per shader in `shaders/`. A launcher builds an [`Op`]: a cached pipeline, a
//! bind group made once, and how its grid grows with the batch. The forward pass is a list of
//! Ops encoded into one compute pass per step.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wgpu::util::DeviceExt;

use super::weights::GpuTensor;
use crate::gguf::GgmlType;

const BATCH_WGSL: &str = include_str!("../../shaders/batch.wgsl");

fn quant_source(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => include_str!("../../shaders/quant_f32.wgsl"),
        GgmlType::F16 => include_str!("../../shaders/quant_f16.wgsl"),
        GgmlType::Q4_0 => include_str!("../../shaders/quant_q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../shaders/quant_q4_1.wgsl"),
        GgmlType::Q8_0 => include_str!("../../shaders/quant_q8_0.wgsl"),
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
    /// `(ceil(n * threads / 64), 1, 1)`: one thread per item part.
    Flat { threads: u32, of: Count },
    /// `(n, 1, 1)`: one workgroup per token or logit row.
    PerItem { of: Count },
    /// `(heads, n, 1)`.
    Heads { heads: u32 },
    /// `(x, 1, 1)` whatever the batch.
    Fixed { x: u32 },
}

/// One recorded dispatch.
pub struct Op {
    pub label: &'static str,
    pipeline: Rc<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    grid: Grid,
}

impl Op {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, n_logit_rows: u32) {
        let count = |c: Count| match c {
            Count::Tokens => n_tokens,
            Count::LogitRows => n_logit_rows,
        };
        let (x, y) = match self.grid {
            Grid::Rows { x, per, of } => (x, count(of).div_ceil(per)),
            Grid::Flat { threads, of } => ((count(of) * threads).div_ceil(64), 1),
            Grid::PerItem { of } => (count(of), 1),
            Grid::Heads { heads } => (heads, n_tokens),
            Grid::Fixed { x } => (x, 1),
        };
        if x == 0 || y == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
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

/// Pipeline cache and launchers. Pipelines are created once per (shader, quant type, overrides).
pub struct Kernels {
    device: wgpu::Device,
    batch: wgpu::Buffer,
    cache: RefCell<HashMap<String, Rc<wgpu::ComputePipeline>>>,
}

/// Tokens per matmul workgroup: each dequantized weight group is reused this many times.
const MATMUL_TN: u32 = 8;

impl Kernels {
    /// `batch` is the step's batch description buffer every kernel reads (see batch.wgsl).
    pub fn new(device: &wgpu::Device, batch: &wgpu::Buffer) -> Kernels {
        Kernels { device: device.clone(), batch: batch.clone(), cache: RefCell::new(HashMap::new()) }
    }

    fn pipeline(&self, kernel: &str, body: &str, quant: Option<GgmlType>, constants: &[(&str, f64)]) -> Rc<wgpu::ComputePipeline> {
        let key = format!("{kernel}/{quant:?}/{constants:?}");
        if let Some(p) = self.cache.borrow().get(&key) {
            return p.clone();
        }
        let source = format!("{}\n{BATCH_WGSL}\n{body}", quant.map(quant_source).unwrap_or(""));
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = Rc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        }));
        self.cache.borrow_mut().insert(key, pipeline.clone());
        pipeline
    }

    fn op(&self, label: &'static str, pipeline: Rc<wgpu::ComputePipeline>, params: &[u32], buffers: &[&wgpu::Buffer], grid: Grid) -> Op {
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in buffers.iter().chain([&&self.batch]).enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Op { label, pipeline, bind, grid }
    }

    /// `y[t][out.col + r] (+)= x[t] . W[r]` for every token (or logit row) `t`. With `swiglu`,
    /// `w` holds gate rows then up rows and `y = silu(gate) * up`.
    pub fn matmul(&self, w: &GpuTensor, x: &wgpu::Buffer, y: &wgpu::Buffer, out: OutCols, accumulate: bool, of: Count, swiglu: bool) -> Op {
        let m = if swiglu { w.rows / 2 } else { w.rows };
        let groups = w.k / 32;
        let tpr = (1u32 << groups.max(1).ilog2()).min(16);
        let constants = [("TN", MATMUL_TN as f64), ("TPR", tpr as f64), ("SWIGLU", swiglu as u32 as f64)];
        let pipeline = self.pipeline("matmul", include_str!("../../shaders/matmul.wgsl"), Some(w.ty), &constants);
        let params = [w.k, m, out.stride, out.col, w.scale_off, accumulate as u32, matches!(of, Count::LogitRows) as u32, 0];
        let grid = Grid::Rows { x: m.div_ceil(64 / tpr), per: MATMUL_TN, of };
        self.op("matmul", pipeline, &params, &[&w.buffer, x, y], grid)
    }

    /// `y[t] = scale * dequant(W[token t])`; with `direct`, rows `0..w.rows` (tests).
    pub fn embed(&self, w: &GpuTensor, y: &wgpu::Buffer, scale: f32, direct: bool) -> Op {
        let pipeline = self.pipeline("embed", include_str!("../../shaders/embed.wgsl"), Some(w.ty), &[("DIRECT", direct as u32 as f64)]);
        let params = [w.k, w.scale_off, w.rows, scale.to_bits()];
        let threads = w.k / 32;
        let grid = if direct {
            Grid::Fixed { x: (w.rows * threads).div_ceil(64) }
        } else {
            Grid::Flat { threads, of: Count::Tokens }
        };
        self.op("embed", pipeline, &params, &[&w.buffer, y], grid)
    }

    /// RMSNorm of each token's row of width `d`; `gather` reads the batch's logit rows instead.
    pub fn rmsnorm(&self, x: &wgpu::Buffer, weight: &wgpu::Buffer, y: &wgpu::Buffer, d: u32, eps: f32, gather: bool) -> Op {
        let pipeline = self.pipeline("rmsnorm", include_str!("../../shaders/rmsnorm.wgsl"), None, &[]);
        let of = if gather { Count::LogitRows } else { Count::Tokens };
        self.op("rmsnorm", pipeline, &[d, eps.to_bits(), gather as u32, 0], &[x, weight, y], Grid::PerItem { of })
    }

    /// RoPE on q (in place in `qkv`) and k, and K/V into the layer's cache.
    pub fn rope_kv(&self, qkv: &wgpu::Buffer, rope: &wgpu::Buffer, k_cache: &wgpu::Buffer, v_cache: &wgpu::Buffer, dims: AttnDims, neox: bool) -> Op {
        let pipeline = self.pipeline("rope_kv", include_str!("../../shaders/rope_kv.wgsl"), None, &[("NEOX", neox as u32 as f64)]);
        let params = [dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.qkv_stride];
        self.op("rope_kv", pipeline, &params, &[qkv, rope, k_cache, v_cache], Grid::PerItem { of: Count::Tokens })
    }

    /// Causal attention of every token's query heads over its sequence's cached K/V.
    pub fn attention(&self, qkv: &wgpu::Buffer, k_cache: &wgpu::Buffer, v_cache: &wgpu::Buffer, out: &wgpu::Buffer, dims: AttnDims, scale: f32, window: u32) -> Op {
        let pipeline = self.pipeline("attention", include_str!("../../shaders/attention.wgsl"), None, &[]);
        let params = [dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.qkv_stride, scale.to_bits(), window, 0, 0];
        self.op("attention", pipeline, &params, &[qkv, k_cache, v_cache, out], Grid::Heads { heads: dims.n_heads })
    }

    /// Index of the largest logit of each logit row.
    pub fn argmax(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, vocab: u32) -> Op {
        let pipeline = self.pipeline("argmax", include_str!("../../shaders/argmax.wgsl"), None, &[]);
        self.op("argmax", pipeline, &[vocab, 0, 0, 0], &[logits, result], Grid::PerItem { of: Count::LogitRows })
    }
}
