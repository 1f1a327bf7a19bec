//! Per-logit-row reductions the sampler reads back: argmax (argmax.wgsl), the sampled token
//! (sample.wgsl) and the top-k candidates with the row's log-sum-exp (topk.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::sample::{LogitEdit, RowSampling};

use super::shader::Shader;
use super::{Count, Grid, Kernels, LogitPartials, Op};

/// Candidates the top-k kernel returns per row (shaders/topk.wgsl MAX_K).
pub const TOPK_MAX: usize = 64;
/// Words of top-k output per row.
pub const TOPK_WORDS: usize = 2 * TOPK_MAX + 2;

/// `struct Params` of argmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ArgmaxParams {
    vocab: u32,
    mask_words: u32,
    /// Rows per partial maximum the LM head left (0: scan the whole row).
    group: u32,
    /// Element of the logits buffer where the partial maxima start.
    partials: u32,
}
const _: () = assert!(std::mem::size_of::<ArgmaxParams>() == 16);

/// `struct Params` of topk.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TopkParams {
    vocab: u32,
    /// Candidates wanted, at most [`TOPK_MAX`].
    k: u32,
    /// Rows per partial maximum the LM head left (0: select over the whole row).
    group: u32,
    /// Element of the logits buffer where the partial maxima start.
    partials: u32,
}
const _: () = assert!(std::mem::size_of::<TopkParams>() == 16);

/// `struct Params` of sample.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SampleParams {
    vocab: u32,
    mask_words: u32,
    /// Rows per partial maximum the LM head left (0: none).
    group: u32,
    /// Element of the logits buffer where the partial maxima start.
    partials: u32,
}
const _: () = assert!(std::mem::size_of::<SampleParams>() == 16);

/// `struct Row` of sample.wgsl: one logit row's sampling, written each sampled step.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct SampleRow {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    /// The uniform number in f32, rounded down so it stays below 1.
    u: f32,
    repeat_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    /// The row's edits in the edits buffer.
    edit_start: u32,
    edit_count: u32,
    count_input: u32,
    typical_p: f32,
}
const _: () = assert!(std::mem::size_of::<SampleRow>() == 48);

/// `struct Edit` of sample.wgsl (a [`LogitEdit`]).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct SampleEdit {
    token: u32,
    bias: f32,
    count: u32,
    /// Written by the kernel: the token's logit before this edit (logprobs are of the
    /// unedited row).
    before: f32,
}
const _: () = assert!(std::mem::size_of::<SampleEdit>() == 16);

/// The rows and their edits, one after the other, as sample.wgsl reads them.
pub fn sample_rows(rows: &[RowSampling]) -> (Vec<SampleRow>, Vec<SampleEdit>) {
    let mut edits = Vec::new();
    let rows = rows
        .iter()
        .map(|s| {
            let u = s.u as f32;
            let u = if u as f64 > s.u { f32::from_bits(u.to_bits() - 1) } else { u };
            let edit_start = edits.len() as u32;
            edits.extend(s.edits.iter().map(|e: &LogitEdit| SampleEdit { token: e.token, bias: e.bias, count: e.count, before: 0.0 }));
            SampleRow {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                min_p: s.min_p,
                u: u.max(0.0),
                repeat_penalty: s.repeat_penalty,
                frequency_penalty: s.frequency_penalty,
                presence_penalty: s.presence_penalty,
                edit_start,
                edit_count: s.edits.len() as u32,
                count_input: s.count_input as u32,
                typical_p: s.typical_p,
            }
        })
        .collect();
    (rows, edits)
}

impl Kernels {
    /// Index of the largest logit of each logit row; with `masked`, of the largest allowed by
    /// the row's bits in `masks` (`[rows][vocab.div_ceil(32)]` u32 words, bit set: allowed).
    /// With `partials`, from the maxima the LM head left there ([`LogitPartials`]; not masked).
    pub fn argmax(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, masks: &wgpu::Buffer, vocab: u32, masked: bool, partials: Option<LogitPartials>) -> Op {
        assert!(!(masked && partials.is_some()), "the partial maxima do not know the mask");
        let variants = self.single(Shader::Argmax, None, &[("MASKED", masked as u32)], Grid::PerItem { of: Count::LogitRows });
        let (group, offset) = partials.map_or((0, 0), |p| (p.group, p.offset));
        let params = ArgmaxParams { vocab, mask_words: vocab.div_ceil(32), group, partials: offset };
        self.op(if masked { "masked argmax" } else { "argmax" }, variants, &params, &[logits, result, masks])
    }

    /// The token each logit row draws with its [`SampleRow`] in `rows` (after its edits in
    /// `edits`, applied to `logits` in place; with `masked`, among the tokens the row's bits in
    /// `masks` allow, as [`Kernels::argmax`] reads them), into `result` (where argmax leaves its
    /// picks, so a sampled token chains the same way), and its logit before the edits into
    /// `chosen`. With `partials` (not masked), a row without edits starts from the maxima and
    /// sums the LM head left there ([`LogitPartials`]): its top-k among the runs with the
    /// largest maxima where they fit in workgroup memory (top_k x group <= 768), its top-p cut
    /// (or, at temperature 1 without filters, its draw) among 768 / group of them where it
    /// lies above the rest.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        logits: &wgpu::Buffer,
        result: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        edits: &wgpu::Buffer,
        chosen: &wgpu::Buffer,
        masks: &wgpu::Buffer,
        vocab: u32,
        masked: bool,
        partials: Option<LogitPartials>,
    ) -> Op {
        assert!(!(masked && partials.is_some()), "the partial maxima do not know the mask");
        let variants = self.single(Shader::Sample, None, &[("MASKED", masked as u32)], Grid::PerItem { of: Count::LogitRows });
        let (group, offset) = partials.map_or((0, 0), |p| (p.group, p.offset));
        let params = SampleParams { vocab, mask_words: vocab.div_ceil(32), group, partials: offset };
        self.op(if masked { "masked sample" } else { "sample" }, variants, &params, &[logits, result, rows, edits, chosen, masks])
    }

    /// The [`TOPK_MAX`] largest logits of each logit row, sorted, and the row's log-sum-exp
    /// ([`TOPK_WORDS`] words per row: id/logit pairs, lse, count). With `partials`, from the
    /// maxima and sums the LM head left there ([`LogitPartials`]): the logits of the runs with
    /// the largest maxima where they fit in workgroup memory (TOPK_MAX x group <= 1024), the
    /// log-sum-exp from the runs' sums.
    pub fn topk(&self, logits: &wgpu::Buffer, result: &wgpu::Buffer, vocab: u32, partials: Option<LogitPartials>) -> Op {
        let variants = self.single(Shader::Topk, None, &[], Grid::PerItem { of: Count::LogitRows });
        let (group, offset) = partials.map_or((0, 0), |p| (p.group, p.offset));
        self.op("topk", variants, &TopkParams { vocab, k: TOPK_MAX as u32, group, partials: offset }, &[logits, result])
    }
}
