//! The GGUF reader: the real files, a round trip of every value type, and hostile input. Every
//! bad file must give a clear error, never a panic or an allocation the file cannot back.

use crate::common;

use ferrolm::gguf::{GgmlType, Gguf, GgufWriter, Value};
use ferrolm::Error;

#[test]
fn reads_the_real_smollm2_file() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let g = Gguf::read(&file).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.metadata.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.metadata.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.metadata.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4_1);
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().dims, vec![576, 576]);
    assert!(g.tensor("output.weight").is_none(), "SmolLM2 ties its embedding");
    let err = g.metadata.get_str("llama.block_count").unwrap_err().to_string();
    assert!(err.contains("has type u32, expected string"), "{err}");
    assert!(matches!(g.metadata.get_u32("no.such.key"), Err(Error::MissingMetadata(_))));
}

/// The check a browser runs on a download's first bytes: SmolLM2's gate and up (2 x 1536 rows of
/// 576 Q4_1 values, 20 bytes a packed group of 32) fit a 1.1 MB binding, not one byte less.
#[test]
fn the_header_check_refuses_a_gate_and_up_larger_than_a_binding() {
    let file = std::fs::File::open(common::model_path(common::SMOLLM2)).unwrap();
    let g = Gguf::read(&file).unwrap();
    let need = 2 * 1536 * (576 / 32) * 20;
    ferrolm::backend::webgpu::GpuModel::check_header(&g, need).unwrap();
    let err = ferrolm::backend::webgpu::GpuModel::check_header(&g, need - 1).unwrap_err();
    assert!(matches!(err, Error::ModelTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("layer 0's gate and up matrices needs 1105920 bytes"), "{err}");
}

#[test]
fn reads_the_real_gemma3_file() {
    let file = std::fs::File::open(common::model_path(common::GEMMA3)).unwrap();
    let g = Gguf::read(&file).unwrap();
    assert_eq!(g.architecture().unwrap(), "gemma3");
    assert_eq!(g.tensor("token_embd.weight").unwrap().dims, vec![640, 262144]);
    let c = ferrolm::model::Config::from_gguf(&g).unwrap();
    assert_eq!((c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim), (18, 640, 4, 1, 256, 2048));
    assert!(c.tied_embeddings && c.qk_norm && c.post_norms && c.final_logit_softcap.is_none());
    // Five sliding-window layers (RoPE base 10000) to every global one (the freq_base key's 1e6).
    let global: Vec<usize> = (0..c.n_layers).filter(|&l| c.layer_attention(l).window.is_none()).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.layer_attention(0).window, Some(512));
    assert_eq!((c.layer_attention(0).rope_base, c.layer_attention(5).rope_base), (10000.0, 1_000_000.0));
}

#[test]
fn missing_required_metadata_names_the_key() {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into())).meta("llama.embedding_length", Value::U32(64));
    let bytes = w.to_bytes();
    let g = Gguf::parse(&bytes, bytes.len() as u64).unwrap();
    let err = ferrolm::model::Config::from_gguf(&g).unwrap_err().to_string();
    assert!(err.contains("'llama.attention.head_count' is missing"), "{err}");
}

fn every_type() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("u8", Value::U8(200))
        .meta("i8", Value::I8(-5))
        .meta("u16", Value::U16(60000))
        .meta("i16", Value::I16(-300))
        .meta("u32", Value::U32(4_000_000_000))
        .meta("i32", Value::I32(-70000))
        .meta("f32", Value::F32(1.5))
        .meta("bool", Value::Bool(true))
        .meta("string", Value::String("héllo".into()))
        .meta("u64", Value::U64(1 << 40))
        .meta("i64", Value::I64(-(1 << 40)))
        .meta("f64", Value::F64(-2.25))
        .meta("array", Value::Array(vec![Value::I32(1), Value::I32(-2)]))
        .meta("nested", Value::Array(vec![Value::Array(vec![Value::String("a".into())]), Value::Array(vec![Value::String("b".into())])]))
        .tensor_f32("a", &[4], &[1.0, 2.0, 3.0, 4.0])
        .tensor_f32("b", &[2, 2], &[5.0, 6.0, 7.0, 8.0]);
    w
}

#[test]
fn round_trips_every_value_type_and_reads_from_a_prefix() {
    let w = every_type();
    let bytes = w.to_bytes();
    let g = Gguf::parse(&bytes, bytes.len() as u64).unwrap();
    let m = &g.metadata;
    assert_eq!(m.get("u8"), Some(&Value::U8(200)));
    assert_eq!(m.get("i8"), Some(&Value::I8(-5)));
    assert_eq!(m.get("u16"), Some(&Value::U16(60000)));
    assert_eq!(m.get("i16"), Some(&Value::I16(-300)));
    assert_eq!(m.get_u32("u32").unwrap(), 4_000_000_000);
    assert_eq!(m.get("i32"), Some(&Value::I32(-70000)));
    assert_eq!(m.get_f32("f32").unwrap(), 1.5);
    assert!(m.get_bool("bool").unwrap());
    assert_eq!(m.get_str("string").unwrap(), "héllo");
    assert_eq!(m.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(m.get("i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(m.get("f64"), Some(&Value::F64(-2.25)));
    assert_eq!(m.get_i64_array("array").unwrap(), vec![1, -2]);
    assert_eq!(m.get("nested").unwrap(), &Value::Array(vec![Value::Array(vec![Value::String("a".into())]), Value::Array(vec![Value::String("b".into())])]));
    assert!(m.get_u32("i32").is_err(), "a negative value is not a u32");
    let b = g.tensor("b").unwrap();
    assert_eq!(b.offset % 32, 0);
    assert_eq!(g.tensor_data(&bytes[..], b).unwrap(), [5f32, 6.0, 7.0, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());

    // A short prefix asks for more bytes; `read` grows it until the header fits.
    assert!(matches!(Gguf::parse(&bytes[..40], bytes.len() as u64), Err(Error::NeedMoreBytes { .. })));
    assert_eq!(Gguf::read(&bytes[..]).unwrap().tensors.len(), 2);
}

fn parse_err(bytes: &[u8]) -> String {
    match Gguf::parse(bytes, bytes.len() as u64) {
        Ok(_) => panic!("a bad file parsed"),
        Err(e) => e.to_string(),
    }
}

/// Writes a tiny file with `f` patching bytes after the magic/version/counts header.
fn patched(mut f: impl FnMut(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = every_type().to_bytes();
    f(&mut bytes);
    bytes
}

/// Offset of the first occurrence of `needle`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn hostile_headers_are_clear_errors() {
    let good = every_type().to_bytes();
    // Truncated anywhere before the end of the last tensor: an error naming the truncation.
    let g = Gguf::parse(&good, good.len() as u64).unwrap();
    let end = g.tensors.iter().map(|t| t.offset + t.n_bytes).max().unwrap() as usize;
    for cut in 0..end {
        let e = parse_err(&good[..cut]);
        assert!(e.contains("truncated") || e.contains("runs past the end") || e.contains("magic") || e.contains("impossible"), "cut {cut}: {e}");
    }
    assert!(parse_err(b"GGML\x03\0\0\0").contains("not a GGUF file"));
    for v in [1u32, 4] {
        let e = parse_err(&patched(|b| b[4..8].copy_from_slice(&v.to_le_bytes())));
        assert!(e.contains(&format!("unsupported GGUF version {v}")), "{e}");
    }
    assert!(parse_err(&patched(|b| b[4..8].copy_from_slice(&3u32.to_be_bytes()))).contains("big-endian"));
    // Counts far beyond what the file could hold.
    let e = parse_err(&patched(|b| b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes())));
    assert!(e.contains("tensor count") && e.contains("impossible"), "{e}");
    let e = parse_err(&patched(|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())));
    assert!(e.contains("metadata entry count"), "{e}");
    // A string length of 2^60 (the key of the first entry).
    let e = parse_err(&patched(|b| b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes())));
    assert!(e.contains("exceeds") || e.contains("truncated"), "{e}");
    // An array claiming 2^50 elements.
    let e = parse_err(&patched(|b| {
        let at = find(b, b"array") + 5 + 4 + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    }));
    assert!(e.contains("array length"), "{e}");
    // Unknown value type (the type field after the key "u8").
    let e = parse_err(&patched(|b| {
        let at = find(b, b"u8\0\0\0\0") + 2;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    }));
    assert!(e.contains("unknown metadata value type 99"), "{e}");
}

/// Byte offset of tensor `name`'s info record (its name's length prefix).
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key.extend_from_slice(&[1, 0, 0, 0]); // n_dims of "a" is 1
    find(bytes, &key)
}

#[test]
fn hostile_tensor_tables_are_clear_errors() {
    let at = tensor_info_at(&every_type().to_bytes(), "a");
    let dims = at + 8 + 1 + 4; // name length, name, n_dims
    let ty = dims + 8;
    let off = ty + 4;
    type Corrupt<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
    let cases: Vec<(Corrupt, &str)> = vec![
        (Box::new(|b| b[at + 9..at + 13].copy_from_slice(&0u32.to_le_bytes())), "0 dimensions"),
        (Box::new(|b| b[at + 9..at + 13].copy_from_slice(&5u32.to_le_bytes())), "5 dimensions"),
        (Box::new(|b| b[dims..dims + 8].copy_from_slice(&0u64.to_le_bytes())), "invalid dimensions"),
        (Box::new(|b| b[dims..dims + 8].copy_from_slice(&u64::MAX.to_le_bytes())), "invalid dimensions"),
        (Box::new(|b| b[dims..dims + 8].copy_from_slice(&(1u64 << 20).to_le_bytes())), "runs past the end"),
        (Box::new(|b| b[ty..ty + 4].copy_from_slice(&77u32.to_le_bytes())), "ggml type id 77"),
        (Box::new(|b| b[off..off + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())), "runs past the end"),
        (Box::new(|b| b[off..off + 8].copy_from_slice(&4u64.to_le_bytes())), "not aligned"),
        (Box::new(|b| b[off..off + 8].copy_from_slice(&32u64.to_le_bytes())), "overlap"),
        (
            Box::new(|b| {
                let at = tensor_info_at(b, "a");
                b[at + 8] = b'b';
            }),
            "appears twice",
        ),
    ];
    for (patch, want) in cases {
        let e = parse_err(&patched(patch));
        assert!(e.contains(want), "expected '{want}' in: {e}");
    }
    let mut w = every_type();
    w.meta("u8", Value::U8(1));
    assert!(parse_err(&w.to_bytes()).contains("appears twice"));
}

#[test]
fn random_corruption_never_panics() {
    let good = every_type().to_bytes();
    let mut state = 0x2545F4914F6CDD1Du64;
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + (state % 4) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state as usize) % b.len();
            b[i] = (state >> 32) as u8;
        }
        let _ = Gguf::parse(&b, b.len() as u64);
    }
}

/// A tiny synthetic llama.
fn tiny_llama() -> Vec<u8> {
    use ferrolm::api::bench::{synthetic_llama, LlamaShape};
    synthetic_llama(LlamaShape { n_layers: 1, d_model: 32, n_heads: 2, n_kv_heads: 1, ffn_dim: 64, vocab: 64 })
}

/// [`tiny_llama`] with the u32 or f32 of metadata `key` replaced by `value`, in place.
fn llama_with(key: &str, value: Value) -> Vec<u8> {
    let (ty, v) = match value {
        Value::U32(v) => (4u32, v.to_le_bytes()),
        Value::F32(v) => (6u32, v.to_le_bytes()),
        other => panic!("a 4-byte value, not {other:?}"),
    };
    let mut bytes = tiny_llama();
    let at = find(&bytes, key.as_bytes()) + key.len();
    assert_eq!(bytes[at..at + 4], ty.to_le_bytes(), "{key}'s type");
    bytes[at + 4..at + 8].copy_from_slice(&v);
    bytes
}

/// Config values no model can run with are refused when the file is read, by every backend's
/// loader: a context of 0 positions panicked in the CPU backends' limits (found by `make fuzz`'s
/// `model` target); a RoPE base or epsilon that is not a number made every logit NaN.
#[test]
fn implausible_configs_are_clear_errors() {
    use ferrolm::backend::cpu::SimdModel;
    use ferrolm::backend::reference::ReferenceModel;
    use ferrolm::engine::ModelOptions;
    let cases = [
        ("llama.context_length", Value::U32(0), "implausible llama configuration"),
        ("llama.rope.freq_base", Value::F32(f32::NAN), "RoPE base NaN"),
        ("llama.rope.freq_base", Value::F32(-1.0), "RoPE base -1"),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(f32::INFINITY), "epsilon inf"),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(-1e-5), "epsilon -0.00001"),
    ];
    for (key, value, want) in cases {
        let bytes = llama_with(key, value);
        let gguf = Gguf::read(&bytes[..]).unwrap();
        let opts = ModelOptions::new(64, 16);
        let errors = [
            ferrolm::model::Config::from_gguf(&gguf).err().map(|e| e.to_string()),
            SimdModel::load(&gguf, &bytes[..], &opts, 1).err().map(|e| e.to_string()),
            ReferenceModel::load(&gguf, &bytes[..], &opts).err().map(|e| e.to_string()),
        ];
        for e in errors {
            let e = e.unwrap_or_else(|| panic!("{key}: loaded"));
            assert!(e.contains(want), "{key}: expected '{want}' in: {e}");
        }
    }
    // The unpatched file loads (the cases above fail for their value alone).
    let bytes = tiny_llama();
    assert!(ferrolm::model::Config::from_gguf(&Gguf::read(&bytes[..]).unwrap()).is_ok());
}
