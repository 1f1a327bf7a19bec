//! The tokenizers built from GGUF metadata against llama.cpp's ids in `../shared/reference`.

mod common;

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
