// The K (<= 64) largest logits of each logit row, in the CPU sampler's order (logit descending,
// token id ascending), plus the row's log-sum-exp, so a sampling step reads back ~0.5 KB instead
// of the vocabulary. Exact: a radix select over order-preserving u32 keys (4 passes of 8 bits,
// workgroup-atomic histograms) finds the K-th largest key T; every value above T is taken, and
// of those equal to T the lowest indices, ranked by a prefix sum over contiguous per-thread
// chunks. The taken logits are then ranked among themselves (each counts those ahead of it).
// With P.group, the LM head left the largest logit of each run of P.group logits and the sum of
// exp(logit - that) over the run (matmul.wgsl's PARTIALS) at P.partials: the select runs over
// those maxima instead, taking the K runs with the largest (ties by run), which hold the row's
// top K (the K-th largest maximum is at most the K-th largest logit); their logits are ranked
// and the log-sum-exp comes from the sums. NaN and values at or below -3.4e38 never count in a
// maximum: a NaN logit, which the whole row ranks first, is then left out. Output per row: K
// (id, logit bits) pairs, then lse bits, then K.

struct Params {
    vocab: u32,
    k: u32,
    /// Logits per partial maximum (0: select over the whole row).
    group: u32,
    /// Element of `logits` where the partial maxima start: ceil(vocab / group) a row, each row's
    /// followed by as many sums.
    partials: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
@group(0) @binding(3) var<storage, read> batch: array<u32>;

const WG: u32 = 256u;
const MAX_K: u32 = 64u;
// Logits of the taken runs ranked in workgroup memory: K x group at most.
const POOL: u32 = 1024u;
const NONE: u32 = 0xffffffffu;
const NO_LOGIT: f32 = -3.4e38;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> counts: array<u32, 256>;
var<workgroup> state: array<u32, 2>; // key prefix, ranks still needed
var<workgroup> taken: array<u32, MAX_K>;
var<workgroup> pool_v: array<f32, POOL>;
var<workgroup> pool_id: array<u32, POOL>;
var<workgroup> top_v: f32;
var<workgroup> partial: array<f32, 256>;

// Larger float -> larger key (sign flipped for positives, all bits for negatives).
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
}

// The `need` largest of logits[base + i], i < n (by key, ties by lowest i), into taken[0..need]
// in no particular order.
fn select_largest(lid: u32, base: u32, n: u32, need: u32) {
    let chunk = (n + WG - 1u) / WG;
    let lo = min(lid * chunk, n);
    let hi = min(lo + chunk, n);
    if (lid == 0u) { state[0] = 0u; state[1] = need; }

    // Radix select: after round r, state[0] holds the top 8(r+1) bits of the need-th largest key.
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        let prefix = state[0];
        for (var i = lo; i < hi; i++) {
            let kk = key(logits[base + i]);
            // Bits above this round's byte must match the prefix found so far.
            if (round == 0u || (kk >> (shift + 8u)) == (prefix >> (shift + 8u))) {
                atomicAdd(&hist[(kk >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var left = state[1];
            var bin = 255u;
            loop {
                let c = atomicLoad(&hist[bin]);
                if (c >= left || bin == 0u) { break; }
                left -= c;
                bin -= 1u;
            }
            state[0] = prefix | (bin << shift);
            state[1] = left;
        }
        workgroupBarrier();
    }
    let t = state[0];
    let need_eq = state[1];

    // Count this chunk's ties with the threshold, then rank them across chunks.
    var ties = 0u;
    for (var i = lo; i < hi; i++) {
        if (key(logits[base + i]) == t) { ties += 1u; }
    }
    counts[lid] = ties;
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0u;
        for (var j = 0u; j < WG; j++) {
            let c = counts[j];
            counts[j] = run;
            run += c;
        }
    }
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    // Take every value above the threshold and the ties of rank < need_eq; hist[0] counts them.
    var rank = counts[lid];
    for (var i = lo; i < hi; i++) {
        let kk = key(logits[base + i]);
        var take = kk > t;
        if (kk == t) {
            take = rank < need_eq;
            rank += 1u;
        }
        if (take) {
            let slot = atomicAdd(&hist[0], 1u);
            if (slot < MAX_K) { taken[slot] = i; }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    if (row >= n_logit_rows()) { return; }
    let k = min(P.k, P.vocab);
    // The whole row is the partials of runs of one logit (the runs' maxima are the logits).
    var group = 1u;
    var runs = P.vocab;
    var base = row * P.vocab;
    // The sums give the log-sum-exp only at temperature 1 (the step's writer keeps logprob
    // rows' there).
    if (P.group > 0u && min(k, (P.vocab + P.group - 1u) / P.group) * P.group <= POOL && sums_temperature(row) == 1.0) {
        group = P.group;
        runs = (P.vocab + group - 1u) / group;
        base = P.partials + row * 2u * runs;
    }
    var n_taken = min(k, runs);
    select_largest(lid, base, runs, n_taken);
    // A run taken for a maximum that does not count (NaN, -inf: fewer than k logits above
    // -3.4e38) says nothing of its logits' order: the whole row then.
    if (group > 1u && workgroupUniformLoad(&state[0]) <= key(NO_LOGIT)) {
        group = 1u;
        runs = P.vocab;
        base = row * P.vocab;
        n_taken = k;
        select_largest(lid, base, runs, n_taken);
    }

    // The taken runs' logits (beyond the vocabulary: none) into the pool, then each ranked by
    // the logits ahead of it; the first k go out in that order.
    let n_pool = n_taken * group;
    for (var p = lid; p < n_pool; p += WG) {
        let id = taken[p / group] * group + p % group;
        pool_id[p] = select(NONE, id, id < P.vocab);
        pool_v[p] = logits[row * P.vocab + min(id, P.vocab - 1u)];
    }
    workgroupBarrier();
    let out = row * (2u * MAX_K + 2u);
    for (var p = lid; p < n_pool; p += WG) {
        let id = pool_id[p];
        if (id == NONE) { continue; }
        let kp = key(pool_v[p]);
        var rank = 0u;
        for (var q = 0u; q < n_pool; q++) {
            let kq = key(pool_v[q]);
            if (pool_id[q] != NONE && (kq > kp || (kq == kp && pool_id[q] < id))) { rank += 1u; }
        }
        if (rank < k) {
            result[out + 2u * rank] = id;
            result[out + 2u * rank + 1u] = bitcast<u32>(pool_v[p]);
        }
        if (rank == 0u) { top_v = pool_v[p]; }
    }
    workgroupBarrier();

    // log-sum-exp of the whole row around its maximum: from every logit, or from the runs' sums.
    let m = top_v;
    let chunk = (runs + WG - 1u) / WG;
    let lo = min(lid * chunk, runs);
    let hi = min(lo + chunk, runs);
    var s = 0.0;
    for (var i = lo; i < hi; i++) {
        if (group == 1u) {
            s += exp(logits[base + i] - m);
        } else {
            let run_max = logits[base + i];
            if (run_max > NO_LOGIT) { s += exp(run_max - m) * logits[base + runs + i]; }
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var r = WG / 2u; r > 0u; r /= 2u) {
        if (lid < r) { partial[lid] += partial[lid + r]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        result[out + 2u * MAX_K] = bitcast<u32>(m + log(partial[0]));
        result[out + 2u * MAX_K + 1u] = k;
    }
}
