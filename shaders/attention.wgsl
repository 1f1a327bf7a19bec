// Causal grouped-query attention over the paged KV cache, one workgroup per (head, token).
// Positions are visited in chunks of 64 (one per thread for the scores) with an online softmax:
// the running max and sum are rescaled per chunk, so any context length takes one pass.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    qkv_stride: u32,
    scale: f32,
    window: u32, // sliding window in positions; 0 = full causal
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> batch: array<u32>;

const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> q: array<f32, MAX_HEAD_DIM>;
var<workgroup> weights: array<f32, 64>;
var<workgroup> slots: array<u32, 64>;
var<workgroup> scratch: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let live = t < n_tokens();
    let hd = P.head_dim;
    let kv_dim = P.n_kv_heads * hd;
    let kv_off = (h / (P.n_heads / P.n_kv_heads)) * hd;
    var pos = 0u;
    var seq = 0u;
    if (live) {
        pos = position(t);
        seq = seq_id(t);
        for (var d = lid; d < hd; d += 64u) { q[d] = qkv[t * P.qkv_stride + h * hd + d]; }
    }
    let end = pos + 1u;
    var start = 0u;
    if (P.window > 0u && end > P.window) { start = end - P.window; }
    if (!live) { start = end; }
    workgroupBarrier();

    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, 4>; // output dims lid, lid + 64, ... (head_dim <= 256)
    for (var c = start; c < end; c += 64u) {
        let p = c + lid;
        var s = -3.0e38;
        if (p < end) {
            let slot = kv_slot(seq, p);
            slots[lid] = slot;
            var dotv = 0.0;
            for (var d = 0u; d < hd; d++) { dotv += q[d] * k_cache[slot * kv_dim + kv_off + d]; }
            s = dotv * P.scale;
        }
        scratch[lid] = s;
        workgroupBarrier();
        for (var r = 32u; r > 0u; r /= 2u) {
            if (lid < r) { scratch[lid] = max(scratch[lid], scratch[lid + r]); }
            workgroupBarrier();
        }
        let m_new = max(m, scratch[0]);
        workgroupBarrier();
        var e = 0.0;
        if (p < end) { e = exp(s - m_new); }
        weights[lid] = e;
        scratch[lid] = e;
        workgroupBarrier();
        for (var r = 32u; r > 0u; r /= 2u) {
            if (lid < r) { scratch[lid] += scratch[lid + r]; }
            workgroupBarrier();
        }
        let correction = exp(m - m_new);
        l = l * correction + scratch[0];
        m = m_new;
        let count = min(64u, end - c);
        for (var j = 0u; j < 4u; j++) {
            let d = lid + 64u * j;
            if (d < hd) {
                var a = acc[j] * correction;
                for (var i = 0u; i < count; i++) {
                    a += weights[i] * v_cache[slots[i] * kv_dim + kv_off + d];
                }
                acc[j] = a;
            }
        }
        workgroupBarrier();
    }
    if (!live) { return; }
    for (var j = 0u; j < 4u; j++) {
        let d = lid + 64u * j;
        if (d < hd) { out[t * P.n_heads * hd + h * hd + d] = acc[j] / l; }
    }
}
