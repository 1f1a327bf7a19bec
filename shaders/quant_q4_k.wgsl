// Q4_K repacked per 32-value group b (8 per 256-value super-block): 4 u32 of nibbles in the
// Q4_0 order, then at `scale_off` 5 u32 per super-block: (d, dmin) as two f16, the 8 6-bit
// scales as bytes (2 words), the 8 6-bit mins as bytes (2 words). value = d*sc * q - dmin*m:
// d*sc and dmin*m (f16 times 6 bits) and their products with q are exact in f32, so the one
// rounding of the subtraction is the CPU's.
fn nib_lo(q: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(15u)); }
fn nib_hi(q: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(q >> 4u, q >> 12u, q >> 20u, q >> 28u) & vec4<u32>(15u)); }

// (d * scale, dmin * min) of group b.
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
    return select(nib_lo(q), nib_hi(q), i >= 4u) * k.x - k.y;
}

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let k = scale_min(b, scale_off);
    let q0 = w[b * 4u]; let q1 = w[b * 4u + 1u]; let q2 = w[b * 4u + 2u]; let q3 = w[b * 4u + 3u];
    let x0 = x[xb]; let x1 = x[xb + 1u]; let x2 = x[xb + 2u]; let x3 = x[xb + 3u];
    let x4 = x[xb + 4u]; let x5 = x[xb + 5u]; let x6 = x[xb + 6u]; let x7 = x[xb + 7u];
    let s = dot(x0, nib_lo(q0)) + dot(x1, nib_lo(q1)) + dot(x2, nib_lo(q2)) + dot(x3, nib_lo(q3))
          + dot(x4, nib_hi(q0)) + dot(x5, nib_hi(q1)) + dot(x6, nib_hi(q2)) + dot(x7, nib_hi(q3));
    let sx = dot((x0 + x1) + (x2 + x3) + (x4 + x5) + (x6 + x7), vec4<f32>(1.0));
    return k.x * s - k.y * sx;
}
