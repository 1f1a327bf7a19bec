// Q8_0 repacked: per block 8 u32 of int8 values (4 per word, little-endian), then at `scale_off`
// the f16 scales packed two per u32.
fn i8x4(q: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }
fn scale(b: u32, scale_off: u32) -> f32 { return unpack2x16float(w[scale_off + b / 2u])[b % 2u]; }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> {
    return i8x4(w[b * 8u + i]) * scale(b, scale_off);
}

struct WB { q0: u32, q1: u32, q2: u32, q3: u32, q4: u32, q5: u32, q6: u32, q7: u32, d: f32 }
fn load_wb(b: u32, scale_off: u32) -> WB { let o = b * 8u; return WB(w[o + 0u], w[o + 1u], w[o + 2u], w[o + 3u], w[o + 4u], w[o + 5u], w[o + 6u], w[o + 7u], scale(b, scale_off)); }
fn prep_x(v: X32) -> X32 { return v; }

fn dotw(k: WB, v: X32) -> f32 {
    return (dot(v.v0, i8x4(k.q0)) + dot(v.v1, i8x4(k.q1)) + dot(v.v2, i8x4(k.q2)) + dot(v.v3, i8x4(k.q3))
          + dot(v.v4, i8x4(k.q4)) + dot(v.v5, i8x4(k.q5)) + dot(v.v6, i8x4(k.q6)) + dot(v.v7, i8x4(k.q7))) * k.d;
}
