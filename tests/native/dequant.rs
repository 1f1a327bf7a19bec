//! CPU dequantization against the `gguf` Python package's values on the real files' blocks
//! (tests/fixtures/dequant.json, written by scripts/make-dequant-fixtures.py): bit for bit.

use crate::common;

use ferrolm::gguf::{dequantize, GgmlType, Gguf};

fn ty(name: &str) -> GgmlType {
    (0..40).filter_map(GgmlType::from_id).find(|t| t.name() == name).unwrap_or_else(|| panic!("unknown type {name}"))
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dequant.json");
    let fixtures = common::read_json(&path);
    let mut types = Vec::new();
    for f in fixtures.as_array().unwrap() {
        let t = ty(f["type"].as_str().unwrap());
        let hex = f["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<f32> = f["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mut got = vec![0f32; want.len()];
        dequantize(t, &bytes, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{} {t}: value {i} is {g}, gguf-py says {w}", f["tensor"]);
        }
        // The fixture's bytes are the tensor's first bytes in the real file: checks the parser's offsets.
        if let Some(model) = f["model"].as_str() {
            let file = std::fs::File::open(common::model_path(model)).unwrap();
            let gguf = Gguf::read(&file).unwrap();
            let info = gguf.tensor(f["tensor"].as_str().unwrap()).unwrap();
            assert_eq!(info.ty, t);
            let data = gguf.tensor_data(&file, info).unwrap();
            assert_eq!(&data[..bytes.len()], &bytes[..], "{} bytes differ from the file", f["tensor"]);
        }
        types.push(t);
    }
    for t in ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K"] {
        assert!(types.contains(&ty(t)), "no fixture for {t}");
    }
}

#[test]
fn wrong_sizes_and_unsupported_types_are_errors() {
    let mut out = vec![0f32; 32];
    let err = dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out).unwrap_err().to_string();
    assert!(err.contains("does not hold 32 values"), "{err}");
    let err = dequantize(GgmlType::Q4_0, &[0u8; 18], &mut [0f32; 31]).unwrap_err().to_string();
    assert!(err.contains("not a multiple"), "{err}");
    let err = dequantize(GgmlType::Q5_K, &[0u8; 176], &mut vec![0f32; 256]).unwrap_err().to_string();
    assert!(err.contains("Q5_K"), "{err}");
}
