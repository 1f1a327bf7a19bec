// Q8_0 repacked: per block 8 u32 of int8 values (4 per word, little-endian), then at `scale_off`
// the f16 scales packed two per u32.
fn i8x4(q: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }
fn scale(b: u32, scale_off: u32) -> f32 { return unpack2x16float(w[scale_off + b / 2u])[b % 2u]; }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    return i8x4(w[b * 8u + i]) * scale(b, scale_off);
}

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let o = b * 8u;
    let s = dot(x[xb], i8x4(w[o])) + dot(x[xb + 1u], i8x4(w[o + 1u])) + dot(x[xb + 2u], i8x4(w[o + 2u])) + dot(x[xb + 3u], i8x4(w[o + 3u]))
          + dot(x[xb + 4u], i8x4(w[o + 4u])) + dot(x[xb + 5u], i8x4(w[o + 5u])) + dot(x[xb + 6u], i8x4(w[o + 6u])) + dot(x[xb + 7u], i8x4(w[o + 7u]));
    return s * scale(b, scale_off);
}
