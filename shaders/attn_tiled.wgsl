// Prefill attention, tiled: one workgroup per (head, tile of TQ consecutive batch tokens).
// Cached K and V go through workgroup memory PC positions at a time and serve the whole tile,
// so each is read from memory once per TQ queries instead of once per query. Thread
// (qi, j) = (lid / PC, lid % PC) scores query qi against position j of the chunk, then sums
// P.V for query qi over output dims j, j + PC, ... with an online softmax across chunks.
// A tile may mix sequences (continuous batching): it runs once per distinct sequence in it,
// over the positions that sequence's queries see. K and V are read in pairs of
// elements (kv_f16.wgsl or kv_f32.wgsl) into workgroup memory as f32.

@group(0) @binding(0) var<uniform> P: AttnParams; // attn_params.wgsl
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<KvPair>;
@group(0) @binding(3) var<storage, read> v_cache: array<KvPair>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> batch: array<u32>;

const TQ: u32 = 8u;
const PC: u32 = 8u;
const MAX_HEAD_DIM: u32 = 256u;
const NONE: u32 = 0xffffffffu;
var<workgroup> kv: array<f32, PC * MAX_HEAD_DIM>; // K rows, then V rows, of the chunk
var<workgroup> sc: array<f32, TQ * PC>;
var<workgroup> slots: array<u32, PC>;
var<workgroup> q_seq: array<u32, TQ>; // NONE: past the batch
var<workgroup> q_start: array<u32, TQ>;
var<workgroup> g_seq: u32;
var<workgroup> g_lo: u32;
var<workgroup> g_hi: u32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let qi = lid / PC;
    let j = lid % PC;
    let t = wid.y * TQ + qi;
    let hd = P.head_dim;
    let hd2 = hd / 2u;
    let row_pairs = P.n_kv_heads * hd2;
    let kv_off = (h / (P.n_heads / P.n_kv_heads)) * hd2;
    let live = t < n_tokens();
    var seq = NONE;
    var pos = 0u;
    var start = 0u;
    if (live) {
        seq = seq_id(t);
        pos = position(t);
        if (P.window > 0u && pos + 1u > P.window) { start = pos + 1u - P.window; }
    }
    if (j == 0u) {
        q_seq[qi] = seq;
        q_start[qi] = start;
    }
    let q0 = t * P.qkv_stride + h * hd;

    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, 32>; // dims j, j + PC, ... (head_dim <= 256)
    for (var g = 0u; g < TQ; g++) {
        // Thread 0 finds whether query g starts a new sequence, and that sequence's position range.
        workgroupBarrier();
        if (lid == 0u) {
            g_seq = q_seq[g];
            for (var i = 0u; i < g; i++) {
                if (q_seq[i] == g_seq) { g_seq = NONE; }
            }
            var lo = 0xffffffffu;
            var hi = 0u;
            for (var i = 0u; i < TQ; i++) {
                if (g_seq != NONE && q_seq[i] == g_seq) {
                    lo = min(lo, q_start[i]);
                    hi = max(hi, position(wid.y * TQ + i) + 1u);
                }
            }
            g_lo = lo;
            g_hi = hi;
        }
        let gs = workgroupUniformLoad(&g_seq);
        if (gs == NONE) { continue; }
        let lo = workgroupUniformLoad(&g_lo);
        let hi = workgroupUniformLoad(&g_hi);
        let mine = seq == gs;
        for (var c = lo; c < hi; c += PC) {
            if (lid < PC) { slots[lid] = kv_slot(gs, min(c + lid, hi - 1u)); }
            workgroupBarrier();
            for (var i = lid; i < PC * hd2; i += 64u) {
                let x = kv_pair(k_cache[slots[i / hd2] * row_pairs + kv_off + i % hd2]);
                kv[2u * i] = x.x;
                kv[2u * i + 1u] = x.y;
            }
            workgroupBarrier();
            let p = c + j;
            var s = -3.0e38;
            if (mine && p >= start && p <= pos) {
                var dotv = 0.0;
                for (var d = 0u; d < hd; d++) { dotv += qkv[q0 + d] * kv[j * hd + d]; }
                s = dotv * P.scale;
            }
            sc[lid] = s;
            workgroupBarrier();
            // Every thread of query qi's row keeps the same softmax state.
            var m_new = m;
            for (var i = 0u; i < PC; i++) { m_new = max(m_new, sc[qi * PC + i]); }
            var w: array<f32, PC>;
            var sum = 0.0;
            for (var i = 0u; i < PC; i++) {
                let si = sc[qi * PC + i];
                w[i] = select(0.0, exp(si - m_new), si > -1.0e38);
                sum += w[i];
            }
            let correction = exp(m - m_new);
            workgroupBarrier();
            for (var i = lid; i < PC * hd2; i += 64u) {
                let x = kv_pair(v_cache[slots[i / hd2] * row_pairs + kv_off + i % hd2]);
                kv[2u * i] = x.x;
                kv[2u * i + 1u] = x.y;
            }
            workgroupBarrier();
            if (mine) {
                l = l * correction + sum;
                m = m_new;
                for (var k = 0u; k < 32u; k++) {
                    let d = j + PC * k;
                    if (d < hd) {
                        var a = acc[k] * correction;
                        for (var i = 0u; i < PC; i++) { a += w[i] * kv[i * hd + d]; }
                        acc[k] = a;
                    }
                }
            }
        }
    }
    if (!live) { return; }
    for (var k = 0u; k < 32u; k++) {
        let d = j + PC * k;
        if (d < hd) { out[t * P.n_heads * hd + h * hd + d] = acc[k] / l; }
    }
}
