//! Sampling against analytically filtered distributions, computed here independently of
//! `src/sampler.rs`: 20,000 seeded draws per setting must lie within a total-variation bound.

use ferrolm::sample::{logprobs, Sampler, SamplingParams};

const LOGITS: [f32; 12] = [2.0, 1.5, 1.4, 0.9, 0.3, 0.0, -0.2, -0.7, -1.0, -1.6, -2.5, -4.0];
const DRAWS: usize = 20_000;

fn softmax(l: &[(usize, f64)], t: f64) -> Vec<(usize, f64)> {
    let max = l.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| ((x.1 - max) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    l.iter().zip(e).map(|(x, v)| (x.0, v / s)).collect()
}

/// The reference chain: bias/penalties already folded into `l`; top-k, typical, top-p, min-p at
/// temperature 1; then temperature.
fn expected(l: &[f32], p: &SamplingParams) -> Vec<f64> {
    let mut c: Vec<(usize, f64)> = l.iter().enumerate().map(|(i, &v)| (i, v as f64)).collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 {
        c.truncate(p.top_k);
    }
    if p.typical_p < 1.0 {
        let q = softmax(&c, 1.0);
        let h: f64 = q.iter().map(|x| -x.1 * x.1.ln()).sum();
        let mut idx: Vec<usize> = (0..q.len()).collect();
        idx.sort_by(|&a, &b| (-q[a].1.ln() - h).abs().total_cmp(&(-q[b].1.ln() - h).abs()));
        let (mut mass, mut keep) = (0.0, Vec::new());
        for i in idx {
            mass += q[i].1;
            keep.push(c[i]);
            if mass >= p.typical_p as f64 {
                break;
            }
        }
        c = keep;
    }
    if p.top_p < 1.0 {
        let q = softmax(&c, 1.0);
        let (mut mass, mut keep) = (0.0, 0);
        for x in &q {
            mass += x.1;
            keep += 1;
            if mass >= p.top_p as f64 {
                break;
            }
        }
        c.truncate(keep);
    }
    if p.min_p > 0.0 {
        let q = softmax(&c, 1.0);
        let top = q.iter().map(|x| x.1).fold(0.0, f64::max);
        c.retain(|x| q.iter().find(|y| y.0 == x.0).unwrap().1 >= top * p.min_p as f64);
    }
    let mut out = vec![0.0; l.len()];
    for (i, q) in softmax(&c, p.temperature as f64) {
        out[i] = q;
    }
    out
}

/// Total variation between two distributions over the same tokens; a draw of a token the
/// analytic distribution gives no mass (outside the support) fails at once.
fn tv(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    if let Some(t) = (0..got.len()).find(|&t| got[t] > 0.0 && want[t] == 0.0) {
        panic!("token {t} was drawn ({:.4} of draws) but lies outside the support", got[t]);
    }
    got.iter().zip(want).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

fn empirical(p: &SamplingParams, history: &[u32]) -> Vec<f64> {
    let mut s = Sampler::new(SamplingParams { seed: Some(1234), ..p.clone() }, LOGITS.len()).unwrap();
    let mut counts = vec![0.0; LOGITS.len()];
    for _ in 0..DRAWS {
        counts[s.sample(&LOGITS, history) as usize] += 1.0;
    }
    counts.iter().map(|c| c / DRAWS as f64).collect()
}

#[test]
fn each_processor_and_combinations_match_the_analytic_distribution() {
    let base = SamplingParams { temperature: 1.0, ..Default::default() };
    let settings = vec![
        ("plain", base.clone()),
        ("temperature 0.6", SamplingParams { temperature: 0.6, ..base.clone() }),
        ("temperature 1.8", SamplingParams { temperature: 1.8, ..base.clone() }),
        ("top_k 3", SamplingParams { top_k: 3, ..base.clone() }),
        ("top_p 0.7", SamplingParams { top_p: 0.7, ..base.clone() }),
        ("min_p 0.2", SamplingParams { min_p: 0.2, ..base.clone() }),
        ("typical_p 0.6", SamplingParams { typical_p: 0.6, ..base.clone() }),
        ("top_k 6 + top_p 0.9 + temperature 0.7", SamplingParams { top_k: 6, top_p: 0.9, temperature: 0.7, ..base.clone() }),
        ("min_p 0.1 + top_p 0.95 + temperature 1.3", SamplingParams { min_p: 0.1, top_p: 0.95, temperature: 1.3, ..base.clone() }),
    ];
    for (name, p) in settings {
        let want = expected(&LOGITS, &p);
        let got = empirical(&p, &[]);
        let d = tv(&got, &want);
        println!("{name}: total variation {d:.4}");
        assert!(d < 0.025, "{name}: total variation {d} between samples and the analytic distribution");
    }
}

#[test]
fn bias_and_penalties_match_the_analytic_distribution() {
    let history = [0u32, 0, 1, 5];
    let p = SamplingParams { repeat_penalty: 1.3, presence_penalty: 0.4, frequency_penalty: 0.3, logit_bias: vec![(9, 3.0)], ..Default::default() };
    let mut l = LOGITS;
    l[9] += 3.0;
    for (t, n) in [(0usize, 2.0f32), (1, 1.0), (5, 1.0)] {
        l[t] = if l[t] > 0.0 { l[t] / 1.3 } else { l[t] * 1.3 };
        l[t] -= 0.3 * n + 0.4;
    }
    let d = tv(&empirical(&p, &history), &expected(&l, &p));
    assert!(d < 0.025, "total variation {d}");
}

#[test]
fn greedy_edge_cases() {
    let argmax = 0;
    for p in [SamplingParams::greedy(), SamplingParams { top_k: 1, temperature: 0.9, ..Default::default() }] {
        let mut s = Sampler::new(SamplingParams { seed: Some(7), ..p }, LOGITS.len()).unwrap();
        assert!((0..200).all(|_| s.sample(&LOGITS, &[]) == argmax));
    }
    assert!(SamplingParams::greedy().is_plain_greedy());
    // top_p = 1 and min_p = 0 change nothing: the same seed draws the same tokens.
    let plain = SamplingParams { seed: Some(3), ..Default::default() };
    let noop = SamplingParams { top_p: 1.0, min_p: 0.0, typical_p: 1.0, ..plain.clone() };
    let (mut a, mut b) = (Sampler::new(plain, 12).unwrap(), Sampler::new(noop, 12).unwrap());
    assert!((0..500).all(|_| a.sample(&LOGITS, &[]) == b.sample(&LOGITS, &[])));
}

#[test]
fn seeds_reproduce_and_differ() {
    let draw = |seed| {
        let mut s = Sampler::new(SamplingParams { seed: Some(seed), ..Default::default() }, 12).unwrap();
        (0..64).map(|_| s.sample(&LOGITS, &[])).collect::<Vec<_>>()
    };
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42), draw(43));
}

#[test]
fn invalid_options_name_the_option() {
    let cases = [
        (SamplingParams { temperature: -0.5, ..Default::default() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
        (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
        (SamplingParams { min_p: 1.5, ..Default::default() }, "min_p"),
        (SamplingParams { typical_p: 0.0, ..Default::default() }, "typical_p"),
        (SamplingParams { repeat_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
        (SamplingParams { presence_penalty: 3.0, ..Default::default() }, "presence_penalty"),
        (SamplingParams { logit_bias: vec![(12, 1.0)], ..Default::default() }, "logit_bias"),
    ];
    for (p, option) in cases {
        let err = Sampler::new(p, 12).err().unwrap().to_string();
        assert!(err.starts_with(&format!("invalid option {option}:")), "{err}");
    }
}

#[test]
fn logprobs_are_log_softmax() {
    let (chosen, top) = logprobs(&LOGITS, 1, 3);
    let lse = LOGITS.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
    assert!((chosen as f64 - (1.5 - lse)).abs() < 1e-5);
    assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(logprobs(&LOGITS, 0, 50).1.len(), 12);
}

/// Sampling from the top <= 64 candidates (what the GPU reads back) makes the same choices, RNG
/// draws included, as sampling from the full logits, whenever `top_needed` allows it.
#[test]
fn sampling_from_top_candidates_equals_full_logits() {
    use ferrolm::sample::TopLogits;
    let vocab = 5000;
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7919 % 1000) as f32 / 150.0) - 3.0 + if i % 97 == 0 { 2.0 } else { 0.0 }).collect();
    let cases = [
        SamplingParams { temperature: 0.8, top_k: 40, seed: Some(1), ..Default::default() },
        SamplingParams { temperature: 1.3, top_k: 64, top_p: 0.9, min_p: 0.05, seed: Some(2), ..Default::default() },
        SamplingParams { temperature: 0.7, top_k: 20, typical_p: 0.8, seed: Some(3), ..Default::default() },
        SamplingParams { temperature: 0.0, seed: Some(4), ..Default::default() },
    ];
    for params in cases {
        let mut full = Sampler::new(params.clone(), vocab).unwrap();
        let mut top = Sampler::new(params.clone(), vocab).unwrap();
        let k = top.top_needed(Some(5)).expect("these settings need only the top candidates");
        let cand = TopLogits::from_logits(&logits, k);
        for _ in 0..2000 {
            assert_eq!(top.sample_top(&cand), full.sample(&logits, &[]), "{params:?}");
        }
    }
    // Settings that need the whole vocabulary say so.
    let needs_all = [
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { top_k: 65, ..Default::default() },
        SamplingParams { top_k: 10, repeat_penalty: 1.1, ..Default::default() },
        SamplingParams { top_k: 10, logit_bias: vec![(3, 1.0)], ..Default::default() },
    ];
    for params in needs_all {
        assert_eq!(Sampler::new(params.clone(), vocab).unwrap().top_needed(None), None, "{params:?}");
    }
    // logprobs from the candidates equal the full-logits ones.
    let cand = TopLogits::from_logits(&logits, 20);
    let (lp, alts) = cand.logprobs(cand.top[3].0, 20);
    let (lp_full, alts_full) = ferrolm::sample::logprobs(&logits, cand.top[3].0, 20);
    assert!((lp - lp_full).abs() < 1e-5);
    assert_eq!(alts.iter().map(|a| a.0).collect::<Vec<_>>(), alts_full.iter().map(|a| a.0).collect::<Vec<_>>());
}

/// Speculative sampling keeps the target distribution exactly: drafts drawn from a different
/// (draft) distribution, or fixed as prompt lookup proposes them, then accepted or resampled by
/// `verify_draft`, give tokens distributed as the target's own sampling (many seeds, total
/// variation bound).
#[test]
fn speculative_verification_keeps_the_target_distribution() {
    let target = SamplingParams { temperature: 0.9, top_k: 8, seed: Some(5), ..Default::default() };
    let want = expected(&LOGITS, &target);
    let draft_logits: Vec<f32> = LOGITS.iter().rev().map(|l| l * 0.5).collect();
    let draft_params = SamplingParams { temperature: 1.2, seed: Some(6), ..Default::default() };
    let p_dist = Sampler::new(target.clone(), LOGITS.len()).unwrap().distribution(&LOGITS, &[]);
    let q_dist = Sampler::new(draft_params.clone(), LOGITS.len()).unwrap().distribution(&draft_logits, &[]);
    // Sampled drafts (draft model), and a fixed draft of a likely and of an unlikely token (n-gram).
    for case in ["sampled", "fixed likely", "fixed unlikely"] {
        let mut counts = vec![0usize; LOGITS.len()];
        let mut kept = 0;
        for seed in 0..DRAWS as u64 {
            let mut verifier = Sampler::new(SamplingParams { seed: Some(seed), ..target.clone() }, LOGITS.len()).unwrap();
            let mut drafter = Sampler::new(SamplingParams { seed: Some(seed ^ 0xABCD), ..draft_params.clone() }, LOGITS.len()).unwrap();
            let (tok, was_draft) = match case {
                "sampled" => {
                    let d = drafter.draw_from(&q_dist);
                    verifier.verify_draft(&p_dist, d, Some(&q_dist))
                }
                "fixed likely" => verifier.verify_draft(&p_dist, 1, None),
                _ => verifier.verify_draft(&p_dist, 7, None),
            };
            counts[tok as usize] += 1;
            kept += was_draft as usize;
        }
        let tv: f64 = counts.iter().zip(&want).map(|(&c, &w)| (c as f64 / DRAWS as f64 - w).abs()).sum::<f64>() / 2.0;
        println!("speculative {case}: total variation {tv:.4}, drafts kept {kept}/{DRAWS}");
        assert!(tv < 0.025, "{case}: total variation {tv}");
        assert!(kept > 0 || case == "fixed unlikely", "{case}: no draft was ever kept");
    }
}

/// A backend's choice from [`Sampler::row`] (filters, logit edits and the uniform number drawn
/// at submission; what the GPU's sample kernel and the CPU backends get) is the sampler's own
/// choice on the full logits, RNG draws included, over a generation whose penalty window fills
/// with its own tokens; settings that carry too many edits stay with the sampler.
#[test]
fn backend_sampling_equals_the_sampler() {
    let vocab = 5000;
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7919 % 1000) as f32 / 150.0) - 3.0 + if i % 97 == 0 { 2.0 } else { 0.0 }).collect();
    let cases = [
        SamplingParams { temperature: 1.0, seed: Some(1), ..Default::default() },
        SamplingParams { temperature: 0.7, top_p: 0.9, seed: Some(2), ..Default::default() },
        SamplingParams { temperature: 1.3, top_k: 300, top_p: 0.95, min_p: 0.05, seed: Some(3), ..Default::default() },
        SamplingParams { temperature: 0.5, min_p: 0.2, seed: Some(4), ..Default::default() },
        SamplingParams { temperature: 0.3, repeat_penalty: 1.5, frequency_penalty: 0.4, presence_penalty: 0.6, repeat_last_n: 16, seed: Some(5), ..Default::default() },
        SamplingParams { temperature: 0.0, repeat_penalty: 2.0, repeat_last_n: 8, logit_bias: vec![(970, 3.0), (3, -10.0)], ..Default::default() },
        SamplingParams { temperature: 0.9, typical_p: 0.7, top_p: 0.95, repeat_penalty: 1.2, repeat_last_n: 16, seed: Some(6), ..Default::default() },
    ];
    for params in cases {
        let mut sampler = Sampler::new(params.clone(), vocab).unwrap();
        let mut backend = Sampler::new(params.clone(), vocab).unwrap();
        assert!(backend.backend_samples(), "{params:?}");
        let mut history = vec![970u32, 5, 970, 12];
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let row = backend.row(&history[..history.len() - 1]);
            let next = row.choose(&logits, *history.last().unwrap());
            assert_eq!(next, sampler.sample(&logits, &history), "{params:?} after {history:?}");
            history.push(next);
            distinct.insert(next);
        }
        // Penalties move the choice around: the window really edits the logits.
        if params.repeat_penalty != 1.0 {
            assert!(distinct.len() > 3, "{params:?}: {distinct:?}");
        }
    }
    let not = [SamplingParams { repeat_penalty: 1.1, repeat_last_n: 300, ..Default::default() }, SamplingParams { logit_bias: (0..300).map(|t| (t, 1.0)).collect(), ..Default::default() }];
    for params in not {
        assert!(!Sampler::new(params.clone(), vocab).unwrap().backend_samples(), "{params:?}");
    }
}

/// `RowSampling::choose` sorts only the largest logits when they decide the choice: it makes
/// the inverse-CDF choice of the fully sorted, filtered distribution (`distribution`) for the
/// same uniform number, on peaked rows (decided in the head) and flat ones (the fallback to a
/// full sort), rows with NaN logits (which count as -inf) and rows a grammar masks to a few
/// tokens, with top-k above the head, top-p, min-p, and temperature alone; temperatures too
/// small for f32's 1/T choose the largest logit.
#[test]
fn choosing_from_the_head_equals_sorting_every_logit() {
    use ferrolm::sample::{Rng, RowSampling};
    let vocab = 20_000;
    let mut rng = Rng::new(9);
    let flat: Vec<f32> = (0..vocab).map(|_| rng.uniform() as f32 * 4.0).collect();
    // Peaked: a few large logits over a long tail, as language models give.
    let peaked: Vec<f32> = (0..vocab).map(|i| -((i % 977 + 1) as f32).ln() * 2.5 + rng.uniform() as f32).collect();
    let with_nan: Vec<f32> = peaked.iter().enumerate().map(|(i, &l)| if i % 61 == 0 { f32::NAN } else { l }).collect();
    let masked: Vec<f32> = flat.iter().enumerate().map(|(i, &l)| if i % 409 == 7 { l } else { f32::NEG_INFINITY }).collect();
    let row = |temperature, top_k, top_p, min_p| RowSampling { temperature, top_k, top_p, min_p, ..RowSampling::GREEDY };
    let settings = [row(1.0, 0, 1.0, 0.0), row(0.7, 0, 0.9, 0.0), row(1.2, 1000, 0.95, 0.0), row(0.9, 0, 1.0, 0.05), row(1.0, 0, 0.99, 0.01), row(0.5, 300, 1.0, 0.0)];
    for logits in [&flat, &peaked, &with_nan, &masked] {
        for s in &settings {
            let dist = s.distribution(logits, 0);
            for _ in 0..200 {
                let r = RowSampling { u: rng.uniform(), ..s.clone() };
                let mut acc = 0.0;
                let want = dist.iter().find(|x| {
                    acc += x.1;
                    r.u < acc
                });
                let want = want.unwrap_or(dist.last().unwrap()).0;
                let got = r.choose(logits, 0);
                assert_eq!(got, want, "{r:?}");
                assert!(logits[got as usize].is_finite(), "{r:?} drew {got}, logit {}", logits[got as usize]);
            }
        }
    }
    let largest = ferrolm::sample::argmax(&peaked);
    for temperature in [1e-39, 1e-30, 1e-6] {
        for top_p in [1.0, 0.5] {
            let r = RowSampling { temperature, top_p, u: 0.999, ..RowSampling::GREEDY };
            assert_eq!(r.choose(&peaked, 0), largest, "{r:?}");
        }
    }
}
