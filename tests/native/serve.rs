//! `ferrolm serve` as clients use it, through `curl`: chat and completions, plain and streamed
//! (server-sent events), equal the CLI's greedy output; concurrent requests batch; bad requests,
//! limits and auth get OpenAI-shaped errors; a client that disconnects cancels its request; and
//! SIGTERM shuts the server down cleanly.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const PROMPT: &str = "What is the capital of France?";

/// A running `ferrolm serve` on a free port of the loopback interface, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let model = common::model_path(common::SMOLLM2).display().to_string();
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["serve", "--model", &model, "--device", "cpu", "--threads", "1", "--port", "0"]).args(extra).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("the server printed its address").unwrap();
            if let Some(at) = line.find("on http://") {
                break line[at + 3..].split_whitespace().next().unwrap().trim_end_matches("/v1").to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base }
    }

    /// `curl` with `args` against `path`: (HTTP status, headers, body).
    fn curl(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        let out = Command::new("curl").args(["-sS", "-D", "-", "-o", "-"]).args(args).arg(format!("{}{path}", self.base)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, String, String) {
        self.curl(path, &["-H", "content-type: application/json", "-d", &body.to_string()])
    }

    fn stats(&self) -> Value {
        serde_json::from_str(&self.curl("/stats", &[]).2).unwrap()
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> Option<i32> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap().code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CLI's greedy output for `args` (chat or raw), without its trailing newline.
fn cli(args: &[&str]) -> String {
    let model = common::model_path(common::SMOLLM2).display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["generate", "--model", &model, "--device", "cpu"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end_matches('\n').to_string()
}

/// The `data:` payloads of a server-sent-events body; checks the framing on the way.
fn events(body: &str) -> Vec<String> {
    let blocks: Vec<&str> = body.split("\n\n").filter(|b| !b.is_empty()).collect();
    blocks.iter().map(|b| b.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {b:?}")).to_string()).collect()
}

fn chat(stream: bool, max_tokens: usize) -> Value {
    json!({ "model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{ "role": "user", "content": PROMPT }], "max_tokens": max_tokens, "stream": stream })
}

#[test]
fn chat_and_completions_over_http_equal_the_cli() {
    let server = Server::start(&[]);
    let want = cli(&["--chat", "--prompt", PROMPT, "--max-tokens", "24"]);
    assert!(!want.is_empty());

    let (status, _, body) = server.post("/v1/chat/completions", &chat(false, 24));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap() + v["usage"]["prompt_tokens"].as_u64().unwrap(), v["usage"]["total_tokens"].as_u64().unwrap());

    let (status, head, body) = server.post("/v1/chat/completions", &chat(true, 24));
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains("content-type: text/event-stream"), "{head}");
    let data = events(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the stream must end with data: [DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want, "streamed deltas differ from the CLI's greedy output");
    let last = chunks.last().unwrap();
    assert!(["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap()));
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));

    let want = cli(&["--prompt", "The printing press was invented by", "--max-tokens", "16"]);
    let (status, _, body) = server.post("/v1/completions", &json!({ "prompt": "The printing press was invented by", "max_tokens": 16, "stream": true }));
    assert_eq!(status, 200);
    let data = events(&body);
    let text: String = data[..data.len() - 1].iter().map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(text, want);

    // Logprobs come in the chat format: one entry per token, with the alternatives asked for.
    let (_, _, body) = server.post("/v1/chat/completions", &json!({ "messages": [{ "role": "user", "content": PROMPT }], "max_tokens": 4, "logprobs": true, "top_logprobs": 3 }));
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), v["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    assert!(content.iter().all(|e| e["top_logprobs"].as_array().unwrap().len() == 3 && e["logprob"].as_f64().unwrap() <= 0.0));

    let models: Value = serde_json::from_str(&server.curl("/v1/models", &[]).2).unwrap();
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(server.curl("/health", &[]).0, 200);
}

#[test]
fn eight_concurrent_requests_complete_and_batch() {
    let server = Server::start(&[]);
    let body = |i: usize| json!({ "messages": [{ "role": "user", "content": format!("Count to {}.", i + 3) }], "max_tokens": 24, "ignore_eos": true }).to_string();
    let before = server.stats();
    let children: Vec<Child> = (0..8)
        .map(|i| Command::new("curl").args(["-sS", "-H", "content-type: application/json", "-d", &body(i)]).arg(format!("{}/v1/chat/completions", server.base)).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let replies: Vec<Value> = children.into_iter().map(|c| serde_json::from_slice(&c.wait_with_output().unwrap().stdout).unwrap()).collect();
    let after = server.stats();
    for r in &replies {
        assert_eq!(r["usage"]["completion_tokens"], 24, "{r}");
    }
    let steps = after["engine"]["steps"].as_u64().unwrap() - before["engine"]["steps"].as_u64().unwrap();
    let tokens = after["generated_tokens"].as_u64().unwrap() - before["generated_tokens"].as_u64().unwrap();
    assert_eq!(tokens, 8 * 24);
    assert!(steps < tokens / 2, "8 concurrent requests took {steps} steps for {tokens} tokens: they did not batch");
    assert!(after["max_batch"].as_u64().unwrap() >= 4, "{after}");
    // Batched greedy output is the output each request gets alone.
    for (i, r) in replies.iter().enumerate() {
        let (_, _, alone) = server.curl("/v1/chat/completions", &["-H", "content-type: application/json", "-d", &body(i)]);
        let alone: Value = serde_json::from_str(&alone).unwrap();
        assert_eq!(r["choices"][0]["message"]["content"], alone["choices"][0]["message"]["content"], "request {i}");
    }
    assert_eq!(server.stats()["engine"]["kv"]["used"], 0);
}

#[test]
fn bad_requests_and_limits_get_openai_errors() {
    let server = Server::start(&["--max-requests", "1", "--max-body-kb", "64", "--api-key", "sekret"]);
    let auth = ["-H", "authorization: Bearer sekret", "-H", "content-type: application/json"];
    let post = |body: &str, extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["-d", body]);
        server.curl("/v1/chat/completions", &args)
    };
    let error = |body: &str| -> Value { serde_json::from_str::<Value>(body).unwrap_or_else(|e| panic!("{e}: {body}"))["error"].clone() };

    let (status, _, body) = post(&chat(false, 4).to_string(), &["-H", "content-type: application/json"]);
    assert_eq!((status, error(&body)["type"].as_str()), (401, Some("authentication_error")), "{body}");
    let (status, _, body) = post("{not json", &auth);
    assert_eq!(status, 400);
    assert!(error(&body)["message"].as_str().unwrap().contains("not JSON"), "{body}");
    let (status, _, body) = post(&json!({ "model": "gpt-9", "messages": [] }).to_string(), &auth);
    assert_eq!(status, 404);
    assert!(error(&body)["message"].as_str().unwrap().contains("SmolLM2-135M-Instruct.Q4_1"), "{body}");
    let (status, _, body) = post(&json!({ "messages": [{ "role": "user", "content": "x" }], "temperature": -1 }).to_string(), &auth);
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = post(&json!({ "messages": [{ "role": "user", "content": "x" }], "frobnicate": 1 }).to_string(), &auth);
    assert_eq!(status, 400);
    assert!(error(&body)["message"].as_str().unwrap().contains("frobnicate"), "{body}");
    let long = "word ".repeat(20_000);
    let (status, _, body) = post(&json!({ "messages": [{ "role": "user", "content": long }] }).to_string(), &auth);
    assert_eq!(status, 413, "{body}");
    assert!(error(&body)["message"].as_str().unwrap().contains("65536 bytes"), "{body}");
    let (status, _, body) = server.curl("/v2/nothing", &[]);
    assert_eq!(status, 404, "{body}");

    // One request in flight is the limit: the next gets 429 with Retry-After.
    let mut long_one = Command::new("curl")
        .args(["-sSN", "-H", "authorization: Bearer sekret", "-d", &json!({ "prompt": "Once", "max_tokens": 200, "ignore_eos": true, "stream": true }).to_string()])
        .arg(format!("{}/v1/completions", server.base))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(long_one.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    let (status, head, body) = post(&chat(false, 4).to_string(), &auth);
    assert_eq!(status, 429, "{body}");
    assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(error(&body)["type"], "rate_limit_error");
    long_one.kill().unwrap();
    long_one.wait().unwrap();
    assert_eq!(server.stats()["rejected"], 1);
}

#[test]
fn a_disconnected_client_cancels_and_sigterm_shuts_down_cleanly() {
    let server = Server::start(&["--shutdown-grace", "30"]);
    let long = |stream: bool| json!({ "prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": true, "stream": stream }).to_string();
    for stream in [false, true] {
        let before = server.stats()["cancelled"].as_u64().unwrap();
        let (_, _, _) = server.curl("/v1/completions", &["-N", "--max-time", "1", "-d", &long(stream)]);
        let mut cancelled = before;
        for _ in 0..50 {
            cancelled = server.stats()["cancelled"].as_u64().unwrap();
            if cancelled > before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(cancelled, before + 1, "a client that left (stream: {stream}) did not cancel its request");
    }
    let s = server.stats();
    assert_eq!((s["engine"]["running"].as_u64(), s["engine"]["kv"]["used"].as_u64()), (Some(0), Some(0)), "{s}");

    // SIGTERM with a request in flight: it finishes, then the server exits 0.
    let data = terminate_while_streaming(server, &json!({ "prompt": "Once", "max_tokens": 48, "ignore_eos": true, "stream": true }).to_string());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 48, "the request in flight did not finish before the shutdown");

    // A request still running when the grace period ends is cancelled with an error event.
    let data = terminate_while_streaming(Server::start(&["--shutdown-grace", "0.3"]), &long(true));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "unavailable", "{last}");
}

/// Sends SIGTERM once a streamed request with `body` has its first event; checks the server
/// exits 0 and returns the stream's `data:` payloads.
fn terminate_while_streaming(server: Server, body: &str) -> Vec<String> {
    let mut client = Command::new("curl").args(["-sSN", "-d", body]).arg(format!("{}/v1/completions", server.base)).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(server.terminate(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    client.wait().unwrap();
    events(&(first + &rest))
}

#[test]
fn speculation_structured_output_and_tool_calls_over_http() {
    let server = Server::start(&[]);
    let reply = |body: Value| -> Value {
        let (status, _, text) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    // A reply that repeats most of its prompt, so prompt lookup finds drafts (the capital of
    // France is one short sentence).
    let edit = json!({ "messages": [{ "role": "user", "content": ferrolm::api::bench::CODE_EDIT_PROMPT }], "max_tokens": 32 });
    let plain = reply(edit.clone());
    let mut spec = edit;
    spec["speculative"] = json!("ngram");
    let spec = reply(spec);
    assert_eq!(spec["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"], "speculation changed greedy output");
    assert!(spec["ferrolm"]["drafted"].as_u64().unwrap() > 0, "nothing was drafted: {}", spec["ferrolm"]);

    let json_reply = reply(json!({ "messages": [{ "role": "user", "content": "Reply in JSON: a person." }], "max_tokens": 48, "response_format": { "type": "json_object" } }));
    let content = json_reply["choices"][0]["message"]["content"].as_str().unwrap();
    if json_reply["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object(), "{content}");
    } else {
        assert!(content.trim_start().starts_with('{'), "{content}");
    }

    let tools = json!([{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object", "properties": { "city": { "type": "string", "maxLength": 20 } }, "required": ["city"] } } }]);
    let body = json!({ "messages": [{ "role": "user", "content": "What is the weather in Paris?" }], "max_tokens": 40, "tools": tools, "tool_choice": "required" });
    let call = reply(body.clone());
    assert_eq!(call["choices"][0]["finish_reason"], "tool_calls", "{call}");
    let f = &call["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(f["name"], "get_weather");
    assert!(serde_json::from_str::<Value>(f["arguments"].as_str().unwrap()).unwrap()["city"].is_string(), "{f}");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, _, text) = server.post("/v1/chat/completions", &streamed);
    let data = events(&text);
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let calls: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
    assert_eq!(calls.len(), 1, "{text}");
    assert_eq!(calls[0][0]["function"], *f, "the streamed call differs from the plain one");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

/// `--max-connections 1`: while one client holds the only connection, the next waits (it is not
/// accepted, so it gets no answer), and it is served once the first closes.
#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let server = Server::start(&["--max-connections", "1"]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let holder = std::net::TcpStream::connect(&addr).unwrap();
    // Accepted and idle: the one slot is taken.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, _, _) = server.curl("/health", &["--max-time", "1"]);
    assert_eq!(status, 0, "a second connection was served while the only slot was held");
    drop(holder);
    let (status, _, body) = server.curl("/health", &["--max-time", "5"]);
    assert_eq!(status, 200, "{body}");
}
