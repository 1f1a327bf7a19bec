//! Gemma 3 270M (Q5_0 / Q4_K / Q6_K / Q8_0) on the GPU engine (lavapipe on CI): logits against
//! the exact f32 CPU reference on the two shorter reference cases, and llama.cpp-level
//! agreement (the checks of tests/native/gemma3_cpu.rs). The GPU's top-5 are recorded for the
//! browser test.

use crate::common;

use ferrolm::backend::reference::{CpuModel, Logits};
use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions};
use ferrolm::engine::{Engine, ModelOptions, Request};
use ferrolm::gguf::Gguf;
use ferrolm::sample::{GenerateOptions, Grammar};
use ferrolm::tokenizer::Tokenizer;

#[test]
fn gemma3_gpu_logits_match_the_cpu_reference_and_llamacpp() {
    let file = std::fs::File::open(common::model_path(common::GEMMA3)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let cpu = CpuModel::load(&gguf, &file).unwrap();
    // The 178 MB embedding is split across bindings of at most 128 MiB here, as on most adapters.
    let gpu = pollster::block_on(async { GpuModel::load(GpuContext::new(GpuOptions::default()).await.unwrap(), &gguf, &file, &ModelOptions::new(256, 64)).await.unwrap() });
    let mut gpu = Engine::new(gpu);
    let vocab = cpu.config.vocab_size;
    let reference = common::read_json(&common::reference_path("gemma3-270m/forced-logits.json"));
    let mut worst = 0f64;
    let mut records = Vec::new();
    let (mut nll, mut nll_ref) = (0f64, 0f64);
    // The two shorter cases (the browser compares their records): every row through Gemma 3's
    // 262k-row LM head is slow on lavapipe.
    for case in reference["cases"].as_array().unwrap().iter().take(2) {
        let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
        let (prompt, cont) = (ids("prompt_tokens"), ids("continuation_tokens"));
        let tokens: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let want = cpu.forward(&tokens, &mut cpu.new_cache(tokens.len()), Logits::All).unwrap();
        // Only the rows the checks read (the prompt's last position on): Gemma 3's LM head is
        // 262k rows, most of a position's work.
        let from = prompt.len() - 1;
        let got = pollster::block_on(gpu.score_from(&tokens, from)).unwrap();
        let steps = case["steps"].as_array().unwrap();
        let mut agree = 0;
        let mut top = Vec::new();
        for step in steps {
            let pos = step["pos"].as_u64().unwrap() as usize;
            let (g, w) = (&got[(pos - from) * vocab..(pos - from + 1) * vocab], &want[pos * vocab..(pos + 1) * vocab]);
            let t5 = ferrolm::sample::TopLogits::from_logits(w, 5).top;
            for &(id, l) in &t5 {
                worst = worst.max((g[id as usize] - l).abs() as f64);
            }
            let g5 = ferrolm::sample::TopLogits::from_logits(g, 5).top;
            agree += usize::from(g5[0].0 as u64 == step["llamacpp_top5"][0][0].as_u64().unwrap());
            top.push(g5);
        }
        let case_nll: f64 = (0..cont.len()).map(|i| ferrolm::backend::reference::ops::nll(&got[i * vocab..][..vocab], cont[i] as usize)).sum();
        nll += case_nll;
        nll_ref += case["mean_nll_llamacpp"].as_f64().unwrap() * cont.len() as f64;
        println!(
            "GPU case {:?}: argmax = llama.cpp's on {agree}/{} positions, NLL ratio {:.4}",
            case["prompt"],
            steps.len(),
            case_nll / (case["mean_nll_llamacpp"].as_f64().unwrap() * cont.len() as f64)
        );
        assert!(agree as f64 >= 0.9 * steps.len() as f64, "argmax agreement {agree}/{} below 90%", steps.len());
        records.push(serde_json::json!({ "tokens": tokens, "positions": steps.iter().map(|s| s["pos"].clone()).collect::<Vec<_>>(), "top5": top }));
    }
    println!("GPU vs CPU reference: worst difference on the CPU's top-5 logits {worst:.5}; NLL ratio to llama.cpp over all cases {:.4}", nll / nll_ref);
    assert!(worst <= 0.02, "GPU logits differ from the f32 reference by {worst}");
    assert!((nll / nll_ref - 1.0).abs() <= 0.03, "mean NLL ratio {} outside 3%", nll / nll_ref);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gemma3-gpu-native.json"), serde_json::Value::Array(records).to_string()).unwrap();

    // Structured output over the 262k vocabulary: greedy, so the grammar's mask goes to the
    // GPU's argmax and 4 bytes come back.
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let cities = ["Paris", "London", "Berlin", "Rome"];
    let schema = serde_json::json!({"type": "object", "properties": {"capital": {"enum": cities}}, "required": ["capital"], "additionalProperties": false});
    let opts = GenerateOptions { max_tokens: 24, grammar: Some(Grammar::JsonSchema(schema)), ..Default::default() };
    let before = gpu.model().counters();
    let out = pollster::block_on(gpu.generate(&tok, Request { prompt: tok.encode_prompt("The capital of France, as JSON:", false).unwrap(), opts }, |_| {})).unwrap();
    let bytes = gpu.model().counters().since(&before).bytes_written;
    println!("GPU constrained: {} ({} tokens, {} forwards, {bytes} bytes written)", out.text, out.tokens.len(), out.stats.forwards);
    let v: serde_json::Value = serde_json::from_str(&out.text).unwrap();
    assert!(cities.contains(&v["capital"].as_str().unwrap()), "{}", out.text);
    assert!(bytes >= 262_144 / 8, "the mask was not uploaded ({bytes} bytes written)");
}
