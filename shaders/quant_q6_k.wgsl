// Q6_K repacked per 32-value group b (8 per 256-value super-block): the values q - 32 as int8, 4
// per u32 (8 words), then at `scale_off` 5 u32 per super-block: d as f16, then the 16 int8
// scales of its 16-value sub-blocks (4 words). value = (d * sc) * q: d * sc is exact, the
// product with q rounds once, as on the CPU. (int8 storage: 1/3 larger than 6 bits.)
fn i8x4(q: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }

// d * scale of the 16 values `half` (0 or 1) of group b.
fn sub_scale(b: u32, scale_off: u32, half: u32) -> f32 {
    let base = scale_off + (b / 8u) * 5u;
    let idx = 2u * (b % 8u) + half;
    let sc = bitcast<i32>(w[base + 1u + idx / 4u] << (24u - 8u * (idx % 4u))) >> 24u;
    return unpack2x16float(w[base]).x * f32(sc);
}

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    return i8x4(w[b * 8u + i]) * sub_scale(b, scale_off, i / 4u);
}

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 {
    let o = b * 8u;
    let s0 = dot(x[xb], i8x4(w[o])) + dot(x[xb + 1u], i8x4(w[o + 1u])) + dot(x[xb + 2u], i8x4(w[o + 2u])) + dot(x[xb + 3u], i8x4(w[o + 3u]));
    let s1 = dot(x[xb + 4u], i8x4(w[o + 4u])) + dot(x[xb + 5u], i8x4(w[o + 5u])) + dot(x[xb + 6u], i8x4(w[o + 6u])) + dot(x[xb + 7u], i8x4(w[o + 7u]));
    return sub_scale(b, scale_off, 0u) * s0 + sub_scale(b, scale_off, 1u) * s1;
}
