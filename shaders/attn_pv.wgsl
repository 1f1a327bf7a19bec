// Attention for CPU-emulated adapters, pass 3 of 3: one thread per (4 output dims, head,
// token) sums probability-weighted V rows over the window.

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd4 = P.head_dim / 4u;
    let d = gid.x % hd4;
    let th = gid.x / hd4; // t * n_heads + h
    let t = th / P.n_heads;
    let h = th % P.n_heads;
    if (t >= n_tokens()) { return; }
    let end = position(t) + 1u;
    var start = 0u;
    if (P.window > 0u && end > P.window) { start = end - P.window; }
    let seq = seq_id(t);
    let row4 = P.n_kv_heads * hd4;
    let v_off = (h / (P.n_heads / P.n_kv_heads)) * hd4 + d;
    let o = th * P.scratch_stride;
    var acc = vec4<f32>(0.0);
    for (var p = start; p < end; p++) {
        acc += s[o + p] * v_cache[kv_slot(seq, p) * row4 + v_off];
    }
    out[th * hd4 + d] = acc;
}
