//! ggml tensor types: ids as stored in GGUF, block geometry, and which ones ferrolm can run.

use crate::error::{Error, Result};

/// A ggml tensor element type. Quantized types store `block_size()` values in `type_size()` bytes,
/// blocks running along `dims[0]` (the contiguous row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
}

/// Types `dequantize` handles; every other known type parses but is refused at load.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K";

impl GgmlType {
    /// Maps the GGUF type id; `None` for ids ferrolm does not know (IQ*, TQ*, ...).
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            BF16 => 30,
        }
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
        }
    }

    pub fn is_supported(self) -> bool {
        !matches!(self, GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q5_K)
    }

    /// Bytes taken by a row of `n` values; errors if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: u64) -> Result<u64> {
        if !n.is_multiple_of(self.block_size()) {
            return Err(Error::malformed(format!("a row of {n} values is not a multiple of the {self:?} block size {}", self.block_size())));
        }
        (n / self.block_size()).checked_mul(self.type_size()).ok_or_else(|| Error::malformed("tensor size overflows"))
    }

    pub fn name(self) -> String {
        format!("{self:?}")
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
