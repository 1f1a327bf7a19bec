// Greedy token choice on the GPU: the index of the largest logit of each logits row (the first
// on ties, like the CPU), so a decode step reads back 4 bytes instead of the vocabulary. With
// MASKED, only tokens whose bit is set in the row's allowed-token mask count (structured
// output: the grammar's mask goes up, not the logits back). With P.group, the LM head left the
// largest logit of each run of P.group rows (matmul.wgsl's PARTIALS) at P.partials: the first
// run holding the largest of those holds the first largest logit, so one workgroup reads the
// runs' maxima and that run's logits, not the whole row. NaN and values at or below -3.4e38
// never count (u32::MAX when nothing does).

override MASKED: bool = false;

struct Params {
    vocab: u32,
    /// u32 words of one row's mask: vocab / 32 rounded up.
    mask_words: u32,
    /// Rows per partial maximum (0: scan the whole row).
    group: u32,
    /// Element of `logits` where the partial maxima start: ceil(vocab / group) a row, each row's
    /// followed by as many sums (matmul.wgsl's PARTIALS).
    partials: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read> batch: array<u32>;

const WG: u32 = 256u;
const NONE: f32 = -3.4e38;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

fn allowed(row: u32, i: u32) -> bool {
    return !MASKED || ((mask[row * P.mask_words + i / 32u] >> (i % 32u)) & 1u) == 1u;
}

// This thread's first largest of `values[base + i]`, i = lid, lid + WG, ... below n (index i),
// four loads in flight at a time. Its value and index, in best_v / best_i.
fn scan(lid: u32, row: u32, base: u32, n: u32, masked: bool) {
    var best = Best(NONE, 0xffffffffu);
    var i = lid;
    for (; i + 3u * WG < n; i += 4u * WG) {
        let a = logits[base + i];
        let b = logits[base + i + WG];
        let c = logits[base + i + 2u * WG];
        let d = logits[base + i + 3u * WG];
        best = take(best, a, i, row, masked);
        best = take(best, b, i + WG, row, masked);
        best = take(best, c, i + 2u * WG, row, masked);
        best = take(best, d, i + 3u * WG, row, masked);
    }
    for (; i < n; i += WG) {
        best = take(best, logits[base + i], i, row, masked);
    }
    best_v[lid] = best.v;
    best_i[lid] = best.i;
}

struct Best {
    v: f32,
    i: u32,
}

// `best`, or (v, i) where v is larger (and allowed).
fn take(best: Best, v: f32, i: u32, row: u32, masked: bool) -> Best {
    if (v > best.v && (!masked || allowed(row, i))) { return Best(v, i); }
    return best;
}

// The workgroup's largest of best_v, the lowest index on ties, into best_v[0] / best_i[0].
fn reduce(lid: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
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
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    if (row >= n_logit_rows()) { return; }
    if (MASKED || P.group == 0u) {
        scan(lid, row, row * P.vocab, P.vocab, MASKED);
        reduce(lid);
        if (lid == 0u) { result[row] = best_i[0]; }
        return;
    }
    let n_partials = (P.vocab + P.group - 1u) / P.group;
    scan(lid, row, P.partials + row * 2u * n_partials, n_partials, false);
    reduce(lid);
    let best = best_v[0];
    let run = workgroupUniformLoad(&best_i[0]);
    // Every thread has read best_v[0] and best_i[0] before best_i is written again.
    workgroupBarrier();
    if (run == 0xffffffffu) {
        if (lid == 0u) { result[row] = run; }
        return;
    }
    // The run's first logit equal to its maximum.
    let first = run * P.group;
    var bi = 0xffffffffu;
    for (var i = first + lid; i < min(first + P.group, P.vocab); i += WG) {
        if (logits[row * P.vocab + i] == best) { bi = i; break; }
    }
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (lid < s) { best_i[lid] = min(best_i[lid], best_i[lid + s]); }
        workgroupBarrier();
    }
    if (lid == 0u) { result[row] = best_i[0]; }
}
