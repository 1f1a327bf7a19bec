// Sampling on the GPU: the token each logit row draws with the CPU sampler's filters and the
// uniform number the CPU drew for it, so a sampled decode step reads back 4 bytes and its token
// can feed the next step without a round trip. The choice of `RowSampling::choose`
// (src/sample/mod.rs) up to f32 rounding of the sums: candidates in the order logit descending,
// id ascending; top-k keeps the first k; top-p the shortest prefix whose mass at temperature 1
// (over what top-k kept) reaches top_p; min-p those with exp(l - max) >= min_p; the draw takes
// the first kept candidate whose cumulative weight exp((l - max) / T) passes u times the kept
// total. Each cut is a weighted radix select over order-preserving u32 keys: 8 rounds of 4 bits,
// per-thread bins summed in thread order, then the ties at the found key ranked by id. Once the
// candidates still in play fit in workgroup memory (CAP), they are copied there in id order
// and the remaining rounds read only them: a few passes over the row instead of ten.
// typical-p (after top-k, before top-p) is one more cut of the same kind in another order:
// distance from the row's mean logit. With P.group, the LM head left the largest logit of each run
// of P.group rows and the run's sum of exp((logit - that) / T), T the row's sums temperature in
// batch.wgsl (matmul.wgsl's PARTIALS). A row without a mask starts from those (the runs its edits
// touched computed again first): with a top-k whose runs fit in workgroup memory it finds its k
// runs among the maxima (the k-th largest maximum is at most the k-th largest logit, so they hold
// the whole top-k), copies their logits there (the pool), and every later cut reads only them;
// with top-p, or at a temperature without filters, it pools the runs with the largest maxima and
// cuts (or draws) there against the row's mass from the sums (at T = 1 for top-p, at the row's
// temperature for the draw), kept where the cut lies above every logit left out; with a min-p
// floor alone it pools the same runs and draws there where nothing left out reaches the floor.
// Temperature 0 is the first largest logit (greedy rows in a sampled batch). Before any of it, the
// row's logit edits are applied in place, as the CPU sampler applies them: bias entries, then the
// repetition/frequency/presence penalties of the window's tokens, the token the row is computed at
// counted once more (it may be a chained token the CPU has not seen yet). With MASKED (structured
// output), the tokens the row's grammar mask forbids are then set to FORBIDDEN, where the CPU
// sampler sets -inf (WGSL leaves infinities to the implementation): last in every order, and of
// weight exp(FORBIDDEN - max) = 0 in every cut and draw.

override MASKED: bool = false;

struct Params {
    vocab: u32,
    // u32 words of one row's mask: vocab / 32 rounded up.
    mask_words: u32,
    // Rows per partial maximum (0: none).
    group: u32,
    // Element of `logits` where the partial maxima start, ceil(vocab / group) a row.
    partials: u32,
}

// One logit row's sampling (`SampleRow` in src/backend/webgpu/kernels/sampling.rs).
struct Row {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    u: f32,
    repeat_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    edit_start: u32,
    edit_count: u32,
    count_input: u32,
    typical_p: f32,
}

// count 0: add bias; else the token's count in the penalty window (`SampleEdit`). `before`:
// written here, the token's logit before this edit.
struct Edit {
    token: u32,
    bias: f32,
    count: u32,
    before: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
@group(0) @binding(3) var<storage, read> rows: array<Row>;
@group(0) @binding(4) var<storage, read_write> edits: array<Edit>;
// The drawn token's logit before the row's edits, for logprobs.
@group(0) @binding(5) var<storage, read_write> chosen: array<f32>;
// MASKED only: each row's allowed tokens (bit set: allowed), as argmax.wgsl reads them.
@group(0) @binding(6) var<storage, read> mask: array<u32>;
@group(0) @binding(7) var<storage, read> batch: array<u32>;

const WG: u32 = 128u;
const BINS: u32 = 16u;
const NONE: u32 = 0xffffffffu;
// Candidates kept in workgroup memory (the total stays within the 16 KB every adapter has).
const CAP: u32 = 768u;
const FORBIDDEN: f32 = -1e30;
// Logits at or below this never count as a greedy choice (-inf; the CPU's NO_LOGIT).
const NO_LOGIT: f32 = -3.4e38;

var<workgroup> partial: array<f32, 2048>; // [BINS][WG]
var<workgroup> bin_sum: array<f32, BINS>;
// Per-invocation counts, then their exclusive prefix sums (ranks in id order).
var<workgroup> ties: array<u32, WG>;
var<workgroup> n_left: u32;
var<workgroup> cval: array<f32, CAP>;
var<workgroup> cid: array<u32, CAP>;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
// The cut being found: key, id, the kept weight before its key, the target, the tie rank.
var<workgroup> found_max: f32;
var<workgroup> found_key: u32;
var<workgroup> found_id: u32;
var<workgroup> found_above: f32;
var<workgroup> found_target: f32;
var<workgroup> found_rank: u32;
// The row's mass at its sums temperature, from the LM head's partial sums.
var<workgroup> row_mass: f32;
// What decides which cuts run, read with workgroupUniformLoad (a private variable never counts
// as uniform): bit 0 `pool`; above it the cut `pool_mass` made in the pool (1 top-p, 2 the draw).
var<workgroup> pool_state: u32;

// This invocation's index and contiguous slice of the row, or of the compacted candidates
// (ids ascending across invocations either way). `base` and `span`: where the values a cut
// reads start in `logits` and how many there are (the row, or its partial maxima).
var<private> me: u32;
var<private> base: u32;
var<private> span: u32;
// Whether every candidate still kept lies in cval / cid[..pooled] (from the partial maxima).
var<private> pool: bool;
var<private> pooled: u32;
var<private> lo: u32;
var<private> hi: u32;
// The row's largest logit, its temperature, and the min-p floor on exp(l - max).
var<private> row_max: f32;
var<private> temperature: f32;
var<private> floor_w: f32;
// The kept candidates are those at or before (cut_key, cut_id) in the order.
var<private> cut_key: u32;
var<private> cut_id: u32;
// typical-p's cut, in its own order (deviation from the mean logit `mu`), kept alongside the
// logit-order cut above; 0 / NONE keep everything.
var<private> typ_key: u32;
var<private> typ_id: u32;
var<private> mu: f32;
// Whether the row has a typical cut (kept() then checks it).
var<private> typical_on: bool;
// Invocation 0: the input token's logit before its penalty, when no edit entry names it.
var<private> input_before: f32;
var<private> input_edited: bool;

// Larger float -> larger key (sign flipped for positives, all bits for negatives).
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
}

fn key_value(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k >> 31u) == 1u));
}

// Closer to the mean logit -> larger key (typical-p's order: the surprise -ln p of a token
// differs from the entropy by exactly its logit's distance from the mean logit under p).
fn typical_key(v: f32) -> u32 {
    return ~bitcast<u32>(abs(v - mu));
}

// mode 0: each candidate counts 1 (top-k); 1: exp(l - max) (top-p); 2: at the temperature;
// 3: exp(l - max) in typical order.
fn weight(mode: u32, v: f32) -> f32 {
    if (mode == 0u) { return 1.0; }
    if (mode == 2u) { return exp((v - row_max) / temperature); }
    return exp(v - row_max);
}

fn order_key(mode: u32, v: f32) -> u32 {
    if (mode == 3u) { return typical_key(v); }
    return key(v);
}

// Whether candidate i (logit v) is kept by the cuts so far (and, `with_floor`, by min-p).
fn kept(i: u32, v: f32, with_floor: bool) -> bool {
    let k = key(v);
    if (k < cut_key || (k == cut_key && i > cut_id)) { return false; }
    if (typical_on) {
        let t = typical_key(v);
        if (t < typ_key || (t == typ_key && i > typ_id)) { return false; }
    }
    return !with_floor || exp(v - row_max) >= floor_w;
}

fn penalized(v: f32, n: u32, p: Row) -> f32 {
    var x = v;
    if (p.repeat_penalty != 1.0) { x = select(x * p.repeat_penalty, x / p.repeat_penalty, x > 0.0); }
    return x - (p.frequency_penalty * f32(n) + p.presence_penalty);
}

// One invocation edits the row in place (a few hundred entries at most), keeping each edited
// logit's value before the edit (the input token's, when no entry names it, in input_before).
// A logit at or below NO_LOGIT stays as it is, as the CPU's -inf does under any edit: the LM
// head writes tokens a mask forbids so (matmul.wgsl's MASKED), and no edit may allow them.
fn apply_edits(r: u32, p: Row) {
    let input = token_id(logit_row(r));
    var input_seen = false;
    for (var e = p.edit_start; e < p.edit_start + p.edit_count; e++) {
        let ed = edits[e];
        if (ed.token >= P.vocab) { continue; }
        let v = logits[base + ed.token];
        edits[e].before = v;
        if (!(v > NO_LOGIT)) { continue; }
        if (ed.count == 0u) {
            logits[base + ed.token] = v + ed.bias;
            continue;
        }
        var n = ed.count;
        if (p.count_input != 0u && ed.token == input) {
            n += 1u;
            input_seen = true;
        }
        logits[base + ed.token] = penalized(v, n, p);
    }
    if (p.count_input != 0u && !input_seen && input < P.vocab) {
        input_before = logits[base + input];
        input_edited = true;
        if (input_before > NO_LOGIT) { logits[base + input] = penalized(input_before, 1u, p); }
    }
}

// Invocation 0, after apply_edits: `token`'s logit before the row's edits (the value the
// first edit naming it saw).
fn unedited(r: u32, p: Row, token: u32) -> f32 {
    for (var e = p.edit_start; e < p.edit_start + p.edit_count; e++) {
        if (edits[e].token == token) { return edits[e].before; }
    }
    if (input_edited && token == token_id(logit_row(r))) { return input_before; }
    return logits[base + token];
}

fn reaches(acc: f32, goal: f32, strict: bool) -> bool {
    return select(acc >= goal, acc > goal, strict);
}

// How many values the cuts read: the pooled candidates, or `span` values at `base`.
fn candidates() -> u32 {
    return select(span, pooled, pool);
}

fn slice(n: u32) {
    let chunk = (n + WG - 1u) / WG;
    lo = min(me * chunk, n);
    hi = min(lo + chunk, n);
}

// Element j of the row (`compact` false) or of the compacted candidates.
fn value(compact: bool, j: u32) -> f32 {
    if (compact) { return cval[j]; }
    return logits[base + j];
}

fn id(compact: bool, j: u32) -> u32 {
    if (compact) { return cid[j]; }
    return j;
}

// ties[me] <- the exclusive prefix sum of the invocations' `n`; n_left <- the total.
fn rank_counts(n: u32) {
    ties[me] = n;
    workgroupBarrier();
    if (me == 0u) {
        var run = 0u;
        for (var j = 0u; j < WG; j++) {
            let c = ties[j];
            ties[j] = run;
            run += c;
        }
        n_left = run;
    }
    workgroupBarrier();
}

// The first kept candidate in sorted order whose cumulative weight reaches (`strict`: passes)
// the target: `amount` times the kept total, or `amount` itself when `absolute`. Leaves it in
// cut_key / cut_id. Every invocation calls it.
fn find_cut(mode: u32, amount: f32, absolute: bool, strict: bool, with_floor: bool) {
    var compact = (workgroupUniformLoad(&pool_state) & 1u) != 0u;
    slice(candidates());
    var prefix = 0u;
    for (var round = 0u; round < 8u; round++) {
        let shift = 28u - 4u * round;
        // Zeroed explicitly: a declaration in a loop need not re-initialize (naga hoists it).
        var bins: array<f32, 16>;
        var counts: array<u32, 16>;
        for (var b = 0u; b < BINS; b++) {
            bins[b] = 0.0;
            counts[b] = 0u;
        }
        for (var j = lo; j < hi; j++) {
            let v = value(compact, j);
            let k = order_key(mode, v);
            // Keys whose bits above this round's digit differ from the prefix are out.
            if (round > 0u && (k >> (shift + 4u)) != (prefix >> (shift + 4u))) { continue; }
            if (!kept(id(compact, j), v, with_floor)) { continue; }
            let b = (k >> shift) & 15u;
            bins[b] += weight(mode, v);
            counts[b] += 1u;
        }
        for (var b = 0u; b < BINS; b++) { partial[b * WG + me] = bins[b]; }
        workgroupBarrier();
        if (me < BINS) {
            var s = 0.0;
            for (var j = 0u; j < WG; j++) { s += partial[me * WG + j]; }
            bin_sum[me] = s;
        }
        workgroupBarrier();
        if (me == 0u) {
            var acc = found_above;
            if (round == 0u) {
                // The total in the walk's own order, so a fraction below 1 is always reached.
                var total = 0.0;
                for (var b = BINS; b > 0u; b--) { total += bin_sum[b - 1u]; }
                found_target = select(amount * total, amount, absolute);
                acc = 0.0;
            }
            // Walk the digits from the largest; keep the last non-empty one in case rounding
            // leaves the target out of reach.
            var chosen = NONE;
            var chosen_acc = acc;
            for (var b = BINS; b > 0u; b--) {
                let s = bin_sum[b - 1u];
                if (s > 0.0) {
                    chosen = b - 1u;
                    chosen_acc = acc;
                    if (reaches(acc + s, found_target, strict)) { break; }
                }
                acc += s;
            }
            if (chosen == NONE) { chosen = 0u; }
            found_key = prefix | (chosen << shift);
            found_above = chosen_acc;
        }
        workgroupBarrier();
        prefix = found_key;
        if (compact || round == 7u) { continue; }
        // Copy the candidates still in play to workgroup memory once they fit.
        rank_counts(counts[(prefix >> shift) & 15u]);
        if (workgroupUniformLoad(&n_left) <= CAP) {
            var at = ties[me];
            for (var j = lo; j < hi; j++) {
                let v = logits[base + j];
                let k = order_key(mode, v);
                if ((k >> shift) == (prefix >> shift) && kept(j, v, with_floor)) {
                    cval[at] = v;
                    cid[at] = j;
                    at += 1u;
                }
            }
            compact = true;
            slice(workgroupUniformLoad(&n_left));
        }
    }

    // Candidates with exactly the found key weigh the same (in typical order, unless two
    // logits lie at the same distance either side of the mean: taken as the same): the rank
    // among them (by id) that reaches the target, then the id of that rank.
    var n = 0u;
    var tied = 0.0;
    for (var j = lo; j < hi; j++) {
        let v = value(compact, j);
        if (order_key(mode, v) == prefix && kept(id(compact, j), v, with_floor)) {
            if (n == 0u) { tied = v; }
            n += 1u;
        }
    }
    best_v[me] = tied;
    best_i[me] = n;
    rank_counts(n);
    if (me == 0u) {
        let run = n_left;
        var v = 0.0;
        for (var j = 0u; j < WG; j++) {
            if (best_i[j] > 0u) { v = best_v[j]; break; }
        }
        let w = weight(mode, v);
        let rest = found_target - found_above;
        var r = run - 1u;
        if (w > 0.0 && rest > 0.0) {
            let q = rest / w;
            r = u32(select(max(ceil(q) - 1.0, 0.0), floor(q), strict));
        }
        if (w > 0.0 && rest <= 0.0) { r = 0u; }
        found_rank = min(r, run - 1u);
        found_id = NONE;
    }
    workgroupBarrier();
    let want = found_rank;
    if (want >= ties[me] && want < ties[me] + n) {
        var seen = ties[me];
        for (var j = lo; j < hi; j++) {
            let v = value(compact, j);
            if (order_key(mode, v) == prefix && kept(id(compact, j), v, with_floor)) {
                if (seen == want) { found_id = id(compact, j); break; }
                seen += 1u;
            }
        }
    }
    workgroupBarrier();
    cut_key = prefix;
    cut_id = found_id;
    workgroupBarrier();
}

// typical-p over what top-k kept: the candidates nearest the mean logit mu = E_p[l] (p at
// temperature 1) up to `mass`, as the CPU sorts them by |-ln p - entropy|; then the largest
// logit kept becomes the max the later weights and min-p are taken around.
fn typical(mass: f32) {
    slice(candidates());
    var z = 0.0;
    var m = 0.0;
    for (var j = lo; j < hi; j++) {
        let v = value(pool, j);
        let w = exp(v - row_max);
        // Weightless logits (forbidden, -inf bias) would make 0 * inf.
        if (w > 0.0 && kept(id(pool, j), v, false)) {
            z += w;
            m += w * (v - row_max);
        }
    }
    partial[me] = z;
    partial[WG + me] = m;
    workgroupBarrier();
    if (me == 0u) {
        var zs = 0.0;
        var ms = 0.0;
        for (var j = 0u; j < WG; j++) {
            zs += partial[j];
            ms += partial[WG + j];
        }
        found_max = row_max + ms / zs;
    }
    mu = workgroupUniformLoad(&found_max);
    let top_key = cut_key;
    let top_id = cut_id;
    find_cut(3u, mass, false, false, false);
    typ_key = cut_key;
    typ_id = cut_id;
    cut_key = top_key;
    cut_id = top_id;
    slice(candidates());

    var bv = 0.0;
    var any = false;
    for (var j = lo; j < hi; j++) {
        let v = value(pool, j);
        if (kept(id(pool, j), v, false) && (!any || v > bv)) { bv = v; any = true; }
    }
    best_v[me] = bv;
    best_i[me] = select(NONE, 0u, any);
    workgroupBarrier();
    if (me == 0u) {
        var mx = row_max;
        var first = true;
        for (var j = 0u; j < WG; j++) {
            if (best_i[j] != NONE && (first || best_v[j] > mx)) { mx = best_v[j]; first = false; }
        }
        found_max = mx;
    }
    row_max = workgroupUniformLoad(&found_max);
}

// The first largest of the `span` values at `base` (compared as floats, as the CPU's argmax
// and argmax.wgsl do: -0 and +0 tie; NaN and values at or below NO_LOGIT never count, nor
// FORBIDDEN ones): its value into row_max; returns its index, NONE when nothing counts (so a
// row whose mask allows nothing has no token, as on the CPU, not a forbidden one).
fn first_largest() -> u32 {
    slice(span);
    var bv = select(NO_LOGIT, FORBIDDEN, MASKED);
    var bi = NONE;
    for (var i = lo; i < hi; i++) {
        let v = logits[base + i];
        if (v > bv) { bv = v; bi = i; }
    }
    best_v[me] = bv;
    best_i[me] = bi;
    workgroupBarrier();
    if (me == 0u) {
        var m = 0.0;
        var id = NONE;
        for (var j = 0u; j < WG; j++) {
            if (best_i[j] != NONE && (id == NONE || best_v[j] > m)) { m = best_v[j]; id = best_i[j]; }
        }
        found_max = m;
        found_id = id;
        found_above = 0.0;
    }
    workgroupBarrier();
    row_max = found_max;
    let first = workgroupUniformLoad(&found_id);
    workgroupBarrier();
    return first;
}

// Whether row p's top-k can be found among the LM head's partial maxima: it has them (no mask;
// edits' runs refreshed) and its top-k runs fit in the pool.
fn from_partials(p: Row) -> bool {
    return P.group > 0u && !MASKED && p.temperature > 0.0 && p.top_k > 0u && p.top_k < P.vocab && p.top_k * P.group <= CAP;
}

// Whether row r's top-p cut, or without it its draw, may be found among the runs with the
// largest maxima: it has partial maxima and no mask, no top-k or typical-p cut comes
// first, and the sums are at the temperature the row's mass is needed at (1 for top-p, the
// row's own for a draw without filters; a min-p floor alone needs no mass).
fn from_partial_mass(r: u32, p: Row) -> bool {
    let at = sums_temperature(r);
    var fits = at == p.temperature;
    if (p.top_p < 1.0) {
        fits = at == 1.0;
    } else if (p.min_p > 0.0) {
        fits = true;
    }
    return P.group > 0u && !MASKED && p.temperature > 0.0 && (p.top_k == 0u || p.top_k >= P.vocab) && p.typical_p >= 1.0 && fits;
}

// Invocation 0, after apply_edits on a row with partials: the maxima and sums of the runs the
// edits touched, again from the edited logits as the LM head computes them (matmul.wgsl's
// store_partials), so an edited row starts from its partials as an unedited one does.
fn refresh_runs(r: u32, p: Row) {
    for (var e = p.edit_start; e < p.edit_start + p.edit_count; e++) {
        refresh_run(r, edits[e].token);
    }
    if (p.count_input != 0u) { refresh_run(r, token_id(logit_row(r))); }
}

fn refresh_run(r: u32, token: u32) {
    if (token >= P.vocab) { return; }
    let runs = (P.vocab + P.group - 1u) / P.group;
    let j = token / P.group;
    let first = r * P.vocab + j * P.group;
    let n = min(P.group, P.vocab - j * P.group);
    var best = NO_LOGIT;
    for (var i = 0u; i < n; i++) {
        let v = logits[first + i];
        if (v > best || (v == best && bitcast<u32>(v) == 0u)) { best = v; }
    }
    let t = sums_temperature(r);
    var sum = 0.0;
    for (var i = 0u; i < n; i++) {
        let v = logits[first + i];
        if (v > NO_LOGIT) { sum += exp((v - best) / t); }
    }
    let at = P.partials + r * 2u * runs + j;
    logits[at] = best;
    logits[at + runs] = sum;
}

// Points base / span at row r's partial maxima (the sums follow them); returns how many.
fn runs_of(r: u32) -> u32 {
    let runs = (P.vocab + P.group - 1u) / P.group;
    base = P.partials + r * 2u * runs;
    span = runs;
    return runs;
}

// After a cut over the runs' maxima: the logits of the runs it keeps into the pool, in id
// order; base / span back on the row, the cut cleared. Returns the first logit equal to
// row_max in `run` (the first run holding the largest maximum): the greedy choice.
fn gather_runs(r: u32, runs: u32, run: u32) -> u32 {
    slice(runs);
    var n = 0u;
    for (var j = lo; j < hi; j++) {
        if (kept(j, logits[base + j], false)) { n += min(P.group, P.vocab - j * P.group); }
    }
    rank_counts(n);
    var at = ties[me];
    let row = r * P.vocab;
    for (var j = lo; j < hi; j++) {
        if (kept(j, logits[base + j], false)) {
            for (var i = j * P.group; i < min(j * P.group + P.group, P.vocab); i++) {
                cval[at] = logits[row + i];
                cid[at] = i;
                at += 1u;
            }
        }
    }
    pooled = workgroupUniformLoad(&n_left);
    pool = true;
    if (me == 0u) { pool_state = 1u; }
    base = row;
    span = P.vocab;
    cut_key = 0u;
    cut_id = NONE;
    return first_in_run(row, run);
}

// The first logit equal to row_max in `run` of the row at `row` (the first run holding the
// largest maximum): the greedy choice, as the first largest of the whole row.
fn first_in_run(row: u32, run: u32) -> u32 {
    if (me == 0u) {
        var first = NONE;
        for (var i = run * P.group; i < min(run * P.group + P.group, P.vocab); i++) {
            if (logits[row + i] == row_max) { first = i; break; }
        }
        found_id = first;
    }
    let greedy = workgroupUniformLoad(&found_id);
    workgroupBarrier();
    return greedy;
}

// A greedy row's choice from its partial maxima: the first run with the largest, then its
// first logit equal to that. base / span back on the row.
fn greedy_from_runs(r: u32) -> u32 {
    runs_of(r);
    let run = first_largest();
    base = r * P.vocab;
    span = P.vocab;
    if (run == NONE) { return NONE; }
    return first_in_run(base, run);
}

// The k runs with the largest maxima (k-th by the same order: value descending, run ascending,
// so every logit of the row's top-k lies in one of them) into the pool. Returns the greedy
// choice.
fn pool_top_runs(r: u32, k: u32) -> u32 {
    let runs = runs_of(r);
    let run = first_largest();
    if (run == NONE) { return NONE; }
    find_cut(0u, f32(k), true, false, false);
    return gather_runs(r, runs, run);
}

// The CAP / group runs with the largest maxima into the pool, and the top-p cut (or the draw,
// without filters) among them against the whole row's mass at the sums temperature T, the runs'
// sums scaled to the row's largest logit (by exp((run max - max) / T)). Kept (`pool_state`)
// where the cut lies above the last pooled run's maximum, so above every logit left out; else
// the pool is dropped and the row read whole. With a min-p floor alone there is no cut here:
// the pool stands where no run left out reaches the floor, and the draw that follows weighs
// the pool alone. Returns the greedy choice.
fn pool_mass(r: u32, p: Row) -> u32 {
    let runs = runs_of(r);
    let run = first_largest();
    if (run == NONE) { return NONE; }
    let floor_only = p.top_p >= 1.0 && p.min_p > 0.0;
    var mass = 0.0;
    if (!floor_only) {
        slice(runs);
        let at = sums_temperature(r);
        var z = 0.0;
        for (var j = lo; j < hi; j++) {
            let m = logits[base + j];
            if (m > NO_LOGIT) { z += exp((m - row_max) / at) * logits[base + runs + j]; }
        }
        partial[me] = z;
        workgroupBarrier();
        if (me == 0u) {
            var s = 0.0;
            for (var j = 0u; j < WG; j++) { s += partial[j]; }
            row_mass = s;
        }
        mass = workgroupUniformLoad(&row_mass);
    }
    find_cut(0u, f32(CAP / P.group), true, false, false);
    // Keys read uniformly: whether the pool stays decides which cuts every invocation runs.
    let edge = workgroupUniformLoad(&found_key);
    let greedy = gather_runs(r, runs, run);
    temperature = p.temperature;
    var state = 1u | (1u << 1u);
    var kept_above = true;
    if (p.top_p < 1.0) {
        find_cut(1u, p.top_p * mass, true, false, false);
    } else if (floor_only) {
        // Nothing left out reaches the floor (with a margin for exp's rounding): the draw
        // then weighs only pooled candidates, against their own total.
        state = 1u;
        kept_above = exp(key_value(edge) - row_max) < 0.99 * p.min_p;
    } else {
        find_cut(2u, p.u * mass, true, true, false);
        state = 1u | (2u << 1u);
    }
    if (!floor_only) { kept_above = workgroupUniformLoad(&found_key) > edge; }
    if (!kept_above) {
        pool = false;
        state = 0u;
        cut_key = 0u;
        cut_id = NONE;
    }
    if (me == 0u) { pool_state = state; }
    return greedy;
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x;
    if (r >= n_logit_rows()) { return; }
    let p = rows[r];
    me = lid;
    base = r * P.vocab;
    span = P.vocab;
    pool = false;
    if (lid == 0u) { pool_state = 0u; }
    cut_key = 0u;
    cut_id = NONE;
    typ_key = 0u;
    typ_id = NONE;
    typical_on = false;
    // The greedy choice (greedy rows in a sampled batch), and the max the weights are taken around.
    var greedy = NONE;
    if (p.edit_count > 0u || p.count_input != 0u) {
        if (lid == 0u) {
            apply_edits(r, p);
            if (P.group > 0u && !MASKED) { refresh_runs(r, p); }
        }
        storageBarrier();
    }
    if (from_partials(p)) {
        greedy = pool_top_runs(r, p.top_k);
    } else if (from_partial_mass(r, p)) {
        greedy = pool_mass(r, p);
    } else if (P.group > 0u && !MASKED && p.temperature <= 0.0) {
        greedy = greedy_from_runs(r);
    } else {
        slice(P.vocab);
        if (MASKED) {
            for (var i = lo; i < hi; i++) {
                if (((mask[r * P.mask_words + i / 32u] >> (i % 32u)) & 1u) == 0u) { logits[base + i] = FORBIDDEN; }
            }
            storageBarrier();
        }
        greedy = first_largest();
    }
    // A row where no logit counts has no token to draw either: NONE, which the engine reports.
    if (p.temperature <= 0.0 || greedy == NONE) {
        if (lid == 0u) {
            result[r] = greedy;
            if (greedy != NONE) { chosen[r] = unedited(r, p, greedy); }
        }
        return;
    }
    temperature = p.temperature;
    floor_w = p.min_p;
    typical_on = p.typical_p < 1.0;
    if (p.top_k > 0u && p.top_k < P.vocab) {
        find_cut(0u, f32(p.top_k), true, false, false);
    }
    if (p.typical_p < 1.0) {
        typical(p.typical_p);
    }
    let settled = workgroupUniformLoad(&pool_state) >> 1u;
    if (p.top_p < 1.0 && settled == 0u) {
        find_cut(1u, p.top_p, false, false, false);
    }
    if (settled < 2u) {
        find_cut(2u, p.u, false, true, p.min_p > 0.0);
    }
    // No id only if the sums were not numbers (a NaN logit): fall back to the greedy choice.
    if (lid == 0u) {
        let token = select(found_id, greedy, found_id == NONE);
        result[r] = token;
        chosen[r] = unedited(r, p, token);
    }
}
