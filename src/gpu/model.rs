//! The model on the GPU: weights, activations, the KV pool, and the forward pass as a list of
//! kernel launches recorded once at load. A step writes the batch description, encodes every Op
//! into one compute pass, submits once and reads back only what it needs (argmax ids, or logits
//! when asked).

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::kernels::{AttnDims, Count, Kernels, Op, OutCols, TOPK_WORDS};
use super::weights::{concat_rows, upload_f32, GpuTensor};
use crate::error::{Error, Result};
use crate::gguf::{ByteSource, Gguf};
use crate::kv_cache::BlockPool;
use crate::model::{names, Config, RopeStyle};
use crate::sampler::TopLogits;

/// What to size when loading a model.
#[derive(Clone, Copy, Debug)]
pub struct ModelOptions {
    /// Positions per sequence (capped at the model's trained context).
    pub context: u32,
    /// Tokens one forward can take.
    pub max_batch_tokens: u32,
    /// Sequences one forward can serve.
    pub max_seqs: u32,
    /// Bytes for the KV pool; None: [`DEFAULT_KV_BUDGET`]. The pool always holds at least one
    /// full-context sequence and at most what one storage binding per layer allows.
    pub kv_budget_bytes: Option<u64>,
}

/// The KV pool's default size.
pub const DEFAULT_KV_BUDGET: u64 = 256 << 20;

impl ModelOptions {
    pub fn new(context: u32, max_batch_tokens: u32) -> Self {
        ModelOptions { context, max_batch_tokens, max_seqs: 16, kv_budget_bytes: None }
    }
}

/// Sizes fixed when the model is loaded.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Tokens one forward can take (longer prompts are prefilled in chunks).
    pub max_batch_tokens: u32,
    /// Positions per sequence.
    pub context: u32,
    /// Sequences whose block tables fit in the batch description.
    pub max_seqs: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks in the pool.
    pub n_blocks: u32,
    /// KV bytes one token takes over all layers.
    pub kv_bytes_per_token: u64,
}


/// One step's work: tokens of one or more sequences, and which of them need logits.
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    pub seq_ids: &'a [u32],
    /// Indices into `tokens` whose logits (or argmax) the step returns.
    pub logit_rows: &'a [u32],
    /// Physical KV block of each logical block, per sequence id.
    pub block_tables: &'a [&'a [u32]],
}

impl Batch<'_> {
    /// KV positions the step's attention reads: its largest position + 1.
    pub fn span(&self) -> u32 {
        self.positions.iter().max().map_or(0, |p| p + 1)
    }

    /// The batch description as `shaders/batch.wgsl` reads it.
    pub fn to_words(&self, limits: &EngineLimits) -> Vec<u32> {
        let t = limits.max_batch_tokens as usize;
        let max_blocks = limits.context.div_ceil(limits.block_size) as usize;
        let mut words = vec![0u32; batch_words(limits)];
        words[..5].copy_from_slice(&[self.tokens.len() as u32, self.logit_rows.len() as u32, t as u32, max_blocks as u32, limits.block_size]);
        for (i, part) in [self.tokens, self.positions, self.seq_ids, self.logit_rows].iter().enumerate() {
            words[HEADER + i * t..][..part.len()].copy_from_slice(part);
        }
        for (s, table) in self.block_tables.iter().enumerate() {
            let n = table.len().min(max_blocks);
            words[HEADER + 4 * t + s * max_blocks..][..n].copy_from_slice(&table[..n]);
        }
        words
    }
}

/// Words in the batch description buffer.
pub fn batch_words(limits: &EngineLimits) -> usize {
    HEADER + 4 * limits.max_batch_tokens as usize + (limits.max_seqs * limits.context.div_ceil(limits.block_size)) as usize
}

pub struct GpuModel {
    pub ctx: GpuContext,
    pub config: Config,
    pub limits: EngineLimits,
    /// Weight bytes a decode step streams (for MBU).
    pub weight_bytes: u64,
    /// Weight values (multiply-adds) one decode step reads.
    pub weight_values: u64,
    /// Who holds which block of the KV pool buffers (sessions, the batching engine, scoring)
    /// and the prefix cache. Borrowed briefly, never across an await.
    pub pool: std::cell::RefCell<BlockPool>,
    max_logit_rows: u32,
    batch: wgpu::Buffer,
    logits: wgpu::Buffer,
    argmax: wgpu::Buffer,
    argmax_staging: wgpu::Buffer,
    /// Logit rows read back by a step: made for one row, grown to the most rows a step asked for.
    logits_staging: std::cell::RefCell<wgpu::Buffer>,
    topk: wgpu::Buffer,
    topk_staging: wgpu::Buffer,
    ops: Vec<Op>,
    argmax_op: Op,
    topk_op: Op,
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

/// What a step reads back after the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readback {
    Nothing,
    Argmax,
    Top,
    Logits,
}

const HEADER: usize = 8;

impl GpuModel {
    /// Uploads a supported model, tensor by tensor, and records its forward pass.
    pub async fn load<S: ByteSource + ?Sized>(ctx: GpuContext, gguf: &Gguf, source: &S, opts: &ModelOptions) -> Result<GpuModel> {
        Self::record(ctx, gguf, source, opts)?.ready().await
    }

    /// As [`GpuModel::load`], without waiting for the GPU to finish the uploads and pipeline
    /// compiles it queued (in a browser the GPU process does them while the page goes on).
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
        let block_size = 16u32;
        let max_blocks = context.div_ceil(block_size);
        let kv_bytes_per_token = 2 * c.n_layers as u64 * kvd * 4;
        let budget_blocks = opts.kv_budget_bytes.unwrap_or(DEFAULT_KV_BUDGET) / (kv_bytes_per_token * block_size as u64);
        let binding_blocks = max_binding / (kvd * 4 * block_size as u64);
        let n_blocks = budget_blocks.min(binding_blocks).max(max_blocks as u64) as u32;
        let max_seqs = opts.max_seqs.clamp(1, max_batch_tokens);
        let limits = EngineLimits { max_batch_tokens, context, max_seqs, block_size, n_blocks, kv_bytes_per_token };
        let t = max_batch_tokens as u64;
        let max_logit_rows = (max_binding / (v * 4)).min(t).max(1) as u32;

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
        let kernels = Kernels::new(dev, &batch, ctx.info.cpu_like, ctx.info.subgroup_rows);
        let x = storage("x", t * d * 4)?;
        let h = storage("h", t * d * 4)?;
        let qkv = storage("qkv", t * (qd + 2 * kvd) * 4)?;
        let attn = storage("attn", t * qd * 4)?;
        let ffn = storage("ffn", t * f * 4)?;
        let logits = storage("logits", max_logit_rows as u64 * v * 4)?;
        let argmax = storage("argmax", max_logit_rows as u64 * 4)?;
        let argmax_staging = staging_buffer(dev, "argmax staging", max_logit_rows as u64 * 4);
        let topk = storage("top-k", max_logit_rows as u64 * TOPK_WORDS as u64 * 4)?;
        let topk_staging = staging_buffer(dev, "top-k staging", max_logit_rows as u64 * TOPK_WORDS as u64 * 4);
        let logits_staging = std::cell::RefCell::new(staging_buffer(dev, "logits staging", v * 4));
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
            let (ty, k, data) = concat_rows(&refs).ok_or_else(|| {
                Error::InvalidModel(format!("{} have different types or widths; the GPU engine fuses them", parts.join(", ")))
            })?;
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
        let kv_bytes = (n_blocks * block_size) as u64 * kvd * 4;
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
            let (attn_norm, ffn_norm) = (vector(&p(names::ATTN_NORM))?, vector(&p(names::FFN_NORM))?);
            let la = c.layer_attention(l);
            let rope = &ropes.iter().find(|r| r.0 == (la.rope_base.to_bits(), la.rope_freq_scale.to_bits())).expect("a table per base").1;

            ops.push(kernels.rmsnorm(&x, &attn_norm, &h, d as u32, c.norm_eps, false));
            for (w, col) in &wqkv {
                ops.extend(kernels.matmul(w, &h, &qkv, OutCols { stride: dims.qkv_stride, col: *col }, false, Count::Tokens, false));
            }
            if c.qkv_bias {
                let bias = vectors("qkv bias", &[&p(names::ATTN_Q_BIAS), &p(names::ATTN_K_BIAS), &p(names::ATTN_V_BIAS)])?;
                ops.push(kernels.bias_add(&qkv, &bias, dims.qkv_stride, dims.qkv_stride));
            }
            if c.qk_norm {
                let qk_norm = vectors("qk norm", &[&p(names::ATTN_Q_NORM), &p(names::ATTN_K_NORM)])?;
                ops.push(kernels.head_norm(&qkv, &qk_norm, dims, c.norm_eps));
            }
            ops.push(kernels.rope_kv(&qkv, rope, &k_cache, &v_cache, dims, c.rope_style == RopeStyle::Neox));
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
            ops.push(kernels.rmsnorm(&x, &ffn_norm, &h, d as u32, c.norm_eps, false));
            ops.push(kernels.matmul_gated(&w_gate_up, &h, &ffn, f as u32, c.activation));
            residual(&mut ops, &w_down, &ffn, names::FFN_POST_NORM)?;
            // Compile what one sequence's prefill and decode run as each layer is recorded: in a
            // browser the GPU process compiles while the page goes on repacking weights. Variants
            // for several logit rows (batching, speculation) compile on first use.
            prepare(&ops[layer_start..]);
        }
        let head_start = ops.len();
        let output_norm = vector(names::OUTPUT_NORM)?;
        ops.push(kernels.rmsnorm(&x, &output_norm, &h, d as u32, c.norm_eps, true));
        let head = if c.tied_embeddings { token_embd } else { matrix(names::OUTPUT, &[names::OUTPUT], true)? };
        ops.extend(kernels.matmul(&head, &h, &logits, OutCols { stride: v as u32, col: 0 }, false, Count::LogitRows, false));
        let argmax_op = kernels.argmax(&logits, &argmax, v as u32);
        let topk_op = kernels.topk(&logits, &topk, v as u32);
        prepare(&ops[head_start..]);
        argmax_op.prepare_single_sequence(max_batch_tokens);
        topk_op.prepare_single_sequence(max_batch_tokens);

        let weight_bytes = c.weight_bytes_per_token(gguf);
        let weight_values = c.weight_values_per_token(gguf);
        let pool = std::cell::RefCell::new(BlockPool::new(n_blocks as usize, block_size as usize));
        let model = GpuModel { ctx, config, limits, weight_bytes, weight_values, pool, max_logit_rows, batch, logits, argmax, argmax_staging, logits_staging, topk, topk_staging, ops, argmax_op, topk_op };
        Ok(PendingModel { model, scope })
    }

    /// Logit rows one step can return.
    pub fn max_logit_rows(&self) -> u32 {
        self.max_logit_rows
    }

    fn check(&self, b: &Batch) -> Result<()> {
        let n = b.tokens.len();
        let bad = |reason: String| Err(Error::InvalidOption { option: "batch", reason });
        if n == 0 || n > self.limits.max_batch_tokens as usize {
            return bad(format!("{n} tokens; a step takes 1 to {}", self.limits.max_batch_tokens));
        }
        if b.positions.len() != n || b.seq_ids.len() != n {
            return bad("positions and sequence ids must match the tokens".into());
        }
        if b.logit_rows.len() > self.max_logit_rows as usize || b.logit_rows.iter().any(|&r| r as usize >= n) {
            return bad(format!("logit rows must be token indices, at most {}", self.max_logit_rows));
        }
        if b.block_tables.len() > self.limits.max_seqs as usize {
            return bad(format!("{} sequences; at most {}", b.block_tables.len(), self.limits.max_seqs));
        }
        let vocab = self.config.vocab_size;
        for (i, (&tok, (&pos, &seq))) in b.tokens.iter().zip(b.positions.iter().zip(b.seq_ids)).enumerate() {
            if tok as usize >= vocab {
                return Err(Error::TokenOutOfRange { id: tok, vocab });
            }
            let table = b.block_tables.get(seq as usize).ok_or_else(|| Error::InvalidOption { option: "batch", reason: format!("token {i} names sequence {seq} which has no block table") })?;
            if pos >= self.limits.context || (pos / self.limits.block_size) as usize >= table.len() {
                return Err(Error::PromptTooLong { tokens: pos as usize + 1, context: self.limits.context as usize });
            }
        }
        Ok(())
    }

    /// Writes the batch description and encodes the forward pass (plus the argmax or top-k
    /// kernel when that is what the step reads back).
    pub(crate) fn encode(&self, b: &Batch, readback: Readback) -> Result<wgpu::CommandEncoder> {
        self.check(b)?;
        let words = b.to_words(&self.limits);
        self.ctx.queue.write_buffer(&self.batch, 0, bytemuck::cast_slice(&words));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let (n, rows, span) = (b.tokens.len() as u32, b.logit_rows.len() as u32, b.span());
            for op in &self.ops {
                op.encode_span(&mut pass, n, rows, span);
            }
            match readback {
                Readback::Argmax => self.argmax_op.encode(&mut pass, n, rows),
                Readback::Top => self.topk_op.encode(&mut pass, n, rows),
                Readback::Nothing | Readback::Logits => {}
            }
        }
        Ok(enc)
    }

    /// Milliseconds per kernel label for one step, each dispatch submitted and waited for on
    /// its own (native only: the totals include a submission per dispatch, so compare labels,
    /// not the sum with a real step).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, b: &Batch) -> Result<Vec<(&'static str, f64)>> {
        self.check(b)?;
        let words = b.to_words(&self.limits);
        self.ctx.queue.write_buffer(&self.batch, 0, bytemuck::cast_slice(&words));
        let (n, rows, span) = (b.tokens.len() as u32, b.logit_rows.len() as u32, b.span());
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        for op in self.ops.iter().chain([&self.argmax_op]) {
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            op.encode_span(&mut enc.begin_compute_pass(&Default::default()), n, rows, span);
            let t0 = std::time::Instant::now();
            self.ctx.queue.submit([enc.finish()]);
            let _ = self.ctx.device.poll(wgpu::PollType::wait_indefinitely());
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            match out.iter_mut().find(|(l, _)| *l == op.label) {
                Some(e) => e.1 += ms,
                None => out.push((op.label, ms)),
            }
        }
        Ok(out)
    }

    /// Runs a step without reading anything back (prefill chunks before the last).
    pub fn submit(&self, b: &Batch<'_>) -> Result<()> {
        let enc = self.encode(b, Readback::Nothing)?;
        self.ctx.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Runs a step and returns the argmax token of each logit row: 4 bytes read back per row.
    pub async fn forward_argmax(&self, b: &Batch<'_>) -> Result<Vec<u32>> {
        let mut enc = self.encode(b, Readback::Argmax)?;
        let bytes = b.logit_rows.len() as u64 * 4;
        enc.copy_buffer_to_buffer(&self.argmax, 0, &self.argmax_staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let out = self.ctx.map_read(&self.argmax_staging, bytes).await?;
        Ok(bytemuck::cast_slice(&out[..bytes as usize]).to_vec())
    }

    /// Runs a step and returns, per logit row, its `k` (at most 64) largest logits in the
    /// sampler's order and the row's log-sum-exp: ~0.5 KB read back per row.
    pub async fn forward_top(&self, b: &Batch<'_>, k: usize) -> Result<Vec<TopLogits>> {
        let mut enc = self.encode(b, Readback::Top)?;
        let bytes = (b.logit_rows.len() * TOPK_WORDS * 4) as u64;
        enc.copy_buffer_to_buffer(&self.topk, 0, &self.topk_staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let out = self.ctx.map_read(&self.topk_staging, bytes).await?;
        let words: &[u32] = bytemuck::cast_slice(&out[..bytes as usize]);
        Ok(words.chunks(TOPK_WORDS).map(|w| TopLogits::from_words(w, k)).collect())
    }

    /// Runs a step and returns the logits of each logit row, `[rows][vocab]`.
    pub async fn forward_logits(&self, b: &Batch<'_>) -> Result<Vec<f32>> {
        let mut enc = self.encode(b, Readback::Logits)?;
        let bytes = b.logit_rows.len() as u64 * self.config.vocab_size as u64 * 4;
        if self.logits_staging.borrow().size() < bytes {
            *self.logits_staging.borrow_mut() = staging_buffer(&self.ctx.device, "logits staging", bytes);
        }
        let staging = self.logits_staging.borrow().clone();
        enc.copy_buffer_to_buffer(&self.logits, 0, &staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        Ok(bytemuck::cast_slice(&self.ctx.map_read(&staging, bytes).await?).to_vec())
    }
}

fn staging_buffer(dev: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    dev.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
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

impl GpuModel {
    /// Teacher-forces `tokens` as one sequence from position 0 and returns the logits of every
    /// position, `[n][vocab]`, in chunks the step limits allow.
    pub async fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.len() > self.limits.context as usize {
            return Err(Error::PromptTooLong { tokens: tokens.len(), context: self.limits.context as usize });
        }
        let table = self.allocate_blocks(tokens.len())?;
        let out = self.score_with(tokens, &table).await;
        self.pool.borrow_mut().release_all(&table);
        out
    }

    /// Per-kernel milliseconds of prefilling `tokens` in one step, then of decoding one more
    /// token (see [`GpuModel::profile`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_prompt(&self, tokens: &[u32]) -> Result<[Vec<(&'static str, f64)>; 2]> {
        let n = tokens.len();
        let table = self.allocate_blocks(n + 1)?;
        let positions: Vec<u32> = (0..=n as u32).collect();
        let prefill = Batch { tokens, positions: &positions[..n], seq_ids: &vec![0; n], logit_rows: &[n as u32 - 1], block_tables: &[&table] };
        let decode = Batch { tokens: &tokens[..1], positions: &positions[n..], seq_ids: &[0], logit_rows: &[0], block_tables: &[&table] };
        let out = self.profile(&prefill).and_then(|p| Ok([p, self.profile(&decode)?]));
        self.pool.borrow_mut().release_all(&table);
        out
    }

    /// `n` positions' worth of fresh KV blocks from the pool (evicting cached ones if needed).
    pub fn allocate_blocks(&self, n: usize) -> Result<Vec<u32>> {
        let mut pool = self.pool.borrow_mut();
        let want = n.div_ceil(self.limits.block_size as usize);
        if pool.available() < want {
            return Err(Error::KvCacheFull { needed: want, available: pool.available(), block_size: self.limits.block_size as usize });
        }
        Ok((0..want).map(|_| pool.allocate().expect("counted as available")).collect())
    }

    async fn score_with(&self, tokens: &[u32], table: &[u32]) -> Result<Vec<f32>> {
        let chunk = self.max_logit_rows.min(self.limits.max_batch_tokens) as usize;
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        for (c, part) in tokens.chunks(chunk).enumerate() {
            let positions: Vec<u32> = (0..part.len()).map(|i| (c * chunk + i) as u32).collect();
            let rows: Vec<u32> = (0..part.len() as u32).collect();
            let batch = Batch { tokens: part, positions: &positions, seq_ids: &vec![0; part.len()], logit_rows: &rows, block_tables: &[table] };
            out.extend(self.forward_logits(&batch).await?);
        }
        Ok(out)
    }
}
