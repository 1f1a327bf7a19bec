//! The GPU forward (native wgpu; lavapipe on CI) against the exact f32 reference logits.

use crate::common;
use crate::engine_cases;

use engine_cases::RawSequence;
use ferrolm::backend::reference::{Logits, ReferenceModel};
use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions};
use ferrolm::engine::{Batch, Engine, ForwardModel, ModelOptions, PendingStep, Picks, Readback};
use ferrolm::gguf::Gguf;
use ferrolm::sample::{Sampler, SamplingParams, TopLogits, MAX_TOP, NO_TOKEN};

fn load_smollm2() -> GpuModel {
    load_smollm2_with(GpuOptions::default())
}

fn load_smollm2_with(opts: GpuOptions) -> GpuModel {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    pollster::block_on(async {
        let ctx = GpuContext::new(opts).await.unwrap();
        eprintln!("adapter: {:?}", ctx.info);
        GpuModel::load(ctx, &gguf, &file, &ModelOptions::new(512, 64)).await.unwrap()
    })
}

/// Teacher-forced logits through the engine's `score_from`: the rows from each prompt's last
/// position on, the ones the checks read.
fn check_forced_logits(what: &str, model: GpuModel, cases: usize) {
    let vocab = model.config.vocab_size;
    let mut engine = Engine::new(model);
    common::check_smollm2_forced_logits_in("smollm2-135m/forced-logits.json", what, vocab, cases, |tokens, from| pollster::block_on(engine.score_from(tokens, from)).unwrap());
}

fn reference() -> ReferenceModel {
    ReferenceModel::new(common::smollm2_weights(), &ModelOptions::new(512, 64))
}

#[test]
fn smollm2_gpu_forced_logits_match_f32_reference() {
    check_forced_logits("GPU", load_smollm2(), usize::MAX);
}

/// The reference behind the engine (paged KV, chunked scoring) against llama.cpp's logits.
#[test]
fn smollm2_reference_engine_forced_logits_match_f32_reference() {
    let mut engine = Engine::new(reference());
    common::check_smollm2_forced_logits("reference engine", 49152, usize::MAX, |tokens| pollster::block_on(engine.score(tokens)).unwrap());
}

/// The kernel shapes for real GPUs (workgroup-per-row matmul, tiled prefill and split decode
/// attention) on this CPU adapter: the forward a discrete or integrated GPU runs. Prefill logits
/// against the reference, greedy decoding against the CPU engine's.
#[test]
fn smollm2_gpu_shapes_match_f32_reference_and_cpu_greedy() {
    let model = load_smollm2_with(GpuOptions { gpu_shapes: true, ..GpuOptions::default() });
    assert!(!model.ctx.info.cpu_like);
    let cpu = reference();
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    // The shortest case's prompt, greedy for 6 tokens, and a step over its first 4 tokens: GPU
    // shapes take about a second a token on a CPU adapter (lavapipe), and
    // tests/native/kernels.rs checks each GPU kernel shape (prefill tiles among them) against
    // the CPU on its own.
    let case = &reference["cases"][0];
    let prompt: Vec<u32> = case["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let gpu_tokens = pollster::block_on(engine_cases::raw_greedy(&model, &prompt, 6));
    let cpu_tokens = pollster::block_on(engine_cases::raw_greedy(&cpu, &prompt, 6));
    assert_eq!(gpu_tokens, cpu_tokens, "GPU-shape and CPU greedy continuations differ for {:?}", case["prompt"]);
    sampled_rows_equal_host_choice(&model, &prompt);
}

/// The logits of a step over the prompt's first 4 tokens (8 rows, two a position) equal the
/// exact f32 forward's; the tokens its rows draw on the GPU (with GPU shapes: from the LM head's
/// partial maxima and sums), with and without logprobs, equal the host sampler's draws from the
/// same step's logits, also under a grammar-like mask; the rows' logprob candidates (from the
/// same partials) equal the host's top 64, with and without the mask.
fn sampled_rows_equal_host_choice(model: &GpuModel, prompt: &[u32]) {
    let limits = *model.limits();
    let tokens = &prompt[..4];
    let positions: Vec<u32> = (0..tokens.len() as u32).collect();
    // Two rows a position (eight sampling settings): GPU shapes take about a second a token on
    // a CPU adapter.
    let logit_rows: Vec<u32> = positions.iter().chain(&positions).copied().collect();
    let table: Vec<u32> = (0..limits.context.div_ceil(limits.block_size)).collect();
    let seq_ids = vec![0; tokens.len()];
    let settings = [
        SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, ..Default::default() },
        SamplingParams { temperature: 1.5, top_k: 150, min_p: 0.01, ..Default::default() },
        SamplingParams { temperature: 0.7, top_k: 8, typical_p: 0.8, ..Default::default() },
        SamplingParams { temperature: 0.8, top_p: 0.9, logit_bias: vec![(28, 2.0), (13, 1.5)], ..Default::default() },
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.7, ..Default::default() },
        SamplingParams { temperature: 0.5, ..Default::default() },
        SamplingParams { temperature: 1.3, min_p: 0.05, ..Default::default() },
    ];
    let rows: Vec<_> = (0..logit_rows.len()).map(|i| Sampler::new(SamplingParams { seed: Some(i as u64), ..settings[i % settings.len()].clone() }, 49152).unwrap().row(&[])).collect();
    let step = |sampling, masks, read| {
        let batch = Batch { tokens, positions: &positions, seq_ids: &seq_ids, logit_rows: &logit_rows, block_tables: &[&table], masks, sampling };
        pollster::block_on(model.submit(&batch, read).unwrap().read()).unwrap()
    };
    let (Picks::Sampled { tokens: gpu, logits: chosen, top }, Picks::Logits(logits)) = (step(Some(&rows[..]), None, Readback::SampleTop), step(None, None, Readback::Logits)) else {
        panic!("unexpected picks")
    };
    // The step's logits against the exact f32 forward: top-5 within the forced cases' 0.02.
    let weights = common::smollm2_weights();
    let exact = weights.forward(tokens, &mut weights.new_cache(tokens.len()), Logits::All).unwrap();
    for (row, &at) in logits.chunks(49152).zip(&logit_rows) {
        let want = TopLogits::from_logits(&exact[at as usize * 49152..][..49152], 5).top;
        assert_eq!(ferrolm::sample::argmax(row), want[0].0, "position {at}: argmax differs from the f32 reference");
        for (id, l) in want {
            assert!((row[id as usize] - l).abs() <= 0.02, "position {at} token {id}: logit {} vs f32 reference {l}", row[id as usize]);
        }
    }
    let host: Vec<u32> = rows.iter().zip(logits.chunks(49152)).zip(&logit_rows).map(|((r, row), &at)| r.choose(row, tokens[at as usize])).collect();
    assert_eq!(gpu, host, "sampled on the GPU (GPU shapes) vs the host's choice from the logits");
    // Without logprobs the rows at a temperature alone draw against sums taken at it, and the
    // min-p row among the largest runs.
    let Picks::Tokens(plain) = step(Some(&rows[..]), None, Readback::Sample) else { panic!("unexpected picks") };
    assert_eq!(plain, host, "sampled without logprobs on the GPU (GPU shapes) vs the host's choice");
    // With a mask forbidding every third token (structured output with logprobs): the draws
    // from the masked rows, the candidates (from the partials) still the unmasked rows'.
    let allowed = |t: usize| !t.is_multiple_of(3);
    let mask: Vec<u32> = (0..49152 / 32).map(|w| (0..32).filter(|b| allowed(w * 32 + b)).fold(0, |m, b| m | 1 << b)).collect();
    let masks = mask.repeat(logit_rows.len());
    let Picks::Sampled { tokens: masked, top: masked_top, .. } = step(Some(&rows[..]), Some(&masks[..]), Readback::SampleTop) else { panic!("unexpected picks") };
    let masked_host: Vec<u32> = rows
        .iter()
        .zip(logits.chunks(49152))
        .zip(&logit_rows)
        .map(|((r, row), &at)| {
            let row: Vec<f32> = row.iter().enumerate().map(|(t, &l)| if allowed(t) { l } else { f32::NEG_INFINITY }).collect();
            r.choose(&row, tokens[at as usize])
        })
        .collect();
    assert_eq!(masked, masked_host, "sampled with a mask on the GPU (GPU shapes) vs the host's choice");
    assert!(masked_top.iter().zip(&top).all(|(a, b)| a.top == b.top && a.lse == b.lse), "a mask changed the logprob candidates");
    // Draws without logprobs and greedy rows under masks: the LM head applies them (forbidden
    // logits at -3.4e38) and the unmasked kernels choose from its partials. Row 0 allows
    // nothing and has edits that would lift a forbidden logit, were it not left as it is.
    let mut rows = rows.clone();
    rows[0] = Sampler::new(SamplingParams { temperature: 0.8, repeat_penalty: 0.5, logit_bias: vec![(5, 1e38)], ..Default::default() }, 49152).unwrap().row(&[]);
    let mut masks = masks.clone();
    masks[..mask.len()].fill(0);
    let masked_rows: Vec<Vec<f32>> = logits.chunks(49152).enumerate().map(|(r, row)| row.iter().enumerate().map(|(t, &l)| if r > 0 && allowed(t) { l } else { f32::NEG_INFINITY }).collect()).collect();
    let Picks::Tokens(masked) = step(Some(&rows[..]), Some(&masks[..]), Readback::Sample) else { panic!("unexpected picks") };
    let masked_host: Vec<u32> = rows.iter().zip(&masked_rows).zip(&logit_rows).map(|((r, row), &at)| r.choose(row, tokens[at as usize])).collect();
    assert_eq!(masked, masked_host, "sampled without logprobs under masks on the GPU (GPU shapes) vs the host's choice");
    assert_eq!(masked[0], NO_TOKEN, "a row whose mask allows nothing has no token");
    let Picks::Tokens(greedy) = step(None, Some(&masks[..]), Readback::Argmax) else { panic!("unexpected picks") };
    let greedy_host: Vec<u32> = masked_rows.iter().map(|row| ferrolm::sample::argmax(row)).collect();
    assert_eq!(greedy, greedy_host, "greedy under masks on the GPU (GPU shapes) vs the host's argmax");
    // The rows' candidates (from the same partials) and the drawn tokens' logits, for logprobs.
    for (i, row) in logits.chunks(49152).enumerate() {
        let want = TopLogits::from_logits(row, MAX_TOP);
        assert_eq!(top[i].top, want.top, "row {i}: candidates");
        assert!((top[i].lse - want.lse).abs() <= 1e-5 * (1.0 + want.lse.abs()), "row {i}: lse {} vs {}", top[i].lse, want.lse);
        assert_eq!(chosen[i], row[gpu[i] as usize], "row {i}: the drawn token's logit");
    }
}

/// Seeded sampling (temperature 0.8, top-p 0.95, seed 11) from the full logits.
fn sample(model: &GpuModel, prompt: &[u32], n: usize) -> Vec<u32> {
    sample_with(model, prompt, n, SamplingParams { temperature: 0.8, top_p: 0.95, seed: Some(11), ..Default::default() }, false)
}

/// Seeded sampling with top-k 40, from the full logits or from the top candidates alone.
fn sample_top_k(model: &GpuModel, prompt: &[u32], n: usize, from_top: bool) -> Vec<u32> {
    sample_with(model, prompt, n, SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: Some(12), ..Default::default() }, from_top)
}

fn sample_with(model: &GpuModel, prompt: &[u32], n: usize, params: SamplingParams, from_top: bool) -> Vec<u32> {
    let mut sampler = Sampler::new(params, 49152).unwrap();
    let k = sampler.top_needed(None).unwrap_or(0);
    let mut seq = RawSequence::new(model);
    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    let mut feed = prompt.to_vec();
    while out.len() < n {
        let next = match pollster::block_on(seq.extend(&feed, if from_top { Readback::Top(k) } else { Readback::Logits })) {
            Picks::Top(t) => sampler.sample_top(&t[0]),
            Picks::Logits(l) => sampler.sample(&l, &history),
            other => panic!("unexpected {other:?}"),
        };
        history.push(next);
        out.push(next);
        feed = vec![next];
    }
    out
}

/// GPU greedy decoding (one token per step through the KV cache) equals the CPU reference's,
/// sampling from GPU top-k candidates equals sampling from the full logits, and the tokens are
/// recorded for the browser test to compare against.
#[test]
fn gpu_greedy_equals_cpu_greedy_and_is_recorded_for_the_browser() {
    let model = load_smollm2();
    let cpu = reference();
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut records = Vec::new();
    // Greedy on two prompts, sampled on the first (the one the browser compares).
    for (i, case) in reference["cases"].as_array().unwrap().iter().take(2).enumerate() {
        let prompt: Vec<u32> = case["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let gpu_tokens = pollster::block_on(engine_cases::raw_greedy(&model, &prompt, 16));
        let cpu_tokens = pollster::block_on(engine_cases::raw_greedy(&cpu, &prompt, 16));
        assert_eq!(gpu_tokens, cpu_tokens, "GPU and CPU greedy continuations differ for {:?}", case["prompt"]);
        let mut record = serde_json::json!({ "prompt_tokens": prompt, "tokens": gpu_tokens });
        if i == 0 {
            record["sampled"] = sample(&model, &prompt, 8).into();
            // The GPU top-k kernel's candidates give the same draws as the full logits.
            let sampled_top = sample_top_k(&model, &prompt, 8, true);
            assert_eq!(sampled_top, sample_top_k(&model, &prompt, 8, false), "top-k path differs");
            record["sampled_top"] = sampled_top.into();
        }
        records.push(record);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("greedy-native.json"), serde_json::to_string(&records).unwrap()).unwrap();
}

/// The benchmark's rooflines: both probes run on the adapter, and the multiply-adds per token
/// are SmolLM2's matrices (30 layers of q, k, v, o and the three FFN matrices, plus the tied
/// 49152 x 576 LM head).
#[test]
fn bench_probes_run_and_count_smollm2_multiply_adds() {
    let model = load_smollm2();
    let layer = 576 * (576 + 192 + 192 + 576) + 3 * 576 * 1536;
    assert_eq!(model.weight_values, 30 * layer + 49152 * 576);
    let (bandwidth, alu) = pollster::block_on(async { (ferrolm::api::bench::read_bandwidth(&model).await.unwrap(), ferrolm::api::bench::dequant_rate(&model).await.unwrap()) });
    assert!(bandwidth.is_finite() && bandwidth > 0.0 && alu.is_finite() && alu > 0.0, "{bandwidth} B/s, {alu} MAC/s");
    let ceiling = ferrolm::api::bench::decode_ceiling(&model, bandwidth, alu);
    let slower = (model.weight_bytes as f64 / bandwidth).max(model.weight_values as f64 / alu);
    assert!(ceiling <= 1.0 / slower * 1.000001, "the ceiling cannot beat the slower probe");
}
