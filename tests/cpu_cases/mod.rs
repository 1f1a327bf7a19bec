//! CPU kernel cases shared by the native tests and the browser tests: for every GGUF type, a
//! random matrix repacked for the CPU backend, multiplied by random activations on every kernel
//! target this machine has. SIMD must equal scalar bit for bit (same integer sums, same f32
//! steps); scalar must equal the exact dequantization times f32 within the error bound of 8-bit
//! activations.

use bytemuck::Zeroable;
use ferrolm::backend::cpu::kernels::{quantize_row, ActBlock, Target, QK};
use ferrolm::backend::cpu::weights::QMatrix;
use ferrolm::gguf::{dequantize, GgmlType, TensorInfo};
use half::{bf16, f16};

/// A deterministic generator (xorshift).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows` rows of `cols` values of type `ty` with random values and plausible scales.
pub fn random_tensor(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = rows * cols / ty.block_size() as usize;
    let size = ty.type_size() as usize;
    let mut out = Vec::with_capacity(n_blocks * size);
    for _ in 0..n_blocks {
        let mut b: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
        let scale = |rng: &mut Rng, s: f32| f16::from_f32(rng.f() * s).to_le_bytes();
        match ty {
            GgmlType::F32 => b.copy_from_slice(&rng.f().to_le_bytes()),
            GgmlType::F16 => b.copy_from_slice(&f16::from_f32(rng.f()).to_le_bytes()),
            GgmlType::BF16 => b.copy_from_slice(&bf16::from_f32(rng.f()).to_le_bytes()),
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => b[0..2].copy_from_slice(&scale(rng, 0.05)),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K => {
                b[0..2].copy_from_slice(&scale(rng, 0.05));
                b[2..4].copy_from_slice(&scale(rng, 0.05));
            }
            GgmlType::Q6_K => b[208..210].copy_from_slice(&scale(rng, 0.002)),
            other => panic!("{other} is not a supported type"),
        }
        out.extend(b);
    }
    out
}

pub const TYPES: [GgmlType; 10] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];

/// Checks every type on every target with `tokens` activation rows; returns lines describing
/// what was compared.
pub fn check_cpu_kernels(tokens: usize) -> Vec<String> {
    let mut report = vec![check_quantize_edges(), check_stacked(tokens)];
    // 70 rows: a partial group of four is padded, and a product of up to 8 tokens in wasm sums
    // sets of four groups together, up to 4 tokens at a time (here four full sets and a ragged
    // one of two); 9 tokens take tiles of 4 over chunks of groups.
    let (rows, cols) = (70, 512);
    let mut rng = Rng::new(0x5eed ^ tokens as u64);
    for ty in TYPES {
        let bytes = random_tensor(ty, rows, cols, &mut rng);
        let info = TensorInfo { name: format!("test.{ty}"), dims: vec![cols as u64, rows as u64], ty, offset: 0, n_bytes: bytes.len() as u64 };
        let m = QMatrix::load(&bytes[..], &info).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let mut w = vec![0f32; rows * cols];
        dequantize(ty, &bytes, &mut w).unwrap();
        // Activations with one large value per row, as real ones have.
        let x: Vec<f32> = (0..tokens * cols).map(|i| if i % 97 == 5 { 8.0 * rng.f() } else { rng.f() }).collect();

        // The embedding lookup's rows: the dequantized rows, within the f16 scales' rounding
        // (K-quants' products of two scales) and f32 rounding.
        let mut row = vec![0f32; cols];
        for r in [0, 1, 35, rows - 1] {
            m.row(r, &mut row);
            let want = &w[r * cols..(r + 1) * cols];
            let top = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = row.iter().zip(want).fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(worst <= 1e-3 * top + 1e-6, "{ty}: row {r} differs from its dequantization by {worst} (largest value {top})");
        }

        let scalar = m.matmul_alone(Target::Scalar, &x);
        for target in Target::available().into_iter().skip(1) {
            let y = m.matmul_alone(target, &x);
            let same = y.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty}: {} differs from scalar: {:?} vs {:?}", target.name(), &y[..4], &scalar[..4]);
            report.push(format!("{ty}: {} == scalar bit for bit ({tokens} tokens)", target.name()));
        }

        let mut worst = 0f64;
        for t in 0..tokens {
            let xt = &x[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                let magnitude: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let bound = if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                    1e-5 * magnitude + 1e-6
                } else {
                    // Each activation is off by at most half a step (its block's max / 254); an
                    // f16 scale by 2^-11 relative (K-quants).
                    let act: f64 = wr.chunks(QK).zip(xt.chunks(QK)).map(|(wb, xb)| wb.iter().map(|v| v.abs() as f64).sum::<f64>() * xb.iter().fold(0f64, |a, v| a.max(v.abs() as f64)) / 254.0).sum();
                    1.0001 * act + 1e-3 * magnitude + 1e-6
                };
                let err = (scalar[t * rows + r] as f64 - exact).abs();
                assert!(err <= bound, "{ty}: token {t} row {r}: {} vs exact {exact} (error {err:.3e} > bound {bound:.3e})", scalar[t * rows + r]);
                worst = worst.max(err / bound);
            }
        }
        report.push(format!("{ty}: scalar within {:.0}% of the 8-bit error bound of the f32 product", worst * 100.0));
    }
    report
}

/// Matrices stacked into one (the CPU backend's q|k|v) give each part's products bit for bit,
/// token by token, on every target; formats that differ, or a part that is not whole groups of
/// four rows, are not stacked.
fn check_stacked(tokens: usize) -> String {
    let cols = 256;
    let mut rng = Rng::new(0x57ac ^ tokens as u64);
    let mut load = |ty: GgmlType, rows: usize| {
        let bytes = random_tensor(ty, rows, cols, &mut rng);
        QMatrix::load(&bytes[..], &TensorInfo { name: format!("stack.{ty}"), dims: vec![cols as u64, rows as u64], ty, offset: 0, n_bytes: bytes.len() as u64 }).unwrap()
    };
    let x: Vec<f32> = (0..tokens * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
    for ty in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let parts = [load(ty, 64), load(ty, 32), load(ty, 32)];
        let stacked = QMatrix::stack(&[&parts[0], &parts[1], &parts[2]]).unwrap_or_else(|| panic!("{ty} parts were not stacked"));
        assert_eq!((stacked.rows, stacked.bytes()), (128, parts.iter().map(|m| m.bytes()).sum()));
        for target in Target::available() {
            let (all, each) = (stacked.matmul_alone(target, &x), parts.each_ref().map(|m| m.matmul_alone(target, &x)));
            for t in 0..tokens {
                let want: Vec<u32> = each.iter().zip([64, 32, 32]).flat_map(|(y, rows)| y[t * rows..(t + 1) * rows].iter().map(|v| v.to_bits())).collect();
                let got: Vec<u32> = all[t * 128..(t + 1) * 128].iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{ty} on {}: token {t}", target.name());
            }
        }
    }
    let (q4, q8, ragged) = (load(GgmlType::Q4_0, 32), load(GgmlType::Q8_0, 32), load(GgmlType::Q4_0, 30));
    assert!(QMatrix::stack(&[&q4, &q8]).is_none() && QMatrix::stack(&[&q4, &ragged]).is_none(), "mismatched parts were stacked");
    format!("stacked matrices == their parts bit for bit ({tokens} tokens)")
}

/// Every target quantizes activations to the same bytes and scales as the portable code, on
/// edge blocks too: zeros, exact halves, NaN and infinities, magnitudes so small that 1 / scale
/// overflows, and ordinary values.
fn check_quantize_edges() -> String {
    let mut x = Vec::new();
    x.extend([0f32; QK]);
    x.extend((0..QK).map(|i| (i as f32 - 16.0) * 0.5));
    x.extend((0..QK).map(|i| if i == 3 { f32::NAN } else { i as f32 * 0.1 - 1.0 }));
    x.extend((0..QK).map(|i| match i {
        0 => f32::INFINITY,
        1 => f32::NEG_INFINITY,
        _ => i as f32,
    }));
    x.extend((0..QK).map(|i| (i as f32 - 15.0) * 1e-44));
    x.extend((0..QK).map(|i| ((i * 7919 % 101) as f32 - 50.0) * 0.37));
    let mut want = vec![ActBlock::zeroed(); x.len() / QK];
    quantize_row(&x, &mut want);
    let mut names = Vec::new();
    for target in Target::available() {
        let mut got = vec![ActBlock::zeroed(); x.len() / QK];
        target.quantize_row(&x, &mut got);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.qs, w.qs, "{}: activation block {b}", target.name());
            assert_eq!((g.d.to_bits(), g.dsum.to_bits()), (w.d.to_bits(), w.dsum.to_bits()), "{}: activation block {b}", target.name());
        }
        names.push(target.name());
    }
    format!("activation quantization: {} == portable on edge blocks", names.join(", "))
}
