//! The weight matmuls: a decode GEMV and a prefill GEMM per adapter kind (matvec.wgsl on
//! CPU-emulated adapters, matmul.wgsl on GPUs), optionally with the gated FFN's activation and
//! with the RMSNorm of their input folded in.

use bytemuck::{Pod, Zeroable};

use super::rope::{QkvBias, RopeKv};
use super::shader::Shader;
use super::{AttnDims, Count, Grid, Kernels, Op, Variant};
use crate::backend::webgpu::weights::{GpuTensor, TensorPart};
use crate::model::Activation;

/// Where a matmul writes: row stride and first column of `y`.
#[derive(Clone, Copy, Debug)]
pub struct OutCols {
    pub stride: u32,
    pub col: u32,
}

/// An RMSNorm applied to a matmul's input rows as it reads them: `x / rms(x) * weight`.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'a> {
    pub weight: &'a wgpu::Buffer,
    pub eps: f32,
}

/// `struct MatmulParams` of matmul_params.wgsl, the uniform of matmul.wgsl and matvec.wgsl (the
/// two share their bindings).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    /// Input width (multiple of 32).
    k: u32,
    /// Output rows (with a gate: gate rows, the up rows follow).
    m: u32,
    out_stride: u32,
    out_col: u32,
    /// u32 offset of the scales in the weight part.
    scale_off: u32,
    /// 1: `y += result`.
    accumulate: u32,
    /// 1: the row count is the batch's logit rows (LM head).
    use_logit_rows: u32,
    /// Gate form, read by matvec.wgsl only (matmul.wgsl specializes it as overrides):
    /// 0 none, 1 SiLU, 2 GELU-tanh.
    glu: u32,
    /// The folded RMSNorm's epsilon (whether there is one is matmul.wgsl's NORM override).
    eps: f32,
    /// RoPE and the KV write in the epilogue (rope_store.wgsl): 0 none, 1 GGML-normal pairs,
    /// 2 NeoX; then the q|k|v shape.
    rope: u32,
    head_dim: u32,
    q_rows: u32,
    kv_rows: u32,
    /// 1: add the q|k|v bias at element `bias_off` of the norm weights' binding.
    bias: u32,
    bias_off: u32,
    /// matmul.wgsl's PARTIALS: the element of `y` where the partial maxima start.
    partials: u32,
}
const _: () = assert!(std::mem::size_of::<MatmulParams>() == 64);

/// Tokens per prefill matmul workgroup: each dequantized weight group is reused this many times.
const MATMUL_TN: u32 = 8;

/// Where the LM head leaves each workgroup's largest logit and the sum of exp(logit - that)
/// over its rows (matmul.wgsl's PARTIALS) for argmax.wgsl and sample.wgsl: per logit row,
/// `vocab.div_ceil(group)` maxima (one per `group` rows) then as many sums, from element
/// `offset` of the logits buffer.
#[derive(Clone, Copy, Debug)]
pub struct LogitPartials {
    pub group: u32,
    pub offset: u32,
}

/// Lanes matmul.wgsl gives a row of width `k`: a power of two up to 16, at most the row's groups.
fn lanes_per_row(k: u32) -> u32 {
    (1u32 << (k / 32).max(1).ilog2()).min(16)
}

/// Rows per partial maximum of an LM head of width `k` on this adapter kind: a matmul.wgsl
/// workgroup's rows; `None` on CPU-emulated adapters (matvec.wgsl writes none; the argmax
/// scans their rows at CPU speed anyway).
pub fn logit_partial_group(cpu_like: bool, k: u32) -> Option<u32> {
    (!cpu_like).then(|| 64 / lanes_per_row(k))
}

impl Kernels {
    /// `y[t][out.col + r] (+)= x[t] . W[r]` for every token (or logit row) `t`; one Op per part
    /// of `w`. With `swiglu`, `w` (one part) holds gate rows then up rows and
    /// `y = silu(gate) * up`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(&self, w: &GpuTensor, x: &wgpu::Buffer, y: &wgpu::Buffer, out: OutCols, accumulate: bool, of: Count, swiglu: bool) -> Vec<Op> {
        let glu = swiglu.then_some(Activation::Silu);
        w.parts.iter().map(|p| self.matmul_part(w, p, x, None, y, OutCols { stride: out.stride, col: out.col + p.row0 }, accumulate, of, glu, None, None)).collect()
    }

    /// Whether the matmuls take an RMSNorm of their input ([`Kernels::matmul_normed`]): on
    /// GPUs, where it saves a launch; CPU-emulated adapters pay more for the extra weight
    /// gathers than for the launch (measured on lavapipe: decode 5.2 -> 3.9 tok/s folded).
    pub fn folds_norm(&self) -> bool {
        !self.cpu_like
    }

    /// `y[t][out.col + r] = rmsnorm(x[t]) . W[r]`: the norm folded into the matmul (GPU shapes
    /// only, see [`Kernels::folds_norm`]; `None`: plain `x`). With `Count::LogitRows` row `t` of
    /// `x` is the batch's logit row `t` (the LM head).
    pub fn matmul_normed(&self, w: &GpuTensor, x: &wgpu::Buffer, norm: Option<Norm>, y: &wgpu::Buffer, out: OutCols, of: Count) -> Vec<Op> {
        w.parts.iter().map(|p| self.matmul_part(w, p, x, norm, y, OutCols { stride: out.stride, col: out.col + p.row0 }, false, of, None, None, None)).collect()
    }

    /// The LM head of [`Kernels::matmul_normed`] (`out.stride`: the vocabulary) that also
    /// leaves each workgroup's largest logit at `partials` for the argmax; `None` where
    /// [`logit_partial_group`] gives none or a part of `w` starts inside a group. With `masks`
    /// (each logit row's allowed tokens, `vocab.div_ceil(32)` words a row) the logits a row's
    /// mask forbids are written as -3.4e38, which the partials and the kernels reading the
    /// logits after never count.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_partials(&self, w: &GpuTensor, x: &wgpu::Buffer, norm: Option<Norm>, logits: &wgpu::Buffer, vocab: u32, partials: LogitPartials, masks: Option<&wgpu::Buffer>) -> Option<Vec<Op>> {
        let group = logit_partial_group(self.cpu_like, w.k)?;
        if group != partials.group || w.parts.iter().any(|p| !p.row0.is_multiple_of(group)) {
            return None;
        }
        let out = |p: &TensorPart| OutCols { stride: vocab, col: p.row0 };
        Some(w.parts.iter().map(|p| self.matmul_part(w, p, x, norm, logits, out(p), false, Count::LogitRows, None, None, Some((partials.offset, masks)))).collect())
    }

    /// Whether the q|k|v matmuls over these `(matrix, first column)` runs can apply RoPE and
    /// write K/V in their epilogue ([`Kernels::matmul_rope_kv`]): every part covers whole heads
    /// (rope_store.wgsl's quads never straddle a part) of a head size divisible by 4.
    pub fn folds_rope(&self, runs: &[(GpuTensor, u32)], dims: AttnDims) -> bool {
        let hd = dims.head_dim;
        hd.is_multiple_of(4) && runs.iter().all(|(w, col)| w.parts.iter().all(|p| (col + p.row0).is_multiple_of(hd) && p.rows.is_multiple_of(hd)))
    }

    /// `qkv[t][col + r] = rmsnorm(x[t]) . W[r]` (or of plain `x`), plus `bias`, with RoPE
    /// applied to the q and k columns, q written to `qkv` and k and v to the layer's paged
    /// cache: the matmul, `bias_add` and `rope_kv` in one launch. `w`'s rows are fused rows
    /// `col ..`; see [`Kernels::folds_rope`]. With a norm the bias must lie in the norm
    /// weights' buffer (one binding holds both).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_rope_kv(&self, w: &GpuTensor, x: &wgpu::Buffer, norm: Option<Norm>, qkv: &wgpu::Buffer, col: u32, rope: RopeKv, bias: Option<QkvBias>) -> Vec<Op> {
        let out = |p: &TensorPart| OutCols { stride: rope.dims.qkv_stride, col: col + p.row0 };
        w.parts.iter().map(|p| self.matmul_part(w, p, x, norm, qkv, out(p), false, Count::Tokens, None, Some((rope, bias)), None)).collect()
    }

    /// The gated FFN's first matmul: `w` (one part) holds gate rows then up rows and
    /// `y = act(gate) * up` (SiLU: SwiGLU, GELU with tanh: GeGLU), of `x` or its RMSNorm.
    pub fn matmul_gated(&self, w: &GpuTensor, x: &wgpu::Buffer, norm: Option<Norm>, y: &wgpu::Buffer, stride: u32, act: Activation) -> Op {
        assert!(w.parts.len() == 1, "fused gate/up weights are uploaded unsplit");
        self.matmul_part(w, &w.parts[0], x, norm, y, OutCols { stride, col: 0 }, false, Count::Tokens, Some(act), None, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul_part(
        &self,
        w: &GpuTensor,
        part: &TensorPart,
        x: &wgpu::Buffer,
        norm: Option<Norm>,
        y: &wgpu::Buffer,
        out: OutCols,
        accumulate: bool,
        of: Count,
        glu: Option<Activation>,
        epilogue: Option<(RopeKv, Option<QkvBias>)>,
        partials: Option<(u32, Option<&wgpu::Buffer>)>,
    ) -> Op {
        assert!(norm.is_none() || self.folds_norm(), "matvec.wgsl takes no folded norm");
        assert!(partials.is_none() || !self.cpu_like, "matvec.wgsl writes no partial maxima");
        let (rope, bias) = (epilogue.map(|e| e.0), epilogue.and_then(|e| e.1));
        assert!(norm.is_none() || bias.is_none_or(|b| b.buffer == norm.unwrap().weight), "the bias shares the norm weights' binding");
        let gated = glu.is_some();
        let m = if gated { part.rows / 2 } else { part.rows };
        // A decode GEMV and a prefill GEMM per adapter kind: (tokens per workgroup, largest batch
        // it serves) each.
        let variants: Vec<Variant> = if self.cpu_like {
            // (tokens per thread, largest batch): 8 weight rows share each x slice; batches
            // share each weight block across 4 tokens.
            [(1u32, 1u32), (4, u32::MAX)]
                .iter()
                .map(|&(tn, max_n)| {
                    let outs = if gated { 4 } else { 8 };
                    let threads = m.div_ceil(outs);
                    // Small workgroups, so both cores (or all) get work on small matrices; one
                    // size for all, so a quant type's matrices share a pipeline (CPU JITs take
                    // up to a second per pipeline; 64 was no faster on the large ones).
                    let wg = 16;
                    let pipeline = self.pipeline(Shader::Matvec, Some(w.ty), &[("TN", tn), ("WG", wg)]);
                    Variant { pipeline, grid: Grid::Rows { x: threads.div_ceil(wg), per: tn, of }, max_n }
                })
                .collect()
        } else {
            let tpr = lanes_per_row(w.k);
            let gelu = glu == Some(Activation::GeluTanh);
            // Decode batches of up to 8 sequences get TN = 4 (measured faster than TN = 8 there).
            [(1u32, 1u32), (4, 8), (MATMUL_TN, u32::MAX)]
                .iter()
                .map(|&(tn, max_n)| {
                    let overrides = [
                        ("TN", tn),
                        ("TPR", tpr),
                        ("SWIGLU", gated as u32),
                        ("GELU", gelu as u32),
                        ("NORM", norm.is_some() as u32),
                        ("ROPE", rope.is_some() as u32),
                        ("PARTIALS", partials.is_some() as u32),
                        ("MASKED", partials.is_some_and(|p| p.1.is_some()) as u32),
                    ];
                    let pipeline = self.pipeline(Shader::Matmul, Some(w.ty), &overrides);
                    Variant { pipeline, grid: Grid::Rows { x: m.div_ceil(64 / tpr), per: tn, of }, max_n }
                })
                .collect()
        };
        // matvec.wgsl takes the gate form as a uniform (one pipeline for both forms).
        let glu = match glu {
            None => 0,
            Some(Activation::Silu) => 1,
            Some(Activation::GeluTanh) => 2,
        };
        let params = MatmulParams {
            k: w.k,
            m,
            out_stride: out.stride,
            out_col: out.col,
            scale_off: part.scale_off,
            accumulate: accumulate as u32,
            use_logit_rows: matches!(of, Count::LogitRows) as u32,
            glu,
            eps: norm.map_or(0.0, |n| n.eps),
            rope: rope.map_or(0, |r| 1 + r.neox as u32),
            head_dim: rope.map_or(0, |r| r.dims.head_dim),
            q_rows: rope.map_or(0, |r| r.dims.n_heads * r.dims.head_dim),
            kv_rows: rope.map_or(0, |r| r.dims.n_kv_heads * r.dims.head_dim),
            bias: bias.is_some() as u32,
            bias_off: bias.map_or(0, |b| b.offset),
            partials: partials.map_or(0, |p| p.0),
        };
        // Unread bindings get stand-ins: x for the read-only ones (two read-only bindings of one
        // buffer are allowed), the spare buffers for the cache. Binding 5 is the RoPE table, or
        // a masked LM head's masks.
        let nw = norm.map(|n| n.weight).or(bias.map(|b| b.buffer)).unwrap_or(x);
        let masks = partials.and_then(|p| p.1).unwrap_or(x);
        let (table, k_cache, v_cache) = rope.map_or((masks, &self.spare[0], &self.spare[1]), |r| (r.table, r.k_cache, r.v_cache));
        self.op("matmul", variants, &params, &[&part.buffer, x, y, nw, table, k_cache, v_cache])
    }
}
