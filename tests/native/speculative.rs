//! Speculative decoding on the quantized CPU backend and WebGPU (lavapipe on CI; the f32
//! reference runs the engine scenarios elsewhere): greedy identity with both drafters, KV rollback
//! exactness after rejected drafts, seeded sampled output the same with n-gram drafting, and the
//! sampled distribution with draft-model drafting on.

use crate::common;
use crate::engine_cases;

use std::collections::BTreeMap;

use engine_cases::*;
use ferrolm::chat::{render_chat, ChatMessage, ChatTemplate};
use ferrolm::engine::{Engine, ForwardModel, ModelOptions, Request};
use ferrolm::gguf::Gguf;
use ferrolm::gguf::GgufWriter;
use ferrolm::sample::{GenerateOptions, Sampler, SamplingParams, SpecMethod};
use ferrolm::tokenizer::Tokenizer;

fn opts() -> ModelOptions {
    ModelOptions::new(512, 64)
}

/// The reference prompts plus the repetitive-code prompt, as token ids.
fn prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut out: Vec<Vec<u32>> = reference["cases"].as_array().unwrap().iter().map(|c| serde_json::from_value(c["prompt_tokens"].clone()).unwrap()).collect();
    out.push(tok.encode_prompt(CODE_PROMPT, false).unwrap());
    out
}

/// Greedy output (`n` tokens a prompt) is token for token the same with n-gram and with
/// draft-model speculation (the same GGUF drafting); the plain tokens are recorded for the
/// browser test as `artifact` (it checks the first 12).
async fn greedy_identity<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, artifact: &str, prompts: Vec<Vec<u32>>, n: usize) {
    let mut want = Vec::new();
    for p in &prompts {
        want.push(run_alone(engine, tok, Request { prompt: p.clone(), opts: greedy(n) }).await.generation.tokens);
    }
    let totals = speculative_greedy_identity(engine, tok, &prompts, &want).await;
    println!("{}: (drafted, accepted): ngram {:?}, draft model {:?}", engine.model().describe(), totals[0], totals[1]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(artifact), serde_json::json!({ "prompts": prompts, "tokens": want }).to_string()).unwrap();
}

#[test]
fn speculative_greedy_equals_plain_greedy_on_cpu() {
    let (mut engine, tok) = common::cpu_engine(opts());
    engine.set_draft_model(common::cpu_model(opts())).unwrap();
    pollster::block_on(greedy_identity(&mut engine, &tok, "speculative-plain-cpu.json", prompts(&tok), 24));
}

#[test]
fn speculative_greedy_equals_plain_greedy_on_gpu() {
    let (mut engine, tok) = common::gpu_engine(opts());
    engine.set_draft_model(common::gpu_model(opts())).unwrap();
    // 12 tokens of the longest reference prompt (a chat turn, whose n-gram drafts are kept
    // within 12 tokens; the code prompt's are not): lavapipe decodes a few tokens a second, and
    // the draft model is a second SmolLM2 on it. The CPU backend runs every prompt through the
    // same engine code.
    let prompts = vec![prompts(&tok).swap_remove(3)];
    pollster::block_on(greedy_identity(&mut engine, &tok, "speculative-plain-gpu.json", prompts, 12));
}

/// A chat request to edit code: the answer copies much of the prompt, so drafts are both kept
/// and rejected.
fn code_edit_prompt(tok: &Tokenizer) -> Vec<u32> {
    let gguf = Gguf::read(&std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap()).unwrap();
    let template = ChatTemplate::from_gguf(&gguf.metadata, tok).unwrap();
    let text = render_chat(template.as_ref(), &[ChatMessage { role: "user".into(), content: ferrolm::api::bench::CODE_EDIT_PROMPT.into() }], None, true, usize::MAX).unwrap();
    tok.encode_prompt(&text, true).unwrap()
}

/// After rejected drafts the KV cache is rolled back exactly: every later position's top-5
/// logprobs equal a non-speculative run's, and the tokens are the same.
async fn rollback_case<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) {
    let s = rollback_with(engine, tok, SpecMethod::Ngram).await;
    assert!(s.forwards < s.generated_tokens, "speculation saved no forward");
}

/// The code-edit chat request plain and with `method` drafting (6 at most): the same tokens and
/// top-5 logprobs, with at least 2 drafts rejected. Returns the speculative run's stats.
async fn rollback_with<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, method: SpecMethod) -> ferrolm::engine::RequestStats {
    // Drafted whether or not drafting pays on this device.
    engine.set_draft_always(true);
    let prompt = code_edit_prompt(tok);
    let opts = GenerateOptions { logprobs: Some(5), ..greedy(40) };
    let plain = run_alone(engine, tok, Request { prompt: prompt.clone(), opts: opts.clone() }).await;
    let spec_opts = GenerateOptions { speculative: speculative(method, 6), ..opts };
    // The prompt's full blocks from the plain run's cache: the speculative run differs from it
    // only after the prompt.
    let spec = run_together(engine, tok, vec![Request { prompt, opts: spec_opts }]).await.remove(0);
    let s = spec.stats.clone();
    println!("{}: {method:?} on the code-edit prompt: drafted {}, accepted {}, {} forwards for {} tokens", engine.model().describe(), s.drafted, s.accepted, s.forwards, s.generated_tokens);
    assert!(s.drafted >= s.accepted + 2, "fewer than 2 rejected drafts: the rollback went unexercised");
    assert_eq!(spec.generation.tokens, plain.generation.tokens);
    assert!(!plain.generation.tokens.is_empty());
    assert_logprobs_close(&spec.generation.logprobs, &plain.generation.logprobs, 1e-3);
    s
}

#[test]
fn rollback_after_rejection_matches_plain_logits_on_cpu() {
    let (mut engine, tok) = common::cpu_engine(opts());
    pollster::block_on(rollback_case(&mut engine, &tok));
}

#[test]
fn rollback_after_rejection_matches_plain_logits_on_gpu() {
    let (mut engine, tok) = common::gpu_engine(opts());
    pollster::block_on(rollback_case(&mut engine, &tok));
}

/// Sampled n-gram speculation draws each row's token as plain decoding draws it (same uniform
/// numbers, the drafts before it in its penalty window) and keeps a draft when they agree: the
/// code-edit request with temperature, top-p, a repetition penalty and logprobs gives the
/// plain run's tokens and logprobs, with drafts kept and rejected. Returns the speculative
/// run's stats.
async fn sampled_identity<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer) -> ferrolm::engine::RequestStats {
    engine.set_draft_always(true);
    let prompt = code_edit_prompt(tok);
    // 100 bias entries of 0 (no change to a logit) and the penalty window: over 100 edits a row.
    let logit_bias = (1000..1100).map(|t| (t, 0.0)).collect();
    let sampling = SamplingParams { temperature: 0.6, top_p: 0.95, repeat_penalty: 1.05, repeat_last_n: 64, logit_bias, seed: Some(21), ..Default::default() };
    let opts = GenerateOptions { logprobs: Some(3), sampling, ..greedy(32) };
    let plain = run_alone(engine, tok, Request { prompt: prompt.clone(), opts: opts.clone() }).await;
    // The prompt's full blocks from the plain run's cache, as in `rollback_with`.
    let spec = run_together(engine, tok, vec![Request { prompt, opts: GenerateOptions { speculative: speculative(SpecMethod::Ngram, 6), ..opts } }]).await.remove(0);
    let s = spec.stats.clone();
    println!("{}: sampled n-gram on the code-edit prompt: drafted {}, accepted {}, {} forwards for {} tokens", engine.model().describe(), s.drafted, s.accepted, s.forwards, s.generated_tokens);
    assert!(s.accepted >= 2 && s.drafted >= s.accepted + 2, "drafts were not both kept and rejected: {} of {}", s.accepted, s.drafted);
    assert_eq!(spec.generation.tokens, plain.generation.tokens, "sampled speculation drew differently");
    assert_logprobs_close(&spec.generation.logprobs, &plain.generation.logprobs, 1e-3);
    s
}

/// [`sampled_identity`] on the CPU backend; and greedy speculation batched with a sampled
/// request (top-k and typical-p): the speculative rows ride the sampled readback at
/// temperature 0 and still give the plain greedy tokens.
#[test]
fn sampled_ngram_speculation_draws_as_plain_decoding_on_cpu() {
    let (mut engine, tok) = common::cpu_engine(opts());
    pollster::block_on(sampled_identity(&mut engine, &tok));
    let prompt = code_edit_prompt(&tok);
    let plain = pollster::block_on(run_alone(&mut engine, &tok, Request { prompt: prompt.clone(), opts: greedy(24) })).generation.tokens;
    let spec = Request { prompt: prompt.clone(), opts: GenerateOptions { speculative: speculative(SpecMethod::Ngram, 4), ..greedy(24) } };
    let typical = Request { prompt, opts: GenerateOptions { sampling: SamplingParams { temperature: 1.0, top_k: 20, typical_p: 0.9, seed: Some(2), ..Default::default() }, ..greedy(24) } };
    let out = pollster::block_on(run_together(&mut engine, &tok, vec![spec, typical]));
    assert!(out[0].stats.accepted > 0, "no draft was kept: {:?}", out[0].stats);
    assert_eq!(out[0].generation.tokens, plain);
}

/// [`sampled_identity`] on WebGPU (lavapipe): the rows are drawn by the sample kernel, and no
/// step reads a logit row back. One sequence at most: its rows' edits (over 100 each) fill more
/// than one row's worth of the edits buffer.
#[test]
fn sampled_ngram_speculation_draws_as_plain_decoding_on_gpu() {
    let (mut engine, tok) = common::gpu_engine(ModelOptions { max_seqs: 1, ..opts() });
    let before = engine.model().counters();
    pollster::block_on(sampled_identity(&mut engine, &tok));
    let c = engine.model().counters().since(&before);
    assert!(c.bytes_read < 49_152 * 4, "a logit row was read back: {c:?}");
}

/// A draft model that disagrees with the target (random weights, SmolLM2's vocabulary size):
/// nearly every draft is rejected, so the draft-model drafter's rejection and the rollback of
/// both KV caches really run, and the output is still token for token the plain output.
#[test]
fn a_disagreeing_draft_model_is_rejected_and_rolled_back_exactly() {
    let (mut engine, tok) = common::cpu_engine(opts());
    let shape = ferrolm::api::bench::LlamaShape { n_layers: 2, d_model: 128, n_heads: 2, n_kv_heads: 1, ffn_dim: 256, vocab: 49152 };
    let bytes = ferrolm::api::bench::synthetic_llama(shape);
    let gguf = Gguf::read(&bytes[..]).unwrap();
    engine.set_draft_model(ferrolm::backend::cpu::SimdModel::load(&gguf, &bytes[..], &opts(), 2).unwrap()).unwrap();
    let s = pollster::block_on(rollback_with(&mut engine, &tok, SpecMethod::Draft));
    assert!(s.drafted >= 5 * s.accepted.max(1), "a random draft model had {} of {} drafts accepted", s.accepted, s.drafted);
}

/// A cheap draft that disagrees with SmolLM2 in a known way: its first 6 of 30 layers, with the
/// final norm's weights quartered (logits at a quarter: a flatter distribution).
fn shallow_flat_smollm2() -> Vec<u8> {
    const LAYERS: u32 = 6;
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in gguf.metadata.iter().filter(|(k, _)| *k != "general.alignment") {
        w.meta(k, if k == "llama.block_count" { ferrolm::gguf::Value::U32(LAYERS) } else { v.clone() });
    }
    let deep = |name: &str| name.strip_prefix("blk.").and_then(|r| r.split('.').next()).is_some_and(|l| l.parse::<u32>().unwrap() >= LAYERS);
    for t in gguf.tensors.iter().filter(|t| !deep(&t.name)) {
        let mut data = gguf.tensor_data(&file, t).unwrap();
        if t.name == "output_norm.weight" {
            let scaled: Vec<f32> = bytemuck::pod_collect_to_vec::<u8, f32>(&data).iter().map(|x| x * 0.25).collect();
            data = bytemuck::cast_slice(&scaled).to_vec();
        }
        w.tensor(&t.name, &t.dims, t.ty, data);
    }
    w.to_bytes()
}

/// The chi-square value a statistic with `dof` degrees of freedom exceeds with probability
/// 1e-4 (Wilson-Hilferty).
fn chi_square_critical(dof: usize) -> f64 {
    let (d, z) = (dof as f64, 3.719);
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

/// Sampled speculation through the engine keeps the target's distribution: many seeded
/// requests (temperature 1, top-k 8) draft their second token from a shallow, flattened copy of
/// the model and verify it with the rejection rule; grouped by the first token, the second
/// tokens' counts must fit the target's own distribution there (from `score`), with drafts both
/// kept and rejected. Always keeping the draft would give the draft's distribution instead.
#[test]
fn sampled_speculation_keeps_the_target_distribution() {
    const DRAWS: u64 = 512;
    let opts = ModelOptions { max_seqs: 64, ..ModelOptions::new(64, 256) };
    let (mut engine, tok) = common::cpu_engine(opts);
    engine.set_draft_always(true);
    let bytes = shallow_flat_smollm2();
    engine.set_draft_model(ferrolm::backend::cpu::SimdModel::load(&Gguf::read(&bytes[..]).unwrap(), &bytes[..], &opts, 2).unwrap()).unwrap();
    let prompt = tok.encode_prompt("The capital of France is", false).unwrap();
    let sampling = |seed| SamplingParams { top_k: 8, seed: Some(seed), ..Default::default() };
    let request = |seed| Request {
        prompt: prompt.clone(),
        opts: GenerateOptions { max_tokens: 3, sampling: sampling(seed), speculative: speculative(SpecMethod::Draft, 1), ignore_eos: true, ..Default::default() },
    };
    let outcomes = pollster::block_on(run_together(&mut engine, &tok, (0..DRAWS).map(request).collect()));

    let (drafted, accepted) = outcomes.iter().fold((0, 0), |(d, a), o| (d + o.stats.drafted, a + o.stats.accepted));
    println!("{DRAWS} draws: {drafted} drafted, {accepted} kept");
    assert!(drafted as u64 >= DRAWS * 9 / 10, "only {drafted} of {DRAWS} second tokens were drafted");
    assert!(accepted * 10 >= drafted * 2 && accepted * 20 <= drafted * 19, "{accepted} of {drafted} drafts kept: the test needs both outcomes");
    let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for o in &outcomes {
        assert_eq!(o.generation.tokens.len(), 3, "a request stopped early: {:?}", o.generation.tokens);
        groups.entry(o.generation.tokens[0]).or_default().push(o.generation.tokens[1]);
    }
    let vocab = engine.model().config().vocab_size;
    let (mut stat, mut dof, mut tested) = (0.0, 0, 0);
    for (first, seconds) in groups.iter().filter(|(_, s)| s.len() >= 40) {
        let context: Vec<u32> = prompt.iter().copied().chain([*first]).collect();
        let logits = pollster::block_on(engine.score(&context)).unwrap();
        let p = Sampler::new(sampling(0), vocab).unwrap().distribution(&logits[logits.len() - vocab..], &context);
        let n = seconds.len() as f64;
        let count = |t: u32| seconds.iter().filter(|&&s| s == t).count() as f64;
        assert!(seconds.iter().all(|s| p.iter().any(|&(t, _)| t == *s)), "a second token outside the target's top 8");
        // Tokens expected fewer than 5 times share one bin.
        let (mut rest_o, mut rest_e) = (0.0, 0.0);
        for &(t, prob) in &p {
            let (o, e) = (count(t), n * prob);
            if e < 5.0 {
                (rest_o, rest_e) = (rest_o + o, rest_e + e);
            } else {
                stat += (o - e).powi(2) / e;
                dof += 1;
            }
        }
        if rest_e > 0.0 {
            stat += (rest_o - rest_e).powi(2) / rest_e;
            dof += 1;
        }
        dof -= 1;
        tested += seconds.len();
    }
    println!("chi-square {stat:.1} on {dof} degrees of freedom ({tested} draws in groups of 40 or more)");
    assert!(tested as u64 >= DRAWS / 2, "only {tested} draws in groups large enough to test");
    assert!(stat < chi_square_critical(dof), "chi-square {stat:.1} on {dof} degrees of freedom: the second tokens do not follow the target's distribution");
}

/// Bad speculative options are refused at submission with the option named.
#[test]
fn bad_speculative_options_are_clear_errors() {
    let (mut engine, tok) = common::reference_engine(opts());
    let req = |method, k| Request { prompt: vec![1, 2, 3], opts: GenerateOptions { speculative: speculative(method, k), ..greedy(4) } };
    let err = engine.submit(&tok, req(SpecMethod::Ngram, 0)).unwrap_err().to_string();
    assert!(err.contains("draft_k"), "{err}");
    let err = engine.submit(&tok, req(SpecMethod::Draft, 4)).unwrap_err().to_string();
    assert!(err.contains("draft model"), "{err}");
}
