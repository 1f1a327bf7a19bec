// Attention for CPU-emulated adapters, pass 3 of 3: one thread per (4 output dims, QH heads
// sharing a KV head, token) sums probability-weighted V rows over the window, so each V row is
// loaded once for QH heads. The cache slot is looked up once per KV block, not per position.

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read> v_cache: array<KvQuad>; // kv_f16.wgsl or kv_f32.wgsl
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

// Query heads per thread (1-4), dividing the heads per KV head.
override QH: u32 = 1u;

@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd4 = P.head_dim / 4u;
    let groups = P.n_heads / QH;
    let d = gid.x % hd4;
    let tg = gid.x / hd4; // t * groups + head group
    let t = tg / groups;
    let h0 = (tg % groups) * QH;
    if (t >= n_tokens()) { return; }
    let end = position(t) + 1u;
    var start = 0u;
    if (P.window > 0u && end > P.window) { start = end - P.window; }
    let seq = seq_id(t);
    let row4 = P.n_kv_heads * hd4;
    let v_off = (h0 / (P.n_heads / P.n_kv_heads)) * hd4 + d;
    let o = (t * P.n_heads + h0) * P.scratch_stride;
    let so = P.scratch_stride;
    let bs = batch[4];
    var slot = kv_slot(seq, start);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var p = start; p < end; p++) {
        if (p % bs == 0u) { slot = kv_slot(seq, p); }
        let v = kv_quad(v_cache[slot * row4 + v_off]);
        slot += 1u;
        a0 += s[o + p] * v;
        if (QH > 1u) { a1 += s[o + so + p] * v; }
        if (QH > 2u) { a2 += s[o + 2u * so + p] * v; }
        if (QH > 3u) { a3 += s[o + 3u * so + p] * v; }
    }
    let out0 = (t * P.n_heads + h0) * hd4 + d;
    out[out0] = a0;
    if (QH > 1u) { out[out0 + hd4] = a1; }
    if (QH > 2u) { out[out0 + 2u * hd4] = a2; }
    if (QH > 3u) { out[out0 + 3u * hd4] = a3; }
}
