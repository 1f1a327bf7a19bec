// Q4_0 repacked: per block 4 u32 of nibbles (layout as Q4_1), then at `scale_off` the f16 scales
// packed two per u32. Values are (q - 8) * d: one rounding, GPU == CPU.
fn scale(b: u32, scale_off: u32) -> f32 { return unpack2x16float(w[scale_off + b / 2u])[b % 2u]; }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    let q = w[b * 4u + i % 4u];
    return (select(nib_lo(q), nib_hi(q), i >= 4u) * NIB_XS - 8.0) * scale(b, scale_off);
}

struct WB { q0: u32, q1: u32, q2: u32, q3: u32, d: f32 }
fn load_wb(b: u32, scale_off: u32) -> WB { return WB(w[b * 4u], w[b * 4u + 1u], w[b * 4u + 2u], w[b * 4u + 3u], scale(b, scale_off)); }
fn prep_x(v: X32) -> X32 { return prep_nib(v); }

fn dotw(k: WB, v: X32) -> f32 {
    let s = dot(v.v0, nib_lo(k.q0)) + dot(v.v1, nib_lo(k.q1)) + dot(v.v2, nib_lo(k.q2)) + dot(v.v3, nib_lo(k.q3))
          + dot(v.v4, nib_hi(k.q0)) + dot(v.v5, nib_hi(k.q1)) + dot(v.v6, nib_hi(k.q2)) + dot(v.v7, nib_hi(k.q3));
    return k.d * (s - 8.0 * v.sum);
}
