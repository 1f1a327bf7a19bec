// RMSNorm of every query and key head in place in the fused qkv rows (Gemma 3's q/k norms),
// one workgroup per (head, token): heads 0 .. n_heads are queries and use weight[0 .. head_dim],
// the n_kv_heads key heads that follow use weight[head_dim .. 2 * head_dim].

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    qkv_stride: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> batch: array<u32>;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let live = t < n_tokens();
    let base = t * P.qkv_stride + h * P.head_dim;
    var ss = 0.0;
    if (live) {
        for (var j = lid; j < P.head_dim; j += 64u) {
            let v = qkv[base + j];
            ss += v * v;
        }
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s /= 2u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    if (!live) { return; }
    let scale = 1.0 / sqrt(partial[0] / f32(P.head_dim) + P.eps);
    let w0 = select(0u, P.head_dim, h >= P.n_heads);
    for (var j = lid; j < P.head_dim; j += 64u) {
        qkv[base + j] = qkv[base + j] * scale * weight[w0 + j];
    }
}
