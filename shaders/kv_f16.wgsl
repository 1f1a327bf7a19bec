// The KV cache's element format (KvType::F16): f16, two packed in a u32, so no `shader-f16` is
// needed; half of f32's bytes. Kernels bind the cache as array<KvPair> (elements 2i, 2i + 1) or
// array<KvQuad> (4i..4i + 3); kv_f32.wgsl is the same interface.
alias KvPair = u32;
alias KvQuad = vec2<u32>;

// f32 to f16 bits, rounded to nearest even, magnitudes below f16's smallest normal (2^-14)
// flushed to zero. Not pack2x16float: WGSL lets its conversion round either way. With f16
// subnormals kept (through the builtins, or with an exact integer unpack), seeded sampling in
// Chromium (SwiftShader) drifted from the native engine's (lavapipe) after 8 tokens; without
// them the two agree.
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let e = i32((b >> 23u) & 0xffu) - 112; // f16's biased exponent
    let m = b & 0x7fffffu;
    if (e <= 0) { return sign; }
    if (e >= 31) {
        if (e == 143 && m != 0u) { return sign | 0x7e00u; } // NaN
        return sign | 0x7c00u; // too large: infinity
    }
    var h = (u32(e) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    // A carry out of the significand steps the exponent up, to infinity at the top: correct.
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) { h += 1u; }
    return sign | h;
}

fn kv_pack(v: vec2<f32>) -> KvPair { return f16_bits(v.x) | (f16_bits(v.y) << 16u); }
fn kv_pair(w: KvPair) -> vec2<f32> { return unpack2x16float(w); }
fn kv_quad(w: KvQuad) -> vec4<f32> { return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
