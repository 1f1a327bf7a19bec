//! PLACEHOLDER: being written (helper). API contract:
//! Tokenizer::from_gguf(&Metadata) / from_json(&[u8]); encode(text, parse_special); decode(ids);
//! Detokenizer for incremental UTF-8-safe decoding.
