//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja) rendered with minijinja, with the
//! Python string methods templates call (`strip`, `startswith`, ...) from minijinja-contrib and
//! Hugging Face's whitespace settings (trim_blocks, lstrip_blocks).

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::Metadata;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn chat_err(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::ChatTemplate(msg)
}

impl ChatTemplate {
    /// The model's template, or `None` when the GGUF has none.
    pub fn from_gguf(meta: &Metadata, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
        let Some(source) = meta.opt_str("tokenizer.chat_template")? else { return Ok(None) };
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        ChatTemplate::new(source, &text(tok.bos_id()), &text(tok.eos_id())).map(Some)
    }

    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(chat_err)?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> { Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg)) });
        env.add_template_owned("chat", source.to_string()).map_err(chat_err)?;
        Ok(ChatTemplate { env, bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(chat_err)?;
        let messages: Vec<minijinja::Value> = messages.iter().map(|m| context! { role => &m.role, content => &m.content }).collect();
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(chat_err)
    }
}

/// Renders a chat with the model's template; a clear error when the model has none.
pub fn render_chat(template: Option<&ChatTemplate>, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
    let t = template.ok_or_else(|| Error::ChatTemplate("this model has no chat template (tokenizer.chat_template); send a raw prompt instead of chat messages".into()))?;
    if messages.is_empty() {
        return Err(Error::InvalidOption { option: "messages", reason: "a chat needs at least one message".into() });
    }
    t.render(messages, add_generation_prompt)
}
