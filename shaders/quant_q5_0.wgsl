// Q5_0 repacked: per block 4 u32 of low nibbles (value j in the low nibble of byte j, value
// j+16 in the high nibble, as Q4_0) and 1 u32 of fifth bits (bit j: value j), then at
// `scale_off` the f16 scales packed two per u32. value = (q - 16) * d: q - 16 and its product
// with an f16 are exact in f32, so GPU == CPU bit for bit.
fn nib_lo(q: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(15u)); }
fn nib_hi(q: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(q >> 4u, q >> 12u, q >> 20u, q >> 28u) & vec4<u32>(15u)); }
// Fifth bits of values j .. j+3, as 0 or 16.
fn hi4(qh: u32, j: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(qh) >> vec4<u32>(j, j + 1u, j + 2u, j + 3u)) & vec4<u32>(1u)) * 16.0; }
fn scale(b: u32, scale_off: u32) -> f32 { return unpack2x16float(w[scale_off + b / 2u])[b % 2u]; }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    let q = w[b * 5u + i % 4u];
    return (select(nib_lo(q), nib_hi(q), i >= 4u) + hi4(w[b * 5u + 4u], 4u * i) - 16.0) * scale(b, scale_off);
}

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let o = b * 5u;
    let qh = w[o + 4u];
    let q0 = w[o]; let q1 = w[o + 1u]; let q2 = w[o + 2u]; let q3 = w[o + 3u];
    let x0 = x[xb]; let x1 = x[xb + 1u]; let x2 = x[xb + 2u]; let x3 = x[xb + 3u];
    let x4 = x[xb + 4u]; let x5 = x[xb + 5u]; let x6 = x[xb + 6u]; let x7 = x[xb + 7u];
    let s = dot(x0, nib_lo(q0) + hi4(qh, 0u)) + dot(x1, nib_lo(q1) + hi4(qh, 4u)) + dot(x2, nib_lo(q2) + hi4(qh, 8u)) + dot(x3, nib_lo(q3) + hi4(qh, 12u))
          + dot(x4, nib_hi(q0) + hi4(qh, 16u)) + dot(x5, nib_hi(q1) + hi4(qh, 20u)) + dot(x6, nib_hi(q2) + hi4(qh, 24u)) + dot(x7, nib_hi(q3) + hi4(qh, 28u));
    let sx = dot((x0 + x1) + (x2 + x3) + (x4 + x5) + (x6 + x7), vec4<f32>(1.0));
    return scale(b, scale_off) * (s - 16.0 * sx);
}
