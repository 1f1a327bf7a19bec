// F16: two values per u32, no scales.
fn h4(o: u32) -> vec4<f32> { return vec4<f32>(unpack2x16float(w[o]), unpack2x16float(w[o + 1u])); }

fn dequant4(b: u32, i: u32, scale_off: u32) -> vec4<f32> { return h4(b * 16u + 2u * i); }

// Sixteen words per block: dotw reads them itself rather than carrying them.
struct WB { o: u32 }
fn load_wb(b: u32, scale_off: u32) -> WB { return WB(b * 16u); }
fn prep_x(v: X32) -> X32 { return v; }

fn dotw(k: WB, v: X32) -> f32 {
    let o = k.o;
    return dot(v.v0, h4(o)) + dot(v.v1, h4(o + 2u)) + dot(v.v2, h4(o + 4u)) + dot(v.v3, h4(o + 6u))
         + dot(v.v4, h4(o + 8u)) + dot(v.v5, h4(o + 10u)) + dot(v.v6, h4(o + 12u)) + dot(v.v7, h4(o + 14u));
}
