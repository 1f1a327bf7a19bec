// y[t][i] += bias[offset + i] for the first `width` columns of every token's row (stride `stride`): the
// q/k/v projection biases of Qwen2, added to the fused qkv rows.

struct Params {
    width: u32,
    stride: u32,
    offset: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> batch: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= n_tokens()) { return; }
    for (var i = lid; i < P.width; i += 64u) {
        y[t * P.stride + i] += bias[P.offset + i];
    }
}
