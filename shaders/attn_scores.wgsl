// Attention for CPU-emulated adapters, pass 1 of 3 (no barriers, which such adapters run as
// coroutines, and every storage load a per-lane gather): each thread scores 4 cached positions
// against the queries of QH heads that share one KV head, so each key is loaded once for QH
// heads and each query once for 4 keys. Grid: (position groups, head groups, tokens); the
// scores, pre-scaled, go to s[(t * n_heads + h) * scratch_stride + p]; positions outside the
// causal (and sliding) window are not written and the later passes skip them.

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<KvQuad>; // kv_f16.wgsl or kv_f32.wgsl
@group(0) @binding(3) var<storage, read_write> s: array<f32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

// Query heads per thread (1-4), dividing the heads per KV head.
override QH: u32 = 1u;

// Where row p of one KV head starts in the cache, in 4-element units.
fn k_row(seq: u32, p: u32, kv_off4: u32) -> u32 { return kv_slot(seq, p) * (P.n_kv_heads * P.head_dim / 4u) + kv_off4; }

fn store(o: u32, p0: u32, start: u32, pos: u32, a: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        let p = p0 + i;
        if (p >= start && p <= pos) { s[o + p] = a[i] * P.scale; }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h0 = gid.y * QH;
    let t = gid.z;
    let p0 = gid.x * 4u;
    let pos = position(t);
    var start = 0u;
    if (P.window > 0u && pos + 1u > P.window) { start = pos + 1u - P.window; }
    if (t >= n_tokens() || p0 > pos || p0 + 3u < start) { return; }
    let seq = seq_id(t);
    let hd4 = P.head_dim / 4u;
    let kv_off4 = (h0 / (P.n_heads / P.n_kv_heads)) * hd4;
    let q0 = t * (P.qkv_stride / 4u) + h0 * hd4;
    // Rows past the window clamp to the last valid one; their scores are not written.
    let k0 = k_row(seq, p0, kv_off4);
    let k1 = k_row(seq, min(p0 + 1u, pos), kv_off4);
    let k2 = k_row(seq, min(p0 + 2u, pos), kv_off4);
    let k3 = k_row(seq, min(p0 + 3u, pos), kv_off4);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var d = 0u; d < hd4; d++) {
        let c0 = kv_quad(k_cache[k0 + d]);
        let c1 = kv_quad(k_cache[k1 + d]);
        let c2 = kv_quad(k_cache[k2 + d]);
        let c3 = kv_quad(k_cache[k3 + d]);
        let q = qkv[q0 + d];
        a0 += vec4<f32>(dot(q, c0), dot(q, c1), dot(q, c2), dot(q, c3));
        if (QH > 1u) {
            let q = qkv[q0 + hd4 + d];
            a1 += vec4<f32>(dot(q, c0), dot(q, c1), dot(q, c2), dot(q, c3));
        }
        if (QH > 2u) {
            let q = qkv[q0 + 2u * hd4 + d];
            a2 += vec4<f32>(dot(q, c0), dot(q, c1), dot(q, c2), dot(q, c3));
        }
        if (QH > 3u) {
            let q = qkv[q0 + 3u * hd4 + d];
            a3 += vec4<f32>(dot(q, c0), dot(q, c1), dot(q, c2), dot(q, c3));
        }
    }
    let o = (t * P.n_heads + h0) * P.scratch_stride;
    store(o, p0, start, pos, a0);
    if (QH > 1u) { store(o + P.scratch_stride, p0, start, pos, a1); }
    if (QH > 2u) { store(o + 2u * P.scratch_stride, p0, start, pos, a2); }
    if (QH > 3u) { store(o + 3u * P.scratch_stride, p0, start, pos, a3); }
}
