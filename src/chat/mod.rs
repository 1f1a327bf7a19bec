//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja) rendered with minijinja, with the
//! Python string methods templates call (`strip`, `startswith`, ...) from minijinja-contrib and
//! Hugging Face's whitespace settings (trim_blocks, lstrip_blocks). The template comes from the
//! model file, so it runs sandboxed (`sandbox`): bounded in time, size and depth.

mod sandbox;

use minijinja::machinery::TemplateConfig;
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
    config: TemplateConfig,
    source: String,
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
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> { Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg)) });
        sandbox::harden(&mut env);
        let config = sandbox::config().map_err(chat_err)?;
        sandbox::compile(source, &config).map_err(chat_err)?;
        Ok(ChatTemplate { env, config, source: source.to_string(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// Whether the template lays out tool definitions itself (it reads `tools`).
    pub fn takes_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// Renders `messages` (and `tools`, OpenAI's tool list, for templates that take them);
    /// with `add_generation_prompt` the text ends where the assistant's answer begins.
    /// `max_bytes` bounds the rendered text and every value the template makes (a prompt the
    /// context can hold: `Tokenizer::max_prompt_bytes`).
    pub fn render(&self, messages: &[ChatMessage], tools: Option<&serde_json::Value>, add_generation_prompt: bool, max_bytes: usize) -> Result<String> {
        let tool_bytes = tools.map_or(0, |t| t.to_string().len());
        let bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum::<usize>() + tool_bytes;
        if bytes > max_bytes {
            return Err(Error::PromptTooLarge { bytes, limit: max_bytes });
        }
        let messages: Vec<minijinja::Value> = messages.iter().map(|m| context! { role => &m.role, content => &m.content }).collect();
        let root = context! {
            messages => messages,
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        sandbox::render(&self.env, &self.source, &self.config, root, max_bytes).map_err(|(e, limit)| match limit {
            Some(limit) => Error::ChatTemplate(format!(
                "the model file's chat template exceeded {} and was stopped{}; the template in the GGUF is at fault: send a raw prompt, or use a model file with a standard template",
                limit.describe(max_bytes),
                e.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            )),
            None => chat_err(e),
        })
    }
}

/// Renders a chat with the model's template in at most `max_bytes`; a clear error when the
/// model has none.
pub fn render_chat(template: Option<&ChatTemplate>, messages: &[ChatMessage], tools: Option<&serde_json::Value>, add_generation_prompt: bool, max_bytes: usize) -> Result<String> {
    let t = template.ok_or_else(|| Error::ChatTemplate("this model has no chat template (tokenizer.chat_template); send a raw prompt instead of chat messages".into()))?;
    if messages.is_empty() {
        return Err(Error::InvalidOption { option: "messages", reason: "a chat needs at least one message".into() });
    }
    t.render(messages, tools, add_generation_prompt, max_bytes)
}
