//! Where a step's time goes (`ferrolm bench --profile`): the GPU time of a step as the engine
//! encodes it and of each kernel, from timestamp queries where the adapter has them; without
//! them, CPU time around each dispatch submitted and waited for on its own (native only).

use std::cell::Cell;

use super::context::GpuContext;
use super::model::GpuModel;
use crate::engine::{Batch, Readback};
use crate::error::Result;

/// Timestamps at the start and end of each step's compute pass, copied into the step's own
/// readback buffer after its results: the GPU time of real (pipelined) steps at no extra wait,
/// for the busy fraction of steady decode (`bench`).
pub(super) struct StepTimer {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    next: Cell<u32>,
    period_ns: f64,
}

/// Steps that may be in flight at once, each with its own pair of queries (pipelining keeps two).
const TIMER_SLOTS: u32 = 8;
/// Query resolves land at multiples of 256 bytes (`wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT`).
const RESOLVE_STRIDE: u64 = 256;
/// The two timestamps a timed step appends to its readback.
pub(super) const TIMER_BYTES: u64 = 16;

impl StepTimer {
    /// `None` where the adapter has no timestamp queries (or they were not allowed).
    pub fn new(ctx: &GpuContext) -> Option<StepTimer> {
        if !ctx.info.timestamps {
            return None;
        }
        let dev = &ctx.device;
        let set = dev.create_query_set(&wgpu::QuerySetDescriptor { label: Some("step timer"), ty: wgpu::QueryType::Timestamp, count: 2 * TIMER_SLOTS });
        let usage = wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC;
        let resolved = dev.create_buffer(&wgpu::BufferDescriptor { label: Some("step timer"), size: TIMER_SLOTS as u64 * RESOLVE_STRIDE, usage, mapped_at_creation: false });
        Some(StepTimer { set, resolved, next: Cell::new(0), period_ns: ctx.queue.get_timestamp_period() as f64 })
    }

    /// The query pair the next step writes.
    pub fn slot(&self) -> u32 {
        let s = self.next.get();
        self.next.set((s + 1) % TIMER_SLOTS);
        s
    }

    pub fn writes(&self, slot: u32) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites { query_set: &self.set, beginning_of_pass_write_index: Some(2 * slot), end_of_pass_write_index: Some(2 * slot + 1) }
    }

    /// Resolves `slot`'s timestamps and copies them to `staging` at `at` ([`TIMER_BYTES`]).
    pub fn copy(&self, enc: &mut wgpu::CommandEncoder, slot: u32, staging: &wgpu::Buffer, at: u64) {
        let offset = slot as u64 * RESOLVE_STRIDE;
        enc.resolve_query_set(&self.set, 2 * slot..2 * slot + 2, &self.resolved, offset);
        enc.copy_buffer_to_buffer(&self.resolved, offset, staging, at, TIMER_BYTES);
    }

    /// Nanoseconds per timestamp tick.
    pub fn period_ns(&self) -> f64 {
        self.period_ns
    }
}

/// Milliseconds between the two timestamps [`StepTimer::copy`] wrote.
pub(super) fn timed_ms(bytes: &[u8], period_ns: f64) -> f64 {
    let tick = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    tick(8).saturating_sub(tick(0)) as f64 * period_ns / 1e6
}

/// Milliseconds of one step on the GPU, from timestamp queries.
#[derive(Clone, Debug)]
pub struct GpuTime {
    /// The step as the engine encodes it: every Op in one compute pass.
    pub step_ms: f64,
    /// Per kernel label, in step order: its Ops, each run in a compute pass of its own.
    pub kernels: KernelTimes,
}

/// Milliseconds per kernel label, in step order.
pub type KernelTimes = Vec<(&'static str, f64)>;

/// Adds `ms` to `label`'s entry, in first-seen order.
fn add(out: &mut KernelTimes, label: &'static str, ms: f64) {
    match out.iter_mut().find(|(l, _)| *l == label) {
        Some(e) => e.1 += ms,
        None => out.push((label, ms)),
    }
}

impl GpuModel {
    /// [`GpuTime`] of one step of `b`; `None` where the adapter has no timestamp queries (or
    /// they were not allowed). The step runs twice in one submission, whole and then an Op at a
    /// time: its positions' K/V are written twice, with the same values.
    pub async fn gpu_time(&self, b: &Batch<'_>) -> Result<Option<GpuTime>> {
        if !self.ctx.info.timestamps {
            return Ok(None);
        }
        b.validate(&self.limits, self.config.vocab_size)?;
        self.write_batch(b, Readback::Argmax);
        let (n, rows, span) = (b.tokens.len() as u32, b.logit_rows.len() as u32, b.span());
        let ops: Vec<_> = self.step_ops(Readback::Argmax, false).collect();
        let count = 2 + 2 * ops.len() as u32;
        let dev = &self.ctx.device;
        let set = dev.create_query_set(&wgpu::QuerySetDescriptor { label: Some("step timestamps"), ty: wgpu::QueryType::Timestamp, count });
        let resolved = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step timestamps"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let timed = |i: u32| wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites { query_set: &set, beginning_of_pass_write_index: Some(i), end_of_pass_write_index: Some(i + 1) }),
        };
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&timed(0));
            for op in &ops {
                op.encode_span(&mut pass, n, rows, span);
            }
        }
        for (i, op) in ops.iter().enumerate() {
            op.encode_span(&mut enc.begin_compute_pass(&timed(2 + 2 * i as u32)), n, rows, span);
        }
        enc.resolve_query_set(&set, 0..count, &resolved, 0);
        self.ctx.queue.submit([enc.finish()]);
        let bytes = self.ctx.read_buffer(&resolved, 0, resolved.size()).await?;
        let ticks: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let period_ns = self.ctx.queue.get_timestamp_period() as f64;
        let ms = |i: usize| ticks[i + 1].saturating_sub(ticks[i]) as f64 * period_ns / 1e6;
        let mut kernels = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            add(&mut kernels, op.label, ms(2 + 2 * i));
        }
        Ok(Some(GpuTime { step_ms: ms(0), kernels }))
    }

    /// Milliseconds per kernel label for one step, each dispatch submitted and waited for on
    /// its own: the totals include a submission per dispatch, so compare labels, not the sum
    /// with a real step.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, b: &Batch) -> Result<KernelTimes> {
        b.validate(&self.limits, self.config.vocab_size)?;
        self.write_batch(b, Readback::Argmax);
        let (n, rows, span) = (b.tokens.len() as u32, b.logit_rows.len() as u32, b.span());
        let mut out = Vec::new();
        for op in self.step_ops(Readback::Argmax, false) {
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            op.encode_span(&mut enc.begin_compute_pass(&Default::default()), n, rows, span);
            let t0 = std::time::Instant::now();
            self.ctx.queue.submit([enc.finish()]);
            let _ = self.ctx.device.poll(wgpu::PollType::wait_indefinitely());
            add(&mut out, op.label, t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(out)
    }

    /// Per-kernel milliseconds of prefilling `tokens` in one step, then of decoding one more
    /// token, and whether they are GPU timestamps (else [`GpuModel::profile`]'s CPU times).
    /// Writes K/V into the pool's first blocks: run it before an engine owns the model.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_prompt(&self, tokens: &[u32]) -> Result<([KernelTimes; 2], bool)> {
        let n = tokens.len();
        let table: Vec<u32> = (0..(n as u32 + 1).div_ceil(self.limits.block_size)).collect();
        let positions: Vec<u32> = (0..=n as u32).collect();
        let prefill = Batch { tokens, positions: &positions[..n], seq_ids: &vec![0; n], logit_rows: &[n as u32 - 1], block_tables: &[&table], masks: None, sampling: None };
        let decode = Batch { tokens: &tokens[..1], positions: &positions[n..], seq_ids: &[0], logit_rows: &[0], block_tables: &[&table], masks: None, sampling: None };
        let timed = |b: &Batch| -> Result<(KernelTimes, bool)> {
            Ok(match pollster::block_on(self.gpu_time(b))? {
                Some(t) => (t.kernels, true),
                None => (self.profile(b)?, false),
            })
        };
        let ((p, gpu), (d, _)) = (timed(&prefill)?, timed(&decode)?);
        Ok(([p, d], gpu))
    }
}
