//! A short smoke of the fuzz targets (src/api/fuzz.rs) for `make test`: every seed in
//! fuzz/corpus/<target>/ and seeded mutations of it (bytes flipped, runs cut, duplicated or
//! spliced with another seed, integers set to extremes) must return without a panic within a
//! few seconds. Coverage-guided runs are `make fuzz`. `cargo test --test native --
//! fuzz_smoke:: --ignored` rewrites the generated seeds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ferrolm::api::bench::{synthetic_llama, synthetic_llama_of, LlamaShape};
use ferrolm::api::fuzz::TARGETS;
use ferrolm::gguf::{GgmlType, GgufWriter, Value};

const MUTATIONS_PER_SEED: usize = 300;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed")))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// xorshift64*: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len());
        match rng.below(6) {
            0 if !d.is_empty() => d[at] ^= 1 << rng.below(8),
            1 => d.truncate(at),
            2 => {
                let run: Vec<u8> = d[at..(at + 1 + rng.below(64)).min(d.len())].to_vec();
                d.splice(at..at, run);
            }
            3 if at + 8 <= d.len() => {
                let extreme: [u64; 5] = [0, 1, u64::MAX, u32::MAX as u64, 1 << 40];
                d[at..at + 8].copy_from_slice(&extreme[rng.below(5)].to_le_bytes());
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                d.splice(at..at, other[from..(from + 1 + rng.below(256)).min(other.len())].iter().copied());
            }
            _ if at < d.len() => {
                d.remove(at);
            }
            _ => {}
        }
    }
    d
}

#[test]
fn fuzz_targets_survive_their_seeds_and_mutations() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{name}");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let start = Instant::now();
        let mut runs = 0;
        for (i, (file, seed)) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1) % seeds.len()].1;
            for m in 0..=MUTATIONS_PER_SEED {
                let input = if m == 0 { seed.clone() } else { mutate(seed, other, &mut rng) };
                let t0 = Instant::now();
                if std::panic::catch_unwind(|| target(&input)).is_err() {
                    let path = std::env::temp_dir().join(format!("ferrolm-fuzz-{name}-crash"));
                    std::fs::write(&path, &input).unwrap();
                    panic!("{name}: mutation {m} of {file} panicked; input written to {}", path.display());
                }
                assert!(t0.elapsed().as_secs_f64() < 5.0, "{name}: mutation {m} of {file} took {:?}", t0.elapsed());
                runs += 1;
            }
        }
        println!("{name}: {runs} inputs from {} seeds in {:.1} s", seeds.len(), start.elapsed().as_secs_f64());
    }
}

/// The generated model seeds reach the code under test: they parse, and their tokenizer and
/// chat template work (a seed that fails early would leave the targets' depths unfuzzed).
#[test]
fn model_seeds_load_their_config_tokenizer_and_template() {
    use ferrolm::chat::{ChatMessage, ChatTemplate};
    for (file, bytes) in seeds("tokenizer") {
        let gguf = ferrolm::gguf::Gguf::read(&bytes[..]).unwrap_or_else(|e| panic!("{file}: {e}"));
        ferrolm::model::Config::from_gguf(&gguf).unwrap_or_else(|e| panic!("{file}: {e}"));
        let tok = ferrolm::tokenizer::Tokenizer::from_gguf(&gguf.metadata).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!tok.encode("abc hi", true).unwrap().is_empty(), "{file}");
        let template = ChatTemplate::from_gguf(&gguf.metadata, &tok).unwrap().expect("a template");
        let text = template.render(&[ChatMessage { role: "user".into(), content: "hi".into() }], None, true, 4096).unwrap();
        assert!(text.ends_with("<|im_start|>assistant\n"), "{file}: {text:?}");
    }
}

/// The `model` target's seeds: llama-shaped files small enough to load and run thousands of
/// times, with 4-bit matrices (Q4_1 at width 32; Q4_K needs blocks of 256 values).
const MODEL_SEEDS: [(&str, GgmlType, LlamaShape); 2] = [
    ("seed-tiny-q4_1.gguf", GgmlType::Q4_1, LlamaShape { n_layers: 1, d_model: 32, n_heads: 2, n_kv_heads: 1, ffn_dim: 64, vocab: 64 }),
    ("seed-small-q4_k.gguf", GgmlType::Q4_K, LlamaShape { n_layers: 1, d_model: 256, n_heads: 4, n_kv_heads: 2, ffn_dim: 256, vocab: 32 }),
];

/// The model seeds reach the forward: they load on the CPU backend and score finite logits.
#[test]
fn model_seeds_load_and_run_on_the_cpu() {
    use ferrolm::backend::cpu::SimdModel;
    use ferrolm::engine::{Engine, ModelOptions};
    for (file, bytes) in seeds("model") {
        let gguf = ferrolm::gguf::Gguf::read(&bytes[..]).unwrap_or_else(|e| panic!("{file}: {e}"));
        let model = SimdModel::load(&gguf, &bytes[..], &ModelOptions::new(64, 16), 1).unwrap_or_else(|e| panic!("{file}: {e}"));
        let logits = pollster::block_on(Engine::new(model).score(&[1, 2, 3])).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!logits.is_empty() && logits.iter().all(|x| x.is_finite()), "{file}");
    }
}

/// A small GGUF of the llama architecture with a tokenizer of `model` ("gpt2" with merges, or
/// "llama" with scores and token types) and a chat template.
fn tiny_model(model: &str) -> Vec<u8> {
    let shape = LlamaShape { n_layers: 1, d_model: 32, n_heads: 1, n_kv_heads: 1, ffn_dim: 32, vocab: 64 };
    let base_bytes = synthetic_llama(shape);
    let base = ferrolm::gguf::Gguf::read(&base_bytes[..]).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata.iter() {
        if !k.starts_with("tokenizer.") {
            w.meta(k, v.clone());
        }
    }
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    // A space as each tokenizer model spells it: GPT-2's byte table, SentencePiece's `▁`.
    let space = if model == "gpt2" { "\u{0120}" } else { "▁" };
    tokens.extend(["a", "b", "c", " ", "ab", "bc", "abc", "h", "i", "hi", space, &format!("{space}a")].map(String::from));
    while tokens.len() < 64 {
        tokens.push(format!("<0x{:02X}>", tokens.len()));
    }
    w.meta("tokenizer.ggml.model", Value::String(model.into()))
        .meta("tokenizer.ggml.tokens", Value::Array(tokens.iter().cloned().map(Value::String).collect()))
        .meta("tokenizer.ggml.bos_token_id", Value::U32(0))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(1))
        .meta(
            "tokenizer.chat_template",
            Value::String("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into()),
        );
    let types: Vec<Value> = (0..tokens.len())
        .map(|i| {
            Value::I32(if i < 4 {
                3
            } else if i >= 16 {
                6
            } else {
                1
            })
        })
        .collect();
    w.meta("tokenizer.ggml.token_type", Value::Array(types));
    if model == "gpt2" {
        w.meta("tokenizer.ggml.merges", Value::Array(["a b", "b c", "ab c", "h i", "\u{0120} a"].map(|m| Value::String(m.into())).to_vec()));
        w.meta("tokenizer.ggml.pre", Value::String("smollm".into()));
    } else {
        w.meta("tokenizer.ggml.scores", Value::Array((0..tokens.len()).map(|i| Value::F32(-(i as f32))).collect()));
    }
    for info in &base.tensors {
        let data = base.tensor_data(&base_bytes[..], info).unwrap();
        w.tensor(&info.name, &info.dims, info.ty, data);
    }
    w.to_bytes()
}

/// Writes the generated seeds (the hand-written ones are committed as they are).
#[test]
#[ignore]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        std::fs::create_dir_all(corpus(target)).unwrap();
        std::fs::write(corpus(target).join(name), data).unwrap();
    };
    for model in ["gpt2", "llama"] {
        let bytes = tiny_model(model);
        write("gguf", &format!("seed-tiny-{model}.gguf"), &bytes);
        write("tokenizer", &format!("seed-tiny-{model}.gguf"), &bytes);
    }
    for (name, quant, shape) in MODEL_SEEDS {
        write("model", name, &synthetic_llama_of(shape, quant));
    }
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("qwen2".into())).tensor("token_embd.weight", &[32, 2], GgmlType::F16, vec![0; 128]);
    write("gguf", "seed-partial-qwen2.gguf", &w.to_bytes());
}
