// Q4_0 repacked: per block 4 u32 of nibbles (layout as Q4_1), then at `scale_off` the f16 scales
// packed two per u32. Values are (q - 8) * d: one rounding, GPU == CPU.
fn load32(row: u32, g: u32, groups: u32, scale_off: u32) -> array<vec4<f32>, 8> {
    let b = row * groups + g;
    let d = unpack2x16float(w[scale_off + b / 2u])[b % 2u];
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = w[b * 4u + i];
        let lo = vec4<f32>(vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(15u));
        let hi = vec4<f32>(vec4<u32>(q >> 4u, q >> 12u, q >> 20u, q >> 28u) & vec4<u32>(15u));
        out[i] = (lo - 8.0) * d;
        out[i + 4u] = (hi - 8.0) * d;
    }
    return out;
}
