// Q4_K repacked per 32-value group b (8 per 256-value super-block): 4 u32 of nibbles in the
// Q4_0 order, then at `scale_off` 5 u32 per super-block: (d, dmin) as two f16, the 8 6-bit
// scales as bytes (2 words), the 8 6-bit mins as bytes (2 words). value = d*sc * q - dmin*m:
// d*sc and dmin*m (f16 times 6 bits) and their products with q are exact in f32, so the one
// rounding of the subtraction is the CPU's.
fn scale_min(b: u32, scale_off: u32) -> vec2<f32> {
    let base = scale_off + (b / 8u) * 5u;
    let g = b % 8u;
    let dm = unpack2x16float(w[base]);
    let sh = 8u * (g % 4u);
    let sc = (w[base + 1u + g / 4u] >> sh) & 255u;
    let m = (w[base + 3u + g / 4u] >> sh) & 255u;
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(m));
}

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    let k = scale_min(b, scale_off);
    let q = w[b * 4u + i % 4u];
    return select(nib_lo(q), nib_hi(q), i >= 4u) * NIB_XS * k.x - k.y;
}

struct WB { q0: u32, q1: u32, q2: u32, q3: u32, k: vec2<f32> }
fn load_wb(b: u32, scale_off: u32) -> WB { return WB(w[b * 4u], w[b * 4u + 1u], w[b * 4u + 2u], w[b * 4u + 3u], scale_min(b, scale_off)); }
fn prep_x(v: X32) -> X32 { return prep_nib(v); }

fn dotw(k: WB, v: X32) -> f32 {
    let s = dot(v.v0, nib_lo(k.q0)) + dot(v.v1, nib_lo(k.q1)) + dot(v.v2, nib_lo(k.q2)) + dot(v.v3, nib_lo(k.q3))
          + dot(v.v4, nib_hi(k.q0)) + dot(v.v5, nib_hi(k.q1)) + dot(v.v6, nib_hi(k.q2)) + dot(v.v7, nib_hi(k.q3));
    return k.k.x * s - k.k.y * v.sum;
}
