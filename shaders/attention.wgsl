// Decode attention, split over the sequence (flash-decoding): one workgroup per (chunk of
// CHUNK cached positions, head, token), so a long context spreads over many workgroups instead
// of one per head. Each writes its chunk's softmax state (running max m, sum l, unnormalized
// P.V) to `part`; attn_combine.wgsl merges the chunks. When the step's span fits one chunk
// (the grid has one chunk), the workgroup writes the normalized output itself and the merge
// pass does not run. Within a chunk, positions go 64 at a time (one per thread for the scores)
// with an online softmax. K and V are read in pairs
// of elements (kv_f16.wgsl or kv_f32.wgsl).

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<KvPair>;
@group(0) @binding(3) var<storage, read> v_cache: array<KvPair>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// [(t * n_heads + h) * scratch_stride + chunk] records of head_dim + 2 floats: m, l, P.V.
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<storage, read> batch: array<u32>;

override CHUNK: u32 = 256u; // positions per chunk (Kernels::attention)
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> q: array<f32, MAX_HEAD_DIM>;
var<workgroup> weights: array<f32, 64>;
var<workgroup> slots: array<u32, 64>;
var<workgroup> scratch: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x;
    let h = wid.y;
    let t = wid.z;
    let live = t < n_tokens();
    let hd = P.head_dim;
    let hd2 = hd / 2u;
    let row_pairs = P.n_kv_heads * hd2;
    let kv_off = (h / (P.n_heads / P.n_kv_heads)) * hd2;
    var pos = 0u;
    var seq = 0u;
    if (live) {
        pos = position(t);
        seq = seq_id(t);
        for (var d = lid; d < hd; d += 64u) { q[d] = qkv[t * P.qkv_stride + h * hd + d]; }
    }
    // This chunk's share of the token's causal (and sliding) window; empty past its position.
    let end = min(pos + 1u, (chunk + 1u) * CHUNK);
    var start = chunk * CHUNK;
    if (P.window > 0u && pos + 1u > P.window) { start = max(start, pos + 1u - P.window); }
    if (!live) { start = end; }
    workgroupBarrier();

    var m = -3.0e38;
    var l = 0.0;
    var acc: array<vec2<f32>, 2>; // output dim pairs lid, lid + 64 (head_dim <= 256)
    for (var c = start; c < end; c += 64u) {
        let p = c + lid;
        var s = -3.0e38;
        if (p < end) {
            let slot = kv_slot(seq, p);
            slots[lid] = slot;
            var dotv = 0.0;
            let k0 = slot * row_pairs + kv_off;
            for (var d = 0u; d < hd2; d++) {
                let k = kv_pair(k_cache[k0 + d]);
                dotv += q[2u * d] * k.x + q[2u * d + 1u] * k.y;
            }
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
        for (var j = 0u; j < 2u; j++) {
            let w = lid + 64u * j;
            if (w < hd2) {
                var a = acc[j] * correction;
                for (var i = 0u; i < count; i++) {
                    a += weights[i] * kv_pair(v_cache[slots[i] * row_pairs + kv_off + w]);
                }
                acc[j] = a;
            }
        }
        workgroupBarrier();
    }
    if (!live || chunk >= P.scratch_stride) { return; }
    if (groups.x == 1u) {
        // The whole span in this chunk: l > 0 (the token's own position always counts).
        for (var j = 0u; j < 2u; j++) {
            let w = lid + 64u * j;
            if (w < hd2) {
                let o = t * P.n_heads * hd + h * hd + 2u * w;
                out[o] = acc[j].x / l;
                out[o + 1u] = acc[j].y / l;
            }
        }
        return;
    }
    let o = ((t * P.n_heads + h) * P.scratch_stride + chunk) * (hd + 2u);
    if (lid == 0u) {
        part[o] = m;
        part[o + 1u] = l;
    }
    for (var j = 0u; j < 2u; j++) {
        let w = lid + 64u * j;
        if (w < hd2) {
            part[o + 2u + 2u * w] = acc[j].x;
            part[o + 3u + 2u * w] = acc[j].y;
        }
    }
}
