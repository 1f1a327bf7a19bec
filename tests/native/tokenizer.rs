//! The tokenizers built from GGUF metadata against llama.cpp's ids in `../shared/reference`.

use crate::common;

use ferrolm::gguf::{Gguf, GgufWriter, Value};
use ferrolm::tokenizer::{Detokenizer, Tokenizer};

fn load(model: &str) -> (Tokenizer, f64) {
    let file = std::fs::File::open(common::model_path(model)).unwrap();
    let gguf = Gguf::read(&file).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    (tok, t0.elapsed().as_secs_f64())
}

/// Every golden row: encode (special tokens parsed, no BOS) gives llama.cpp's ids exactly, and
/// decoding them gives the text back. Returns the rows that differ.
fn golden(tok: &Tokenizer, rel: &str) -> (usize, Vec<String>) {
    let rows = common::read_json(&common::reference_path(rel));
    let mut bad = Vec::new();
    let rows = rows.as_array().unwrap();
    for row in rows {
        let text = row["text"].as_str().unwrap();
        let want: Vec<u32> = row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let back = tok.decode(&want).unwrap();
        if back != text {
            bad.push(format!("decode {want:?}: got {back:?}, want {text:?}"));
        }
    }
    (rows.len(), bad)
}

#[test]
fn smollm2_tokenizer_reproduces_llama_cpp() {
    let (tok, secs) = load(common::SMOLLM2);
    let (n, bad) = golden(&tok, "smollm2-135m/tokenizer-golden.json");
    println!("SmolLM2 tokenizer: {n} golden rows, {} mismatches, built in {secs:.3} s", bad.len());
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    assert_eq!(tok.vocab_size(), 49152);
    assert!(tok.stop_ids().contains(&2), "<|im_end|> (2) ends a turn: {:?}", tok.stop_ids());
}

#[test]
fn gemma3_tokenizer_reproduces_llama_cpp() {
    let (tok, secs) = load(common::GEMMA3);
    let (n, bad) = golden(&tok, "gemma3-270m/tokenizer-golden.json");
    println!("Gemma 3 tokenizer: {n} golden rows, {} mismatches, built in {secs:.3} s", bad.len());
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
}

#[test]
fn tokenizer_json_round_trip_reproduces_the_golden_file() {
    let (tok, _) = load(common::SMOLLM2);
    let json = Tokenizer::from_json(tok.to_json().unwrap().as_bytes()).unwrap();
    let (n, bad) = golden(&json, "smollm2-135m/tokenizer-golden.json");
    assert!(bad.is_empty(), "{n} rows, mismatches:\n{}", bad.join("\n"));
    assert_eq!(json.eos_id(), Some(2));
    assert!(Tokenizer::from_json(b"{not json").is_err());
}

/// Gemma 3's SentencePiece tokenizer merges by score without a merge table; written out as
/// `tokenizer.json` it is the crate's BPE with all 513k merges. Both tokenize the golden texts
/// and 400 random texts built from vocabulary pieces, runs of one character, spaces, digits,
/// emoji and bytes without a token the same way (so the merge order, ties included, is the
/// table's).
#[test]
fn gemma3_scored_merges_equal_the_merge_table() {
    let (tok, _) = load(common::GEMMA3);
    let table = Tokenizer::from_json(tok.to_json().unwrap().as_bytes()).unwrap();
    let mut texts: Vec<String> = common::read_json(&common::reference_path("gemma3-270m/tokenizer-golden.json")).as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let extras = [" ", "  ", "\n", "1", "42", "🙂", "日本", "\u{1F9EC}", "\u{0378}", "é", "\t"];
    for _ in 0..400 {
        let mut text = String::new();
        for _ in 0..1 + next(24) {
            if next(4) == 0 {
                text.push_str(extras[next(extras.len() as u64) as usize]);
            } else if next(3) == 0 {
                // Runs of one character: equal merges side by side, where the order matters.
                let c = b"a-=. 0!xe*_~"[next(12) as usize] as char;
                text.extend(std::iter::repeat_n(c, 2 + next(9) as usize));
            } else {
                let id = next(tok.vocab_size() as u64) as u32;
                text.push_str(&tok.token_text(id).unwrap().replace('▁', " "));
            }
        }
        texts.push(text);
    }
    let mut differ = Vec::new();
    for text in &texts {
        let (a, b) = (tok.encode(text, false).unwrap(), table.encode(text, false).unwrap());
        if a != b {
            differ.push(format!("{text:?}: {a:?} vs the table's {b:?}"));
        }
    }
    assert!(differ.is_empty(), "{} of {} texts differ:\n{}", differ.len(), texts.len(), differ[..differ.len().min(5)].join("\n"));
}

/// A SentencePiece vocabulary whose scores tie (all 0) and one with a repeated text: the merge
/// order falls back to the merged token's id, as in the merge table, and a repeated text (where
/// a table keeps only the last) tokenizes as the table does.
#[test]
fn spm_ties_and_repeated_texts_follow_the_merge_table() {
    for tokens in [vec!["<unk>", "a", "b", "c", "ab", "bc", "▁"], vec!["<unk>", "a", "b", "c", "bc", "ab", "▁"], vec!["<unk>", "a", "b", "c", "ab", "ab", "▁"]] {
        let n = tokens.len();
        let mut m = ferrolm::gguf::Metadata::default();
        m.insert("tokenizer.ggml.model", Value::String("llama".into()));
        m.insert("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| Value::String(t.to_string())).collect()));
        m.insert("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); n]));
        m.insert("tokenizer.ggml.token_type", Value::Array((0..n).map(|i| Value::I32(if i == 0 { 2 } else { 1 })).collect()));
        let tok = Tokenizer::from_gguf(&m).unwrap();
        let table = Tokenizer::from_json(tok.to_json().unwrap().as_bytes()).unwrap();
        if tokens[4] != tokens[5] {
            assert!(tok.encode("abc", false).unwrap().contains(&4), "{tokens:?}: the lower id merges first");
        }
        for text in ["abc", "abcabc", "a b c", "cab", "bcab", "aabbcc", "ab ab"] {
            assert_eq!(tok.encode(text, false).unwrap(), table.encode(text, false).unwrap(), "{tokens:?}: {text:?}");
        }
    }
}

#[test]
fn special_tokens_are_text_unless_parsing_is_asked_for() {
    let (tok, _) = load(common::SMOLLM2);
    assert_eq!(tok.encode("<|im_start|>", true).unwrap(), vec![1]);
    assert!(tok.encode("<|im_start|>", false).unwrap().len() > 1);
}

#[test]
fn detokenizer_never_splits_a_character_and_matches_decode() {
    let (tok, _) = load(common::SMOLLM2);
    let text = "Emoji 🙂🚀 and naïve café, 日本語 text.";
    let ids = tok.encode(text, false).unwrap();
    let mut d = Detokenizer::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(&tok, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "a piece holds half a character: {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&d.finish(&tok).unwrap());
    assert_eq!(out, tok.decode(&ids).unwrap());
    assert_eq!(out, text);
}

#[test]
fn bad_tokenizer_metadata_is_a_clear_error() {
    let mut w = GgufWriter::new();
    w.meta("tokenizer.ggml.model", Value::String("wordpiece".into()));
    w.meta("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into())]));
    let bytes = w.to_bytes();
    let g = Gguf::parse(&bytes, bytes.len() as u64).unwrap();
    let err = Tokenizer::from_gguf(&g.metadata).err().unwrap().to_string();
    assert!(err.contains("unsupported tokenizer model 'wordpiece'"), "{err}");

    let (tok, _) = load(common::SMOLLM2);
    let err = tok.decode(&[1_000_000]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

/// The byte spelling of each token (the constraint engine's trie) concatenates to the UTF-8 of
/// every golden text llama.cpp tokenized, for byte-level BPE and SentencePiece alike.
#[test]
fn token_bytes_spell_the_golden_texts() {
    for (model, rel) in [(common::SMOLLM2, "smollm2-135m/tokenizer-golden.json"), (common::GEMMA3, "gemma3-270m/tokenizer-golden.json")] {
        let (tok, _) = load(model);
        let bytes = tok.token_bytes();
        assert_eq!(bytes.len(), tok.vocab_size());
        for row in common::read_json(&common::reference_path(rel)).as_array().unwrap() {
            let text = row["text"].as_str().unwrap();
            let ids: Vec<usize> = row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let spelled: Vec<u8> = ids.iter().flat_map(|&i| bytes[i].clone()).collect();
            let special = ids.iter().any(|&i| bytes[i].first() == Some(&0xFF));
            if !special {
                assert_eq!(String::from_utf8_lossy(&spelled), text, "{model}: {ids:?}");
            }
        }
    }
}
