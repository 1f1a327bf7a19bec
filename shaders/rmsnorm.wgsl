// RMSNorm: y[i] = x[src(i)] / sqrt(mean(x^2) + eps) * weight, one workgroup per row. With
// GATHER the rows are the batch's logit rows (the final norm computes only rows that need logits).
// ADD: y[i] += ... instead (Gemma's post-norms feed the residual stream directly). SERIAL (CPU
// adapters, which run barriers as coroutine switches): one thread per row, no barriers.

struct Params {
    d: u32,
    eps: f32,
    gather: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

override ADD: bool = false;
override SERIAL: bool = false;
override WG: u32 = 64u;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = select(n_tokens(), n_logit_rows(), P.gather == 1u);
    // A row per workgroup of 64 lanes, or (SERIAL) per thread.
    let i = select(wid.x, gid.x, SERIAL);
    let lane = select(lid, 0u, SERIAL);
    let lanes = select(64u, 1u, SERIAL);
    let live = i < n;
    var src = i;
    if (P.gather == 1u && live) { src = logit_row(i); }
    var ss = 0.0;
    if (live) {
        for (var j = lane; j < P.d; j += lanes) {
            let v = x[src * P.d + j];
            ss += v * v;
        }
    }
    if (!SERIAL) {
        partial[lid] = ss;
        workgroupBarrier();
        for (var s = 32u; s > 0u; s /= 2u) {
            if (lid < s) { partial[lid] += partial[lid + s]; }
            workgroupBarrier();
        }
        ss = partial[0];
    }
    if (!live) { return; }
    let scale = 1.0 / sqrt(ss / f32(P.d) + P.eps);
    for (var j = lane; j < P.d; j += lanes) {
        let v = x[src * P.d + j] * scale * weight[j];
        y[i * P.d + j] = select(v, y[i * P.d + j] + v, ADD);
    }
}
