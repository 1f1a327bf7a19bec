// Embedding lookup from a quantized table: y[t][:] = dequant(W[token t]). `w` holds rows
// row0 .. row0 + part_rows of the table; tokens outside them are another part's. With DIRECT,
// y[row0 + r] = dequant(W[r]) for every row of the part (whole-tensor dequantization for tests).
// One thread per 32-value group of a row.

struct Params {
    k: u32,         // row width (multiple of 32)
    scale_off: u32, // u32 offset of the scales in w
    part_rows: u32, // rows in this part
    scale: f32,     // multiplier applied to every value (1, or sqrt(d) for Gemma)
    row0: u32,      // first table row in this part
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> batch: array<u32>;
// Named by the quant helpers' dot32, which this kernel does not call (so it needs no binding).
@group(0) @binding(7) var<storage, read> x: array<vec4<f32>>;

override DIRECT: bool = false;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let groups = P.k / 32u;
    let t = gid.x / groups;
    let g = gid.x % groups;
    var row = t;
    var dst = P.row0 + t;
    if (DIRECT) {
        if (t >= P.part_rows) { return; }
    } else {
        if (t >= n_tokens()) { return; }
        let id = token_id(t);
        if (id < P.row0 || id >= P.row0 + P.part_rows) { return; }
        row = id - P.row0;
        dst = t;
    }
    for (var i = 0u; i < 8u; i++) {
        let v = dequant4(row * groups + g, i, P.scale_off);
        y[dst * (P.k / 4u) + g * 8u + i] = select(v * P.scale, v, P.scale == 1.0);
    }
}
