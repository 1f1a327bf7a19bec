// Merges the per-chunk softmax states attention.wgsl wrote: out = sum_c e^(m_c - M) P.V_c /
// sum_c e^(m_c - M) l_c with M the largest m_c. One workgroup per (head, token), a thread per
// output dim. Chunks outside a sliding window hold l = 0 and weigh nothing.

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> batch: array<u32>;

override CHUNK: u32 = 256u; // positions per chunk (Kernels::attention)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    if (t >= n_tokens()) { return; }
    let hd = P.head_dim;
    let used = min((position(t) + CHUNK) / CHUNK, P.scratch_stride);
    let base = (t * P.n_heads + h) * P.scratch_stride * (hd + 2u);
    var m = -3.0e38;
    for (var c = 0u; c < used; c++) { m = max(m, part[base + c * (hd + 2u)]); }
    var l = 0.0;
    for (var c = 0u; c < used; c++) {
        let r = base + c * (hd + 2u);
        l += exp(part[r] - m) * part[r + 1u];
    }
    for (var d = lid; d < hd; d += 64u) {
        var a = 0.0;
        for (var c = 0u; c < used; c++) {
            let r = base + c * (hd + 2u);
            a += exp(part[r] - m) * part[r + 2u + d];
        }
        out[t * P.n_heads * hd + h * hd + d] = a / l;
    }
}
