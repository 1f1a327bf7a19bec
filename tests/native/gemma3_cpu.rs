//! The CPU reference forward of Gemma 3 270M against llama.cpp's logits in
//! `../shared/reference/gemma3-270m`. There is no exact f32 reference for this model and llama.cpp
//! quantizes activations inside its dot products, so agreement is llama.cpp-level: argmax on 90%
//! of positions, mean NLL within 3% over all cases, and per case within 5%: in the chat case one
//! position (30) holds most of a 4% gap, and there llama.cpp's forced top-1 is not the token its
//! own greedy run chose (ours is). The top-5 spread check catches structural mistakes that the
//! argmax and NLL can miss.

use crate::common;

use std::sync::OnceLock;

use ferrolm::backend::reference::{ops, CpuModel, Logits};
use ferrolm::gguf::Gguf;

/// Loaded once: dequantized to f32 the model takes about 1 GiB.
fn model() -> &'static CpuModel {
    static MODEL: OnceLock<CpuModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let file = std::fs::File::open(common::model_path(common::GEMMA3)).unwrap();
        let gguf = Gguf::read(&file).unwrap();
        CpuModel::load(&gguf, &file).unwrap()
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

#[test]
fn gemma3_forced_logits_agree_with_llamacpp() {
    let model = model();
    let vocab = model.config.vocab_size;
    let reference = common::read_json(&common::reference_path("gemma3-270m/forced-logits.json"));
    let (mut nll_sum, mut nll_ref_sum, mut n_cont) = (0f64, 0f64, 0usize);
    for case in reference["cases"].as_array().unwrap() {
        let what = &case["prompt"];
        let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
        let (prompt, cont) = (ids("prompt_tokens"), ids("continuation_tokens"));
        assert_eq!(prompt[0], 2, "the reference prompts start with BOS");
        let tokens: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let logits = model.forward(&tokens, &mut model.new_cache(tokens.len()), Logits::All).unwrap();
        assert!(logits.iter().all(|l| l.is_finite()), "non-finite logits for {what:?}");

        let steps = case["steps"].as_array().unwrap();
        let (mut agree, mut spread) = (0, 0f64);
        for step in steps {
            let pos = step["pos"].as_u64().unwrap() as usize;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let top5 = step["llamacpp_top5"].as_array().unwrap();
            agree += usize::from(argmax(row) as u64 == top5[0][0].as_u64().unwrap());
            spread += centered_spread(row, top5);
        }
        let agreement = agree as f64 / steps.len() as f64;
        let spread = spread / steps.len() as f64;
        let nll: f64 = (0..cont.len()).map(|i| ops::nll(&logits[(prompt.len() - 1 + i) * vocab..][..vocab], cont[i] as usize)).sum();
        let nll_ref = case["mean_nll_llamacpp"].as_f64().unwrap() * cont.len() as f64;
        let ratio = nll / nll_ref;
        println!(
            "case {what:?}: argmax = llama.cpp's on {agree}/{} positions ({:.1}%), mean NLL {:.5} vs {:.5} (ratio {ratio:.4}), top-5 logit spread {spread:.4}",
            steps.len(),
            100.0 * agreement,
            nll / cont.len() as f64,
            nll_ref / cont.len() as f64,
        );
        assert!(agreement >= 0.9, "argmax agreement {agreement} below 90% for {what:?}");
        assert!((ratio - 1.0).abs() <= 0.05, "mean NLL ratio {ratio} outside 5% for {what:?}");
        assert!(spread <= 0.12, "top-5 logits deviate from llama.cpp's by {spread} on average for {what:?}");
        (nll_sum, nll_ref_sum, n_cont) = (nll_sum + nll, nll_ref_sum + nll_ref, n_cont + cont.len());
    }
    let ratio = nll_sum / nll_ref_sum;
    println!("all cases: mean NLL {:.5} vs llama.cpp {:.5} (ratio {ratio:.4})", nll_sum / n_cont as f64, nll_ref_sum / n_cont as f64);
    assert!((ratio - 1.0).abs() <= 0.03, "mean NLL ratio over all cases {ratio} outside 3%");
}

/// Mean absolute deviation of (ours - llama.cpp) over llama.cpp's top 5 after removing the mean
/// difference, which softmax ignores. llama.cpp's own precision (8-bit activations, f16 KV and
/// GELU table) gives about 0.07 here; wrong RoPE bases, layer pattern or attention scale 0.14+.
fn centered_spread(row: &[f32], top5: &[serde_json::Value]) -> f64 {
    let d: Vec<f64> = top5.iter().map(|p| row[p[0].as_u64().unwrap() as usize] as f64 - p[1].as_f64().unwrap()).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    d.iter().map(|x| (x - mean).abs()).sum::<f64>() / d.len() as f64
}

#[test]
fn gemma3_incremental_decode_equals_batched_prefill() {
    let model = model();
    let (diff, _, _) = common::incremental_vs_batched(model, &[2, 818, 5279, 529, 7001, 563, 506]);
    assert!(diff < 1e-3, "incremental decode differs from batched prefill by {diff}");
}
