// Arithmetic probe for the benchmark: the decode GEMV's inner loop (matvec.wgsl, TN = 1: 8 weight
// rows per thread sharing each 32-value x slice, `dotw` of the quant type, Q4_1 here) with every
// storage read replaced by a few register ops that make distinct values. Multiply-adds / time is
// what the adapter's arithmetic alone allows a quantized GEMV: on CPU-emulated adapters a second
// roofline next to the read probe's bandwidth. Writes one word per thread only when the sums hit
// a value they never reach, so nothing is optimized away.

struct Params {
    k: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
// Declared for the quant helpers' signatures; never read.
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sink: array<f32>;

// A weight block in registers: quant words from the block index, (d, m) normal f16s in [1, 2)
// (denormals would slow the CPU, not the GEMV).
fn fake_wb(b: u32) -> WB {
    let q = b ^ 0x9e3779b9u;
    return WB(q, q ^ 0x5bd1e995u, q ^ 0x27d4eb2fu, q ^ 0x165667b1u, unpack2x16float((q & 0x03ff03ffu) | 0x3c003c00u));
}

@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let groups = P.k / 32u;
    let b0 = gid.x * 8u * groups;
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    for (var g = 0u; g < groups; g++) {
        let f = vec4<f32>(f32(g)) + vec4<f32>(0.25, 0.5, 0.75, 1.0);
        let v = x32_of(f, f + 1.0, f + 2.0, f + 3.0, f - 1.0, f - 2.0, f - 3.0, f * 0.5);
        let b = b0 + g;
        a0 += dotw(fake_wb(b), v); a1 += dotw(fake_wb(b + groups), v);
        a2 += dotw(fake_wb(b + 2u * groups), v); a3 += dotw(fake_wb(b + 3u * groups), v);
        a4 += dotw(fake_wb(b + 4u * groups), v); a5 += dotw(fake_wb(b + 5u * groups), v);
        a6 += dotw(fake_wb(b + 6u * groups), v); a7 += dotw(fake_wb(b + 7u * groups), v);
    }
    let s = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
    if (s == 1.2345678) { sink[gid.x] = s; }
}
