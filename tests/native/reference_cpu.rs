//! The CPU reference forward against the exact f32 logits in `../shared/reference/smollm2-135m`.

use crate::common;

use ferrolm::backend::reference::{CpuModel, Logits};
use ferrolm::gguf::Gguf;

#[test]
fn smollm2_forced_logits_match_f32_reference() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let model = CpuModel::load(&gguf, &file).unwrap();
    common::check_smollm2_forced_logits("CPU", model.config.vocab_size, usize::MAX, |tokens| model.forward(tokens, &mut model.new_cache(tokens.len()), Logits::All).unwrap());
}

#[test]
fn incremental_decode_equals_batched_prefill() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let model = CpuModel::load(&gguf, &file).unwrap();
    let tokens = [504u32, 3575, 282, 4649, 314, 7042, 30];
    let (diff, mut inc, last) = common::incremental_vs_batched(&model, &tokens);
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
