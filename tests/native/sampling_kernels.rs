//! The per-logit-row GPU kernels against the CPU's choices, natively (lavapipe on CI): the
//! argmax (over the whole row and over the LM head's partial maxima), the sample kernel and the
//! top-k with its log-sum-exp, on hand-made and random rows.

use crate::kernel_cases::random;
use crate::kernels::{random_blocks, Harness};
use ferrolm::backend::webgpu::kernels::{logit_partial_group, LogitPartials};
use ferrolm::backend::webgpu::{sums_temperature, GpuOptions};
use ferrolm::gguf::GgmlType;
use ferrolm::sample::RowSampling;

/// The greedy LM head on GPUs (matmul.wgsl's PARTIALS: each workgroup's largest logit and sum,
/// at the row's sums temperature) and the argmax over those maxima: the first largest logit, as
/// the CPU's argmax of the same logits.
/// Rows repeat every 37, so each maximum recurs in later workgroups and only the first may win;
/// then hand-made rows: ties inside and across groups, NaN, -inf, nothing that counts.
#[test]
fn argmax_over_lm_head_partials_matches_cpu() {
    let h = Harness::with_shapes(GpuOptions::default(), Some(false));
    let vocab = 1000usize;
    for k in [160usize, 640] {
        let group = logit_partial_group(false, k as u32).unwrap();
        let n_partials = vocab.div_ceil(group as usize);
        let base = random_blocks(GgmlType::Q8_0, 37, k, 40 + k as u64);
        let row_bytes = base.len() / 37;
        let data: Vec<u8> = (0..vocab).flat_map(|r| base[(r % 37) * row_bytes..][..row_bytes].to_vec()).collect();
        // Whole, and in parts of 300 rows' bytes (rounded down to 256 rows, so each part starts
        // where a workgroup does and keeps its partial maxima).
        let whole = h.upload(1 << 20, "lm head", GgmlType::Q8_0, &data, vocab, k, true);
        let split = h.upload(300 * (k as u64 / 32) * 36, "lm head", GgmlType::Q8_0, &data, vocab, k, true);
        assert_eq!(split.parts.iter().map(|p| p.row0).collect::<Vec<_>>(), [0, 256, 512, 768]);
        // One token a workgroup (decode), 4 (batched decode) and 8 (prefill).
        for (w, n) in [(&whole, 1usize), (&whole, 3), (&whole, 6), (&whole, 11), (&split, 1), (&split, 6)] {
            let x = random(n * k, 60 + n as u64);
            let partials = LogitPartials { group, offset: (n * vocab) as u32 };
            let (xb, lb, rb) = (h.buffer(&x), h.buffer(&vec![0f32; n * (vocab + 2 * n_partials)]), h.buffer(&vec![0f32; n]));
            let mut ops = h.kernels.lm_head_partials(w, &xb, None, &lb, vocab as u32, partials, None).expect("parts that start at workgroups take partials");
            let unused = h.buffer(&vec![0f32; n * vocab.div_ceil(32)]);
            ops.push(h.kernels.argmax(&lb, &rb, &unused, vocab as u32, false, Some(partials)));
            // Rows that draw at a temperature alone take their sums there; greedy and top-p
            // rows at 1.
            let sampling: Vec<RowSampling> = (0..n)
                .map(|t| match t % 3 {
                    0 => RowSampling::GREEDY,
                    1 => RowSampling { temperature: 0.7, ..RowSampling::GREEDY },
                    _ => RowSampling { temperature: 1.6, top_p: 0.9, ..RowSampling::GREEDY },
                })
                .collect();
            let got: Vec<u32> = h.run_sampled(&ops, &vec![0; n], &sampling, &rb).iter().map(|v| v.to_bits()).collect();
            let logits = h.read(&lb);
            let want: Vec<u32> = logits[..n * vocab].chunks(vocab).map(ferrolm::sample::argmax).collect();
            assert_eq!(got, want, "k={k} n={n} parts={}", w.parts.len());
            // The maxima exactly, the sums of exp((logit - maximum) / T) up to f32 rounding.
            for (t, row) in logits[..n * vocab].chunks(vocab).enumerate() {
                let at = sums_temperature(&sampling[t]);
                assert_eq!(at, [1.0, 0.7, 1.0][t % 3]);
                let (gpu, cpu) = (&logits[n * vocab + t * 2 * n_partials..][..2 * n_partials], partials_at(row, group as usize, at));
                assert_eq!(gpu[..n_partials], cpu[..n_partials], "k={k} n={n} row {t}: maxima");
                assert!(gpu[n_partials..].iter().zip(&cpu[n_partials..]).all(|(a, b)| (a - b).abs() <= 1e-5 * b), "k={k} n={n} row {t}: sums");
            }
            assert!(got.iter().all(|&t| t < 37), "k={k} n={n} parts={}: a later copy of the largest row won: {got:?}", w.parts.len());

            // Under grammar masks (about a third of the tokens allowed, row 2 none): the head
            // writes forbidden logits as -3.4e38, and the same argmax gives the CPU's masked
            // choice (no token where nothing is allowed).
            let words = vocab.div_ceil(32);
            let mut rng = crate::cpu_cases::Rng::new(7 * (k + n) as u64);
            let mut masks: Vec<u32> = (0..n * words).map(|_| (rng.next() & rng.next()) as u32).collect();
            if n > 2 {
                masks[2 * words..3 * words].fill(0);
            }
            let mb = h.words(&masks);
            let mut ops = h.kernels.lm_head_partials(w, &xb, None, &lb, vocab as u32, partials, Some(&mb)).unwrap();
            ops.push(h.kernels.argmax(&lb, &rb, &unused, vocab as u32, false, Some(partials)));
            let got: Vec<u32> = h.run_sampled(&ops, &vec![0; n], &sampling, &rb).iter().map(|v| v.to_bits()).collect();
            let masked = h.read(&lb);
            let allowed = |t: usize, i: usize| masks[t * words + i / 32] >> (i % 32) & 1 == 1;
            let want: Vec<f32> = (0..n * vocab).map(|j| if allowed(j / vocab, j % vocab) { logits[j] } else { -3.4e38 }).collect();
            assert_eq!(masked[..n * vocab], want[..], "k={k} n={n}: masked logits");
            let want: Vec<u32> = want.chunks(vocab).map(ferrolm::sample::argmax).collect();
            assert_eq!(got, want, "k={k} n={n} parts={}: masked argmax", w.parts.len());
            assert!(n <= 2 || got[2] == u32::MAX, "a row whose mask allows nothing has no token");
            for (t, row) in masked[..n * vocab].chunks(vocab).enumerate() {
                let (gpu, cpu) = (&masked[n * vocab + t * 2 * n_partials..][..2 * n_partials], partials_at(row, group as usize, sums_temperature(&sampling[t])));
                assert_eq!(gpu[..n_partials], cpu[..n_partials], "k={k} n={n} row {t}: masked maxima");
                assert!(gpu[n_partials..].iter().zip(&cpu[n_partials..]).all(|(a, b)| (a - b).abs() <= 1e-5 * b), "k={k} n={n} row {t}: masked sums");
            }
        }
    }

    // Hand-made rows and their partial maxima as the LM head writes them.
    let (group, n) = (16usize, 5);
    let mut logits = random(n * vocab, 70);
    logits[50] = 9.0; // row 0: a tie inside one group and across groups
    logits[52] = 9.0;
    logits[vocab - 1] = 9.0;
    logits[vocab + 3] = f32::NAN; // row 1: NaN never counts
    logits[vocab + 700] = 8.0;
    logits[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY); // row 2: nothing counts
    logits[3 * vocab..4 * vocab].fill(-1.0); // row 3: all equal
    logits[4 * vocab + 999] = 8.0; // row 4: the last logit, alone in a short last group
    let mut buffer = logits.clone();
    for row in logits.chunks(vocab) {
        buffer.extend(partials_of(row, group));
    }
    let (lb, rb) = (h.buffer(&buffer), h.buffer(&vec![0f32; n]));
    let unused = h.buffer(&vec![0f32; n * vocab.div_ceil(32)]);
    let partials = LogitPartials { group: group as u32, offset: (n * vocab) as u32 };
    let with = h.run(&[h.kernels.argmax(&lb, &rb, &unused, vocab as u32, false, Some(partials))], &vec![0; n], &rb);
    let scan = h.run(&[h.kernels.argmax(&lb, &rb, &unused, vocab as u32, false, None)], &vec![0; n], &rb);
    let (with, scan): (Vec<u32>, Vec<u32>) = (with.iter().map(|v| v.to_bits()).collect(), scan.iter().map(|v| v.to_bits()).collect());
    assert_eq!(with, scan, "argmax from partial maxima vs the whole row");
    assert_eq!(with, [50, 700, u32::MAX, 0, 999]);
    let cpu: Vec<u32> = logits.chunks(vocab).map(ferrolm::sample::argmax).collect();
    assert_eq!(with, cpu, "the GPU's argmax vs the CPU's");
}

/// A logit row's partial maxima and sums as the LM head writes them (matmul.wgsl's PARTIALS): the
/// largest of each run of `group` logits (NaN and -3.4e38 or less never count; +0.0 over -0.0),
/// then each run's sum of exp(logit - largest).
fn partials_of(row: &[f32], group: usize) -> Vec<f32> {
    partials_at(row, group, 1.0)
}

/// [`partials_of`] with the sums at a temperature: exp((logit - largest) / t).
fn partials_at(row: &[f32], group: usize, t: f32) -> Vec<f32> {
    let larger = |m: f32, v: f32| if v > m || (v == m && v.to_bits() == 0) { v } else { m };
    let maxima: Vec<f32> = row.chunks(group).map(|run| run.iter().copied().fold(-3.4e38f32, larger)).collect();
    let sums = row.chunks(group).zip(&maxima).map(|(run, &m)| run.iter().filter(|&&v| v > -3.4e38).map(|&v| ((v - m) / t).exp()).sum());
    maxima.iter().copied().chain(sums).collect()
}

/// Rows with no logit that counts (all -inf, all NaN) have no token to choose: the sampling
/// kernel says NO_TOKEN where the CPU's choice does, greedy or drawn, also where a mask allows
/// no token, and a NaN first logit does not win a greedy row.
#[test]
fn sampling_rows_with_no_token_to_choose() {
    use ferrolm::backend::webgpu::kernels::sample_rows;
    use ferrolm::sample::{Sampler, SamplingParams, NO_TOKEN};
    let h = Harness::new(GpuOptions::default());
    let vocab = 1000;
    let mut logits = random(3 * vocab, 5);
    logits[..vocab].fill(f32::NEG_INFINITY);
    logits[vocab..2 * vocab].fill(f32::NAN);
    (logits[2 * vocab], logits[2 * vocab + 600]) = (f32::NAN, 9.0);
    for temperature in [0.0, 0.8] {
        let mut sampler = Sampler::new(SamplingParams { temperature, seed: Some(1), ..SamplingParams::default() }, vocab).unwrap();
        let rows: Vec<_> = (0..3).map(|_| sampler.row(&[])).collect();
        let (gpu_rows, edits) = sample_rows(&rows);
        let (lb, pb, rb) = (h.buffer(&logits), h.buffer(bytemuck::cast_slice(&gpu_rows)), h.words(&[0; 3]));
        let eb = h.buffer(&bytemuck::cast_slice(&edits).iter().copied().chain([0.0; 4]).collect::<Vec<f32>>());
        let (cb, mb) = (h.buffer(&[0.0; 3]), h.words(&vec![u32::MAX; 3 * vocab.div_ceil(32)]));
        let got: Vec<u32> = h.run(&[h.kernels.sample(&lb, &rb, &pb, &eb, &cb, &mb, vocab as u32, false, None)], &[0; 3], &rb).iter().map(|v| v.to_bits()).collect();
        h.ctx.faults.check().unwrap();
        let cpu: Vec<u32> = rows.iter().zip(logits.chunks(vocab)).map(|(r, row)| r.choose(row, 0)).collect();
        assert_eq!(got[..2], [NO_TOKEN, NO_TOKEN], "temperature {temperature}");
        assert_eq!(cpu[..2], [NO_TOKEN, NO_TOKEN], "temperature {temperature}");
        if temperature == 0.0 {
            assert_eq!((got[2], cpu[2]), (600, 600));
        }
        // A grammar mask that allows nothing in the finite row: no token either (not a
        // forbidden one), as the CPU's choice from the row with every token at -inf.
        let mb = h.words(&vec![0; 3 * vocab.div_ceil(32)]);
        let got: Vec<u32> = h.run(&[h.kernels.sample(&lb, &rb, &pb, &eb, &cb, &mb, vocab as u32, true, None)], &[0; 3], &rb).iter().map(|v| v.to_bits()).collect();
        let cpu = rows[2].choose(&vec![f32::NEG_INFINITY; vocab], 0);
        assert_eq!((got, cpu), (vec![NO_TOKEN; 3], NO_TOKEN), "temperature {temperature}, nothing allowed");
    }
}

/// GPU top-64 with its log-sum-exp against the CPU's sorted selection: rows with ties across the
/// threshold (lowest ids must win), -inf, repeated maxima, +0.0 and -0.0 at the 64th place,
/// fewer than 64 finite logits, and vocabularies that are not a multiple of the workgroup or
/// smaller than k. Each again from the LM head's partial maxima and sums (runs of 4, 16 and 64
/// logits, computed here as matmul.wgsl writes them; the ties at the 64th maximum decide which
/// runs are read). The sums given are e times the true ones, so a row whose log-sum-exp came
/// from them reads 1 more: it must where the runs fit the kernel, and must not where it reads
/// the whole row (the large row's 64 runs of 64 are more than it holds; a 64th maximum that
/// does not count; sums taken at another temperature than 1).
#[test]
fn topk_matches_cpu_selection_exactly() {
    use ferrolm::backend::webgpu::kernels::{TOPK_MAX, TOPK_WORDS};
    use ferrolm::sample::TopLogits;
    let h = Harness::new(GpuOptions::default());
    for (vocab, group) in [1000usize, 49_152 + 7, 40].into_iter().flat_map(|v| [(v, 0), (v, 4), (v, 16), (v, 64)]) {
        let n = 6;
        let mut logits = random(n * vocab, vocab as u64);
        // Row 1: many exact ties at the boundary value, row 2: coarse values (ties everywhere)
        // and -inf, row 3: all equal, row 4: 63 positive logits 4 apart, then -0.0 and +0.0
        // in one run and +0.0 alone in the next (the 64th is the first +0.0), row 5: 10 finite
        // logits.
        for i in 0..vocab {
            if i % 3 == 0 {
                logits[vocab + i] = 0.5;
            }
            logits[2 * vocab + i] = (logits[2 * vocab + i] * 4.0).round();
            logits[3 * vocab + i] = -1.25;
            logits[4 * vocab + i] = if i % 4 == 0 && i < 252 { 1.0 + i as f32 } else { -1.0 };
            if i % 97 != 3 {
                logits[5 * vocab + i] = f32::NEG_INFINITY;
            }
        }
        if vocab > 256 {
            (logits[4 * vocab + 252], logits[4 * vocab + 253], logits[4 * vocab + 256]) = (-0.0, 0.0, 0.0);
        }
        logits[2 * vocab + 5] = f32::NEG_INFINITY;
        logits[10] = 9.0;
        logits[vocab - 1] = 9.0;
        let mut buffer = logits.clone();
        let mut from_sums = vec![false; n];
        let partials = (group > 0).then(|| {
            for (r, row) in logits.chunks(vocab).enumerate() {
                let p = partials_of(row, group);
                let runs = vocab.div_ceil(group);
                let mut maxima = p[..runs].to_vec();
                maxima.sort_by(|a, b| b.total_cmp(a));
                let taken = TOPK_MAX.min(vocab).min(runs);
                from_sums[r] = taken * group <= 1024 && maxima[taken - 1] > -3.4e38;
                buffer.extend(p[..runs].iter().copied().chain(p[runs..].iter().map(|s| s * std::f32::consts::E)));
            }
            LogitPartials { group: group as u32, offset: (n * vocab) as u32 }
        });
        let (lb, rb) = (h.buffer(&buffer), h.buffer(&vec![0f32; n * TOPK_WORDS]));
        let got = h.run(&[h.kernels.topk(&lb, &rb, vocab as u32, partials)], &vec![0; n], &rb);
        let words: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        for (r, row) in logits.chunks(vocab).enumerate() {
            let gpu = TopLogits::from_words(&words[r * TOPK_WORDS..][..TOPK_WORDS], TOPK_MAX);
            let cpu = TopLogits::from_logits(row, TOPK_MAX);
            assert_eq!(gpu.top, cpu.top, "vocab {vocab} group {group} row {r}");
            let want = cpu.lse + if from_sums[r] { 1.0 } else { 0.0 };
            assert!((gpu.lse - want).abs() <= 1e-5 * (1.0 + want.abs()), "vocab {vocab} group {group} row {r}: lse {} vs {want}", gpu.lse);
        }
        if group == 4 && vocab == 1000 {
            assert_eq!(from_sums, [true, true, true, true, true, false], "the rows' paths this test means to take");
            // Sums at another temperature (a sampled step's rows that draw at 0.7 alone) give no
            // log-sum-exp: every row reads the whole row.
            let sampling = vec![RowSampling { temperature: 0.7, ..RowSampling::GREEDY }; n];
            let got = h.run_sampled(&[h.kernels.topk(&lb, &rb, vocab as u32, partials)], &vec![0; n], &sampling, &rb);
            let words: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            for (r, row) in logits.chunks(vocab).enumerate() {
                let (gpu, cpu) = (TopLogits::from_words(&words[r * TOPK_WORDS..][..TOPK_WORDS], TOPK_MAX), TopLogits::from_logits(row, TOPK_MAX));
                assert_eq!(gpu.top, cpu.top, "row {r}, sums at 0.7");
                assert!((gpu.lse - cpu.lse).abs() <= 1e-5 * (1.0 + cpu.lse.abs()), "row {r}, sums at 0.7: lse {} vs {}", gpu.lse, cpu.lse);
            }
        }
    }
}

/// The GPU's sampled choice (sample.wgsl) against the CPU's (`RowSampling::choose`, f64 sums) for
/// the same rows from the sampler (uniform numbers, edits): temperature alone, top-k beyond the
/// 64 candidates, top-p, min-p and all together; logit bias (+5 and -inf) with repetition,
/// frequency and presence penalties over a window that holds the row's input token or not;
/// greedy rows with and without penalties; peaked and flat rows, ties at the cuts, -inf, and
/// vocabularies that are not a multiple of the workgroup or smaller than it. Each unmasked set
/// again with the LM head's partial maxima and sums (runs of 4 and 16 logits, computed here as
/// matmul.wgsl writes them): top-k rows whose runs fit in workgroup memory take their top-k
/// from those (ties across runs at the k-th maximum; top-k 192 fills it); top-p rows and
/// draws at a temperature without filters look among the largest runs against the row's mass
/// (the sums at temperature 1 for top-p, at the row's temperature for such draws, as the
/// step's batch says; peaked rows find their cut there, flat ones read the whole row), and so
/// do min-p floors alone (drawn among those runs where nothing left out reaches the floor);
/// rows with edits (bias, penalties) take those paths too, from the partials of the runs the
/// edits touched computed again, and greedy rows with penalties take the first largest from
/// the maxima; the others read the row. The two sum in
/// different precisions, so a draw within ~1e-7 of a boundary may differ (among thousands of
/// tied low logits, one of these does): such a token must still be where f32 sums put u.
#[test]
fn sampling_matches_cpu_choice() {
    use ferrolm::backend::webgpu::kernels::sample_rows;
    use ferrolm::sample::{Sampler, SamplingParams};
    let h = Harness::new(GpuOptions::default());
    let plain = |temperature, top_k, top_p, min_p| SamplingParams { temperature, top_k, top_p, min_p, ..SamplingParams::default() };
    let penalized = |temperature, bias: Vec<(u32, f32)>| SamplingParams {
        temperature,
        repeat_penalty: 1.3,
        frequency_penalty: 0.5,
        presence_penalty: 0.3,
        repeat_last_n: 24,
        logit_bias: bias,
        ..SamplingParams::default()
    };
    let typical = |temperature, top_k, typical_p, top_p, min_p| SamplingParams { temperature, top_k, typical_p, top_p, min_p, ..SamplingParams::default() };
    let (mut draws, mut near, mut worst, mut edited_draws) = (0, 0, 0f64, 0);
    for vocab in [1000usize, 49_152 + 7, 40] {
        let settings = [
            plain(1.0, 0, 1.0, 0.0),
            plain(0.7, 0, 0.9, 0.0),
            plain(1.3, 40, 0.95, 0.05),
            plain(0.5, 3000, 1.0, 0.0),
            plain(1.0, 0, 1.0, 0.1),
            plain(0.8, 100, 0.5, 0.0),
            plain(0.0, 0, 1.0, 0.0),
            penalized(0.0, Vec::new()),
            penalized(0.9, vec![(7, 5.0), (vocab as u32 - 1, f32::NEG_INFINITY), (7, -1.5)]),
            typical(1.0, 0, 0.9, 1.0, 0.0),
            typical(0.8, 300, 0.5, 0.9, 0.05),
            typical(0.9, 40, 0.7, 0.95, 0.02),
            plain(1.0, 192, 1.0, 0.0),
            plain(0.7, 0, 1.0, 0.0),
            plain(1.6, 0, 1.0, 0.0),
            plain(0.7, 0, 1.0, 0.05),
            SamplingParams { top_p: 0.9, ..penalized(0.8, Vec::new()) },
            SamplingParams { top_k: 40, ..penalized(1.0, vec![(7, 5.0), (11, f32::NEG_INFINITY)]) },
        ];
        // Rows: peaked (scaled), flat, coarse values (ties everywhere) with -inf, ties at the top,
        // and a largest logit of zero with -0 before +0 (the first wins, as float compares say).
        let rows = 5;
        let mut logits = random(rows * vocab, vocab as u64 + 1);
        for i in 0..vocab {
            logits[i] *= 12.0;
            logits[2 * vocab + i] = (logits[2 * vocab + i] * 4.0).round();
            if i % 5 == 0 {
                logits[3 * vocab + i] = 0.75;
            }
            logits[4 * vocab + i] = -logits[4 * vocab + i].abs() - 0.5;
        }
        logits[2 * vocab + 3] = f32::NEG_INFINITY;
        (logits[4 * vocab + 2], logits[4 * vocab + 5]) = (-0.0, 0.0);
        for (s, params) in settings.iter().enumerate() {
            let mut sampler = Sampler::new(SamplingParams { seed: Some(s as u64), ..params.clone() }, vocab).unwrap();
            // Each row drawn 6 times, each time after a different history: 30 logit rows.
            let per = 6;
            let (mut all, mut rows_sampling, mut inputs) = (Vec::new(), Vec::new(), Vec::new());
            for row in logits.chunks(vocab) {
                for d in 0..per {
                    // Multiples of 3 (mod vocab); on odd draws the input token 1 is new to the window.
                    let mut history: Vec<u32> = (0..30).map(|j| ((j * 13 + d * 7) % 17 * 3 % vocab) as u32).collect();
                    if d % 2 == 1 {
                        history[29] = 1;
                    }
                    all.extend_from_slice(row);
                    rows_sampling.push(sampler.row(&history[..29]));
                    inputs.push(history[29]);
                }
            }
            let (gpu_rows, edits) = sample_rows(&rows_sampling);
            // Unmasked, then with a grammar-like mask per row (a quarter of the tokens and the
            // row's largest logit forbidden), which the CPU applies as -inf.
            let words = vocab.div_ceil(32);
            let mut masks = vec![0u32; all.len() / vocab * words];
            let mut masked_rows = all.clone();
            for (i, (row, m)) in masked_rows.chunks_mut(vocab).zip(masks.chunks_mut(words)).enumerate() {
                let top = ferrolm::sample::argmax(row) as usize;
                for (t, l) in row.iter_mut().enumerate() {
                    if (t * 31 + i) % 4 != 0 && t != top {
                        m[t / 32] |= 1 << (t % 32);
                    } else {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            for (masked, group) in [(false, None), (true, None), (false, Some(4usize)), (false, Some(16))] {
                // The GPU gets the raw rows and the masks; the CPU's choice is from masked rows.
                let cpu_rows = if masked { &masked_rows } else { &all };
                let mut buffer = all.clone();
                let partials = group.map(|g| {
                    for (row, r) in all.chunks(vocab).zip(&rows_sampling) {
                        buffer.extend(partials_at(row, g, sums_temperature(r)));
                    }
                    LogitPartials { group: g as u32, offset: all.len() as u32 }
                });
                let (lb, pb, rb) = (h.buffer(&buffer), h.buffer(bytemuck::cast_slice(&gpu_rows)), h.words(&vec![u32::MAX; gpu_rows.len()]));
                let eb = h.buffer(&bytemuck::cast_slice(&edits).iter().copied().chain([0.0; 4]).collect::<Vec<f32>>());
                let (cb, mb) = (h.buffer(&vec![f32::NAN; gpu_rows.len()]), h.words(&masks));
                let got = h.run_sampled(&[h.kernels.sample(&lb, &rb, &pb, &eb, &cb, &mb, vocab as u32, masked, partials)], &inputs, &rows_sampling, &rb);
                h.ctx.faults.check().unwrap();
                // Each drawn token's logit before the row's edits (logprobs are of the model's
                // row), also where bias entries, the penalty window and the input token edit it.
                for ((r, (&token, &logit)), (row, &input)) in rows_sampling.iter().zip(got.iter().zip(&h.read(&cb))).zip(all.chunks(vocab).zip(&inputs)) {
                    let mut edited = row.to_vec();
                    r.edit(&mut edited, input);
                    let t = token.to_bits() as usize;
                    edited_draws += (edited[t] != row[t]) as usize;
                    assert_eq!(logit.to_bits(), row[t].to_bits(), "vocab {vocab}, masked {masked}: the drawn token {t}'s logit {logit} vs {} (edited {})", row[t], edited[t]);
                }
                for (i, ((r, row), &input)) in rows_sampling.iter().zip(cpu_rows.chunks(vocab)).zip(&inputs).enumerate() {
                    let (gpu, cpu) = (got[i].to_bits(), r.choose(row, input));
                    assert!(!masked || masks[i * words + gpu as usize / 32] >> (gpu % 32) & 1 == 1, "vocab {vocab} row {i}: GPU token {gpu} is forbidden");
                    draws += 1;
                    if gpu == cpu {
                        continue;
                    }
                    // Otherwise the GPU's token must be the one its f32 sums put u at: u within
                    // 1e-6 of the CPU's (f64) cumulative probability interval of that token.
                    let p = r.distribution(row, input);
                    let at =
                        p.iter().position(|x| x.0 == gpu && x.1 > 0.0).unwrap_or_else(|| panic!("vocab {vocab} row {i}, masked {masked}: GPU token {gpu} is not kept by the CPU's filters ({r:?})"));
                    let before: f64 = p[..at].iter().map(|x| x.1).sum();
                    let (lo, hi) = (before - 1e-6, before + p[at].1 + 1e-6);
                    assert!(r.temperature > 0.0 && lo <= r.u && r.u < hi, "vocab {vocab} row {i}, masked {masked}: GPU {gpu} covers [{lo}, {hi}), u {}; CPU {cpu} ({r:?})", r.u);
                    near += 1;
                    worst = worst.max((before - r.u).max(r.u - before - p[at].1));
                }
            }
        }
    }
    println!("{draws} draws, {near} not the CPU's token but within 1e-6 of its interval (u outside it by {worst:.1e} at most), {edited_draws} of edited logits");
    assert!(edited_draws > 0, "no drawn token's logit was edited");
    assert_eq!(draws, 3 * 18 * 30 * 4);
    assert!(near * 50 <= draws, "{near} of {draws} draws differ from the CPU's");
}
