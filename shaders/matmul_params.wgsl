// Parameters of both matrix multiplies (matmul.wgsl, matvec.wgsl) and of their epilogue
// (rope_store.wgsl), prepended by the launcher; mirrored by Rust's MatmulParams.
struct MatmulParams {
    k: u32,          // input width (multiple of 32)
    m: u32,          // output rows (gated: the gate rows; the up rows follow)
    out_stride: u32, // y row stride
    out_col: u32,    // first y column written
    scale_off: u32,  // u32 offset of the scales in w
    accumulate: u32, // 1: y += result (residual add)
    use_logit_rows: u32, // 1: the token count is n_logit_rows (LM head)
    // Gated output, read by matvec.wgsl (matmul.wgsl specializes it as overrides): 0 none,
    // 1 SiLU(gate) * up, 2 GELU(gate) * up (Gemma's GeGLU).
    glu: u32,
    eps: f32,        // matmul.wgsl's folded RMSNorm's epsilon (its NORM override)
    // RoPE and the KV write in the epilogue (rope_store.wgsl): 0 none, 1 GGML-normal pairs,
    // 2 NeoX; then the q|k|v shape.
    rope: u32,
    head_dim: u32,
    q_rows: u32,
    kv_rows: u32,
    // 1: add the q|k|v bias (Qwen2) from nw, at element bias_off, before the rotation.
    bias: u32,
    bias_off: u32,
    // matmul.wgsl's PARTIALS: the element of y where the logit rows' partial maxima start.
    partials: u32,
}
