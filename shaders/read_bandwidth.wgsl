// Streaming-read probe for the benchmark: each thread sums vec4<u32> words at a stride of the
// whole grid, the access pattern a matmul wants, and writes one word so nothing is optimized
// away. Bytes read / time is the adapter's achievable read bandwidth, the roofline for MBU.

struct Params {
    n_vec4: u32,  // vec4<u32> elements in `data`
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<u32>;

override UNROLL: u32 = 4u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let threads = nwg.x * 64u;
    var acc = vec4<u32>(0u);
    var i = gid.x;
    loop {
        if (i + (UNROLL - 1u) * threads >= P.n_vec4) { break; }
        for (var u = 0u; u < UNROLL; u++) {
            acc ^= data[i + u * threads];
        }
        i += UNROLL * threads;
    }
    for (; i < P.n_vec4; i += threads) { acc ^= data[i]; }
    if (all(acc == vec4<u32>(0x9e3779b9u))) { sink[gid.x] = acc.x; }
}
