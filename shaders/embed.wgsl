// Embedding lookup from a quantized table: y[t][:] = dequant(W[row(t)]), where row(t) is the
// batch's token id (or t itself when DIRECT, which dequantizes whole tensors for tests).
// One thread per 32-value group of a row.

struct Params {
    k: u32,         // row width (multiple of 32)
    scale_off: u32, // u32 offset of the scales in w
    n_rows: u32,    // rows to produce when DIRECT
    scale: f32,     // multiplier applied to every value (1, or sqrt(d) for Gemma)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> batch: array<u32>;

override DIRECT: bool = false;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let groups = P.k / 32u;
    let t = gid.x / groups;
    let g = gid.x % groups;
    let n = select(n_tokens(), P.n_rows, DIRECT);
    if (t >= n) { return; }
    let row = select(token_id(t), t, DIRECT);
    let v = load32(row, g, groups, P.scale_off);
    for (var i = 0u; i < 8u; i++) {
        y[t * (P.k / 4u) + g * 8u + i] = select(v[i] * P.scale, v[i], P.scale == 1.0);
    }
}
