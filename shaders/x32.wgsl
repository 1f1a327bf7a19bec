// Helpers the launcher prepends to every kernel that uses a quant_*.wgsl. A kernel loads a
// 32-value slice of an activation row once (`load_x32`) and dots it with several weight rows
// (`dotw` of a `load_wb` block, from the quant file): on CPU-emulated adapters every storage
// load is a per-lane gather, so sharing the x loads across rows is most of the speed.

struct X32 {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
    sum: f32,
}

// x[xb .. xb + 8] (vec4s), their sum, prepared for the weight type by its `prep_x`.
fn load_x32(xb: u32) -> X32 {
    return x32_of(x[xb], x[xb + 1u], x[xb + 2u], x[xb + 3u], x[xb + 4u], x[xb + 5u], x[xb + 6u], x[xb + 7u]);
}

fn x32_of(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32>) -> X32 {
    let s = dot((a + b) + (c + d) + (e + f) + (g + h), vec4<f32>(1.0));
    return prep_x(X32(a, b, c, d, e, f, g, h, s));
}

fn dot32(b: u32, scale_off: u32, xb: u32) -> f32 { return dotw(load_wb(b, scale_off), load_x32(xb)); }

// 4-bit values without shifts: nibble c of a byte group stays in place (value << 8c, exact in
// f32), and `prep_nib` scales x by 2^-8c once per slice instead. Signed conversion: unsigned
// int-to-float costs several instructions on SSE-only JITs.
const NIB_MASK = vec4<u32>(0xFu, 0xF00u, 0xF0000u, 0xF000000u);
const NIB_XS = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);
fn nib_lo(q: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) & NIB_MASK)); }
fn nib_hi(q: u32) -> vec4<f32> { return nib_lo(q >> 4u); }
fn prep_nib(v: X32) -> X32 {
    return X32(v.v0 * NIB_XS, v.v1 * NIB_XS, v.v2 * NIB_XS, v.v3 * NIB_XS, v.v4 * NIB_XS, v.v5 * NIB_XS, v.v6 * NIB_XS, v.v7 * NIB_XS, v.sum);
}
