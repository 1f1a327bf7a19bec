//! Structured output on SmolLM2: JSON Schemas of many shapes, regular expressions, Lark grammars
//! and tool calls, greedy and sampled. Every output is checked with an independent JSON Schema
//! validator (boon) or regex engine, never with llguidance itself; outputs must not change
//! with batching or speculation; bad grammars are refused at submission with the reason.

use crate::common;
use crate::engine_cases;

use engine_cases::{assert_logprobs_close, run_alone, run_together};
use ferrolm::api::tools::{self, Tool, ToolChoice};
use ferrolm::chat::{ChatMessage, ChatTemplate};
use ferrolm::engine::{Engine, ForwardModel, ModelOptions, Request};
use ferrolm::gguf::Gguf;
use ferrolm::sample::{FinishReason, GenerateOptions, Grammar, SamplingParams, SpecMethod, Speculative};
use ferrolm::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// (what to ask for, schema): shapes a form-filling or extraction app uses.
fn schemas() -> Vec<(&'static str, Value)> {
    let person = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": false});
    vec![
        ("a person with a name and an age", person.clone()),
        ("your favourite colour", json!({"type": "string", "enum": ["red", "green", "blue"]})),
        ("two to four prime numbers", json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4})),
        (
            "a person and their address",
            json!({"$defs": {"address": {"type": "object", "properties": {"street": {"type": "string", "maxLength": 30}, "city": {"type": "string", "maxLength": 20}}, "required": ["street", "city"], "additionalProperties": false}}, "type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "address": {"$ref": "#/$defs/address"}}, "required": ["name", "address"], "additionalProperties": false}),
        ),
        (
            "whether it is raining and the temperature",
            json!({"type": "object", "properties": {"raining": {"type": "boolean"}, "celsius": {"type": "number", "minimum": -50, "maximum": 60}}, "required": ["raining", "celsius"], "additionalProperties": false}),
        ),
        (
            "a record of kind person with an id",
            json!({"type": "object", "properties": {"kind": {"const": "person"}, "id": {"type": "integer", "minimum": 1}}, "required": ["kind", "id"], "additionalProperties": false}),
        ),
        (
            "a shopping list of up to three items with prices",
            json!({"type": "array", "items": {"type": "object", "properties": {"item": {"type": "string", "maxLength": 16}, "price": {"type": "number", "minimum": 0, "maximum": 1000}}, "required": ["item", "price"], "additionalProperties": false}, "minItems": 1, "maxItems": 3}),
        ),
        ("a phone number", json!({"type": "object", "properties": {"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}}, "required": ["phone"], "additionalProperties": false})),
        ("today's date", json!({"type": "object", "properties": {"date": {"type": "string", "format": "date"}}, "required": ["date"], "additionalProperties": false})),
        ("a user id or a user name", json!({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "maxLength": 12}]})),
        (
            "a nickname, or null if there is none",
            json!({"type": "object", "properties": {"nickname": {"type": ["string", "null"], "maxLength": 12}}, "required": ["nickname"], "additionalProperties": false}),
        ),
        (
            "a book with a title and maybe a year",
            json!({"type": "object", "properties": {"title": {"type": "string", "maxLength": 30}, "year": {"type": "integer", "minimum": 1000, "maximum": 2100}}, "required": ["title"], "additionalProperties": false}),
        ),
        (
            "a 2 by 2 matrix of small integers",
            json!({"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 9}, "minItems": 2, "maxItems": 2}, "minItems": 2, "maxItems": 2}),
        ),
        ("a rating from 1 to 5 stars", json!({"type": "object", "properties": {"stars": {"type": "integer", "enum": [1, 2, 3, 4, 5]}}, "required": ["stars"], "additionalProperties": false})),
        ("a username of 3 to 8 lowercase letters", json!({"type": "string", "pattern": "^[a-z]{3,8}$"})),
        (
            "a percentage strictly between 0 and 100",
            json!({"type": "object", "properties": {"percent": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100}}, "required": ["percent"], "additionalProperties": false}),
        ),
        (
            "a company with a CEO who has a name and an age",
            json!({"type": "object", "properties": {"company": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "ceo": person}, "required": ["name", "ceo"], "additionalProperties": false}}, "required": ["company"], "additionalProperties": false}),
        ),
        ("two to three tags from a fixed list", json!({"type": "array", "items": {"enum": ["news", "sport", "tech", "art"]}, "minItems": 2, "maxItems": 3})),
        ("a yes or no answer", json!({"type": "boolean"})),
        (
            "an event with a name and a list of attendee names",
            json!({"type": "object", "properties": {"event": {"type": "string", "maxLength": 20}, "attendees": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}}, "required": ["event", "attendees"], "additionalProperties": false}),
        ),
        (
            "a point with x and y coordinates",
            json!({"type": "object", "properties": {"x": {"type": "number", "minimum": -100, "maximum": 100}, "y": {"type": "number", "minimum": -100, "maximum": 100}}, "required": ["x", "y"], "additionalProperties": false}),
        ),
        (
            "a country code of two capital letters",
            json!({"type": "object", "properties": {"code": {"type": "string", "minLength": 2, "maxLength": 2, "pattern": "^[A-Z]+$"}}, "required": ["code"], "additionalProperties": false}),
        ),
    ]
}

/// Checks `instance` against `schema` with boon; the error says what failed.
fn validate(schema: &Value, instance: &Value) -> Result<(), String> {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.enable_format_assertions();
    compiler.add_resource("mem://schema.json", schema.clone()).map_err(|e| e.to_string())?;
    let index = compiler.compile("mem://schema.json", &mut schemas).map_err(|e| e.to_string())?;
    schemas.validate(instance, index).map_err(|e| e.to_string())
}

fn smollm2() -> (Gguf, std::fs::File) {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    (Gguf::read(&file).unwrap(), file)
}

fn chat(tok: &Tokenizer, template: &ChatTemplate, ask: &str, tools: &[Tool]) -> Vec<u32> {
    let messages = [ChatMessage { role: "user".into(), content: ask.into() }];
    let text = tools::render(Some(template), &messages, tools, usize::MAX).unwrap();
    tok.encode_prompt(&text, true).unwrap()
}

/// Greedy, or sampled at temperature 0.8 and top-p 0.95 with `seed` (tests/browser.rs uses the
/// same settings for the records).
fn constrained(grammar: Grammar, seed: Option<u64>, spec: bool) -> GenerateOptions {
    let sampling = match seed {
        Some(seed) => SamplingParams { temperature: 0.8, top_p: 0.95, seed: Some(seed), ..Default::default() },
        None => SamplingParams::greedy(),
    };
    let speculative = spec.then_some(Speculative { method: SpecMethod::Ngram, k: 4 });
    GenerateOptions { max_tokens: 160, sampling, grammar: Some(grammar), speculative, ..Default::default() }
}

/// Records requests and their tokens for the browser test (target/test-artifacts/`name`).
fn record(name: &str, cases: &[(Request, Vec<u32>)]) {
    let rows: Vec<Value> = cases
        .iter()
        .map(|(r, tokens)| {
            let grammar = match r.opts.grammar.as_ref().expect("constrained cases") {
                Grammar::JsonObject => json!({ "json_object": true }),
                Grammar::JsonSchema(schema) => json!({ "json_schema": schema }),
                Grammar::Regex(rx) => json!({ "regex": rx }),
                Grammar::Lark(lark) => json!({ "lark": lark }),
            };
            json!({ "prompt": r.prompt, "grammar": grammar, "seed": r.opts.sampling.seed, "tokens": tokens })
        })
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), Value::Array(rows).to_string()).unwrap();
}

/// Runs every schema greedy and sampled together in one engine; each output must parse and
/// validate and end by the grammar (not by length). Returns the requests and their tokens.
fn schemas_hold<M: ForwardModel>(engine: &mut Engine<M>, tok: &Tokenizer, template: &ChatTemplate, what: &str) -> Vec<(Request, Vec<u32>)> {
    let cases = schemas();
    let mut requests = Vec::new();
    for (i, (ask, schema)) in cases.iter().enumerate() {
        let prompt = chat(tok, template, &format!("Reply in JSON: {ask}."), &[]);
        for seed in [None, Some(i as u64 + 7)] {
            requests.push(Request { prompt: prompt.clone(), opts: constrained(Grammar::JsonSchema(schema.clone()), seed, false) });
        }
    }
    let t0 = std::time::Instant::now();
    let out = pollster::block_on(run_together(engine, tok, requests.clone()));
    let (mut tokens, mut forwards) = (0, 0);
    for (k, o) in out.iter().enumerate() {
        let (ask, schema) = &cases[k / 2];
        let text = &o.generation.text;
        assert_eq!(o.generation.finish_reason, FinishReason::Stop, "{what}: '{ask}' ran to the length limit: {text}");
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: '{ask}' gave text that is not JSON ({e}): {text}"));
        validate(schema, &value).unwrap_or_else(|e| panic!("{what}: '{ask}' gave {text}, which the schema refuses: {e}"));
        tokens += o.generation.tokens.len();
        forwards += o.stats.forwards;
        if k % 2 == 0 {
            println!("{what}: {ask}: {text}");
        }
    }
    println!("{what}: {} outputs valid, {tokens} tokens in {forwards} forwards ({:.2} tokens a forward), {:.1} s", out.len(), tokens as f64 / forwards as f64, t0.elapsed().as_secs_f64());
    requests.into_iter().zip(out.into_iter().map(|o| o.generation.tokens)).collect()
}

#[test]
fn json_schemas_hold_greedy_and_sampled_alone_batched_and_speculative() {
    let (gguf, file) = smollm2();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let template = ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap().unwrap();
    let model = ferrolm::backend::cpu::SimdModel::load(&gguf, &file, &ModelOptions::new(1024, 256), 2).unwrap();
    let mut engine = Engine::new(model);
    let batched = schemas_hold(&mut engine, &tok, &template, "CPU");
    record("structured-cpu.json", &batched);

    // A third of the cases alone: the same tokens. Greedy ones also with n-gram speculation
    // (sampled ones keep the distribution, not the draws), drafted whether or not it pays.
    engine.set_draft_always(true);
    for (req, want) in batched.iter().step_by(3) {
        let alone = pollster::block_on(run_alone(&mut engine, &tok, req.clone()));
        assert_eq!(&alone.generation.tokens, want, "alone differs from batched");
        if req.opts.sampling.seed.is_some() {
            continue;
        }
        let mut spec = req.clone();
        spec.opts.speculative = Some(Speculative { method: SpecMethod::Ngram, k: 4 });
        let drafted = pollster::block_on(run_alone(&mut engine, &tok, spec));
        assert_eq!(&drafted.generation.tokens, want, "speculative differs from plain");
        println!("speculative: drafted {}, accepted {}, {} forwards for {} tokens", drafted.stats.drafted, drafted.stats.accepted, drafted.stats.forwards, want.len());
    }
}

/// With logprobs, the tokens the grammar forces are the ones taken without (each takes a row of
/// its own to report the model's logprobs there) and draw nothing: greedy and seeded outputs are
/// the same tokens either way, and every token's logprob is the model's log-softmax at its
/// position (teacher-forced logits of the prompt and the output). Exact on the CPU backend, whose
/// results do not depend on the batch shape (the plain path feeds forced tokens as one chunk).
#[test]
fn logprobs_leave_forced_tokens_and_draws_as_they_are() {
    let (mut engine, tok) = common::cpu_engine(ModelOptions::new(512, 256));
    let (gguf, _file) = smollm2();
    let template = ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap().unwrap();
    let (ask, schema) = schemas().swap_remove(0);
    let prompt = chat(&tok, &template, &format!("Reply in JSON: {ask}."), &[]);
    let vocab = engine.model().config().vocab_size;
    for seed in [None, Some(11)] {
        let plain = Request { prompt: prompt.clone(), opts: constrained(Grammar::JsonSchema(schema.clone()), seed, false) };
        let with_logprobs = Request { opts: GenerateOptions { logprobs: Some(2), ..plain.opts.clone() }, ..plain.clone() };
        let a = pollster::block_on(run_alone(&mut engine, &tok, plain)).generation;
        let b = pollster::block_on(run_alone(&mut engine, &tok, with_logprobs));
        let g = b.generation;
        println!("seed {seed:?}: {} tokens in {} forwards with logprobs: {}", g.tokens.len(), b.stats.forwards, g.text);
        assert_eq!(g.tokens, a.tokens, "seed {seed:?}: logprobs changed the output");
        assert!(b.stats.forwards >= g.tokens.len(), "with logprobs every token takes a row");
        assert_eq!(g.logprobs.len(), g.tokens.len());
        let all: Vec<u32> = prompt.iter().chain(&g.tokens).copied().collect();
        let logits = pollster::block_on(engine.score_from(&all[..all.len() - 1], prompt.len() - 1)).unwrap();
        for (i, lp) in g.logprobs.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
            let want = row[lp.token as usize] - lse;
            assert!((lp.logprob - want).abs() < 1e-3, "token {i} ({}): logprob {} vs the model's {want}", lp.token, lp.logprob);
        }
    }
}

#[test]
fn regex_lark_and_any_json_object() {
    let (mut engine, tok) = common::cpu_engine(ModelOptions::new(512, 256));
    let prompt = |s: &str| tok.encode_prompt(s, false).unwrap();
    let rx = r"(yes|no), because [a-z ]{5,40}\.";
    let lark = "start: \"The answer is \" ANSWER \".\"\nANSWER: \"yes\" | \"no\" | \"maybe\"\n";
    let reqs = vec![
        Request { prompt: prompt("Is the sky blue? Answer:"), opts: constrained(Grammar::Regex(rx.into()), None, false) },
        Request { prompt: prompt("Is the sky blue? Answer:"), opts: constrained(Grammar::Regex(rx.into()), Some(3), false) },
        Request { prompt: prompt("Is water wet?"), opts: constrained(Grammar::Lark(lark.into()), None, false) },
        Request { prompt: prompt("Is water wet?"), opts: constrained(Grammar::Lark(lark.into()), Some(5), false) },
        Request { prompt: prompt("A JSON object describing a cat:"), opts: constrained(Grammar::JsonObject, None, false) },
    ];
    let out = pollster::block_on(run_together(&mut engine, &tok, reqs.clone()));
    record("structured-grammars-cpu.json", &reqs.into_iter().zip(out.iter().map(|o| o.generation.tokens.clone())).collect::<Vec<_>>());
    let full = |re: &str| regex::Regex::new(&format!("^(?:{re})$")).unwrap();
    for o in &out[..2] {
        assert!(full(rx).is_match(&o.generation.text), "regex output {:?}", o.generation.text);
    }
    for o in &out[2..4] {
        assert!(full(r"The answer is (yes|no|maybe)\.").is_match(&o.generation.text), "lark output {:?}", o.generation.text);
    }
    let cat = &out[4].generation;
    assert_eq!(cat.finish_reason, FinishReason::Stop, "json_object ran to the length limit: {}", cat.text);
    assert!(serde_json::from_str::<Value>(&cat.text).unwrap().is_object(), "{}", cat.text);
    for o in &out {
        println!("{:?} ({} tokens, {} forwards)", o.generation.text, o.generation.tokens.len(), o.stats.forwards);
    }
    // "The answer is " is forced: fewer forwards than tokens.
    assert!(out[2].stats.forwards < out[2].generation.tokens.len(), "forced tokens took a forward each");
}

#[test]
fn tool_calls_follow_the_function_schema() {
    let (gguf, _file) = smollm2();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let template = ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap().unwrap();
    let (mut engine, _) = common::cpu_engine(ModelOptions::new(1024, 256));
    let tools: Vec<Tool> = serde_json::from_value(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "send_email", "description": "Send an email", "parameters": {"type": "object", "properties": {"to": {"type": "string", "maxLength": 40}, "subject": {"type": "string", "maxLength": 40}}, "required": ["to", "subject"], "additionalProperties": false}}}
    ]))
    .unwrap();
    let choices: Vec<ToolChoice> = serde_json::from_value(json!(["required", {"type": "function", "function": {"name": "send_email"}}, "auto"])).unwrap();
    let prompt = chat(&tok, &template, "What is the weather in Paris?", &tools);
    let mut reqs = Vec::new();
    for choice in &choices {
        let grammar = tools::grammar(&tools, Some(choice)).unwrap().unwrap();
        reqs.push(Request { prompt: prompt.clone(), opts: constrained(grammar, None, false) });
    }
    let out = pollster::block_on(run_together(&mut engine, &tok, reqs));
    for (choice, o) in choices.iter().zip(&out) {
        let text = &o.generation.text;
        println!("{choice:?}: {text}");
        let call = tools::parse_call(text, &tools);
        if let ToolChoice::Mode(m) = choice {
            if m == "auto" && call.is_none() {
                assert!(!text.trim_start().starts_with('{'), "auto: a reply that starts like a call must be one: {text}");
                continue;
            }
        }
        let call = call.unwrap_or_else(|| panic!("{choice:?}: not a call: {text}"));
        if let ToolChoice::Named { function, .. } = choice {
            assert_eq!(call.name, function.name);
        }
        let tool = tools.iter().find(|t| t.function.name == call.name).unwrap();
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        validate(tool.function.parameters.as_ref().unwrap(), &args).unwrap_or_else(|e| panic!("{choice:?}: arguments {args} refused: {e}"));
    }
}

#[test]
fn bad_grammars_are_refused_at_submit_with_the_reason() {
    let (mut engine, tok) = common::cpu_engine(ModelOptions::new(256, 64));
    let cases: Vec<(Grammar, &str)> = vec![
        (Grammar::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 3})), "minimum (5) is greater than maximum (3)"),
        (Grammar::JsonSchema(json!({"type": 5})), "type"),
        (Grammar::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]})), "missing"),
        (Grammar::JsonSchema(json!({"type": "string", "minLength": 5, "maxLength": 2})), "minLength"),
        (Grammar::Regex("[a-".into()), "unclosed character class"),
        (Grammar::Lark("start: undefined_rule\n".into()), "undefined_rule"),
    ];
    for (grammar, reason) in cases {
        let req = Request { prompt: vec![1, 2, 3], opts: constrained(grammar.clone(), None, false) };
        let err = engine.submit(&tok, req).expect_err("a bad grammar is refused").to_string();
        assert!(err.starts_with("invalid option") && err.contains(reason), "{grammar:?}: {err}");
        println!("{err}");
    }
    let tools: Vec<Tool> = serde_json::from_value(json!([{"type": "function", "function": {"name": "f"}}])).unwrap();
    let named: ToolChoice = serde_json::from_value(json!({"type": "function", "function": {"name": "g"}})).unwrap();
    assert!(tools::grammar(&tools, Some(&named)).unwrap_err().to_string().contains("no tool is named 'g'"));
    assert!(engine.is_idle(), "refused requests never queue");
}

/// On the GPU backend (lavapipe here) a constrained request's mask goes to the GPU: greedy to
/// the argmax kernel, sampled to the sample kernel (4 bytes read back a step either way), and
/// with logprobs to the sample kernel after the top-k kernel read the unmasked row (the token,
/// its logit and the candidates: 528 bytes). Batched with a request whose logit edits are more
/// than the backend takes, which reads whole logit rows, the masks are applied on the CPU: each
/// gives the tokens and logprobs it gave with its mask on the GPU (the sampled ones draw the
/// same uniform numbers on either side).
#[test]
fn json_schema_holds_on_the_gpu_with_the_mask_on_either_side() {
    let (mut engine, tok) = common::gpu_engine(ModelOptions::new(256, 64));
    let (gguf, _file) = smollm2();
    let template = ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap().unwrap();
    let (ask, schema) = schemas().swap_remove(0);
    let req = Request { prompt: chat(&tok, &template, &format!("Reply in JSON: {ask}."), &[]), opts: constrained(Grammar::JsonSchema(schema.clone()), None, false) };
    let sampled = Request { opts: constrained(Grammar::JsonSchema(schema.clone()), Some(1), false), ..req.clone() };
    let with_logprobs = |r: &Request| Request { opts: GenerateOptions { logprobs: Some(3), ..r.opts.clone() }, ..r.clone() };
    let requests = [req.clone(), sampled.clone(), with_logprobs(&req), with_logprobs(&sampled)];
    // Greedy and sampled together, without logprobs and then with: each pair computes its
    // prompt afresh (from the cache it would run in other batch shapes, whose logits differ in
    // the last bits).
    let mut on_gpu = Vec::new();
    for pair in requests.chunks(2) {
        engine.clear_prefix_cache();
        let before = engine.model().counters();
        let out = pollster::block_on(run_together(&mut engine, &tok, pair.to_vec()));
        let c = engine.model().counters().since(&before);
        let per_row = if pair[0].opts.logprobs.is_some() { 528 } else { 4 };
        println!(
            "{} logprobs: {:?} ({} bytes written, {} read in {} steps)",
            pair[0].opts.logprobs.is_some(),
            out.iter().map(|o| &o.generation.text).collect::<Vec<_>>(),
            c.bytes_written,
            c.bytes_read,
            c.steps
        );
        // `per_row` bytes for each row a step chose from (a request's forwards), nothing more.
        let rows: u64 = out.iter().map(|o| o.stats.forwards as u64).sum();
        assert!(c.bytes_written >= 49_152 / 8 && c.bytes_read == per_row * rows, "the steps did not choose within the mask on the GPU: {c:?}, {rows} rows");
        for o in out {
            validate(&schema, &serde_json::from_str(&o.generation.text).unwrap()).unwrap();
            on_gpu.push(o.generation);
        }
    }
    // Outlasts the others: every step that chooses their tokens reads logit rows.
    let longest = on_gpu.iter().map(|g| g.tokens.len()).max().unwrap();
    let bias = (0..300).map(|t| (t, 0.5)).collect();
    let edited = Request {
        prompt: tok.encode_prompt("The capital of France is", false).unwrap(),
        opts: GenerateOptions { max_tokens: longest + 1, ignore_eos: true, sampling: SamplingParams { temperature: 1.0, logit_bias: bias, seed: Some(3), ..Default::default() }, ..Default::default() },
    };
    engine.clear_prefix_cache();
    let before = engine.model().counters();
    let mixed = pollster::block_on(run_together(&mut engine, &tok, requests.iter().cloned().chain([edited]).collect()));
    let c = engine.model().counters().since(&before);
    assert!(c.bytes_read >= 49_152 * 4 * longest as u64, "the batched steps did not read logit rows: {c:?}");
    record("structured-gpu.json", &[(req, on_gpu[0].tokens.clone()), (sampled, on_gpu[1].tokens.clone())]);
    for (i, (m, a)) in mixed.iter().zip(&on_gpu).enumerate() {
        assert_eq!(m.generation.tokens, a.tokens, "request {i}: the mask on the CPU chose differently");
        assert_logprobs_close(&m.generation.logprobs, &a.logprobs, 1e-3);
        assert_eq!(a.logprobs.len(), if i >= 2 { a.tokens.len() } else { 0 });
    }
}
