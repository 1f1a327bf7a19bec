//! The `ferrolm` binary as users run it: output formats, and one readable error line with a
//! non-zero exit for bad input.

use crate::common;

use std::process::Command;

/// Exit code (None when killed by a signal), stdout, stderr.
fn ferrolm(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn model() -> String {
    common::model_path(common::SMOLLM2).display().to_string()
}

#[test]
fn tokenize_prints_json_ids() {
    let (code, out, err) = ferrolm(&["tokenize", "--model", &model(), "--text", "Hello world"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "[19556,905]");
    let (_, out, _) = ferrolm(&["tokenize", "--model", &model(), "--text", "<|im_start|>", "--special"]);
    assert_eq!(out.trim(), "[1]");
}

#[test]
fn score_matches_the_reference_on_the_first_case() {
    let reference = common::read_json(&common::reference_path("smollm2-135m/forced-logits.json"));
    let case = &reference["cases"][0];
    let ids: Vec<String> = case["prompt_tokens"].as_array().unwrap().iter().chain(case["continuation_tokens"].as_array().unwrap()).map(|v| v.to_string()).collect();
    let (code, out, err) = ferrolm(&["score", "--model", &model(), "--device", "reference", "--tokens", &ids.join(",")]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), ids.len() + 1);
    for step in case["steps"].as_array().unwrap() {
        let pos = step["pos"].as_u64().unwrap() as usize;
        let line = &lines[pos];
        assert_eq!(line["pos"].as_u64().unwrap() as usize, pos);
        let (top, want) = (line["top"].as_array().unwrap(), step["ref_top5"].as_array().unwrap());
        assert_eq!((top.len(), want.len()), (5, 5));
        for (got, want) in top.iter().zip(want) {
            // Near-equal logits may swap places: compare by token, each within 0.02.
            assert!(got[1].as_f64().unwrap() >= want[1].as_f64().unwrap() - 0.02, "top-5 at {pos}: {top:?} vs {want:?}");
            let same = top.iter().find(|t| t[0] == want[0]).unwrap_or_else(|| panic!("token {} of the reference top-5 at {pos} is missing: {top:?}", want[0]));
            assert!((same[1].as_f64().unwrap() - want[1].as_f64().unwrap()).abs() < 0.02, "token {} at {pos}: {} vs {}", want[0], same[1], want[1]);
        }
        assert_eq!(top[0][0], want[0][0], "top token at {pos}");
    }
    assert!(lines[ids.len() - 1].get("nll").is_none(), "the last position has no next token");
    // The continuation's mean NLL from the per-position lines, against the reference's.
    let prompt_len = case["prompt_tokens"].as_array().unwrap().len();
    let cont: Vec<f64> = (prompt_len - 1..ids.len() - 1).map(|p| lines[p]["nll"].as_f64().unwrap()).collect();
    let ratio = cont.iter().sum::<f64>() / cont.len() as f64 / case["mean_nll_ref"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() <= 0.01, "mean NLL of the continuation: ratio {ratio} to the reference");
    let all: f64 = lines[..ids.len() - 1].iter().map(|l| l["nll"].as_f64().unwrap()).sum::<f64>() / (ids.len() - 1) as f64;
    assert!((lines[ids.len()]["mean_nll"].as_f64().unwrap() - all).abs() < 1e-9, "mean_nll is not the mean of the lines' nll");
}

#[test]
fn generate_streams_text_to_stdout_and_stats_to_stderr() {
    let (code, out, err) = ferrolm(&["generate", "--model", &model(), "--device", "cpu", "--prompt", "The capital of France is", "--max-tokens", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, " Paris.\n");
    assert!(err.contains("prompt tokens 5") && err.contains("TTFT"), "{err}");
}

#[test]
fn bad_input_is_one_readable_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("ferrolm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\0\0\0\xff\xff").unwrap();
    // 20 MB of text: refused from its length before it is tokenized.
    let huge = dir.join("huge.json");
    std::fs::write(&huge, serde_json::to_string(&["word ".repeat(4_000_000)]).unwrap()).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["inspect".into(), "--model".into(), bad.display().to_string()], "malformed GGUF file"),
        (vec!["inspect".into(), "--model".into(), dir.join("missing.gguf").display().to_string()], "cannot open"),
        (vec!["score".into(), "--model".into(), model(), "--device".into(), "cpu".into(), "--tokens".into(), "1,x".into()], "invalid option --tokens"),
        (
            vec!["generate".into(), "--model".into(), model(), "--device".into(), "cpu".into(), "--context".into(), "4".into(), "--prompt".into(), "one two three four five six".into()],
            "shorten the prompt",
        ),
        (vec!["generate".into(), "--model".into(), model(), "--device".into(), "cpu".into(), "--chat".into(), "--prompts-file".into(), huge.display().to_string()], "more than the context can hold"),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let start = std::time::Instant::now();
        let (code, _, err) = ferrolm(&args);
        assert!(start.elapsed().as_secs_f64() < 5.0, "{args:?} took {:?}", start.elapsed());
        assert_eq!(code, Some(1), "{args:?}: exit code 1 expected (a panic exits 101): {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
        assert!(err.starts_with("error: ") && err.contains(want), "{args:?}: {err}");
    }
    // The 20 MB file goes with the directory (CI machines run this suite many times).
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sampling_is_seeded_and_stop_strings_are_not_printed() {
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--device", "cpu", "--prompt", "Once upon a time", "--max-tokens", "12"];
        let m = model();
        args.extend(["--model", m.as_str()]);
        args.extend(extra);
        let (code, out, err) = ferrolm(&args);
        assert_eq!(code, Some(0), "{err}");
        (out, err)
    };
    let sampled = ["--temperature", "0.9", "--top-p", "0.95", "--seed", "7"];
    let (a, _) = run(&sampled);
    let (b, _) = run(&sampled);
    assert_eq!(a, b, "the same seed gives the same text");
    let (greedy, _) = run(&[]);
    let word = greedy.split_whitespace().nth(2).unwrap().to_string();
    let (stopped, err) = run(&["--stop", &word]);
    assert!(!stopped.trim().is_empty(), "the output before the stop string is empty");
    assert!(greedy.starts_with(stopped.trim_end_matches('\n')) && !stopped.contains(&word), "{stopped:?} vs {greedy:?}");
    assert!(err.contains("(stop)"), "{err}");
    let (_, err) = run(&["--logprobs", "2"]);
    assert!(err.lines().filter(|l| l.starts_with("{\"token\"")).count() >= 1, "{err}");
    let (code, _, err) = ferrolm(&["generate", "--model", &model(), "--device", "cpu", "--prompt", "x", "--top-p", "0"]);
    assert!(code == Some(1) && err.contains("invalid option top_p"), "{err}");
}

/// What the README promises of the CLI beyond one `generate`: a batch from `--prompts-file` (one
/// JSON line per request in order, then the engine's stats), `--speculative` (the same greedy
/// text, and its stats line), `inspect`, `--portable` on the GPU, and `bench`'s JSON summary.
#[test]
fn batch_speculation_inspect_portable_and_bench() {
    let m = model();
    let dir = std::env::temp_dir().join(format!("ferrolm-cli-promise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = |prompt: &str, n: &str, extra: &[&str]| {
        let mut args = vec!["generate", "--model", &m, "--device", "cpu", "--prompt", prompt, "--max-tokens", n];
        args.extend(extra);
        let (code, out, err) = ferrolm(&args);
        assert_eq!(code, Some(0), "{err}");
        (out.trim_end_matches('\n').to_string(), err)
    };

    let prompts = ["The capital of France is", "Water boils at"];
    let file = dir.join("prompts.json");
    std::fs::write(&file, serde_json::to_string(&prompts).unwrap()).unwrap();
    let (code, out, err) = ferrolm(&["generate", "--model", &m, "--device", "cpu", "--prompts-file", file.to_str().unwrap(), "--max-tokens", "6"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), prompts.len() + 1, "{out}");
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(lines[i]["index"], i);
        assert_eq!(lines[i]["text"].as_str().unwrap(), plain(p, "6", &[]).0, "batched text of {p:?} differs from the request alone");
        assert!(lines[i]["tokens"].as_array().unwrap().len() <= 6 && lines[i]["ttft_ms"].as_f64().unwrap() > 0.0);
    }
    let stats = &lines[prompts.len()];
    assert_eq!(stats["requests"], prompts.len());
    assert_eq!(stats["generated_tokens"].as_u64().unwrap() as usize, lines[..prompts.len()].iter().map(|l| l["tokens"].as_array().unwrap().len()).sum::<usize>());
    assert!(stats["engine"]["steps"].as_u64().unwrap() > 0 && stats["tok_s"].as_f64().unwrap() > 0.0, "{stats}");

    let code_prompt = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n";
    let (want, _) = plain(code_prompt, "24", &[]);
    let (got, err) = plain(code_prompt, "24", &["--speculative", "ngram"]);
    assert!(!want.is_empty());
    assert_eq!(got, want, "speculation changed the greedy text");
    assert!(err.contains("speculative Ngram") && err.contains("acceptance rate"), "{err}");

    let (code, out, err) = ferrolm(&["inspect", "--model", &m]);
    assert_eq!(code, Some(0), "{err}");
    for want in ["general.architecture", "blk.0.attn_q.weight", "Q4_1", "config: Config"] {
        assert!(out.contains(want), "inspect printed no {want:?}");
    }

    let gpu = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", &m, "--device", "gpu", "--prompt", prompts[0], "--max-tokens", "4"];
        args.extend(extra);
        let (code, out, err) = ferrolm(&args);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    assert_eq!(gpu(&["--portable"]), gpu(&[]), "--portable changed the greedy text");

    let json = dir.join("bench.jsonl");
    let (code, out, err) = ferrolm(&["bench", "--model", &m, "--device", "cpu", "--runs", "1", "--gen", "4", "--stream-gen", "0", "--json", json.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(std::fs::read_to_string(&json).unwrap().trim(), out.trim(), "--json appends the summary line");
    for key in ["decode_tok_s", "prefill_tok_s", "ttft_ms", "mbu", "read_gb_s"] {
        assert!(summary[key].as_f64().is_some_and(|v| v > 0.0), "bench summary {key}: {summary}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
