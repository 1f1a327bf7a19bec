//! The model on the GPU: weights, activations, the KV pool, and the forward pass as a list of
//! kernel launches recorded once at load. A step writes what changed in the batch description,
//! encodes every Op into one compute pass, submits once and reads back only what it needs (argmax
//! ids, or logits when asked). [`StepCounters`] count what that costs.

use wgpu::util::DeviceExt;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::Serialize;

use super::batch::{batch_to_words, batch_words, HEADER};
use super::context::{map_read, Faults, GpuContext};
use super::kernels::{logit_partial_group, sample_rows, AttnDims, Count, Kernels, LogitPartials, Norm, Op, OutCols, QkNorm, QkvBias, RopeKv, SampleEdit, SampleRow, TOPK_WORDS};
use super::profile::{timed_ms, StepTimer, TIMER_BYTES};
use super::weights::{concat_rows, packed_row_bytes, upload_f32, GpuTensor};
use crate::engine::{Batch, ForwardModel, Limits, ModelOptions, PendingStep, Picks, Readback, BLOCK_SIZE, CHAINED};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf};
use crate::model::{names, Config, RopeStyle};
use crate::sample::{TopLogits, MAX_EDITS};

/// What the steps since load cost the host: launches, passes, submissions, bytes written to the
/// GPU, waits for a result, and CPU time spent encoding and submitting.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StepCounters {
    pub steps: u64,
    pub dispatches: u64,
    pub passes: u64,
    pub submits: u64,
    pub bytes_written: u64,
    /// Bytes copied back to the host (4 a row for argmax and sampled tokens).
    pub bytes_read: u64,
    pub blocking_waits: u64,
    /// Building the step's commands (writes queued, pass encoded, command buffer finished).
    pub encode_ms: f64,
    /// `queue.submit` itself: near zero on GPUs; lavapipe blocks in it until the step before
    /// has run, so there it holds the pipelined step's wait.
    pub submit_ms: f64,
    /// Readback buffers created (they are reused: this stops growing after warm-up).
    pub readback_buffers: u64,
    /// Steps timed on the GPU ([`GpuModel::time_steps`]) and their compute passes' GPU time.
    pub timed_steps: u64,
    pub gpu_ms: f64,
}

impl StepCounters {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &StepCounters) -> StepCounters {
        StepCounters {
            steps: self.steps.saturating_sub(before.steps),
            dispatches: self.dispatches.saturating_sub(before.dispatches),
            passes: self.passes.saturating_sub(before.passes),
            submits: self.submits.saturating_sub(before.submits),
            bytes_written: self.bytes_written.saturating_sub(before.bytes_written),
            bytes_read: self.bytes_read.saturating_sub(before.bytes_read),
            blocking_waits: self.blocking_waits.saturating_sub(before.blocking_waits),
            encode_ms: self.encode_ms - before.encode_ms,
            submit_ms: self.submit_ms - before.submit_ms,
            readback_buffers: self.readback_buffers.saturating_sub(before.readback_buffers),
            timed_steps: self.timed_steps.saturating_sub(before.timed_steps),
            gpu_ms: self.gpu_ms - before.gpu_ms,
        }
    }

    /// Averages per step, under the names `ferrolm bench --json` reports.
    pub fn per_step(&self) -> serde_json::Value {
        let n = self.steps.max(1) as f64;
        serde_json::json!({
            "dispatches_per_step": self.dispatches as f64 / n,
            "passes_per_step": self.passes as f64 / n,
            "submits_per_step": self.submits as f64 / n,
            "bytes_written_per_step": self.bytes_written as f64 / n,
            "bytes_read_per_step": self.bytes_read as f64 / n,
            "blocking_waits_per_step": self.blocking_waits as f64 / n,
            "encode_ms_per_step": self.encode_ms / n,
            "submit_ms_per_step": self.submit_ms / n,
            "gpu_ms_per_step": (self.timed_steps > 0).then(|| self.gpu_ms / self.timed_steps as f64),
        })
    }
}

pub struct GpuModel {
    pub ctx: GpuContext,
    pub config: Config,
    pub limits: Limits,
    /// Weight bytes a decode step streams (for MBU).
    pub weight_bytes: u64,
    /// Weight values (multiply-adds) one decode step reads.
    pub weight_values: u64,
    batch: wgpu::Buffer,
    logits: wgpu::Buffer,
    argmax: wgpu::Buffer,
    topk: wgpu::Buffer,
    /// Each logit row's sampling (`SampleRow`) and the rows' logit edits, written by sampled
    /// steps.
    sample_rows: wgpu::Buffer,
    sample_edits: wgpu::Buffer,
    /// The sampled tokens' logits (read with top-k candidates for logprobs).
    sample_logits: wgpu::Buffer,
    /// Allowed-token masks of the logit rows (structured output), written by masked steps.
    masks: wgpu::Buffer,
    /// Readback buffers not held by a pending step; a step takes one big enough and its
    /// [`GpuPending`] puts it back once read.
    staging: Rc<RefCell<Vec<wgpu::Buffer>>>,
    ops: Vec<Op>,
    argmax_op: Op,
    /// The LM head that leaves partial maxima and sums, with the kernels that read them (GPUs).
    partials_head: Option<PartialsHead>,
    masked_argmax_op: Op,
    sample_op: Op,
    masked_sample_op: Op,
    topk_op: Op,
    /// What the batch buffer holds, so a step writes only the words that changed.
    written: RefCell<Vec<u32>>,
    /// Rows the last submitted step left in `argmax` (0 unless it read back argmax or sampled
    /// tokens): what a
    /// [`CHAINED`] token of the next step may name.
    argmax_rows: Cell<u32>,
    counters: Rc<Cell<StepCounters>>,
    /// Set while steps are timed on the GPU ([`GpuModel::time_steps`]).
    timer: RefCell<Option<StepTimer>>,
}

/// A recorded model whose uploads and pipeline compiles the GPU may still be running.
pub struct PendingModel {
    model: GpuModel,
    scope: wgpu::ErrorScopeGuard,
}

impl PendingModel {
    /// Waits for the GPU to finish loading; any validation or allocation error it reports fails the load.
    pub async fn ready(self) -> Result<GpuModel> {
        if let Some(e) = self.scope.pop().await {
            return Err(Error::Gpu(format!("building the forward pass failed: {e}")));
        }
        Ok(self.model)
    }
}

/// A greedy or sampled step's end on GPUs: the LM head that also writes each workgroup's largest
/// logit and sum, and the argmax, sample and top-k kernels that start from those instead of
/// every logit.
struct PartialsHead {
    /// Where the plain LM head's Ops start in [`GpuModel::ops`]; these replace them.
    start: usize,
    head: Vec<Op>,
    /// The same LM head applying the rows' grammar masks (greedy and sampled steps without
    /// logprobs): the argmax and sample kernels then serve masked rows unchanged.
    masked_head: Vec<Op>,
    argmax: Op,
    /// The sample kernel reading the partial maxima and sums (rows unmasked, or masked by
    /// `masked_head`).
    sample: Op,
    /// The top-k kernel reading them (logprob rows; their candidates are the unmasked row's).
    topk: Op,
}

impl GpuModel {
    /// Uploads a supported model, tensor by tensor, and records its forward pass.
    pub async fn load<S: ByteSource + ?Sized>(ctx: GpuContext, gguf: &Gguf, source: &S, opts: &ModelOptions) -> Result<GpuModel> {
        Self::record(ctx, gguf, source, opts)?.ready().await
    }

    /// As [`GpuModel::load`], without waiting for the GPU to finish the uploads and pipeline
    /// compiles it queued (in a browser the GPU process does them while the page goes on).
    /// What can be refused from the header alone, before the tensors arrive (a browser checks
    /// this on the first bytes of a download): the architecture and tensor types, and the one
    /// matrix that cannot be split across bindings (each layer's gate and up, side by side) must
    /// fit a binding of `max_binding` bytes.
    pub fn check_header(gguf: &Gguf, max_binding: u64) -> Result<()> {
        let c = Config::from_gguf(gguf)?;
        for l in 0..c.n_layers {
            let mut bytes = 0;
            for name in [names::FFN_GATE, names::FFN_UP] {
                let t = c.tensor(gguf, &names::layer(l, name))?;
                bytes += packed_row_bytes(t.ty, t.dims[0]) * (t.n_elements() / t.dims[0]);
            }
            if bytes > max_binding {
                return Err(Error::ModelTooLarge { what: format!("layer {l}'s gate and up matrices"), bytes, limit: max_binding });
            }
        }
        Ok(())
    }

    pub fn record<S: ByteSource + ?Sized>(ctx: GpuContext, gguf: &Gguf, source: &S, opts: &ModelOptions) -> Result<PendingModel> {
        let config = Config::from_gguf(gguf)?;
        let c = &config;
        if c.final_logit_softcap.is_some() {
            return Err(Error::UnsupportedOnGpu("final logit softcapping (`final_logit_softcapping` in the metadata)"));
        }
        let dev = &ctx.device;
        let max_binding = ctx.info.max_binding_size.min(ctx.info.max_buffer_size);
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);

        let context = opts.context.clamp(1, c.context_len as u32);
        let max_batch_tokens = opts.max_batch_tokens.max(1);
        let (d, qd, kvd, f, v) = (c.d_model as u64, c.q_dim() as u64, c.kv_dim() as u64, c.ffn_dim as u64, c.vocab_size as u64);
        let block_size = BLOCK_SIZE;
        let kv_row = kvd * ctx.kv.bytes();
        let kv_bytes_per_token = 2 * c.n_layers as u64 * kv_row;
        // One layer's K (or V) pool is one binding.
        let n_blocks = opts.kv_blocks(context, kv_bytes_per_token, max_binding / (kv_row * block_size as u64));
        let max_seqs = opts.max_seqs.clamp(1, max_batch_tokens);
        let t = max_batch_tokens as u64;
        // Each logit row's floats: the logits, then (GPUs) the LM head's partial maxima.
        let partial_group = logit_partial_group(ctx.info.cpu_like, c.d_model as u32);
        // A logit row, and where the LM head leaves partial maxima, their maxima and sums.
        let row_floats = v + partial_group.map_or(0, |g| 2 * v.div_ceil(g as u64));
        let max_logit_rows = (max_binding / (row_floats * 4)).min(t).max(1) as u32;
        // On CPU-emulated adapters each extra token in a forward costs ~40% of a step (measured
        // on lavapipe), so longer drafts lose more than they win there.
        let max_draft = if ctx.info.cpu_like { 2 } else { crate::sample::MAX_DRAFT };
        let limits = Limits { max_batch_tokens, context, max_seqs, block_size, n_blocks, kv_bytes_per_token, max_logit_rows, max_draft };

        let storage = |label: &str, bytes: u64| -> Result<wgpu::Buffer> {
            if bytes > max_binding {
                return Err(Error::ModelTooLarge { what: label.to_string(), bytes, limit: max_binding });
            }
            Ok(dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        };
        let batch = storage("batch", batch_words(&limits) as u64 * 4)?;
        let kernels = Kernels::new(dev, &batch, ctx.info.cpu_like, ctx.info.subgroup_rows, ctx.kv);
        let x = storage("x", t * d * 4)?;
        // Normalized rows, where the norms are launches of their own (CPU-emulated adapters).
        let h = if kernels.folds_norm() { None } else { Some(storage("h", t * d * 4)?) };
        let qkv = storage("qkv", t * (qd + 2 * kvd) * 4)?;
        let attn = storage("attn", t * qd * 4)?;
        let ffn = storage("ffn", t * f * 4)?;
        let logits = storage("logits", max_logit_rows as u64 * row_floats * 4)?;
        let partials = partial_group.map(|group| LogitPartials { group, offset: (max_logit_rows as u64 * v) as u32 });
        let argmax = storage("argmax", max_logit_rows as u64 * 4)?;
        let topk = storage("top-k", max_logit_rows as u64 * TOPK_WORDS as u64 * 4)?;
        let sample_rows = storage("sampling", max_logit_rows as u64 * std::mem::size_of::<SampleRow>() as u64)?;
        // A sampled step has a row per sequence and draft, each with fewer than MAX_EDITS edits.
        let edit_rows = max_logit_rows.min(max_seqs * (1 + max_draft as u32)) as usize;
        let sample_edits = storage("logit edits", (edit_rows * MAX_EDITS * std::mem::size_of::<SampleEdit>()) as u64)?;
        let sample_logits = storage("sampled logits", max_logit_rows as u64 * 4)?;
        let masks = storage("masks", max_logit_rows as u64 * v.div_ceil(32) * 4)?;
        // One cos/sin table per distinct (RoPE base, scale) among the layers (Gemma 3: local, global).
        let mut ropes: Vec<((u32, u32), wgpu::Buffer)> = Vec::new();
        for l in 0..c.n_layers {
            let la = c.layer_attention(l);
            let key = (la.rope_base.to_bits(), la.rope_freq_scale.to_bits());
            if !ropes.iter().any(|r| r.0 == key) {
                let table = rope_table(context as usize, c.head_dim, la.rope_base, la.rope_freq_scale);
                let buffer = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("rope table"), contents: bytemuck::cast_slice(&table), usage: wgpu::BufferUsages::STORAGE });
                ropes.push((key, buffer));
            }
        }

        let read = |name: &str| -> Result<(crate::gguf::GgmlType, usize, usize, Vec<u8>)> {
            let info = c.tensor(gguf, name)?;
            let rows = (info.n_elements() / info.dims[0]) as usize;
            Ok((info.ty, rows, info.dims[0] as usize, gguf.tensor_data(source, info)?))
        };
        let matrix = |label: &str, parts: &[&str], splittable: bool| -> Result<GpuTensor> {
            let loaded = parts.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
            let rows: usize = loaded.iter().map(|l| l.1).sum();
            let refs: Vec<_> = loaded.iter().map(|l| (l.0, l.2, &l.3[..])).collect();
            let (ty, k, data) = concat_rows(&refs).ok_or_else(|| Error::InvalidModel(format!("{} have different types or widths; the GPU engine fuses them", parts.join(", "))))?;
            GpuTensor::upload(dev, &ctx.queue, max_binding, label, ty, &data, rows, k, splittable)
        };
        // Rows of several matrices side by side in one output row: one fused matrix when they share
        // a type, else one per type run (Q4_K_M files mix Q5_0 q/k with a Q8_0 v). `(matrix, column)`.
        let side_by_side = |label: &str, parts: &[&str]| -> Result<Vec<(GpuTensor, u32)>> {
            let infos = parts.iter().map(|p| c.tensor(gguf, p)).collect::<Result<Vec<_>>>()?;
            if infos.iter().all(|i| i.ty == infos[0].ty && i.dims[0] == infos[0].dims[0]) {
                return Ok(vec![(matrix(label, parts, true)?, 0)]);
            }
            let mut out = Vec::new();
            let mut col = 0;
            for part in parts {
                let m = matrix(label, &[part], true)?;
                let rows = m.rows;
                out.push((m, col));
                col += rows;
            }
            Ok(out)
        };
        // Vectors (norms, biases) back to back in one f32 buffer.
        let vectors = |label: &str, names: &[&str]| -> Result<wgpu::Buffer> {
            let loaded = names.iter().map(|n| read(n)).collect::<Result<Vec<_>>>()?;
            let parts: Vec<_> = loaded.iter().map(|(ty, rows, k, data)| (*ty, &data[..], rows * k)).collect();
            upload_f32(dev, &ctx.queue, label, &parts)
        };
        let vector = |name: &str| vectors(name, &[name]);

        let dims = AttnDims { n_heads: c.n_heads as u32, n_kv_heads: c.n_kv_heads as u32, head_dim: c.head_dim as u32, qkv_stride: (qd + 2 * kvd) as u32 };
        let token_embd = matrix(names::TOKEN_EMBD, &[names::TOKEN_EMBD], true)?;
        let mut ops = kernels.embed(&token_embd, &x, c.embed_scale, false);
        let prepare = |ops: &[Op]| ops.iter().for_each(|op| op.prepare_single_sequence(max_batch_tokens));
        prepare(&ops);
        // Gemma's post-norms need the attention and FFN outputs apart from the residual stream.
        let h2 = if c.post_norms { Some(storage("h2", t * d * 4)?) } else { None };
        let kv_bytes = (n_blocks * block_size) as u64 * kv_row;
        let attn_plan = kernels.attention_plan(t as u32, dims, limits.context, ctx.info.max_binding_size);
        let attn_scratch = storage("attention scratch", attn_plan.scratch_floats * 4)?;
        for l in 0..c.n_layers {
            let layer_start = ops.len();
            let p = |n: &str| names::layer(l, n);
            let k_cache = storage("k cache", kv_bytes)?;
            let v_cache = storage("v cache", kv_bytes)?;
            let wqkv = side_by_side("attn_qkv", &[&p(names::ATTN_Q), &p(names::ATTN_K), &p(names::ATTN_V)])?;
            let wo = matrix("attn_output", &[&p(names::ATTN_OUT)], true)?;
            let w_gate_up = matrix("ffn_gate_up", &[&p(names::FFN_GATE), &p(names::FFN_UP)], false)?;
            let w_down = matrix("ffn_down", &[&p(names::FFN_DOWN)], true)?;
            // Qwen2's q|k|v bias follows the attention norm's weights in one buffer: the q|k|v
            // matmul reads both through one binding.
            let attn_vectors = [p(names::ATTN_NORM), p(names::ATTN_Q_BIAS), p(names::ATTN_K_BIAS), p(names::ATTN_V_BIAS)];
            let attn_norm = vectors("attn norm", &attn_vectors.iter().take(if c.qkv_bias { 4 } else { 1 }).map(String::as_str).collect::<Vec<_>>())?;
            let ffn_norm = vector(&p(names::FFN_NORM))?;
            let la = c.layer_attention(l);
            let rope = &ropes.iter().find(|r| r.0 == (la.rope_base.to_bits(), la.rope_freq_scale.to_bits())).expect("a table per base").1;

            let (input, norm) = norm_input(&kernels, &mut ops, &x, h.as_ref(), &attn_norm, c, false);
            let rope_kv = RopeKv { table: rope, k_cache: &k_cache, v_cache: &v_cache, dims, neox: c.rope_style == RopeStyle::Neox };
            let bias = c.qkv_bias.then_some(QkvBias { buffer: &attn_norm, offset: d as u32 });
            // RoPE and the KV write in the q|k|v matmul's epilogue, unless a per-head norm
            // (Gemma 3) comes between.
            if !c.qk_norm && kernels.folds_rope(&wqkv, dims) {
                for (w, col) in &wqkv {
                    ops.extend(kernels.matmul_rope_kv(w, input, norm, &qkv, *col, rope_kv, bias));
                }
            } else {
                for (w, col) in &wqkv {
                    ops.extend(kernels.matmul_normed(w, input, norm, &qkv, OutCols { stride: dims.qkv_stride, col: *col }, Count::Tokens));
                }
                if let Some(b) = bias {
                    ops.push(kernels.bias_add(&qkv, b.buffer, dims.qkv_stride, dims.qkv_stride, b.offset));
                }
                let qk_norm = if c.qk_norm { Some(vectors("qk norm", &[&p(names::ATTN_Q_NORM), &p(names::ATTN_K_NORM)])?) } else { None };
                ops.push(kernels.rope_kv(&qkv, rope_kv, qk_norm.as_ref().map(|weight| QkNorm { weight, eps: c.norm_eps })));
            }
            let window = la.window.unwrap_or(0) as u32;
            ops.extend(kernels.attention(&qkv, &k_cache, &v_cache, &attn, dims, c.attn_scale, window, &attn_plan, &attn_scratch));
            // Attention output and FFN: straight into the residual stream, or (post-norms) through
            // h2 and a norm that adds to it.
            let residual = |ops: &mut Vec<Op>, w: &GpuTensor, input: &wgpu::Buffer, post: &str| -> Result<()> {
                let out = OutCols { stride: d as u32, col: 0 };
                match &h2 {
                    None => ops.extend(kernels.matmul(w, input, &x, out, true, Count::Tokens, false)),
                    Some(h2) => {
                        ops.extend(kernels.matmul(w, input, h2, out, false, Count::Tokens, false));
                        ops.push(kernels.rmsnorm_add(h2, &vector(&p(post))?, &x, d as u32, c.norm_eps));
                    }
                }
                Ok(())
            };
            residual(&mut ops, &wo, &attn, names::ATTN_POST_NORM)?;
            let (input, norm) = norm_input(&kernels, &mut ops, &x, h.as_ref(), &ffn_norm, c, false);
            ops.push(kernels.matmul_gated(&w_gate_up, input, norm, &ffn, f as u32, c.activation));
            residual(&mut ops, &w_down, &ffn, names::FFN_POST_NORM)?;
            // Compile what one sequence's prefill and decode run as each layer is recorded: in a
            // browser the GPU process compiles while the page goes on repacking weights. Variants
            // for several logit rows (batching, speculation) compile on first use.
            prepare(&ops[layer_start..]);
        }
        let head_start = ops.len();
        let output_norm = vector(names::OUTPUT_NORM)?;
        let head = if c.tied_embeddings { token_embd } else { matrix(names::OUTPUT, &[names::OUTPUT], true)? };
        let (input, norm) = norm_input(&kernels, &mut ops, &x, h.as_ref(), &output_norm, c, true);
        let head_matmul = ops.len();
        ops.extend(kernels.matmul_normed(&head, input, norm, &logits, OutCols { stride: v as u32, col: 0 }, Count::LogitRows));
        let argmax_op = kernels.argmax(&logits, &argmax, &masks, v as u32, false, None);
        let partials_head = partials.and_then(|p| {
            let masked_head = kernels.lm_head_partials(&head, input, norm, &logits, v as u32, p, Some(&masks))?;
            let head = kernels.lm_head_partials(&head, input, norm, &logits, v as u32, p, None)?;
            let sample = kernels.sample(&logits, &argmax, &sample_rows, &sample_edits, &sample_logits, &masks, v as u32, false, Some(p));
            let argmax = kernels.argmax(&logits, &argmax, &masks, v as u32, false, Some(p));
            let topk = kernels.topk(&logits, &topk, v as u32, Some(p));
            Some(PartialsHead { start: head_matmul, head, masked_head, argmax, sample, topk })
        });
        let masked_argmax_op = kernels.argmax(&logits, &argmax, &masks, v as u32, true, None);
        let sample_op = kernels.sample(&logits, &argmax, &sample_rows, &sample_edits, &sample_logits, &masks, v as u32, false, None);
        let masked_sample_op = kernels.sample(&logits, &argmax, &sample_rows, &sample_edits, &sample_logits, &masks, v as u32, true, None);
        let topk_op = kernels.topk(&logits, &topk, v as u32, None);
        prepare(&ops[head_start..]);
        argmax_op.prepare_single_sequence(max_batch_tokens);
        if let Some(g) = &partials_head {
            prepare(&g.head);
            g.argmax.prepare_single_sequence(max_batch_tokens);
            g.sample.prepare_single_sequence(max_batch_tokens);
            g.topk.prepare_single_sequence(max_batch_tokens);
        }
        sample_op.prepare_single_sequence(max_batch_tokens);
        topk_op.prepare_single_sequence(max_batch_tokens);

        let weight_bytes = c.weight_bytes_per_token(gguf);
        let weight_values = c.weight_values_per_token(gguf);
        let staging = Rc::new(RefCell::new(Vec::new()));
        // wgpu zero-fills new buffers.
        let written = RefCell::new(vec![0; batch_words(&limits)]);
        let counters = Rc::default();
        let model = GpuModel {
            ctx,
            config,
            limits,
            weight_bytes,
            weight_values,
            batch,
            logits,
            argmax,
            topk,
            sample_rows,
            sample_edits,
            sample_logits,
            masks,
            staging,
            ops,
            argmax_op,
            partials_head,
            masked_argmax_op,
            sample_op,
            masked_sample_op,
            topk_op,
            written,
            argmax_rows: Cell::new(0),
            counters,
            timer: RefCell::new(None),
        };
        Ok(PendingModel { model, scope })
    }

    /// Writes the batch description and encodes the forward pass (plus the argmax or top-k
    /// kernel when that is what the step reads back).
    fn encode(&self, b: &Batch, readback: Readback, timestamps: Option<wgpu::ComputePassTimestampWrites>) -> Result<wgpu::CommandEncoder> {
        b.validate(&self.limits, self.config.vocab_size)?;
        b.check_readback(readback)?;
        let mut bytes = self.write_batch(b, readback);
        let masks = b.masks;
        if let Some(m) = masks {
            self.ctx.queue.write_buffer(&self.masks, 0, bytemuck::cast_slice(m));
            bytes += m.len() as u64 * 4;
        }
        if matches!(readback, Readback::Sample | Readback::SampleTop) {
            let rows = b.sampling.expect("checked: sampled readbacks carry sampling");
            let (rows, edits) = sample_rows(rows);
            if std::mem::size_of_val(&edits[..]) as u64 > self.sample_edits.size() {
                return Err(Error::InvalidOption {
                    option: "batch",
                    reason: format!(
                        "{} logit edits; a step takes fewer than {MAX_EDITS} a row, {} rows of them",
                        edits.len(),
                        self.sample_edits.size() as usize / MAX_EDITS / std::mem::size_of::<SampleEdit>()
                    ),
                });
            }
            self.ctx.queue.write_buffer(&self.sample_rows, 0, bytemuck::cast_slice(&rows));
            if !edits.is_empty() {
                self.ctx.queue.write_buffer(&self.sample_edits, 0, bytemuck::cast_slice(&edits));
            }
            bytes += (std::mem::size_of_val(&rows[..]) + std::mem::size_of_val(&edits[..])) as u64;
        }
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.copy_chained(&mut enc, b.tokens)?;
        let mut dispatches = 0;
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: timestamps });
            let (n, rows, span) = (b.tokens.len() as u32, b.logit_rows.len() as u32, b.span());
            for op in self.step_ops(readback, masks.is_some()) {
                dispatches += op.encode_span(&mut pass, n, rows, span) as u64;
            }
        }
        self.count(|c| {
            c.dispatches += dispatches;
            c.passes += 1;
            c.bytes_written += bytes;
        });
        Ok(enc)
    }

    /// The Ops a step that reads back `readback` runs, in order (no allocation: every step
    /// encodes through this).
    pub(super) fn step_ops(&self, readback: Readback, masked: bool) -> impl Iterator<Item = &Op> + '_ {
        // The LM head that leaves partial maxima and sums, for the argmax, sample and top-k
        // kernels; it applies the masks of a masked step's argmax or draw, but not of a masked
        // step's top-k (its candidates are the unmasked row's).
        let partials = self.partials_head.as_ref().filter(|_| matches!(readback, Readback::Argmax | Readback::Sample | Readback::SampleTop));
        let (body, head) = match partials {
            Some(g) if masked && readback != Readback::SampleTop => (&self.ops[..g.start], &g.masked_head[..]),
            Some(g) => (&self.ops[..g.start], &g.head[..]),
            None => (&self.ops[..], &[][..]),
        };
        // Without partials (CPU adapters) a masked step's kernels apply the masks themselves.
        let (argmax, sample) = match masked {
            true => (&self.masked_argmax_op, &self.masked_sample_op),
            false => (&self.argmax_op, &self.sample_op),
        };
        let readback_ops: [Option<&Op>; 2] = match readback {
            Readback::Argmax => [Some(partials.map_or(argmax, |g| &g.argmax)), None],
            Readback::Sample => [Some(partials.map_or(sample, |g| &g.sample)), None],
            // Candidates of the logits before the sample kernel edits (and masks) them in place;
            // the draw of a masked row reads the whole row.
            Readback::SampleTop => [Some(partials.map_or(&self.topk_op, |g| &g.topk)), Some(partials.filter(|_| !masked).map_or(sample, |g| &g.sample))],
            Readback::Top(_) => [Some(&self.topk_op), None],
            Readback::Nothing | Readback::Logits => [None, None],
        };
        body.iter().chain(head).chain(readback_ops.into_iter().flatten())
    }

    /// Copies the previous step's argmax picks over the [`CHAINED`] tokens' words (after the
    /// queued batch writes, before the pass reads them), in runs of consecutive rows.
    fn copy_chained(&self, enc: &mut wgpu::CommandEncoder, tokens: &[u32]) -> Result<()> {
        let rows = self.argmax_rows.get();
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] & CHAINED == 0 {
                i += 1;
                continue;
            }
            let row = tokens[i] & !CHAINED;
            if row >= rows {
                return Err(Error::InvalidOption { option: "batch", reason: format!("token {i} chains row {row} of the previous step, which chose {rows} tokens by argmax") });
            }
            let mut n = 1;
            while i + n < tokens.len() && tokens[i + n] == CHAINED | (row + n as u32) && row + (n as u32) < rows {
                n += 1;
            }
            enc.copy_buffer_to_buffer(&self.argmax, row as u64 * 4, &self.batch, (HEADER + i) as u64 * 4, n as u64 * 4);
            i += n;
        }
        Ok(())
    }

    /// Writes the words of the batch description that differ from what the buffer holds (in
    /// decode: the header, the token and its position, a block-table entry every 16 tokens), in
    /// runs that swallow gaps of a few equal words. Returns the bytes written.
    pub(super) fn write_batch(&self, b: &Batch, read: Readback) -> u64 {
        const GAP: usize = 8;
        let words = batch_to_words(b, &self.limits, read);
        let mut written = self.written.borrow_mut();
        let mut bytes = 0;
        let mut i = 0;
        while i < words.len() {
            if words[i] == written[i] {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i + 1;
            while i < words.len() && i < end + GAP {
                if words[i] != written[i] {
                    end = i + 1;
                }
                i += 1;
            }
            self.ctx.queue.write_buffer(&self.batch, start as u64 * 4, bytemuck::cast_slice(&words[start..end]));
            written[start..end].copy_from_slice(&words[start..end]);
            bytes += (end - start) as u64 * 4;
            i = end;
        }
        bytes
    }

    fn count(&self, f: impl FnOnce(&mut StepCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Totals since load (see [`StepCounters::per_step_since`]).
    pub fn counters(&self) -> StepCounters {
        self.counters.get()
    }

    /// Times each later step's compute pass on the GPU into [`StepCounters::gpu_ms`] (`on`),
    /// or stops. Returns whether steps are timed: not where the adapter has no timestamp queries.
    pub fn time_steps(&self, on: bool) -> bool {
        let mut timer = self.timer.borrow_mut();
        *timer = if on { timer.take().or_else(|| StepTimer::new(&self.ctx)) } else { None };
        timer.is_some()
    }

    /// The smallest readback buffer of at least `bytes` from the free list, or a new one (best
    /// fit: a pipelined argmax step must not hold the buffer a logits step needs next).
    fn take_staging(&self, bytes: u64) -> wgpu::Buffer {
        let mut free = self.staging.borrow_mut();
        match free.iter().enumerate().filter(|(_, b)| b.size() >= bytes).min_by_key(|(_, b)| b.size()).map(|(i, _)| i) {
            Some(i) => free.swap_remove(i),
            None => {
                self.count(|c| c.readback_buffers += 1);
                staging_buffer(&self.ctx.device, "readback", bytes.max(4096))
            }
        }
    }
}

impl ForwardModel for GpuModel {
    type Pending = GpuPending;

    fn config(&self) -> &Config {
        &self.config
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn describe(&self) -> String {
        let i = &self.ctx.info;
        let driver = if i.driver.is_empty() { String::new() } else { format!(", {}", i.driver) };
        format!("GPU {} ({}{driver})", i.name, i.backend)
    }

    /// Encodes the step, copies what `read` asks for into a readback buffer and submits, all
    /// in one submission.
    fn submit(&self, b: &Batch, read: Readback) -> Result<GpuPending> {
        self.ctx.faults.check()?;
        let t0 = crate::clock::now_ms();
        let read = if b.logit_rows.is_empty() { Readback::Nothing } else { read };
        let rows = b.logit_rows.len() as u64;
        // What the step copies back, one after the other: (buffer, bytes a row).
        let topk_row = TOPK_WORDS as u64 * 4;
        let parts: &[(&wgpu::Buffer, u64)] = match read {
            Readback::Nothing => &[],
            Readback::Argmax | Readback::Sample => &[(&self.argmax, 4)],
            Readback::SampleTop => &[(&self.argmax, 4), (&self.sample_logits, 4), (&self.topk, topk_row)],
            Readback::Top(_) => &[(&self.topk, topk_row)],
            Readback::Logits => &[(&self.logits, self.config.vocab_size as u64 * 4)],
        };
        let bytes: u64 = parts.iter().map(|p| p.1 * rows).sum();
        // Readback buffers in few sizes, so the free list stops growing once warm: argmax and
        // top-k ones hold the most rows a step returns (at most 64 KB), logits ones a power of two.
        let timer = self.timer.borrow();
        // Steps that read something back carry their timestamps home with it.
        let timed = timer.as_ref().filter(|_| !parts.is_empty()).map(|t| (t, t.slot()));
        let mut enc = self.encode(b, read, timed.map(|(t, slot)| t.writes(slot)))?;
        let capacity = match read {
            Readback::Logits => bytes.next_power_of_two(),
            _ => bytes / rows.max(1) * self.limits.max_logit_rows as u64,
        } + if timed.is_some() { TIMER_BYTES } else { 0 };
        let staging = (!parts.is_empty()).then(|| {
            let staging = self.take_staging(capacity);
            let mut at = 0;
            for &(src, row_bytes) in parts {
                enc.copy_buffer_to_buffer(src, 0, &staging, at, row_bytes * rows);
                at += row_bytes * rows;
            }
            if let Some((t, slot)) = timed {
                t.copy(&mut enc, slot, &staging, at);
            }
            staging
        });
        let commands = enc.finish();
        let t1 = crate::clock::now_ms();
        let submission = Some(self.ctx.queue.submit([commands]));
        self.argmax_rows.set(if matches!(read, Readback::Argmax | Readback::Sample | Readback::SampleTop) { rows as u32 } else { 0 });
        self.count(|c| {
            c.steps += 1;
            c.submits += 1;
            c.bytes_read += bytes;
            c.encode_ms += t1 - t0;
            c.submit_ms += crate::clock::now_ms() - t1;
        });
        let step = self.counters.get().steps;
        let period_ns = timed.map(|(t, _)| t.period_ns());
        Ok(GpuPending {
            device: self.ctx.device.clone(),
            faults: self.ctx.faults.clone(),
            staging,
            free: self.staging.clone(),
            bytes,
            read,
            step,
            submission,
            counters: self.counters.clone(),
            period_ns,
        })
    }

    /// A GPU runs a step while the host reads back and streams the one before. A CPU-emulated
    /// adapter runs on the host's own cores: on lavapipe (2 cores) the host blocks in the next
    /// submit until the step before has run, and pipelined decode measured 10% slower (4.2-4.4
    /// against 4.7-4.9 tok/s, SmolLM2), so it is not pipelined by default there.
    fn overlaps_steps(&self) -> bool {
        !self.ctx.info.cpu_like
    }
}

/// A submitted GPU step; reading it maps its readback buffer.
pub struct GpuPending {
    device: wgpu::Device,
    faults: Faults,
    staging: Option<wgpu::Buffer>,
    free: Rc<RefCell<Vec<wgpu::Buffer>>>,
    bytes: u64,
    read: Readback,
    /// This step's number: a later one is queued behind it when the count has moved on.
    step: u64,
    submission: Option<wgpu::SubmissionIndex>,
    counters: Rc<Cell<StepCounters>>,
    /// Timed steps ([`GpuModel::time_steps`]): the timestamp period; the readback ends with
    /// [`TIMER_BYTES`] of timestamps (not counted in `bytes_read`: they are the bench's).
    period_ns: Option<f64>,
}

impl PendingStep for GpuPending {
    async fn read(mut self) -> Result<Picks> {
        let Some(staging) = self.staging.take() else { return Ok(Picks::Nothing) };
        // Waiting leaves the GPU idle only when no later step is queued behind this one.
        let mut c = self.counters.get();
        if c.steps == self.step {
            c.blocking_waits += 1;
        }
        self.counters.set(c);
        let timer_bytes = if self.period_ns.is_some() { TIMER_BYTES } else { 0 };
        let out = map_read(&self.device, &staging, self.bytes + timer_bytes, self.submission.take()).await;
        self.free.borrow_mut().push(staging);
        // A lost device fails the map (or maps garbage): the loss is the error to report.
        self.faults.check()?;
        let mut out = out?;
        if let Some(period_ns) = self.period_ns {
            let ms = timed_ms(&out[self.bytes as usize..], period_ns);
            out.truncate(self.bytes as usize);
            let mut c = self.counters.get();
            c.timed_steps += 1;
            c.gpu_ms += ms;
            self.counters.set(c);
        }
        Ok(match self.read {
            Readback::Nothing => Picks::Nothing,
            Readback::Argmax | Readback::Sample => Picks::Tokens(bytemuck::cast_slice(&out).to_vec()),
            Readback::SampleTop => {
                let words: &[u32] = bytemuck::cast_slice(&out);
                let rows = words.len() / (2 + TOPK_WORDS);
                let (tokens, rest) = words.split_at(rows);
                let (logits, top) = rest.split_at(rows);
                let top = top.chunks(TOPK_WORDS).map(|w| TopLogits::from_words(w, crate::sample::MAX_TOP)).collect();
                Picks::Sampled { tokens: tokens.to_vec(), logits: logits.iter().map(|&b| f32::from_bits(b)).collect(), top }
            }
            Readback::Top(k) => Picks::Top(bytemuck::cast_slice::<u8, u32>(&out).chunks(TOPK_WORDS).map(|w| TopLogits::from_words(w, k)).collect()),
            Readback::Logits => Picks::Logits(bytemuck::cast_slice(&out).to_vec()),
        })
    }
}

impl Drop for GpuPending {
    /// A step dropped unread gives its buffer back (it was never mapped).
    fn drop(&mut self) {
        if let Some(b) = self.staging.take() {
            self.free.borrow_mut().push(b);
        }
    }
}

fn staging_buffer(dev: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    dev.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
}

/// The input of a matmul of `rmsnorm(x) * weight`: `x` with the norm folded into the matmul
/// (GPUs), or `h` after a norm launch (CPU-emulated adapters, `h` given). `gather`: the LM head's
/// logit rows.
#[allow(clippy::too_many_arguments)]
fn norm_input<'a>(kernels: &Kernels, ops: &mut Vec<Op>, x: &'a wgpu::Buffer, h: Option<&'a wgpu::Buffer>, weight: &'a wgpu::Buffer, c: &Config, gather: bool) -> (&'a wgpu::Buffer, Option<Norm<'a>>) {
    match h {
        None => (x, Some(Norm { weight, eps: c.norm_eps })),
        Some(h) => {
            ops.push(kernels.rmsnorm(x, weight, h, c.d_model as u32, c.norm_eps, gather));
            (h, None)
        }
    }
}

/// `(cos, sin)` of every position and frequency, computed in f64 like the CPU reference.
fn rope_table(context: usize, head_dim: usize, base: f32, freq_scale: f32) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(context * half * 2);
    for pos in 0..context {
        let pos = pos as f64 * freq_scale as f64;
        for i in 0..half {
            let freq = (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let (s, c) = (pos * freq).sin_cos();
            out.extend([c as f32, s as f32]);
        }
    }
    out
}
