// F16: two values per u32, no scales.
fn load32(row: u32, g: u32, groups: u32, scale_off: u32) -> array<vec4<f32>, 8> {
    let base = (row * groups + g) * 16u;
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        out[i] = vec4<f32>(unpack2x16float(w[base + 2u * i]), unpack2x16float(w[base + 2u * i + 1u]));
    }
    return out;
}
