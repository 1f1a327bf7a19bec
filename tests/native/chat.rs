//! Chat templates from the real GGUFs, rendered with minijinja.

use crate::common;

use ferrolm::chat::{render_chat, ChatMessage, ChatTemplate};
use ferrolm::gguf::Gguf;
use ferrolm::tokenizer::Tokenizer;

/// Output bound for the tests: what 8,192 tokens of up to 128 bytes can hold.
const MAX: usize = 8192 * 128;

fn template(model: &str) -> Option<ChatTemplate> {
    let file = std::fs::File::open(common::model_path(model)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap()
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
}

#[test]
fn smollm2_chatml_template() {
    let t = template(common::SMOLLM2).expect("SmolLM2 ships a chat template");
    let text = t.render(&[msg("system", "Be brief."), msg("user", "hi")], None, true, MAX).unwrap();
    assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    let text = t.render(&[msg("user", "hi")], None, false, MAX).unwrap();
    assert!(text.ends_with("<|im_start|>user\nhi<|im_end|>\n"), "{text:?}");
}

/// The pretrained Gemma 3 270M file has no template: chat is refused with a clear error.
#[test]
fn gemma3_base_model_has_no_template() {
    let t = template(common::GEMMA3);
    assert!(t.is_none());
    let err = render_chat(t.as_ref(), &[msg("user", "hi")], None, true, MAX).unwrap_err().to_string();
    assert!(err.contains("no chat template"), "{err}");
}

/// Python string methods and loop controls that real templates use.
#[test]
fn pythonic_template_features() {
    let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}<{{ m.role }}>{{ m.content.strip() }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    let text = t.render(&[msg("system", "x"), msg("user", "  hi  ")], None, true, MAX).unwrap();
    assert_eq!(text, "<s><user>hi<assistant>");
}

#[test]
fn missing_template_and_template_errors_are_clear() {
    let err = render_chat(None, &[msg("user", "hi")], None, true, MAX).unwrap_err().to_string();
    assert!(err.contains("no chat template"), "{err}");
    let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
    let err = t.render(&[msg("user", "hi")], None, true, MAX).unwrap_err().to_string();
    assert!(err.contains("roles must alternate"), "{err}");
    let err = ChatTemplate::new("{% if %}", "", "").err().unwrap().to_string();
    assert!(err.contains("chat template error"), "{err}");
}
