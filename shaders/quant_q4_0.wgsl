// Q4_0 repacked: per block 4 u32 of nibbles (layout as Q4_1), then at `scale_off` the f16 scales
// packed two per u32. Values are (q - 8) * d: one rounding, GPU == CPU.
fn nib_lo(q: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(15u)); }
fn nib_hi(q: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(q >> 4u, q >> 12u, q >> 20u, q >> 28u) & vec4<u32>(15u)); }
fn scale(b: u32, scale_off: u32) -> f32 { return unpack2x16float(w[scale_off + b / 2u])[b % 2u]; }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    let q = w[b * 4u + i % 4u];
    return (select(nib_lo(q), nib_hi(q), i >= 4u) - 8.0) * scale(b, scale_off);
}

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let q0 = w[b * 4u];
    let q1 = w[b * 4u + 1u];
    let q2 = w[b * 4u + 2u];
    let q3 = w[b * 4u + 3u];
    let x0 = x[xb]; let x1 = x[xb + 1u]; let x2 = x[xb + 2u]; let x3 = x[xb + 3u];
    let x4 = x[xb + 4u]; let x5 = x[xb + 5u]; let x6 = x[xb + 6u]; let x7 = x[xb + 7u];
    let s = dot(x0, nib_lo(q0)) + dot(x1, nib_lo(q1)) + dot(x2, nib_lo(q2)) + dot(x3, nib_lo(q3))
          + dot(x4, nib_hi(q0)) + dot(x5, nib_hi(q1)) + dot(x6, nib_hi(q2)) + dot(x7, nib_hi(q3));
    let sx = dot((x0 + x1) + (x2 + x3) + (x4 + x5) + (x6 + x7), vec4<f32>(1.0));
    return scale(b, scale_off) * (s - 8.0 * sx);
}
