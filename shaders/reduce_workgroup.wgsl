// Sums each row's TPR lane partials (acc, acc2, ssq: [TN]) through workgroup memory, for
// adapters without subgroups. Lane 0 of each row ends with the totals. Prepended to matmul.wgsl.
var<workgroup> red: array<f32, 1536>; // [WG][MAX_TN][3]

fn reduce_lanes(lid: u32, lane: u32) {
    for (var t = 0u; t < TN; t++) {
        let a = (lid * MAX_TN + t) * 3u;
        red[a] = acc[t];
        red[a + 1u] = acc2[t];
        red[a + 2u] = ssq[t];
    }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s /= 2u) {
        if (lane < s) {
            for (var t = 0u; t < TN; t++) {
                let a = (lid * MAX_TN + t) * 3u;
                let b = ((lid + s) * MAX_TN + t) * 3u;
                red[a] += red[b];
                red[a + 1u] += red[b + 1u];
                red[a + 2u] += red[b + 2u];
            }
        }
        workgroupBarrier();
    }
    for (var t = 0u; t < TN; t++) {
        let a = (lid * MAX_TN + t) * 3u;
        acc[t] = red[a];
        acc2[t] = red[a + 1u];
        ssq[t] = red[a + 2u];
    }
}
