// Dequantizing matrix multiply for GPUs: y[t][out_col + r] (+)= sum_k x[t][k] * W[r][k] for the
// batch's tokens. A workgroup owns 64 / TPR weight rows and TN tokens; TPR threads split a row's
// 32-value groups (a group's words stay in cache across the TN tokens), then the partial sums
// are summed by `reduce_lanes` (reduce_subgroup.wgsl or reduce_workgroup.wgsl, prepended by the
// launcher). TN = 1 is the decode GEMV, TN = 8 prefill.
// SWIGLU: rows r (gate) and r + m (up) of W give y = silu(gate) * up.
// NORM: x is the raw residual stream and the kernel applies RMSNorm on the way in: x * nw as it
// loads, and 1 / rms(x[t]) to the sums, from the squares of the very values it loads (each row's
// lanes cover the whole row once), so the norm costs no launch and no extra pass over x. With
// logit rows (the LM head) row t of x is the batch's logit row t.
// ROPE: the q|k|v matmul, with RoPE and the paged KV write in its epilogue (rope_store.wgsl): a
// workgroup's rows are whole quads, whose four sums meet in workgroup memory.
// PARTIALS: the LM head of a greedy or sampled step also writes each workgroup's largest logit
// per token and the sum of exp((logit - that) / T) over its rows, T the row's sums temperature
// (batch.wgsl; 1 unless a row draws at T from them) (at P.partials, per logit row
// ceil(vocab / rows a workgroup) maxima, then as many sums), so argmax.wgsl reads those and one
// workgroup's rows instead of the whole vocabulary, and sample.wgsl the row's largest logits
// and its mass.
// MASKED (with PARTIALS: the LM head of a greedy or sampled step under grammar masks): each
// logit its row's mask forbids is written as -3.4e38, which the partials and every kernel after
// never count, so those kernels serve masked rows unchanged (sample.wgsl leaves such logits as
// they are when it edits a row).
// `dot32` comes from the weight type's quant_*.wgsl, prepended by the launcher.

@group(0) @binding(0) var<uniform> P: MatmulParams; // matmul_params.wgsl
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> nw: array<vec4<f32>>;
// ROPE only (else stand-ins): the cos/sin table (f32 bits) and the layer's KV cache. MASKED:
// binding 5 holds the logit rows' allowed-token masks instead (ceil(vocab / 32) words a row,
// bit set: allowed).
@group(0) @binding(5) var<storage, read> aux: array<u32>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<KvPair>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<KvPair>;
@group(0) @binding(8) var<storage, read> batch: array<u32>;

override TN: u32 = 1u;
override TPR: u32 = 16u;
override SWIGLU: bool = false;
// With SWIGLU: GELU (tanh approximation, ggml's) instead of SiLU on the gate: Gemma's GeGLU.
override GELU: bool = false;
override NORM: bool = false;
override ROPE: bool = false;
override PARTIALS: bool = false;
override MASKED: bool = false;

fn rope_pair(i: u32) -> vec2<f32> { return vec2<f32>(bitcast<f32>(aux[2u * i]), bitcast<f32>(aux[2u * i + 1u])); }

// MASKED: whether logit row t's mask allows token i.
fn allowed(t: u32, i: u32) -> bool {
    return ((aux[t * ((P.out_stride + 31u) / 32u) + i / 32u] >> (i % 32u)) & 1u) == 1u;
}

fn gate_act(v: f32) -> f32 {
    // tanh saturates at 1.0 in f32 by 15; clamping keeps exp-based tanh (SwiftShader) from inf / inf.
    if (GELU) { return 0.5 * v * (1.0 + tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0))); }
    return v / (1.0 + exp(-v));
}
const WG: u32 = 64u;
const MAX_TN: u32 = 8u;

// Per-thread partial sums for each token (acc2: the SWIGLU up rows), summed across lanes.
var<private> acc: array<f32, MAX_TN>;
var<private> acc2: array<f32, MAX_TN>;
// NORM: sums of squares of each token's x row.
var<private> ssq: array<f32, MAX_TN>;
// Squares' sum of the slice `load_xn` loaded last.
var<private> x_sq: f32;
// ROPE: each row's sums [WG / TPR][MAX_TN], for its quad's first thread; PARTIALS: each row's
// logits, for the workgroup's first thread.
var<workgroup> quad_sums: array<f32, 512>;

fn x_row(t: u32) -> u32 {
    if (NORM && P.use_logit_rows == 1u) { return logit_row(t); }
    return t;
}

// x[xb .. xb + 8] as load_x32 gives it; with NORM times the norm weights, their squares in x_sq.
fn load_xn(xb: u32) -> X32 {
    if (!NORM) { return load_x32(xb); }
    let c = xb % (P.k / 4u);
    let a = x[xb]; let b = x[xb + 1u]; let cc = x[xb + 2u]; let d = x[xb + 3u];
    let e = x[xb + 4u]; let f = x[xb + 5u]; let g = x[xb + 6u]; let h = x[xb + 7u];
    x_sq = (dot(a, a) + dot(b, b)) + (dot(cc, cc) + dot(d, d)) + (dot(e, e) + dot(f, f)) + (dot(g, g) + dot(h, h));
    return x32_of(a * nw[c], b * nw[c + 1u], cc * nw[c + 2u], d * nw[c + 3u], e * nw[c + 4u], f * nw[c + 5u], g * nw[c + 6u], h * nw[c + 7u]);
}

// NORM: 1 / rms of token t's x row; else 1.
fn norm_scale(t: u32) -> f32 {
    if (NORM) { return 1.0 / sqrt(ssq[t] / f32(P.k) + P.eps); }
    return 1.0;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = select(n_tokens(), n_logit_rows(), P.use_logit_rows == 1u);
    let t0 = wid.y * TN;
    let slot = wid.x * (WG / TPR) + lid / TPR;
    // Without ROPE, P.rope is 0 and rows are slots.
    let row = rope_row(P.out_col + slot) - P.out_col;
    let lane = lid % TPR;
    let groups = P.k / 32u;
    let nt = min(TN, n - min(n, t0));
    if (row < P.m) {
        for (var g = lane; g < groups; g += TPR) {
            let b = row * groups + g;
            // Constant trip count (TN is specialized) keeps acc in registers.
            for (var t = 0u; t < TN; t++) {
                let xb = x_row(min(t0 + t, n - 1u)) * (P.k / 4u) + g * 8u;
                let v = load_xn(xb);
                acc[t] += dotw(load_wb(b, P.scale_off), v);
                if (SWIGLU) { acc2[t] += dotw(load_wb(b + P.m * groups, P.scale_off), v); }
                if (NORM) { ssq[t] += x_sq; }
            }
        }
    }
    reduce_lanes(lid, lane);
    if (ROPE) {
        let r = lid / TPR;
        if (lane == 0u) {
            for (var t = 0u; t < TN; t++) { quad_sums[r * MAX_TN + t] = acc[t] * norm_scale(t); }
        }
        workgroupBarrier();
        if (lane == 0u && r % 4u == 0u && slot < P.m) {
            for (var t = 0u; t < nt; t++) {
                let a = r * MAX_TN + t;
                let v = vec4<f32>(quad_sums[a], quad_sums[a + MAX_TN], quad_sums[a + 2u * MAX_TN], quad_sums[a + 3u * MAX_TN]);
                rope_store(P.out_col + slot, t0 + t, v);
            }
        }
        return;
    }
    if (lane == 0u && row < P.m) {
        for (var t = 0u; t < nt; t++) {
            let scale = norm_scale(t);
            var v = acc[t] * scale;
            if (SWIGLU) {
                v = gate_act(v) * (acc2[t] * scale);
            }
            let o = (t0 + t) * P.out_stride + P.out_col + row;
            if (P.accumulate == 1u) { v += y[o]; }
            if (MASKED && !allowed(t0 + t, P.out_col + row)) { v = -3.4e38; }
            y[o] = v;
            if (PARTIALS) { quad_sums[(lid / TPR) * MAX_TN + t] = v; }
        }
    }
    if (PARTIALS) {
        workgroupBarrier();
        if (lid == 0u) { store_partials(wid.x, t0, nt); }
    }
}

// PARTIALS: the largest of the workgroup's logits for each of its tokens and the sum of
// exp((logit - largest) / T) over them. NaN and values at or below -3.4e38 never count, as in
// argmax.wgsl; a workgroup without any writes -3.4e38 and 0.
fn store_partials(wgx: u32, t0: u32, nt: u32) {
    let rows = WG / TPR;
    let n_partials = (P.out_stride + rows - 1u) / rows;
    let n = min(rows, P.m - min(wgx * rows, P.m));
    for (var t = 0u; t < nt; t++) {
        var best = -3.4e38;
        for (var r = 0u; r < n; r++) {
            let v = quad_sums[r * MAX_TN + t];
            // +0.0 over -0.0: the top-k and sample kernels rank runs by the order of the bits.
            if (v > best || (v == best && bitcast<u32>(v) == 0u)) { best = v; }
        }
        // Divided, not multiplied by 1 / T: the sample kernel's weights at T are (l - max) / T.
        let temperature = sums_temperature(t0 + t);
        var sum = 0.0;
        for (var r = 0u; r < n; r++) {
            let v = quad_sums[r * MAX_TN + t];
            if (v > -3.4e38) { sum += exp((v - best) / temperature); }
        }
        let at = P.partials + (t0 + t) * 2u * n_partials + P.out_col / rows + wgx;
        y[at] = best;
        y[at + n_partials] = sum;
    }
}
