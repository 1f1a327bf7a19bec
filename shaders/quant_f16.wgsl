// F16: two values per u32, no scales.
fn h4(o: u32) -> vec4<f32> { return vec4<f32>(unpack2x16float(w[o]), unpack2x16float(w[o + 1u])); }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> { return h4(b * 16u + 2u * i); }

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let o = b * 16u;
    return dot(x[xb], h4(o)) + dot(x[xb + 1u], h4(o + 2u)) + dot(x[xb + 2u], h4(o + 4u)) + dot(x[xb + 3u], h4(o + 6u))
         + dot(x[xb + 4u], h4(o + 8u)) + dot(x[xb + 5u], h4(o + 10u)) + dot(x[xb + 6u], h4(o + 12u)) + dot(x[xb + 7u], h4(o + 14u));
}
