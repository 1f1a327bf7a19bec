// F32: stored as raw bits.
fn f4(o: u32) -> vec4<f32> { return bitcast<vec4<f32>>(vec4<u32>(w[o], w[o + 1u], w[o + 2u], w[o + 3u])); }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> { return f4(b * 32u + 4u * i); }

// Thirty-two words per block: dotw reads them itself rather than carrying them.
struct WB { o: u32 }
fn load_wb(b: u32, scale_off: u32) -> WB { return WB(b * 32u); }
fn prep_x(v: X32) -> X32 { return v; }

fn dotw(k: WB, v: X32) -> f32 {
    let o = k.o;
    return dot(v.v0, f4(o)) + dot(v.v1, f4(o + 4u)) + dot(v.v2, f4(o + 8u)) + dot(v.v3, f4(o + 12u))
         + dot(v.v4, f4(o + 16u)) + dot(v.v5, f4(o + 20u)) + dot(v.v6, f4(o + 24u)) + dot(v.v7, f4(o + 28u));
}
