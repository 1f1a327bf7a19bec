// Dequantizing matrix multiply for CPU-emulated adapters (lavapipe, SwiftShader): one thread per
// output row and TN (1, 2 or 4) tokens, no workgroup memory and no barriers, which such adapters
// run as coroutines at great cost. Same contract as matmul.wgsl:
// y[t][out_col + r] (+)= sum_k x[t][k] * W[r][k]; SWIGLU gives silu(gate) * up.

struct Params {
    k: u32,
    m: u32,
    out_stride: u32,
    out_col: u32,
    scale_off: u32,
    accumulate: u32,
    use_logit_rows: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

override TN: u32 = 1u;
override SWIGLU: bool = false;
// With SWIGLU: GELU (tanh approximation, ggml's) instead of SiLU on the gate: Gemma's GeGLU.
override GELU: bool = false;

fn gate_act(v: f32) -> f32 {
    // tanh saturates at 1.0 in f32 by 15; clamping keeps exp-based tanh (SwiftShader) from inf / inf.
    if (GELU) { return 0.5 * v * (1.0 + tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0))); }
    return v / (1.0 + exp(-v));
}

fn finish(acc: f32, up: f32, t: u32, row: u32) {
    var v = acc;
    if (SWIGLU) { v = gate_act(v) * up; }
    let o = t * P.out_stride + P.out_col + row;
    if (P.accumulate == 1u) { v += y[o]; }
    y[o] = v;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = select(n_tokens(), n_logit_rows(), P.use_logit_rows == 1u);
    let row = gid.x;
    let t0 = gid.y * TN;
    if (row >= P.m || t0 >= n) { return; }
    let groups = P.k / 32u;
    let kv4 = P.k / 4u;
    // Token rows past the batch clamp to its last token; their results are not written.
    let x0 = t0 * kv4;
    let x1 = min(t0 + 1u, n - 1u) * kv4;
    let x2 = min(t0 + 2u, n - 1u) * kv4;
    let x3 = min(t0 + 3u, n - 1u) * kv4;
    let up_off = P.m * groups;
    var a = vec4<f32>(0.0);
    var u = vec4<f32>(0.0);
    for (var g = 0u; g < groups; g++) {
        let b = row * groups + g;
        let xo = g * 8u;
        a.x += dot32(b, P.scale_off, x0 + xo);
        if (SWIGLU) { u.x += dot32(b + up_off, P.scale_off, x0 + xo); }
        if (TN >= 2u) {
            a.y += dot32(b, P.scale_off, x1 + xo);
            if (SWIGLU) { u.y += dot32(b + up_off, P.scale_off, x1 + xo); }
        }
        if (TN == 4u) {
            a.z += dot32(b, P.scale_off, x2 + xo);
            a.w += dot32(b, P.scale_off, x3 + xo);
            if (SWIGLU) {
                u.z += dot32(b + up_off, P.scale_off, x2 + xo);
                u.w += dot32(b + up_off, P.scale_off, x3 + xo);
            }
        }
    }
    finish(a.x, u.x, t0, row);
    if (TN >= 2u && t0 + 1u < n) { finish(a.y, u.y, t0 + 1u, row); }
    if (TN == 4u) {
        if (t0 + 2u < n) { finish(a.z, u.z, t0 + 2u, row); }
        if (t0 + 3u < n) { finish(a.w, u.w, t0 + 3u, row); }
    }
}
