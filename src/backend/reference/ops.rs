//! f32 building blocks of the reference forward pass (and the CPU backend's). Plain loops
//! written so the compiler vectorizes them; matmul splits output rows across threads natively.
//! Transcendentals come from `libm`, the same code on every target, so a forward gives the same
//! bits natively and in wasm (8-bit activations turn one-ulp differences into different tokens).

/// `y[t][o] = sum_i x[t][i] * w[o][i]` for `x: [n][k]`, `w: [m][k]` (GGUF row-major), `y: [n][m]`.
pub fn matmul(y: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, m: usize) {
    assert!(x.len() == n * k && w.len() == m * k && y.len() == n * m, "matmul shape mismatch");
    if n == 0 {
        return;
    }
    // Spawning threads costs ~20 us each: small products (a decode step's layer matrices) run
    // on the calling thread.
    let threads = if n * m * k < 4 << 20 { 1 } else { thread_count().min(m.div_ceil(64)).max(1) };
    if threads == 1 {
        matmul_rows(y, x, w, k, m, 0..m);
        return;
    }
    // Each thread owns a contiguous range of output rows and fills a private [n][rows] tile.
    let per = m.div_ceil(threads);
    let tiles: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let rows = (i * per)..((i + 1) * per).min(m);
                s.spawn(move || {
                    let mut tile = vec![0f32; n * rows.len()];
                    matmul_rows(&mut tile, x, w, k, rows.len(), rows.clone());
                    (rows.start, tile)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("matmul worker panicked")).collect()
    });
    for (start, tile) in tiles {
        let width = tile.len() / n;
        for t in 0..n {
            y[t * m + start..t * m + start + width].copy_from_slice(&tile[t * width..(t + 1) * width]);
        }
    }
}

/// Output rows `rows` of the product into `y: [n][stride]`, column `o - rows.start`.
fn matmul_rows(y: &mut [f32], x: &[f32], w: &[f32], k: usize, stride: usize, rows: std::ops::Range<usize>) {
    let start = rows.start;
    for o in rows {
        let wrow = &w[o * k..(o + 1) * k];
        for (t, xrow) in x.chunks_exact(k).enumerate() {
            y[t * stride + o - start] = dot(xrow, wrow);
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn thread_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16)
}

#[cfg(target_arch = "wasm32")]
fn thread_count() -> usize {
    1
}

/// Dot product with 8 independent accumulators (vectorizes; the order is fixed, so results are
/// reproducible). On x86_64 with AVX the same code runs as one 8-lane register: the same
/// operations in the same order (Rust never fuses a multiply and an add), so the same bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: AVX was detected on this CPU.
        return unsafe { dot_avx(a, b) };
    }
    dot8(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    dot8(a, b)
}

/// [`dot`] for callers compiled for the target's vector width themselves (inlined there).
#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out = x / rms(x) * w` for each row of `x: [n][w.len()]`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (o, xr) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        let scale = inv_rms(xr, eps);
        for ((o, x), w) in o.iter_mut().zip(xr).zip(w) {
            *o = x * scale * w;
        }
    }
}

/// `rmsnorm` in place, e.g. per head of `[n][n_heads][head_dim]` with a `[head_dim]` weight.
pub fn rmsnorm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let scale = inv_rms(xr, eps);
        for (x, w) in xr.iter_mut().zip(w) {
            *x = *x * scale * w;
        }
    }
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// Rotates each head of `x: [n_heads][head_dim]` to position `pos` (already multiplied by a linear
/// RoPE scaling factor, if any).
pub fn rope(x: &mut [f32], head_dim: usize, pos: f64, base: f32, style: crate::model::RopeStyle) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let freq = libm::pow(base as f64, -2.0 * i as f64 / head_dim as f64);
            let (sin, cos) = libm::sincos(pos * freq);
            let (sin, cos) = (sin as f32, cos as f32);
            let (a, b) = match style {
                crate::model::RopeStyle::Normal => (2 * i, 2 * i + 1),
                crate::model::RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + libm::expf(-*g)) * u;
    }
}

/// `gate = gelu(gate) * up`, GELU in its tanh approximation (ggml's `gelu`, Gemma's
/// `gelu_pytorch_tanh`).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x))) * u;
    }
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Negative log-likelihood `-ln softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    lse - logits[target] as f64
}
