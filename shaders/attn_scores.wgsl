// Attention for CPU-emulated adapters, pass 1 of 3 (no barriers, which such adapters run as
// coroutines): each thread scores 4 cached positions of one (head, token) against its query,
// so the query is loaded once per 4 keys. Grid: (position groups, heads, tokens); the scores,
// pre-scaled, go to s[(t * n_heads + h) * scratch_stride + p]; positions outside the causal (and
// sliding) window are not written and the later passes skip them.

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> s: array<f32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

// Where row p of one KV head starts in the cache, in vec4s.
fn k_row(seq: u32, p: u32, kv_off4: u32) -> u32 { return kv_slot(seq, p) * (P.n_kv_heads * P.head_dim / 4u) + kv_off4; }

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.y;
    let t = gid.z;
    let p0 = gid.x * 4u;
    let pos = position(t);
    var start = 0u;
    if (P.window > 0u && pos + 1u > P.window) { start = pos + 1u - P.window; }
    if (t >= n_tokens() || p0 > pos || p0 + 3u < start) { return; }
    let seq = seq_id(t);
    let hd4 = P.head_dim / 4u;
    let kv_off4 = (h / (P.n_heads / P.n_kv_heads)) * hd4;
    let q0 = t * (P.qkv_stride / 4u) + h * hd4;
    // Rows past the window clamp to the last valid one; their scores are not written.
    let k0 = k_row(seq, p0, kv_off4);
    let k1 = k_row(seq, min(p0 + 1u, pos), kv_off4);
    let k2 = k_row(seq, min(p0 + 2u, pos), kv_off4);
    let k3 = k_row(seq, min(p0 + 3u, pos), kv_off4);
    var a = vec4<f32>(0.0);
    for (var d = 0u; d < hd4; d++) {
        let q = qkv[q0 + d];
        a += vec4<f32>(dot(q, k_cache[k0 + d]), dot(q, k_cache[k1 + d]), dot(q, k_cache[k2 + d]), dot(q, k_cache[k3 + d]));
    }
    let o = (t * P.n_heads + h) * P.scratch_stride;
    for (var i = 0u; i < 4u; i++) {
        let p = p0 + i;
        if (p >= start && p <= pos) { s[o + p] = a[i] * P.scale; }
    }
}
