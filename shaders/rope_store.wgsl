// RoPE and the paged KV write in the q|k|v matmul's epilogue (matmul.wgsl's ROPE, matvec.wgsl's
// P.rope), the work of rope_kv.wgsl without its launch and its pass over qkv. Prepended to both.
// The matmul's row slots come in quads: four fused rows holding both elements of two rotation
// pairs and two whole cache pairs (KvPair: elements 2w, 2w + 1), so the thread that has a quad's
// four sums rotates and stores them alone. GGML-normal rope: a quad is 4 consecutive rows; NeoX:
// rows (2i, 2i + 1, half + 2i, half + 2i + 1) of a head; v rows: consecutive. q is written to y
// rotated, k rotated and v as it is go to the cache only (attention reads q from qkv, K/V from
// the cache). A q|k|v bias (Qwen2) is added first. Uses the including shader's P (rope, head_dim,
// q_rows, kv_rows, bias, bias_off, out_stride), y, nw, k_cache, v_cache, batch and its
// `rope_pair(i)`: the i-th (cos, sin) of the table.

// The fused row computed in slot `s` (slots and rows counted from the first q row).
fn rope_row(s: u32) -> u32 {
    if (P.rope != 2u || s >= P.q_rows + P.kv_rows) { return s; }
    let i = s % P.head_dim;
    return s - i + 2u * (i / 4u) + i % 2u + select(0u, P.head_dim / 2u, i % 4u >= 2u);
}

// The bias of fused row r.
fn bias_at(r: u32) -> f32 {
    let i = P.bias_off + r;
    return nw[i / 4u][i % 4u];
}

// Stores token t's sums v of the quad whose first slot is s (a multiple of 4).
fn rope_store(s: u32, t: u32, v: vec4<f32>) {
    let r = rope_row(s);
    let r2 = rope_row(s + 2u); // rows r, r + 1, r2, r2 + 1
    let pos = position(t);
    var o = v;
    if (P.bias == 1u) { o += vec4<f32>(bias_at(r), bias_at(r + 1u), bias_at(r2), bias_at(r2 + 1u)); }
    let u = o;
    if (r < P.q_rows + P.kv_rows) {
        let half = P.head_dim / 2u;
        let i = r % P.head_dim;
        if (P.rope == 2u) {
            // Pairs (r, r2) at frequency i and (r + 1, r2 + 1) at i + 1.
            let a = rope_pair(pos * half + i);
            let b = rope_pair(pos * half + i + 1u);
            o = vec4<f32>(u.x * a.x - u.z * a.y, u.y * b.x - u.w * b.y, u.x * a.y + u.z * a.x, u.y * b.y + u.w * b.x);
        } else {
            // Pairs (r, r + 1) at frequency i / 2 and (r2, r2 + 1) at i / 2 + 1.
            let a = rope_pair(pos * half + i / 2u);
            let b = rope_pair(pos * half + i / 2u + 1u);
            o = vec4<f32>(u.x * a.x - u.y * a.y, u.x * a.y + u.y * a.x, u.z * b.x - u.w * b.y, u.z * b.y + u.w * b.x);
        }
    }
    if (r < P.q_rows) {
        let row = t * P.out_stride;
        y[row + r] = o.x;
        y[row + r + 1u] = o.y;
        y[row + r2] = o.z;
        y[row + r2 + 1u] = o.w;
        return;
    }
    let pairs = P.kv_rows / 2u;
    let at = kv_slot(seq_id(t), pos) * pairs;
    if (r < P.q_rows + P.kv_rows) {
        k_cache[at + (r - P.q_rows) / 2u] = kv_pack(o.xy);
        k_cache[at + (r2 - P.q_rows) / 2u] = kv_pack(o.zw);
    } else {
        let e = r - P.q_rows - P.kv_rows;
        v_cache[at + e / 2u] = kv_pack(o.xy);
        v_cache[at + e / 2u + 1u] = kv_pack(o.zw);
    }
}
