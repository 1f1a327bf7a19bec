//! Checks of one teacher-forced reference case (`../shared/reference/*/forced-logits*.json`: a
//! prompt, then the logits of the positions after it), shared by the native tests and the
//! browser's: plain functions of the parsed case and the logits of the positions from the
//! prompt's last on (`Engine::score_from`).
#![allow(dead_code)]

use serde_json::Value;

/// The case's prompt and continuation, and every token in order.
pub fn tokens(case: &Value) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let ids = |k: &str| -> Vec<u32> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let (prompt, cont) = (ids("prompt_tokens"), ids("continuation_tokens"));
    let all = prompt.iter().chain(&cont).copied().collect();
    (prompt, cont, all)
}

/// The first position whose logits the checks read: the prompt's last.
pub fn first_position(case: &Value) -> usize {
    case["prompt_tokens"].as_array().unwrap().len() - 1
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// The mean NLL of the continuation under `logits` (rows from the first position on).
fn mean_nll(case: &Value, vocab: usize, logits: &[f32]) -> f64 {
    let (_, cont, _) = tokens(case);
    (0..cont.len()).map(|i| ferrolm::backend::reference::ops::nll(&logits[i * vocab..(i + 1) * vocab], cont[i] as usize)).sum::<f64>() / cont.len() as f64
}

/// An f32-exact backend against the exact reference (`ref_top5`): every top-5 logit within
/// 0.02, the same argmax, the mean NLL within 1%, as in the short cases. Returns the worst
/// logit difference and the NLL ratio.
pub fn check_exact(what: &str, case: &Value, vocab: usize, logits: &[f32]) -> (f64, f64) {
    check_exact_within(what, case, vocab, logits, 0.02)
}

/// How far an f16 KV cache (the GPU's default) may move an otherwise f32-exact forward's top-5
/// logits from the exact reference. Measured on lavapipe: at most 0.010 over SmolLM2's short
/// cases (within `check_exact`'s 0.02), 0.011 over its long case (~1,050 positions), 0.014 on
/// Gemma 3; 8e-5 with an f32 cache. Packing variants moved the long case to 0.025.
pub const F16_KV_TOP5: f64 = 0.05;

/// [`check_exact`] with top-5 logits within `tol` of the reference's.
pub fn check_exact_within(what: &str, case: &Value, vocab: usize, logits: &[f32], tol: f64) -> (f64, f64) {
    let from = first_position(case);
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(logits.len(), (tokens(case).2.len() - from) * vocab, "{what}: one row per position from {from}");
    let mut worst = 0f64;
    for step in steps {
        let pos = step["pos"].as_u64().unwrap() as usize;
        let row = &logits[(pos - from) * vocab..(pos - from + 1) * vocab];
        let top5 = step["ref_top5"].as_array().unwrap();
        assert_eq!(top5.len(), 5);
        for pair in top5 {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            let diff = (row[id] as f64 - want).abs();
            worst = worst.max(diff);
            assert!(diff <= tol, "{what}: case {:.40?} pos {pos} token {id}: logit {} vs reference {want}", case["prompt"].as_str().unwrap_or(""), row[id]);
        }
        assert_eq!(argmax(row) as u64, top5[0][0].as_u64().unwrap(), "{what}: argmax differs at pos {pos}");
    }
    let ratio = mean_nll(case, vocab, logits) / case["mean_nll_ref"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() <= 0.01, "{what}: mean NLL ratio {ratio} outside 1%");
    (worst, ratio)
}

/// How close a backend must come to a reference's top-5 (`key`: `ref_top5` or
/// `llamacpp_top5`) and mean NLL (`nll_key`).
pub struct Close {
    pub key: &'static str,
    pub nll_key: &'static str,
    /// The argmax must agree wherever the reference's top-1 leads by at least this much.
    pub near_tie: f64,
    /// The least share of positions whose argmax agrees.
    pub min_agree: f64,
    /// The largest relative difference of the mean NLL.
    pub nll_tol: f64,
}

/// The CPU backend (8-bit activations, like llama.cpp) against the exact reference, with the
/// short cases' near-tie margin (tests/native/cpu_backend.rs) and a single case's NLL spread.
pub const EIGHT_BIT_VS_EXACT: Close = Close { key: "ref_top5", nll_key: "mean_nll_ref", near_tie: 0.5, min_agree: 0.9, nll_tol: 0.03 };

/// Any backend against llama.cpp (both sides carry 8-bit noise: the wider margin of the short
/// Gemma cases), llama.cpp-level agreement.
pub const VS_LLAMACPP: Close = Close { key: "llamacpp_top5", nll_key: "mean_nll_llamacpp", near_tie: 0.75, min_agree: 0.9, nll_tol: 0.03 };

/// `logits` against `close`'s reference; returns the positions whose argmax agrees, the
/// positions, and the NLL ratio.
pub fn check_close(what: &str, case: &Value, vocab: usize, logits: &[f32], close: &Close) -> (usize, usize, f64) {
    let from = first_position(case);
    assert_eq!(logits.len(), (tokens(case).2.len() - from) * vocab, "{what}: one row per position from {from}");
    let steps = case["steps"].as_array().unwrap();
    let mut agree = 0;
    for step in steps {
        let pos = step["pos"].as_u64().unwrap() as usize;
        let top = &step[close.key];
        let agrees = argmax(&logits[(pos - from) * vocab..(pos - from + 1) * vocab]) as u64 == top[0][0].as_u64().unwrap();
        let margin = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
        assert!(agrees || margin < close.near_tie, "{what}: long case pos {pos}: argmax differs where {} leads by {margin:.3}", close.key);
        agree += usize::from(agrees);
    }
    let ratio = mean_nll(case, vocab, logits) / case[close.nll_key].as_f64().unwrap();
    println!("{what}: long case argmax agrees with {} on {agree}/{} positions, mean NLL ratio {ratio:.4}", close.key, steps.len());
    assert!(agree as f64 >= close.min_agree * steps.len() as f64, "{what}: long case argmax agrees on {agree}/{} positions", steps.len());
    assert!((ratio - 1.0).abs() <= close.nll_tol, "{what}: long case mean NLL ratio {ratio} outside {}", close.nll_tol);
    (agree, steps.len(), ratio)
}
