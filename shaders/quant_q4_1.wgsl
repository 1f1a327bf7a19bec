// Q4_1 repacked: per block 4 u32 of nibbles (value j in the low nibble of byte j, value j+16 in
// the high nibble), then at `scale_off` one u32 per block holding (d, m) as two f16.
// q*d is exact in f32 (4-bit times 11-bit), so q*d + m rounds once, FMA or not: GPU == CPU.
fn load32(row: u32, g: u32, groups: u32, scale_off: u32) -> array<vec4<f32>, 8> {
    let b = row * groups + g;
    let dm = unpack2x16float(w[scale_off + b]);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = w[b * 4u + i];
        let lo = vec4<f32>(vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(15u));
        let hi = vec4<f32>(vec4<u32>(q >> 4u, q >> 12u, q >> 20u, q >> 28u) & vec4<u32>(15u));
        out[i] = lo * dm.x + dm.y;
        out[i + 4u] = hi * dm.x + dm.y;
    }
    return out;
}
