//! The CPU reference forward against the exact f32 logits in `../shared/reference/smollm2-135m`.

mod common;

use ferrolm::cpu::ops::nll;
use ferrolm::cpu::{CpuModel, Logits};
use ferrolm::gguf::Gguf;

#[test]
fn smollm2_forced_logits_match_f32_reference() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let model = CpuModel::load(&gguf, &file).unwrap();
    let vocab = model.config.vocab_size;
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));

    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
        let (prompt, cont) = (ids("prompt_tokens"), ids("continuation_tokens"));
        let tokens: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let mut cache = model.new_cache(tokens.len());
        let logits = model.forward(&tokens, &mut cache, Logits::All).unwrap();

        let mut case_worst = 0f64;
        for step in case["steps"].as_array().unwrap() {
            let pos = step["pos"].as_u64().unwrap() as usize;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let top5 = step["ref_top5"].as_array().unwrap();
            for pair in top5 {
                let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
                let diff = (row[id] as f64 - want).abs();
                case_worst = case_worst.max(diff);
                assert!(diff <= 0.02, "case {:?} pos {pos} token {id}: logit {} vs reference {want}", case["prompt"], row[id]);
            }
            let argmax = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(argmax as u64, top5[0][0].as_u64().unwrap(), "argmax differs at pos {pos}");
        }
        let mean_nll: f64 = (0..cont.len())
            .map(|i| nll(&logits[(prompt.len() - 1 + i) * vocab..][..vocab], cont[i] as usize))
            .sum::<f64>()
            / cont.len() as f64;
        let ratio = mean_nll / case["mean_nll_ref"].as_f64().unwrap();
        println!("case {:?}: worst top-5 logit diff {case_worst:.5}, mean NLL {mean_nll:.5} (ratio to reference {ratio:.5})", case["prompt"]);
        assert!((ratio - 1.0).abs() <= 0.01, "mean NLL ratio {ratio} outside 1%");
        worst = worst.max(case_worst);
    }
    println!("worst top-5 logit difference over all cases: {worst:.5}");
}

#[test]
fn incremental_decode_equals_batched_prefill() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let model = CpuModel::load(&gguf, &file).unwrap();
    let tokens = [504u32, 3575, 282, 4649, 314, 7042, 30];
    let mut batched = model.new_cache(16);
    let all = model.forward(&tokens, &mut batched, Logits::All).unwrap();
    let mut inc = model.new_cache(16);
    model.forward(&tokens[..3], &mut inc, Logits::Last).unwrap();
    let mut last = Vec::new();
    for &t in &tokens[3..] {
        last = model.forward(&[t], &mut inc, Logits::Last).unwrap();
    }
    let v = model.config.vocab_size;
    let want = &all[(tokens.len() - 1) * v..];
    let diff = want.iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-3, "incremental decode differs from batched prefill by {diff}");

    // Rolling the cache back and re-running gives the same logits again.
    inc.truncate(tokens.len() - 1);
    let again = model.forward(&tokens[tokens.len() - 1..], &mut inc, Logits::Last).unwrap();
    assert_eq!(again, last);
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let model = CpuModel::load(&gguf, &file).unwrap();
    let mut cache = model.new_cache(4);
    let err = model.forward(&[1, 2, 3, 4, 5], &mut cache, Logits::Last).unwrap_err();
    assert!(matches!(err, ferrolm::Error::PromptTooLong { tokens: 5, context: 4 }), "{err}");
    assert!(err.to_string().contains("shorten the prompt"));
    let err = model.forward(&[999_999], &mut cache, Logits::Last).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
