// Greedy token choice on the GPU: the index of the largest logit of each logits row (the first
// on ties, like the CPU), so a decode step reads back 4 bytes instead of the vocabulary. With
// MASKED, only tokens whose bit is set in the row's allowed-token mask count (structured
// output: the grammar's mask goes up, not the logits back).

override MASKED: bool = false;

struct Params {
    vocab: u32,
    /// u32 words of one row's mask: vocab / 32 rounded up.
    mask_words: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    if (row >= n_logit_rows()) { return; }
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < P.vocab; i += 256u) {
        if (MASKED && ((mask[row * P.mask_words + i / 32u] >> (i % 32u)) & 1u) == 0u) { continue; }
        let v = logits[row * P.vocab + i];
        if (v > bv) { bv = v; bi = i; }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s /= 2u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) { result[row] = best_i[0]; }
}
