// Attention for CPU-emulated adapters, pass 2 of 3: one thread per (head, token) turns its
// window of scores into probabilities in place (max, then exp and sum, then 1 / sum).

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read_write> s: array<f32>;
@group(0) @binding(2) var<storage, read> batch: array<u32>;

@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x / P.n_heads;
    if (t >= n_tokens()) { return; }
    let end = position(t) + 1u;
    var start = 0u;
    if (P.window > 0u && end > P.window) { start = end - P.window; }
    let o = gid.x * P.scratch_stride;
    var m = -3.0e38;
    for (var p = start; p < end; p++) { m = max(m, s[o + p]); }
    var l = 0.0;
    for (var p = start; p < end; p++) {
        let e = exp(s[o + p] - m);
        s[o + p] = e;
        l += e;
    }
    let inv = 1.0 / l;
    for (var p = start; p < end; p++) { s[o + p] *= inv; }
}
