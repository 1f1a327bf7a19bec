// Sums each row's TPR lane partials (acc, acc2, ssq: [TN]) with subgroup shuffles: no workgroup
// memory, no barriers. Used only where the context checked that subgroups hold whole rows
// (TPR <= subgroup size, lanes numbered like local_invocation_index). Prepended to matmul.wgsl.
fn reduce_lanes(lid: u32, lane: u32) {
    for (var t = 0u; t < TN; t++) {
        for (var s = TPR / 2u; s > 0u; s /= 2u) {
            acc[t] += subgroupShuffleXor(acc[t], s);
            if (SWIGLU) { acc2[t] += subgroupShuffleXor(acc2[t], s); }
            if (NORM) { ssq[t] += subgroupShuffleXor(ssq[t], s); }
        }
    }
}
