//! The GPU forward (native wgpu; lavapipe on CI) against the exact f32 reference logits.

mod common;

use ferrolm::cpu::ops::nll;
use ferrolm::gguf::Gguf;
use ferrolm::gpu::{GpuContext, GpuModel, GpuOptions};

fn load_smollm2() -> GpuModel {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    pollster::block_on(async {
        let ctx = GpuContext::new(GpuOptions::default()).await.unwrap();
        eprintln!("adapter: {:?}", ctx.info);
        GpuModel::load(ctx, &gguf, &file, 512, 64).await.unwrap()
    })
}

#[test]
fn smollm2_gpu_forced_logits_match_f32_reference() {
    let model = load_smollm2();
    let vocab = model.config.vocab_size;
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
        let (prompt, cont) = (ids("prompt_tokens"), ids("continuation_tokens"));
        let tokens: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let logits = pollster::block_on(model.score(&tokens)).unwrap();
        let mut case_worst = 0f64;
        for step in case["steps"].as_array().unwrap() {
            let pos = step["pos"].as_u64().unwrap() as usize;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let top5 = step["ref_top5"].as_array().unwrap();
            for pair in top5 {
                let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
                let diff = (row[id] as f64 - want).abs();
                case_worst = case_worst.max(diff);
                assert!(diff <= 0.02, "case {:?} pos {pos} token {id}: GPU logit {} vs reference {want}", case["prompt"], row[id]);
            }
            let argmax = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(argmax as u64, top5[0][0].as_u64().unwrap(), "argmax differs at pos {pos}");
        }
        let mean_nll: f64 = (0..cont.len()).map(|i| nll(&logits[(prompt.len() - 1 + i) * vocab..][..vocab], cont[i] as usize)).sum::<f64>() / cont.len() as f64;
        let ratio = mean_nll / case["mean_nll_ref"].as_f64().unwrap();
        println!("GPU case {:?}: worst top-5 logit diff {case_worst:.5}, NLL ratio {ratio:.5}", case["prompt"]);
        assert!((ratio - 1.0).abs() <= 0.01, "mean NLL ratio {ratio} outside 1%");
        worst = worst.max(case_worst);
    }
    println!("GPU worst top-5 logit difference over all cases: {worst:.5}");
}

/// Greedy continuation of `prompt` by repeated `extend_greedy` (no tokenizer involved).
fn greedy<S: ferrolm::generate::Session>(session: &mut S, prompt: &[u32], n: usize) -> Vec<u32> {
    pollster::block_on(async {
        let mut next = session.extend_greedy(prompt).await.unwrap();
        let mut out = vec![next];
        while out.len() < n {
            next = session.extend_greedy(&[next]).await.unwrap();
            out.push(next);
        }
        out
    })
}

/// GPU greedy decoding (one token per step through the KV cache) equals the CPU reference's, and
/// the tokens are recorded for the browser test to compare against.
#[test]
fn gpu_greedy_equals_cpu_greedy_and_is_recorded_for_the_browser() {
    let model = load_smollm2();
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let cpu = ferrolm::cpu::CpuModel::load(&Gguf::read(&file).unwrap(), &file).unwrap();
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let mut records = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        let prompt: Vec<u32> = case["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let gpu_tokens = greedy(&mut ferrolm::gpu::GpuSession::new(&model), &prompt, 24);
        let cpu_tokens = greedy(&mut ferrolm::generate::CpuSession::new(&cpu, 512), &prompt, 24);
        assert_eq!(gpu_tokens, cpu_tokens, "GPU and CPU greedy continuations differ for {:?}", case["prompt"]);
        records.push(serde_json::json!({ "prompt_tokens": prompt, "tokens": gpu_tokens }));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("greedy-native.json"), serde_json::to_string(&records).unwrap()).unwrap();
}
