// Q4_1 repacked: per block 4 u32 of nibbles (value j in the low nibble of byte j, value j+16 in
// the high nibble), then at `scale_off` one u32 per block holding (d, m) as two f16.
// Straight-line code without private arrays: CPU-emulated adapters (SwiftShader's Subzero) keep
// everything in registers only then. q*d is exact in f32, so q*d + m rounds once: GPU == CPU.
fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    let dm = unpack2x16float(w[scale_off + b]);
    let q = w[b * 4u + i % 4u];
    return select(nib_lo(q), nib_hi(q), i >= 4u) * NIB_XS * dm.x + dm.y;
}

struct WB { q0: u32, q1: u32, q2: u32, q3: u32, dm: vec2<f32> }
fn load_wb(b: u32, scale_off: u32) -> WB { return WB(w[b * 4u], w[b * 4u + 1u], w[b * 4u + 2u], w[b * 4u + 3u], unpack2x16float(w[scale_off + b])); }
fn prep_x(v: X32) -> X32 { return prep_nib(v); }

fn dotw(k: WB, v: X32) -> f32 {
    let s = dot(v.v0, nib_lo(k.q0)) + dot(v.v1, nib_lo(k.q1)) + dot(v.v2, nib_lo(k.q2)) + dot(v.v3, nib_lo(k.q3))
          + dot(v.v4, nib_hi(k.q0)) + dot(v.v5, nib_hi(k.q1)) + dot(v.v6, nib_hi(k.q2)) + dot(v.v7, nib_hi(k.q3));
    return k.dm.x * s + k.dm.y * v.sum;
}
