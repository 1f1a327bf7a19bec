// Parameters of every attention kernel (Kernels::attention), prepended by the launcher to
// kernels that name AttnParams.
struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    qkv_stride: u32,
    scale: f32,
    window: u32, // sliding window in positions; 0 = full causal
    // Scratch entries per (token, head): chunk records (split decode) or scores (CPU passes).
    scratch_stride: u32,
    _pad: u32,
}
