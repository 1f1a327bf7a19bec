// Sums each row's TPR lane partials (acc, acc2: [TN]) through workgroup memory, for adapters
// without subgroups. Lane 0 of each row ends with the totals. Prepended to matmul.wgsl.
var<workgroup> red: array<f32, 1024>; // [WG][MAX_TN][2]

fn reduce_lanes(lid: u32, lane: u32) {
    for (var t = 0u; t < TN; t++) {
        red[(lid * MAX_TN + t) * 2u] = acc[t];
        red[(lid * MAX_TN + t) * 2u + 1u] = acc2[t];
    }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s /= 2u) {
        if (lane < s) {
            for (var t = 0u; t < TN; t++) {
                let a = (lid * MAX_TN + t) * 2u;
                let b = ((lid + s) * MAX_TN + t) * 2u;
                red[a] += red[b];
                red[a + 1u] += red[b + 1u];
            }
        }
        workgroupBarrier();
    }
    for (var t = 0u; t < TN; t++) {
        acc[t] = red[(lid * MAX_TN + t) * 2u];
        acc2[t] = red[(lid * MAX_TN + t) * 2u + 1u];
    }
}
