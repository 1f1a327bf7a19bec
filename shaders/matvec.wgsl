// Dequantizing matrix multiply for CPU-emulated adapters (lavapipe, SwiftShader): no workgroup
// memory and no barriers (such adapters run those as coroutines at great cost). There every
// storage load is a per-lane gather and costs ten times an arithmetic instruction, so a thread
// owns 8 weight rows and TN tokens: each 32-value slice of x is loaded once for 8 rows, and
// each weight block once for TN tokens. Same contract as matmul.wgsl:
// y[t][out_col + r] (+)= sum_k x[t][k] * W[r][k]; gated (P.glu) gives act(gate) * up (the thread's
// rows are then 4 gate rows and the matching up rows). P.rope: the q|k|v matmul, with RoPE and the
// paged KV write in its epilogue (rope_store.wgsl; a thread's 8 rows are two whole quads).

@group(0) @binding(0) var<uniform> P: MatmulParams; // matmul_params.wgsl
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
// Binding 4: matmul.wgsl's folded-norm weights, read here only for the q|k|v bias (P.bias): on
// CPU-emulated adapters the extra gathers cost more than the RMSNorm launch they would save
// (measured on lavapipe).
@group(0) @binding(4) var<storage, read> nw: array<vec4<f32>>;
// P.rope only (else stand-ins): the cos/sin table and the layer's KV cache.
@group(0) @binding(5) var<storage, read> rope: array<vec2<f32>>;
fn rope_pair(i: u32) -> vec2<f32> { return rope[i]; }
@group(0) @binding(6) var<storage, read_write> k_cache: array<KvPair>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<KvPair>;
@group(0) @binding(8) var<storage, read> batch: array<u32>;

// Tokens per thread: 1 (decode) or 4 (prefill, batched decode).
override TN: u32 = 1u;
// Weight rows per thread.
const RW: u32 = 8u;
override WG: u32 = 16u;

fn gate_act(v: f32) -> f32 {
    // tanh saturates at 1.0 in f32 by 15; clamping keeps exp-based tanh (SwiftShader) from inf / inf.
    if (P.glu == 2u) { return 0.5 * v * (1.0 + tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0))); }
    return v / (1.0 + exp(-v));
}

// The gate/up form; a uniform, not an override, so one compiled pipeline serves both forms
// (CPU JITs take up to a second per pipeline).
fn gated() -> bool { return P.glu != 0u; }

// Output rows per thread.
fn outs() -> u32 { return select(RW, RW / 2u, gated()); }

// First block of the thread's weight row i: gate rows, then (gated) the up rows m further on.
// With P.rope the rows of slots r0 + i (rope_store.wgsl).
fn row_block(r0: u32, i: u32, groups: u32) -> u32 {
    let o = outs();
    if (gated() && i >= o) { return (min(r0 + i - o, P.m - 1u) + P.m) * groups; }
    return (rope_row(P.out_col + min(r0 + i, P.m - 1u)) - P.out_col) * groups;
}

// P.rope: token t's sums of the thread's two quads (slots r0 .. r0 + 7) through rope_store.
fn store_quads(r0: u32, t: u32, lo: vec4<f32>, hi: vec4<f32>) {
    rope_store(P.out_col + r0, t, lo);
    if (r0 + 4u < P.m) { rope_store(P.out_col + r0 + 4u, t, hi); }
}

// One weight block against the thread's 4 tokens (batches).
fn dot_tokens(k: WB, x0: X32, x1: X32, x2: X32, x3: X32) -> vec4<f32> {
    return vec4<f32>(dotw(k, x0), dotw(k, x1), dotw(k, x2), dotw(k, x3));
}

// Writes output row r0 + i for the thread's tokens from t0 (up: the gated form's up sums).
fn store(r0: u32, i: u32, t0: u32, n: u32, acc: vec4<f32>, up: vec4<f32>) {
    let row = r0 + i;
    if (row >= P.m) { return; }
    for (var t = 0u; t < TN; t++) {
        if (t0 + t >= n) { return; }
        var v = acc[t];
        if (gated()) { v = gate_act(v) * up[t]; }
        let o = (t0 + t) * P.out_stride + P.out_col + row;
        if (P.accumulate == 1u) { v += y[o]; }
        y[o] = v;
    }
}

// TN = 1: scalar sums, which keep CPU JITs' registers for the 8 rows.
fn decode(r0: u32, t: u32, n: u32, groups: u32) {
    let xr = t * (P.k / 4u);
    let b0 = row_block(r0, 0u, groups); let b1 = row_block(r0, 1u, groups);
    let b2 = row_block(r0, 2u, groups); let b3 = row_block(r0, 3u, groups);
    let b4 = row_block(r0, 4u, groups); let b5 = row_block(r0, 5u, groups);
    let b6 = row_block(r0, 6u, groups); let b7 = row_block(r0, 7u, groups);
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    for (var g = 0u; g < groups; g++) {
        let v = load_x32(xr + g * 8u);
        let so = P.scale_off;
        a0 += dotw(load_wb(b0 + g, so), v); a1 += dotw(load_wb(b1 + g, so), v);
        a2 += dotw(load_wb(b2 + g, so), v); a3 += dotw(load_wb(b3 + g, so), v);
        a4 += dotw(load_wb(b4 + g, so), v); a5 += dotw(load_wb(b5 + g, so), v);
        a6 += dotw(load_wb(b6 + g, so), v); a7 += dotw(load_wb(b7 + g, so), v);
    }
    let z = vec4<f32>(0.0);
    if (P.rope != 0u) {
        store_quads(r0, t, vec4<f32>(a0, a1, a2, a3), vec4<f32>(a4, a5, a6, a7));
    } else if (gated()) {
        store(r0, 0u, t, n, vec4<f32>(a0), vec4<f32>(a4)); store(r0, 1u, t, n, vec4<f32>(a1), vec4<f32>(a5));
        store(r0, 2u, t, n, vec4<f32>(a2), vec4<f32>(a6)); store(r0, 3u, t, n, vec4<f32>(a3), vec4<f32>(a7));
    } else {
        store(r0, 0u, t, n, vec4<f32>(a0), z); store(r0, 1u, t, n, vec4<f32>(a1), z);
        store(r0, 2u, t, n, vec4<f32>(a2), z); store(r0, 3u, t, n, vec4<f32>(a3), z);
        store(r0, 4u, t, n, vec4<f32>(a4), z); store(r0, 5u, t, n, vec4<f32>(a5), z);
        store(r0, 6u, t, n, vec4<f32>(a6), z); store(r0, 7u, t, n, vec4<f32>(a7), z);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = select(n_tokens(), n_logit_rows(), P.use_logit_rows == 1u);
    let r0 = gid.x * outs();
    let t0 = gid.y * TN;
    if (r0 >= P.m || t0 >= n) { return; }
    let groups = P.k / 32u;
    let kv4 = P.k / 4u;
    // Token rows past the batch clamp to its last token; their results are not written.
    let xr0 = t0 * kv4;
    let xr1 = min(t0 + 1u, n - 1u) * kv4;
    let xr2 = min(t0 + 2u, n - 1u) * kv4;
    let xr3 = min(t0 + 3u, n - 1u) * kv4;
    if (TN == 1u) {
        decode(r0, t0, n, groups);
        return;
    }
    let b0 = row_block(r0, 0u, groups); let b1 = row_block(r0, 1u, groups);
    let b2 = row_block(r0, 2u, groups); let b3 = row_block(r0, 3u, groups);
    let b4 = row_block(r0, 4u, groups); let b5 = row_block(r0, 5u, groups);
    let b6 = row_block(r0, 6u, groups); let b7 = row_block(r0, 7u, groups);
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    for (var g = 0u; g < groups; g++) {
        let x0 = load_x32(xr0 + g * 8u); let x1 = load_x32(xr1 + g * 8u);
        let x2 = load_x32(xr2 + g * 8u); let x3 = load_x32(xr3 + g * 8u);
        let so = P.scale_off;
        a0 += dot_tokens(load_wb(b0 + g, so), x0, x1, x2, x3);
        a1 += dot_tokens(load_wb(b1 + g, so), x0, x1, x2, x3);
        a2 += dot_tokens(load_wb(b2 + g, so), x0, x1, x2, x3);
        a3 += dot_tokens(load_wb(b3 + g, so), x0, x1, x2, x3);
        a4 += dot_tokens(load_wb(b4 + g, so), x0, x1, x2, x3);
        a5 += dot_tokens(load_wb(b5 + g, so), x0, x1, x2, x3);
        a6 += dot_tokens(load_wb(b6 + g, so), x0, x1, x2, x3);
        a7 += dot_tokens(load_wb(b7 + g, so), x0, x1, x2, x3);
    }
    if (P.rope != 0u) {
        for (var t = 0u; t < min(TN, n - t0); t++) {
            store_quads(r0, t0 + t, vec4<f32>(a0[t], a1[t], a2[t], a3[t]), vec4<f32>(a4[t], a5[t], a6[t], a7[t]));
        }
    } else if (gated()) {
        store(r0, 0u, t0, n, a0, a4); store(r0, 1u, t0, n, a1, a5);
        store(r0, 2u, t0, n, a2, a6); store(r0, 3u, t0, n, a3, a7);
    } else {
        store(r0, 0u, t0, n, a0, a0); store(r0, 1u, t0, n, a1, a1);
        store(r0, 2u, t0, n, a2, a2); store(r0, 3u, t0, n, a3, a3);
        store(r0, 4u, t0, n, a4, a4); store(r0, 5u, t0, n, a5, a5); store(r0, 6u, t0, n, a6, a6); store(r0, 7u, t0, n, a7, a7);
    }
}
