// Q5_0 repacked: per block 4 u32 of low nibbles (value j in the low nibble of byte j, value
// j+16 in the high nibble, as Q4_0) and 1 u32 of fifth bits (bit j: value j), then at
// `scale_off` the f16 scales packed two per u32. value = (q - 16) * d: q - 16 and its product
// with an f16 are exact in f32, so GPU == CPU bit for bit.
// Fifth bits j .. j+3 as 16 << 8c, matching nib_lo's in-place nibbles.
fn hi4(qh: u32, j: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((vec4<u32>(qh) >> vec4<u32>(j, j + 1u, j + 2u, j + 3u)) & vec4<u32>(1u))) * (16.0 / NIB_XS);
}
fn scale(b: u32, scale_off: u32) -> f32 { return unpack2x16float(w[scale_off + b / 2u])[b % 2u]; }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    let q = w[b * 5u + i % 4u];
    return ((select(nib_lo(q), nib_hi(q), i >= 4u) + hi4(w[b * 5u + 4u], 4u * i)) * NIB_XS - 16.0) * scale(b, scale_off);
}

struct WB { q0: u32, q1: u32, q2: u32, q3: u32, qh: u32, d: f32 }
fn load_wb(b: u32, scale_off: u32) -> WB { return WB(w[b * 5u], w[b * 5u + 1u], w[b * 5u + 2u], w[b * 5u + 3u], w[b * 5u + 4u], scale(b, scale_off)); }
fn prep_x(v: X32) -> X32 { return prep_nib(v); }

fn dotw(k: WB, v: X32) -> f32 {
    let s = dot(v.v0, nib_lo(k.q0) + hi4(k.qh, 0u)) + dot(v.v1, nib_lo(k.q1) + hi4(k.qh, 4u)) + dot(v.v2, nib_lo(k.q2) + hi4(k.qh, 8u)) + dot(v.v3, nib_lo(k.q3) + hi4(k.qh, 12u))
          + dot(v.v4, nib_hi(k.q0) + hi4(k.qh, 16u)) + dot(v.v5, nib_hi(k.q1) + hi4(k.qh, 20u)) + dot(v.v6, nib_hi(k.q2) + hi4(k.qh, 24u)) + dot(v.v7, nib_hi(k.q3) + hi4(k.qh, 28u));
    return k.d * (s - 16.0 * v.sum);
}
