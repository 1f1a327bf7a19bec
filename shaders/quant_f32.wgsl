// F32: stored as raw bits.
fn f4(o: u32) -> vec4<f32> { return bitcast<vec4<f32>>(vec4<u32>(w[o], w[o + 1u], w[o + 2u], w[o + 3u])); }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> { return f4(b * 32u + 4u * i); }

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let o = b * 32u;
    return dot(x[xb], f4(o)) + dot(x[xb + 1u], f4(o + 4u)) + dot(x[xb + 2u], f4(o + 8u)) + dot(x[xb + 3u], f4(o + 12u))
         + dot(x[xb + 4u], f4(o + 16u)) + dot(x[xb + 5u], f4(o + 20u)) + dot(x[xb + 6u], f4(o + 24u)) + dot(x[xb + 7u], f4(o + 28u));
}
