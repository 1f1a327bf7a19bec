// Dequantizing matrix multiply for GPUs: y[t][out_col + r] (+)= sum_k x[t][k] * W[r][k] for the
// batch's tokens. A workgroup owns 64 / TPR weight rows and TN tokens; TPR threads split a row's
// 32-value groups (a group's words stay in cache across the TN tokens), then the partial sums
// are summed by `reduce_lanes` (reduce_subgroup.wgsl or reduce_workgroup.wgsl, prepended by the
// launcher). TN = 1 is the decode GEMV, TN = 8 prefill.
// SWIGLU: rows r (gate) and r + m (up) of W give y = silu(gate) * up.
// `dot32` comes from the weight type's quant_*.wgsl, prepended by the launcher.

struct Params {
    k: u32,          // input width (multiple of 32)
    m: u32,          // output rows
    out_stride: u32, // y row stride
    out_col: u32,    // first y column written
    scale_off: u32,  // u32 offset of the scales in w
    accumulate: u32, // 1: y += result (residual add)
    use_logit_rows: u32, // 1: the token count is n_logit_rows (LM head)
    // The gate form for matvec.wgsl, which shares these parameters; here SWIGLU and GELU are
    // overrides, specialized out of the inner loop.
    glu: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

override TN: u32 = 1u;
override TPR: u32 = 16u;
override SWIGLU: bool = false;
// With SWIGLU: GELU (tanh approximation, ggml's) instead of SiLU on the gate: Gemma's GeGLU.
override GELU: bool = false;

fn gate_act(v: f32) -> f32 {
    // tanh saturates at 1.0 in f32 by 15; clamping keeps exp-based tanh (SwiftShader) from inf / inf.
    if (GELU) { return 0.5 * v * (1.0 + tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0))); }
    return v / (1.0 + exp(-v));
}
const WG: u32 = 64u;
const MAX_TN: u32 = 8u;

// Per-thread partial sums for each token (acc2: the SWIGLU up rows), summed across lanes.
var<private> acc: array<f32, MAX_TN>;
var<private> acc2: array<f32, MAX_TN>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = select(n_tokens(), n_logit_rows(), P.use_logit_rows == 1u);
    let t0 = wid.y * TN;
    let row = wid.x * (WG / TPR) + lid / TPR;
    let lane = lid % TPR;
    let groups = P.k / 32u;
    let nt = min(TN, n - min(n, t0));
    if (row < P.m) {
        for (var g = lane; g < groups; g += TPR) {
            let b = row * groups + g;
            // Constant trip count (TN is specialized) keeps acc in registers.
            for (var t = 0u; t < TN; t++) {
                let xb = min(t0 + t, n - 1u) * (P.k / 4u) + g * 8u;
                acc[t] += dot32(b, P.scale_off, xb);
                if (SWIGLU) { acc2[t] += dot32(b + P.m * groups, P.scale_off, xb); }
            }
        }
    }
    reduce_lanes(lid, lane);
    if (lane == 0u && row < P.m) {
        for (var t = 0u; t < nt; t++) {
            var v = acc[t];
            if (SWIGLU) {
                v = gate_act(v) * acc2[t];
            }
            let o = (t0 + t) * P.out_stride + P.out_col + row;
            if (P.accumulate == 1u) { v += y[o]; }
            y[o] = v;
        }
    }
}
