// RoPE on the fused qkv rows, then K and V into the paged cache. One workgroup per token.
// q is rotated in place; k is rotated on its way into the cache. The cos/sin table is computed
// once on the CPU in f64 (`rope[pos][i] = (cos, sin)`), so angles match the reference exactly.
// NEOX pairs (i, i + d/2); otherwise adjacent pairs (2i, 2i + 1) as GGML's "normal" rope.
// The cache holds pairs of elements (kv_f16.wgsl or kv_f32.wgsl): pair w of a slot's row is
// elements (2w, 2w + 1), so each thread writes whole pairs and computes both elements itself.
// With QK_NORM (Gemma 3), each query and key head is first RMS-normalized in place: query heads
// with norm[0 .. head_dim], key heads with norm[head_dim .. 2 * head_dim] (a launch of its own
// before; a whole head is in this workgroup, which a matmul epilogue never has).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    qkv_stride: u32, // q_dim + 2 * kv_dim
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<KvPair>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<KvPair>;
// QK_NORM only.
@group(0) @binding(5) var<storage, read> norm: array<f32>;
@group(0) @binding(6) var<storage, read> batch: array<u32>;

override NEOX: bool = false;
override QK_NORM: bool = false;

var<workgroup> partial: array<f32, 64>;

// RMSNorm of each query and key head of the row starting at `row`, in place: per-thread strided
// sums of squares, then a tree over the 64 threads.
fn norm_heads(row: u32, lid: u32) {
    for (var h = 0u; h < P.n_heads + P.n_kv_heads; h++) {
        let base = row + h * P.head_dim;
        var ss = 0.0;
        for (var j = lid; j < P.head_dim; j += 64u) {
            let v = qkv[base + j];
            ss += v * v;
        }
        partial[lid] = ss;
        workgroupBarrier();
        for (var s = 32u; s > 0u; s /= 2u) {
            if (lid < s) { partial[lid] += partial[lid + s]; }
            workgroupBarrier();
        }
        let scale = 1.0 / sqrt(partial[0] / f32(P.head_dim) + P.eps);
        let w0 = select(0u, P.head_dim, h >= P.n_heads);
        for (var j = lid; j < P.head_dim; j += 64u) {
            qkv[base + j] = qkv[base + j] * scale * norm[w0 + j];
        }
        // Every thread has read partial[0] before the next head's sums overwrite it.
        workgroupBarrier();
    }
    // RoPE below reads elements other threads normalized.
    storageBarrier();
}

fn pair(i: u32) -> vec2<u32> {
    let half = P.head_dim / 2u;
    let h = i / half;
    let j = i % half;
    let base = h * P.head_dim;
    if (NEOX) { return vec2<u32>(base + j, base + j + half); }
    return vec2<u32>(base + 2u * j, base + 2u * j + 1u);
}

// Element e of the rotated k whose row starts at k0: (a, b) is e's pair, e the first or second.
fn rotated_k(k0: u32, pos: u32, e: u32) -> f32 {
    let half = P.head_dim / 2u;
    let d = e % P.head_dim;
    var j = d / 2u;
    var first = d % 2u == 0u;
    var other = e + 1u;
    if (NEOX) {
        j = d % half;
        first = d < half;
        other = e + half;
    }
    if (!first) { other = select(e - 1u, e - half, NEOX); }
    let cs = rope[pos * half + j];
    let x = qkv[k0 + e];
    let y = qkv[k0 + other];
    if (first) { return x * cs.x - y * cs.y; }
    return y * cs.y + x * cs.x;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= n_tokens()) { return; }
    let pos = position(t);
    let half = P.head_dim / 2u;
    let row = t * P.qkv_stride;
    let q_dim = P.n_heads * P.head_dim;
    let kv_dim = P.n_kv_heads * P.head_dim;
    let pairs = kv_dim / 2u;
    let out = kv_slot(seq_id(t), pos) * pairs;
    if (QK_NORM) { norm_heads(row, lid); }
    for (var w = lid; w < pairs; w += 64u) {
        let k0 = row + q_dim;
        k_cache[out + w] = kv_pack(vec2<f32>(rotated_k(k0, pos, 2u * w), rotated_k(k0, pos, 2u * w + 1u)));
        let v0 = row + q_dim + kv_dim + 2u * w;
        v_cache[out + w] = kv_pack(vec2<f32>(qkv[v0], qkv[v0 + 1u]));
    }
    for (var i = lid; i < P.n_heads * half; i += 64u) {
        let cs = rope[pos * half + i % half];
        let p = pair(i) + row;
        let a = qkv[p.x];
        let b = qkv[p.y];
        qkv[p.x] = a * cs.x - b * cs.y;
        qkv[p.y] = a * cs.y + b * cs.x;
    }
}
