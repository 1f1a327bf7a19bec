//! The kernel shaders in `shaders/`: each one's source, the WGSL pieces it is compiled with and
//! the access of its storage bindings, declared here rather than found by reading the source.

use crate::gguf::GgmlType;

/// Access of a kernel's storage bindings after the uniform at binding 0, in binding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Access {
    Read,
    ReadWrite,
}
use Access::{Read, ReadWrite};

/// One kernel source file; with its quant type and override constants it names a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Shader {
    Matmul,
    Matvec,
    Embed,
    Rmsnorm,
    BiasAdd,
    RopeKv,
    Attention,
    AttnTiled,
    AttnCombine,
    AttnScores,
    AttnSoftmax,
    AttnPv,
    Argmax,
    Sample,
    Topk,
    ReadBandwidth,
    DequantProbe,
}

/// The WGSL a shader is compiled with besides its own source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Needs {
    /// The batch description's accessors (batch.wgsl); its buffer is the last binding.
    pub batch: bool,
    /// `struct AttnParams` (attn_params.wgsl), the uniform of the attention kernels.
    pub attn_params: bool,
    /// `struct MatmulParams` (matmul_params.wgsl), the uniform of the matrix multiplies.
    pub matmul_params: bool,
    /// `reduce_lanes`: subgroup shuffles or workgroup memory (reduce_*.wgsl).
    pub reduce_lanes: bool,
    /// The weight type's dequantization helpers and the x-slice helpers (x32.wgsl, quant_*.wgsl).
    pub quant: bool,
    /// The KV cache's element format (kv_f16.wgsl or kv_f32.wgsl, by the model's KvType).
    pub kv: bool,
    /// `rope_store`: RoPE and the KV write as a matmul's epilogue (rope_store.wgsl).
    pub rope_store: bool,
}

const BATCH: Needs = Needs { batch: true, attn_params: false, matmul_params: false, reduce_lanes: false, quant: false, kv: false, rope_store: false };
const ATTN: Needs = Needs { attn_params: true, ..BATCH };
const ATTN_KV: Needs = Needs { kv: true, ..ATTN };

impl Shader {
    /// The file stem: the shader module's and pipeline's label.
    pub fn label(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul",
            Shader::Matvec => "matvec",
            Shader::Embed => "embed",
            Shader::Rmsnorm => "rmsnorm",
            Shader::BiasAdd => "bias_add",
            Shader::RopeKv => "rope_kv",
            Shader::Attention => "attention",
            Shader::AttnTiled => "attn_tiled",
            Shader::AttnCombine => "attn_combine",
            Shader::AttnScores => "attn_scores",
            Shader::AttnSoftmax => "attn_softmax",
            Shader::AttnPv => "attn_pv",
            Shader::Argmax => "argmax",
            Shader::Sample => "sample",
            Shader::Topk => "topk",
            Shader::ReadBandwidth => "read_bandwidth",
            Shader::DequantProbe => "dequant_probe",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Shader::Matmul => include_str!("../../../../shaders/matmul.wgsl"),
            Shader::Matvec => include_str!("../../../../shaders/matvec.wgsl"),
            Shader::Embed => include_str!("../../../../shaders/embed.wgsl"),
            Shader::Rmsnorm => include_str!("../../../../shaders/rmsnorm.wgsl"),
            Shader::BiasAdd => include_str!("../../../../shaders/bias_add.wgsl"),
            Shader::RopeKv => include_str!("../../../../shaders/rope_kv.wgsl"),
            Shader::Attention => include_str!("../../../../shaders/attention.wgsl"),
            Shader::AttnTiled => include_str!("../../../../shaders/attn_tiled.wgsl"),
            Shader::AttnCombine => include_str!("../../../../shaders/attn_combine.wgsl"),
            Shader::AttnScores => include_str!("../../../../shaders/attn_scores.wgsl"),
            Shader::AttnSoftmax => include_str!("../../../../shaders/attn_softmax.wgsl"),
            Shader::AttnPv => include_str!("../../../../shaders/attn_pv.wgsl"),
            Shader::Argmax => include_str!("../../../../shaders/argmax.wgsl"),
            Shader::Sample => include_str!("../../../../shaders/sample.wgsl"),
            Shader::Topk => include_str!("../../../../shaders/topk.wgsl"),
            Shader::ReadBandwidth => include_str!("../../../../shaders/read_bandwidth.wgsl"),
            Shader::DequantProbe => include_str!("../../../../shaders/dequant_probe.wgsl"),
        }
    }

    pub fn needs(self) -> Needs {
        match self {
            Shader::Matmul => Needs { matmul_params: true, reduce_lanes: true, quant: true, kv: true, rope_store: true, ..BATCH },
            Shader::Matvec => Needs { matmul_params: true, quant: true, kv: true, rope_store: true, ..BATCH },
            Shader::Embed => Needs { quant: true, ..BATCH },
            Shader::Rmsnorm | Shader::BiasAdd | Shader::Argmax | Shader::Sample | Shader::Topk => BATCH,
            Shader::RopeKv => Needs { kv: true, ..BATCH },
            Shader::Attention | Shader::AttnTiled | Shader::AttnScores | Shader::AttnPv => ATTN_KV,
            Shader::AttnCombine | Shader::AttnSoftmax => ATTN,
            Shader::ReadBandwidth => Needs::default(),
            // The probe runs the Q4_1 GEMV's arithmetic, so it takes the quant helpers.
            Shader::DequantProbe => Needs { quant: true, ..Needs::default() },
        }
    }

    /// Access of every storage binding after the uniform, the batch buffer last where the shader
    /// reads it. Bindings a shader skips (attention.wgsl's 4, the tiled kernel's 5) still take a
    /// slot, so shaders that share a bind group share a layout.
    pub fn access(self) -> &'static [Access] {
        match self {
            Shader::Matmul | Shader::Matvec => &[Read, Read, ReadWrite, Read, Read, ReadWrite, ReadWrite, Read],
            Shader::Rmsnorm | Shader::AttnScores | Shader::AttnPv => &[Read, Read, ReadWrite, Read],
            Shader::Embed | Shader::AttnCombine | Shader::Topk => &[Read, ReadWrite, Read],
            Shader::Argmax => &[Read, ReadWrite, Read, Read],
            Shader::Sample => &[ReadWrite, ReadWrite, Read, ReadWrite, ReadWrite, Read, Read],
            Shader::BiasAdd => &[ReadWrite, Read, Read],
            Shader::RopeKv => &[ReadWrite, Read, ReadWrite, ReadWrite, Read, Read],
            Shader::Attention | Shader::AttnTiled => &[Read, Read, Read, ReadWrite, ReadWrite, Read],
            Shader::AttnSoftmax => &[ReadWrite, Read],
            Shader::ReadBandwidth => &[Read, ReadWrite],
            Shader::DequantProbe => &[Read, Read, ReadWrite],
        }
    }
}

pub(super) fn quant_source(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => include_str!("../../../../shaders/quant_f32.wgsl"),
        GgmlType::F16 => include_str!("../../../../shaders/quant_f16.wgsl"),
        GgmlType::Q4_0 => include_str!("../../../../shaders/quant_q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../../../shaders/quant_q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("../../../../shaders/quant_q5_0.wgsl"),
        GgmlType::Q5_1 => include_str!("../../../../shaders/quant_q5_1.wgsl"),
        GgmlType::Q8_0 => include_str!("../../../../shaders/quant_q8_0.wgsl"),
        GgmlType::Q4_K => include_str!("../../../../shaders/quant_q4_k.wgsl"),
        GgmlType::Q6_K => include_str!("../../../../shaders/quant_q6_k.wgsl"),
        other => unreachable!("{other} is refused at upload (GPU_MATRIX_TYPES)"),
    }
}

pub(super) const BATCH_WGSL: &str = include_str!("../../../../shaders/batch.wgsl");
pub(super) const ATTN_PARAMS_WGSL: &str = include_str!("../../../../shaders/attn_params.wgsl");
pub(super) const MATMUL_PARAMS_WGSL: &str = include_str!("../../../../shaders/matmul_params.wgsl");
pub(super) const KV_F16_WGSL: &str = include_str!("../../../../shaders/kv_f16.wgsl");
pub(super) const KV_F32_WGSL: &str = include_str!("../../../../shaders/kv_f32.wgsl");
pub(super) const ROPE_STORE_WGSL: &str = include_str!("../../../../shaders/rope_store.wgsl");
pub(super) const X32_WGSL: &str = include_str!("../../../../shaders/x32.wgsl");
pub(super) const REDUCE_SUBGROUP_WGSL: &str = include_str!("../../../../shaders/reduce_subgroup.wgsl");
pub(super) const REDUCE_WORKGROUP_WGSL: &str = include_str!("../../../../shaders/reduce_workgroup.wgsl");

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Shader; 17] = [
        Shader::Matmul,
        Shader::Matvec,
        Shader::Embed,
        Shader::Rmsnorm,
        Shader::BiasAdd,
        Shader::RopeKv,
        Shader::Attention,
        Shader::AttnTiled,
        Shader::AttnCombine,
        Shader::AttnScores,
        Shader::AttnSoftmax,
        Shader::AttnPv,
        Shader::Argmax,
        Shader::Sample,
        Shader::Topk,
        Shader::ReadBandwidth,
        Shader::DequantProbe,
    ];

    /// The declarations agree with what each source uses, and the batch is the last binding.
    #[test]
    fn declared_needs_match_the_sources() {
        for s in ALL {
            let src = s.source();
            let n = s.needs();
            assert_eq!(n.batch, src.contains("var<storage, read> batch"), "{s:?} batch");
            assert_eq!(n.attn_params, src.contains("AttnParams"), "{s:?} attn_params");
            assert_eq!(n.matmul_params, src.contains("MatmulParams"), "{s:?} matmul_params");
            assert_eq!(n.reduce_lanes, src.contains("reduce_lanes("), "{s:?} reduce_lanes");
            assert_eq!(n.kv, src.contains("array<KvPair>") || src.contains("array<KvQuad>"), "{s:?} kv");
            assert_eq!(n.rope_store, src.contains("rope_store("), "{s:?} rope_store");
            if n.batch {
                let last = format!("@binding({}) var<storage, read> batch", s.access().len());
                assert!(src.contains(&last), "{s:?}: batch is not binding {}", s.access().len());
            }
        }
    }
}
