// F32: stored as raw bits.
fn load32(row: u32, g: u32, groups: u32, scale_off: u32) -> array<vec4<f32>, 8> {
    let base = (row * groups + g) * 32u;
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let j = base + 4u * i;
        out[i] = bitcast<vec4<f32>>(vec4<u32>(w[j], w[j + 1u], w[j + 2u], w[j + 3u]));
    }
    return out;
}
