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

struct WB { q0: u32, q1: u32, q2: u32, q3: u32, q4: u32, q5: u32, q6: u32, q7: u32, s0: f32, s1: f32 }
fn load_wb(b: u32, scale_off: u32) -> WB {
    let o = b * 8u;
    return WB(w[o + 0u], w[o + 1u], w[o + 2u], w[o + 3u], w[o + 4u], w[o + 5u], w[o + 6u], w[o + 7u], sub_scale(b, scale_off, 0u), sub_scale(b, scale_off, 1u));
}
fn prep_x(v: X32) -> X32 { return v; }

fn dotw(k: WB, v: X32) -> f32 {
    return k.s0 * (dot(v.v0, i8x4(k.q0)) + dot(v.v1, i8x4(k.q1)) + dot(v.v2, i8x4(k.q2)) + dot(v.v3, i8x4(k.q3)))
         + k.s1 * (dot(v.v4, i8x4(k.q4)) + dot(v.v5, i8x4(k.q5)) + dot(v.v6, i8x4(k.q6)) + dot(v.v7, i8x4(k.q7)));
}
