// Q8_0 repacked: per block 8 u32 of int8 values (4 per word, little-endian), then at `scale_off`
// the f16 scales packed two per u32.
fn load32(row: u32, g: u32, groups: u32, scale_off: u32) -> array<vec4<f32>, 8> {
    let b = row * groups + g;
    let d = unpack2x16float(w[scale_off + b / 2u])[b % 2u];
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let q = bitcast<vec4<i32>>(vec4<u32>(w[b * 8u + i]) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
        out[i] = vec4<f32>(q) * d;
    }
    return out;
}
