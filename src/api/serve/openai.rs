//! The OpenAI HTTP API's shapes for `ferrolm serve`: request bodies of `/v1/chat/completions`
//! and `/v1/completions` into the engine's request, and generations into completion objects and
//! streamed chunks, as the npm package's in-page engine shapes them (`pkg/src/index.ts`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::api::request::{GenerateRequest, Input};
use crate::api::tools::{parse_call, Tool};
use crate::engine::RequestStats;
use crate::error::Error;
use crate::sample::Generation;

/// An error as the OpenAI API returns it: an HTTP status and `{"error": {message, type, code}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503 (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        let kind = match status {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        ApiError { status, kind, code, message: message.into(), retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(400, "invalid_request", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "unavailable", message)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "code": self.code, "param": null } })
    }
}

impl From<&Error> for ApiError {
    fn from(e: &Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidOption { .. }
            | Error::PromptTooLong { .. }
            | Error::PromptTooLarge { .. }
            | Error::TokenOutOfRange { .. }
            | Error::ChatTemplate(_)
            | Error::Tokenizer(_)
            | Error::Constraint(_) => ApiError::invalid(message),
            Error::KvCacheFull { .. } => ApiError::new(503, "overloaded", message).retry_after(1),
            Error::DeviceLost(_) => ApiError::new(500, "device_lost", message),
            _ => ApiError::new(500, "engine", message),
        }
    }
}

/// Which endpoint a body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A request body, parsed and checked.
pub struct Parsed {
    /// The model the client named (checked against the served one).
    pub model: Option<String>,
    pub input: Input,
    pub stream: bool,
    /// Logprobs were asked for (they come back in the endpoint's format).
    pub logprobs: bool,
    /// Tools a reply may call (none when `tool_choice` is "none").
    pub tools: Vec<Tool>,
    pub req: GenerateRequest,
}

fn take_bool(map: &mut Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(v) => Err(ApiError::invalid(format!("invalid request: {key} must be true or false, not {v}"))),
    }
}

/// A message's content as text: OpenAI's list of parts is joined when every part is text.
fn content_text(message: &mut Value) -> Result<(), ApiError> {
    if let Some(Value::Array(parts)) = message.get("content") {
        let mut text = String::new();
        for p in parts {
            match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => text.push_str(t),
                _ => return Err(ApiError::invalid(format!("invalid request: only text message parts are supported, not {p}"))),
            }
        }
        message["content"] = Value::String(text);
    }
    Ok(())
}

/// Parses a body of `endpoint`: OpenAI's fields, and ferrolm's own (`regex`, `grammar`,
/// `speculative`, ...). An option the engine does not implement is refused by name.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid request: the body is not JSON ({e})")))?;
    let Value::Object(mut map) = value else { return Err(ApiError::invalid("invalid request: the body must be a JSON object")) };
    let model = match map.remove("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => return Err(ApiError::invalid(format!("invalid request: model must be a string, not {v}"))),
    };
    let stream = take_bool(&mut map, "stream")?;
    // Usage always comes on the last chunk; `user` is for the client's own bookkeeping.
    map.remove("stream_options");
    map.remove("user");
    if let Some(n) = map.remove("n") {
        if n != json!(1) {
            return Err(ApiError::invalid(format!("invalid request: n = {n}; this server returns one choice per request, send n = 1 or leave it out")));
        }
    }
    if let Some(m) = map.remove("max_completion_tokens") {
        map.entry("max_tokens").or_insert(m);
    }
    match map.get("stop") {
        Some(Value::String(s)) => {
            let stop = vec![Value::String(s.clone())];
            map.insert("stop".into(), Value::Array(stop));
        }
        Some(Value::Null) => {
            map.remove("stop");
        }
        _ => {}
    }
    let (input, logprobs) = match endpoint {
        Endpoint::Chat => {
            let Some(Value::Array(mut messages)) = map.remove("messages") else { return Err(ApiError::invalid("invalid request: messages (an array of {role, content}) is required")) };
            for m in &mut messages {
                content_text(m)?;
            }
            let messages = serde_json::from_value(Value::Array(messages)).map_err(|e| ApiError::invalid(format!("invalid request: messages: {e}")))?;
            // `logprobs: true` with `top_logprobs: n` alternatives.
            let logprobs = take_bool(&mut map, "logprobs")?;
            let top = map.remove("top_logprobs").unwrap_or(Value::Null);
            if logprobs {
                map.insert("logprobs".into(), if top.is_null() { json!(0) } else { top });
            }
            (Input::Messages(messages), logprobs)
        }
        Endpoint::Completions => {
            let prompt = match map.remove("prompt") {
                Some(Value::String(p)) => p,
                Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().expect("checked").to_string(),
                _ => return Err(ApiError::invalid("invalid request: prompt (one string) is required")),
            };
            if map.get("logprobs").is_some_and(Value::is_null) {
                map.remove("logprobs");
            }
            map.remove("echo").filter(|e| e != &json!(false)).map_or(Ok(()), |_| Err(ApiError::invalid("invalid request: echo is not supported; leave it out")))?;
            (Input::Prompt(prompt), map.contains_key("logprobs"))
        }
    };
    let calls = map.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) && map.get("tool_choice") != Some(&json!("none"));
    let req: GenerateRequest = serde_json::from_value(Value::Object(map)).map_err(|e| ApiError::invalid(format!("invalid request: {e}")))?;
    let tools = if calls { req.tools().to_vec() } else { Vec::new() };
    Ok(Parsed { model, input, stream, logprobs, tools, req })
}

/// One chosen token's logprob and its alternatives, with their text.
#[derive(Clone, Debug, Serialize)]
pub struct NamedLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

fn usage(s: &RequestStats) -> Value {
    json!({ "prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens, "total_tokens": s.prompt_tokens + s.generated_tokens })
}

/// ferrolm's own figures, as the in-page engine gives them.
fn timings(s: &RequestStats) -> Value {
    json!({
        "ttft_ms": s.ttft_ms, "tpot_ms": s.tpot_ms, "tokens_per_s": if s.tpot_ms > 0.0 { 1000.0 / s.tpot_ms } else { 0.0 },
        "cached_tokens": s.cached_tokens, "preemptions": s.preemptions, "drafted": s.drafted, "accepted": s.accepted,
    })
}

fn chat_logprobs(lps: &[NamedLogprob]) -> Value {
    let entry = |t: &str, lp: f32| json!({ "token": t, "logprob": lp, "bytes": t.as_bytes() });
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = entry(&l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|(t, p)| entry(t, *p)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

fn completion_logprobs(lps: &[NamedLogprob]) -> Value {
    let tokens: Vec<&str> = lps.iter().map(|l| l.token.as_str()).collect();
    let token_logprobs: Vec<f32> = lps.iter().map(|l| l.logprob).collect();
    let top: Vec<Map<String, Value>> = lps.iter().map(|l| l.top.iter().map(|(t, p)| (t.clone(), json!(p))).collect()).collect();
    json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// What every object of one response shares: its id, creation time and model.
#[derive(Clone)]
pub struct Envelope {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
        Envelope { id: format!("{prefix}-{created:x}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)), created, model: model.into() }
    }

    fn object(&self, object: &str, choice: Value) -> Value {
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice] })
    }
}

/// The call a chat reply makes, when tools were offered and the reply is one.
fn tool_call(envelope: &Envelope, text: &str, tools: &[Tool]) -> Option<Value> {
    let call = parse_call(text, tools)?;
    Some(json!({ "id": format!("call_{}", envelope.id), "type": "function", "function": { "name": call.name, "arguments": call.arguments } }))
}

/// A finished chat request as one `chat.completion`.
pub fn chat_completion(envelope: &Envelope, generation: &Generation, stats: &RequestStats, tools: &[Tool], logprobs: Option<&[NamedLogprob]>) -> Value {
    let call = if tools.is_empty() { None } else { tool_call(envelope, &generation.text, tools) };
    let (message, finish) = match call {
        Some(call) => (json!({ "role": "assistant", "content": null, "tool_calls": [call] }), "tool_calls"),
        None => (json!({ "role": "assistant", "content": generation.text }), generation.finish_reason.as_str()),
    };
    let choice = json!({ "index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs.map(chat_logprobs) });
    let mut out = envelope.object("chat.completion", choice);
    out["usage"] = usage(stats);
    out["ferrolm"] = timings(stats);
    out
}

/// A finished completions request as one `text_completion`.
pub fn completion(envelope: &Envelope, generation: &Generation, stats: &RequestStats, logprobs: Option<&[NamedLogprob]>) -> Value {
    let choice = json!({ "index": 0, "text": generation.text, "finish_reason": generation.finish_reason.as_str(), "logprobs": logprobs.map(completion_logprobs) });
    let mut out = envelope.object("text_completion", choice);
    out["usage"] = usage(stats);
    out["ferrolm"] = timings(stats);
    out
}

/// The chunks of one streamed response, built as its tokens arrive. With tools, a chat reply
/// that starts with `{` is held back and sent as `tool_calls` when it is a call.
pub struct Chunks {
    pub envelope: Envelope,
    endpoint: Endpoint,
    tools: Vec<Tool>,
    held: Option<String>,
}

impl Chunks {
    pub fn new(envelope: Envelope, endpoint: Endpoint, tools: Vec<Tool>) -> Self {
        Chunks { envelope, endpoint, tools, held: None }
    }

    /// The first chunk (chat: the assistant's role), if the endpoint sends one.
    pub fn start(&self) -> Option<Value> {
        (self.endpoint == Endpoint::Chat).then(|| self.chat(json!({ "role": "assistant" }), Value::Null))
    }

    fn chat(&self, delta: Value, finish: Value) -> Value {
        self.envelope.object("chat.completion.chunk", json!({ "index": 0, "delta": delta, "finish_reason": finish }))
    }

    fn text(&self, text: &str, finish: Value) -> Value {
        self.envelope.object("text_completion", json!({ "index": 0, "text": text, "finish_reason": finish }))
    }

    /// The chunk for a piece of final text, unless it is empty or held back.
    pub fn token(&mut self, text: &str) -> Option<Value> {
        if self.endpoint == Endpoint::Completions {
            return (!text.is_empty()).then(|| self.text(text, Value::Null));
        }
        if self.held.is_none() && !self.tools.is_empty() && text.trim_start().starts_with('{') {
            self.held = Some(String::new());
        }
        match &mut self.held {
            Some(held) => {
                held.push_str(text);
                None
            }
            None => (!text.is_empty()).then(|| self.chat(json!({ "content": text }), Value::Null)),
        }
    }

    /// The last chunks: held text (as a call or as content), then the finish reason with the
    /// usage and timings.
    pub fn done(&mut self, generation: &Generation, stats: &RequestStats, logprobs: Option<&[NamedLogprob]>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut finish = generation.finish_reason.as_str();
        let mut last = if self.endpoint == Endpoint::Chat {
            if let Some(held) = self.held.take() {
                match tool_call(&self.envelope, &held, &self.tools) {
                    Some(mut call) => {
                        call["index"] = json!(0);
                        out.push(self.chat(json!({ "tool_calls": [call] }), Value::Null));
                        finish = "tool_calls";
                    }
                    None if !held.is_empty() => out.push(self.chat(json!({ "content": held }), Value::Null)),
                    None => {}
                }
            }
            let mut last = self.chat(json!({}), json!(finish));
            last["choices"][0]["logprobs"] = logprobs.map_or(Value::Null, chat_logprobs);
            last
        } else {
            let mut last = self.text("", json!(finish));
            last["choices"][0]["logprobs"] = logprobs.map_or(Value::Null, completion_logprobs);
            last
        };
        last["usage"] = usage(stats);
        last["ferrolm"] = timings(stats);
        out.push(last);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_with_openai_names_and_bad_ones_say_what_is_wrong() {
        let p = parse(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"stream":true,"stop":"x","n":1,"logprobs":true,"top_logprobs":2,"max_completion_tokens":5,"stream_options":{"include_usage":true}}"#, Endpoint::Chat).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert!(p.stream && p.logprobs && p.tools.is_empty());
        match &p.input {
            Input::Messages(m) => assert_eq!(m[0].content, "Hi"),
            other => panic!("{other:?}"),
        }
        let opts = p.req.into_options().unwrap();
        assert_eq!((opts.max_tokens, opts.stop, opts.logprobs), (5, vec!["x".to_string()], Some(2)));

        let p = parse(br#"{"prompt":["Once"],"logprobs":3}"#, Endpoint::Completions).unwrap();
        assert!(matches!(p.input, Input::Prompt(ref t) if t == "Once") && p.logprobs);

        for (body, endpoint, says) in [
            (&br#"{"messages": 3}"#[..], Endpoint::Chat, "messages"),
            (br#"not json"#, Endpoint::Chat, "not JSON"),
            (br#"[1]"#, Endpoint::Chat, "JSON object"),
            (br#"{"messages":[],"n":2}"#, Endpoint::Chat, "one choice"),
            (br#"{"messages":[],"best_of":2}"#, Endpoint::Chat, "best_of"),
            (br#"{"prompt":"a","echo":true}"#, Endpoint::Completions, "echo"),
            (br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, Endpoint::Chat, "text message parts"),
        ] {
            let e = parse(body, endpoint).err().unwrap_or_else(|| panic!("{} parsed", String::from_utf8_lossy(body)));
            assert_eq!(e.status, 400);
            assert!(e.message.contains(says), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
    }

    #[test]
    fn a_held_tool_call_streams_as_tool_calls() {
        let tools: Vec<Tool> = serde_json::from_value(json!([{ "type": "function", "function": { "name": "f" } }])).unwrap();
        let mut c = Chunks::new(Envelope::new(Endpoint::Chat, "m"), Endpoint::Chat, tools);
        assert!(c.token("{\"name\": \"f\", ").is_none() && c.token("\"arguments\": {}}").is_none());
        let generation =
            Generation { tokens: vec![1], text: "{\"name\": \"f\", \"arguments\": {}}".into(), finish_reason: crate::sample::FinishReason::Stop, logprobs: vec![], stats: Default::default() };
        let out = c.done(&generation, &RequestStats::default(), None);
        assert_eq!(out[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(out[1]["choices"][0]["finish_reason"], "tool_calls");
    }
}
