//! The native CLI: `generate`, `score`, `tokenize`, `bench`, `serve`, `inspect`. Generated text goes to stdout so it
//! can be piped and compared; timings and stats go to stderr. Errors print one line, exit 1.

#[cfg(target_arch = "wasm32")]
fn main() {} // The browser API lives in `api/wasm.rs`; the CLI is native only.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::PathBuf;

    use clap::{Parser, Subcommand, ValueEnum};
    use ferrolm::api::bench::{bench_runs, decode_ceiling, dequant_rate, merge, read_bandwidth, step_rows, synthetic_llama_of, PRINTING_PRESS_PROMPT, SYNTHETIC_SHAPES};
    use ferrolm::api::serve::worker::EngineHandle;
    use ferrolm::api::serve::{serve, ServeOptions};
    use ferrolm::api::{Device, LoadOptions, Runtime};
    use ferrolm::backend::cpu::SimdModel;
    use ferrolm::backend::reference::ops::nll;
    use ferrolm::backend::webgpu::{GpuContext, GpuModel, GpuOptions, KvType};
    use ferrolm::chat::{render_chat, ChatMessage, ChatTemplate};
    use ferrolm::clock::now_ms;
    use ferrolm::engine::{Engine, Event, ForwardModel, ModelOptions, Request};
    use ferrolm::gguf::Gguf;
    use ferrolm::sample::{GenerateOptions, Grammar, SamplingParams, SpecMethod, Speculative};
    use ferrolm::tokenizer::Tokenizer;
    use ferrolm::{Error, Result};

    const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

    #[derive(Parser)]
    #[command(name = "ferrolm", version, about = "Run quantized GGUF language models")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Args, Clone)]
    struct ModelArgs {
        /// GGUF model file [default: models/SmolLM2-135M-Instruct.Q4_1.gguf]
        #[arg(long)]
        model: Option<PathBuf>,
        /// Where the model runs.
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// Use no optional GPU feature (subgroups, shader-f16, timestamps), as on the most
        /// limited adapters.
        #[arg(long)]
        portable: bool,
        /// Context length in tokens [default: the model's, capped at 2048].
        #[arg(long)]
        context: Option<usize>,
        /// Megabytes for the paged KV cache [default: 256; at least one full context].
        #[arg(long)]
        kv_budget_mb: Option<u64>,
        /// GPU: the KV cache's element type; f32 takes twice the memory and is exact against
        /// the f32 reference.
        #[arg(long, value_enum, default_value_t = KvArg::F16)]
        kv_type: KvArg,
        /// CPU backend threads [default: one per core].
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// GPU: read each step before submitting the next (no pipelining; for tests and
        /// comparison).
        #[arg(long)]
        sync: bool,
        /// GPU: the kernel shapes of a real GPU even on a CPU-emulated adapter (to count and
        /// time what a GPU would be sent).
        #[arg(long)]
        gpu_shapes: bool,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum KvArg {
        F16,
        F32,
    }

    fn gpu_options(args: &ModelArgs) -> GpuOptions {
        let base = if args.portable { GpuOptions::portable() } else { GpuOptions::default() };
        GpuOptions { kv: if matches!(args.kv_type, KvArg::F32) { KvType::F32 } else { KvType::F16 }, gpu_shapes: args.gpu_shapes, ..base }
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum DeviceArg {
        /// The quantized SIMD CPU backend (AVX2, and VNNI, where the CPU has them).
        Cpu,
        /// The exact f32 reference on the CPU.
        Reference,
        /// The WebGPU engine.
        Gpu,
    }

    /// Sampling and stopping (OpenAI semantics; the default is greedy).
    #[derive(clap::Args)]
    struct SamplingArgs {
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// 0 is off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0.0)]
        min_p: f32,
        #[arg(long, default_value_t = 1.0)]
        typical_p: f32,
        /// llama.cpp repetition penalty over the last 64 tokens; 1 is off.
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        #[arg(long, default_value_t = 0.0)]
        presence_penalty: f32,
        #[arg(long, default_value_t = 0.0)]
        frequency_penalty: f32,
        /// ID=BIAS, repeatable.
        #[arg(long = "logit-bias")]
        logit_bias: Vec<String>,
        #[arg(long)]
        seed: Option<u64>,
        /// A string that ends generation (not printed); repeatable.
        #[arg(long)]
        stop: Vec<String>,
        #[arg(long)]
        ignore_eos: bool,
        /// Print the chosen token's logprob and N alternatives per token to stderr (N <= 20).
        #[arg(long)]
        logprobs: Option<usize>,
        /// Output any JSON object.
        #[arg(long, group = "constraint")]
        json: bool,
        /// Output JSON valid against the JSON Schema in FILE.
        #[arg(long, value_name = "FILE", group = "constraint")]
        json_schema: Option<PathBuf>,
        /// Output text in the language of the Lark grammar in FILE (llguidance's dialect).
        #[arg(long, value_name = "FILE", group = "constraint")]
        grammar: Option<PathBuf>,
        /// Output text matching this regular expression.
        #[arg(long, value_name = "RE", group = "constraint")]
        regex: Option<String>,
    }

    impl SamplingArgs {
        fn options(&self, max_tokens: usize) -> Result<GenerateOptions> {
            let logit_bias = self
                .logit_bias
                .iter()
                .map(|kv| {
                    let (id, b) = kv.split_once('=').ok_or(())?;
                    Ok((id.trim().parse().map_err(|_| ())?, b.trim().parse().map_err(|_| ())?))
                })
                .collect::<std::result::Result<Vec<(u32, f32)>, ()>>()
                .map_err(|_| Error::InvalidOption { option: "--logit-bias", reason: "expected ID=BIAS, e.g. 42=-100".into() })?;
            if self.logprobs.is_some_and(|n| n > 20) {
                return Err(Error::InvalidOption { option: "--logprobs", reason: "at most 20 alternatives".into() });
            }
            let sampling = SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                typical_p: self.typical_p,
                repeat_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                logit_bias,
                seed: self.seed,
                ..Default::default()
            };
            Ok(GenerateOptions { max_tokens, sampling, stop: self.stop.clone(), ignore_eos: self.ignore_eos, logprobs: self.logprobs, speculative: None, grammar: self.grammar()? })
        }

        fn grammar(&self) -> Result<Option<Grammar>> {
            let read = |option: &'static str, path: &PathBuf| std::fs::read_to_string(path).map_err(|e| Error::InvalidOption { option, reason: format!("cannot read {}: {e}", path.display()) });
            Ok(if self.json {
                Some(Grammar::JsonObject)
            } else if let Some(path) = &self.json_schema {
                let schema =
                    serde_json::from_str(&read("--json-schema", path)?).map_err(|e| Error::InvalidOption { option: "--json-schema", reason: format!("{} is not JSON: {e}", path.display()) })?;
                Some(Grammar::JsonSchema(schema))
            } else if let Some(path) = &self.grammar {
                Some(Grammar::Lark(read("--grammar", path)?))
            } else {
                self.regex.clone().map(Grammar::Regex)
            })
        }
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum SpecArg {
        /// Prompt lookup: drafts continue an earlier occurrence of the last tokens.
        Ngram,
        /// A draft model (--draft-model) sharing the tokenizer.
        Draft,
    }

    /// Speculative decoding: the same output, fewer forward passes.
    #[derive(clap::Args)]
    struct SpecArgs {
        #[arg(long, value_enum)]
        speculative: Option<SpecArg>,
        /// GGUF of the draft model [default: the model itself].
        #[arg(long)]
        draft_model: Option<PathBuf>,
        /// Longest draft (adaptive below it).
        #[arg(long, default_value_t = 4)]
        draft_k: usize,
        /// Draft at every step the drafter has a proposal, even where the step costs measured
        /// on this device say a plain step pays more (for comparison).
        #[arg(long)]
        draft_always: bool,
    }

    // Parsed once per run: the size of its largest variant does not matter.
    #[allow(clippy::large_enum_variant)]
    #[derive(Subcommand)]
    enum Command {
        /// Generate text from a prompt (greedy unless sampling options are given).
        Generate {
            #[command(flatten)]
            model: ModelArgs,
            #[arg(long, required_unless_present = "prompts_file")]
            prompt: Option<String>,
            /// A JSON array of prompts, run concurrently through the batching engine; prints
            /// one JSON line per request, then one with the engine's stats.
            #[arg(long, conflicts_with = "prompt")]
            prompts_file: Option<PathBuf>,
            /// Treat the prompt as a user message and apply the model's chat template.
            #[arg(long)]
            chat: bool,
            /// System message for --chat.
            #[arg(long)]
            system: Option<String>,
            #[arg(long, default_value_t = 128)]
            max_tokens: usize,
            #[command(flatten)]
            sampling: SamplingArgs,
            #[command(flatten)]
            spec: SpecArgs,
        },
        /// Teacher-force token ids; print the top logits and NLL of the next token per position.
        Score {
            #[command(flatten)]
            model: ModelArgs,
            /// Comma-separated token ids.
            #[arg(long)]
            tokens: String,
            #[arg(long, default_value_t = 5)]
            top: usize,
        },
        /// Print the token ids of a text as a JSON array.
        Tokenize {
            #[command(flatten)]
            model: ModelArgs,
            #[arg(long)]
            text: String,
            /// Parse special tokens such as <|im_start|> as single tokens.
            #[arg(long)]
            special: bool,
        },
        /// Measure load time, TTFT, prefill and decode speed and MBU on the GPU (greedy, the
        /// peer benchmark's printing-press prompt), with the adapter's read bandwidth.
        Bench {
            #[command(flatten)]
            model: ModelArgs,
            /// Benchmark a synthetic model of a real shape with random weights instead: Q4_1
            /// `llama-3.2-1b`, `smollm2-135m` or `tiny-30` (SmolLM2's layers at width 64: host
            /// cost), or `llama-3.1-8b-q4k` (Q4_K, 4.6 GB: for a large GPU).
            #[arg(long)]
            synthetic: Option<String>,
            /// Tokens to generate per run.
            #[arg(long, default_value_t = 128)]
            gen: usize,
            /// Tokens per stream in the concurrent-streams benchmark (0 skips it and the
            /// prefix-cache TTFT; synthetic models have no tokenizer and skip both).
            #[arg(long, default_value_t = 64)]
            stream_gen: usize,
            #[arg(long, default_value_t = 3)]
            runs: usize,
            /// Append the summary as one JSON line to this file.
            #[arg(long)]
            json: Option<PathBuf>,
            /// Also print milliseconds per kernel for the prompt's prefill and one decode step.
            #[arg(long)]
            profile: bool,
        },
        /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions,
        /// /v1/completions, /v1/models, /health, /stats), with continuous batching.
        Serve {
            #[command(flatten)]
            model: ModelArgs,
            #[arg(long, default_value = "127.0.0.1")]
            host: String,
            /// 0 picks a free port (the address is printed).
            #[arg(long, default_value_t = 8080)]
            port: u16,
            /// The model's id in the API [default: the file name without .gguf].
            #[arg(long)]
            model_name: Option<String>,
            /// Require `Authorization: Bearer KEY` on /v1 requests.
            #[arg(long)]
            api_key: Option<String>,
            /// Requests in flight at once; more get 429 with Retry-After.
            #[arg(long, default_value_t = 64)]
            max_requests: usize,
            /// Open connections at once; more wait.
            #[arg(long, default_value_t = 256)]
            max_connections: usize,
            /// Largest request body, in KiB.
            #[arg(long, default_value_t = 4096)]
            max_body_kb: usize,
            /// Seconds requests in flight may run on after SIGINT/SIGTERM.
            #[arg(long, default_value_t = 10.0)]
            shutdown_grace: f64,
            /// A GGUF sharing the model's tokenizer that drafts for `speculative: "draft"`.
            #[arg(long)]
            draft_model: Option<PathBuf>,
            /// Expose POST /ferrolm/faults/lose-device (for testing clients).
            #[arg(long)]
            faults: bool,
        },
        /// Print the model's metadata and tensor table.
        Inspect {
            #[command(flatten)]
            model: ModelArgs,
        },
    }

    struct Loaded {
        file: std::fs::File,
        gguf: Gguf,
        path: PathBuf,
    }

    fn open(args: &ModelArgs) -> Result<Loaded> {
        let path = args.model.clone().unwrap_or_else(|| {
            let local = PathBuf::from(DEFAULT_MODEL);
            if local.exists() {
                local
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL)
            }
        });
        let file = std::fs::File::open(&path).map_err(|e| {
            let hint = if args.model.is_none() { "; run `make models` to fetch the default model" } else { "" };
            Error::Io(std::io::Error::new(e.kind(), format!("cannot open {}: {e}{hint}", path.display())))
        })?;
        let gguf = Gguf::read(&file)?;
        Ok(Loaded { file, gguf, path })
    }

    fn context(args: &ModelArgs, m: &Loaded) -> Result<usize> {
        let trained = ferrolm::model::Config::from_gguf(&m.gguf)?.context_len;
        Ok(args.context.unwrap_or(2048).min(trained))
    }

    fn load_options(args: &ModelArgs, m: &Loaded) -> Result<LoadOptions> {
        let gpu = gpu_options(args);
        let device = match args.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Reference => Device::Reference,
            DeviceArg::Gpu => Device::Gpu,
        };
        Ok(LoadOptions { device, context: context(args, m)?, gpu, kv_budget_bytes: args.kv_budget_mb.map(|mb| mb << 20), threads: args.threads, sync: args.sync })
    }

    fn load(args: &ModelArgs, m: &Loaded) -> Result<Runtime> {
        pollster::block_on(Runtime::load(&m.gguf, &m.file, load_options(args, m)?))
    }

    /// The draft model (`--draft-model`, default the model itself) on the runtime's backend.
    fn load_draft(runtime: &mut Runtime, args: &ModelArgs, spec: &SpecArgs) -> Result<()> {
        let draft_args = ModelArgs { model: spec.draft_model.clone().or(args.model.clone()), ..args.clone() };
        let d = open(&draft_args)?;
        pollster::block_on(runtime.load_draft(&d.gguf, &d.file, load_options(&draft_args, &d)?))
    }

    pub fn run() -> Result<()> {
        match Cli::parse().command {
            Command::Generate { model: args, prompt, prompts_file, chat, system, max_tokens, sampling, spec } => {
                let mut opts = sampling.options(max_tokens)?;
                opts.speculative = spec.speculative.map(|m| Speculative {
                    method: match m {
                        SpecArg::Ngram => SpecMethod::Ngram,
                        SpecArg::Draft => SpecMethod::Draft,
                    },
                    k: spec.draft_k,
                });
                let prompts: Option<Vec<String>> = match &prompts_file {
                    Some(path) => {
                        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))))?;
                        let list = serde_json::from_str(&text).map_err(|e| Error::InvalidOption { option: "--prompts-file", reason: format!("expected a JSON array of strings ({e})") })?;
                        Some(list)
                    }
                    None => None,
                };
                let t0 = now_ms();
                let m = open(&args)?;
                let tokenizer = Tokenizer::from_gguf(&m.gguf.metadata)?;
                let template = if chat { ChatTemplate::from_gguf(&m.gguf.metadata, &tokenizer)? } else { None };
                let context = context(&args, &m)?;
                let render = |prompt: String| -> Result<Vec<u32>> {
                    let text = if chat {
                        let mut messages = Vec::new();
                        if let Some(s) = &system {
                            messages.push(ChatMessage { role: "system".into(), content: s.clone() });
                        }
                        messages.push(ChatMessage { role: "user".into(), content: prompt });
                        render_chat(template.as_ref(), &messages, None, true, tokenizer.max_prompt_bytes(context))?
                    } else {
                        prompt
                    };
                    tokenizer.encode_request(&text, chat, context)
                };
                if let Some(prompts) = prompts {
                    let requests = prompts.into_iter().map(|p| Ok(Request { prompt: render(p)?, opts: opts.clone() })).collect::<Result<Vec<_>>>()?;
                    let mut runtime = load(&args, &m)?;
                    if let Some(SpecArg::Draft) = spec.speculative {
                        load_draft(&mut runtime, &args, &spec)?;
                    }
                    runtime.set_draft_always(spec.draft_always);
                    return run_batch(&mut runtime, &tokenizer, requests);
                }
                let ids = render(prompt.expect("clap requires --prompt without --prompts-file"))?;
                let mut runtime = load(&args, &m)?;
                if let Some(SpecArg::Draft) = spec.speculative {
                    load_draft(&mut runtime, &args, &spec)?;
                }
                runtime.set_draft_always(spec.draft_always);
                let load_ms = now_ms() - t0;
                let mut stdout = std::io::stdout().lock();
                let gen = pollster::block_on(runtime.generate(&tokenizer, Request { prompt: ids, opts: opts.clone() }, |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }))?;
                let _ = writeln!(stdout);
                for lp in &gen.logprobs {
                    eprintln!("{}", serde_json::to_string(lp).expect("serializable"));
                }
                let s = &gen.stats;
                eprintln!(
                    "{} | {} | load {:.0} ms | prompt tokens {} | generated {} ({}) | TTFT {:.0} ms | prefill {:.1} tok/s | decode {:.1} tok/s",
                    m.path.display(),
                    runtime.describe(),
                    load_ms,
                    s.prompt_tokens,
                    s.generated_tokens,
                    gen.finish_reason.as_str(),
                    s.ttft_ms,
                    s.prefill_tok_s,
                    s.decode_tok_s
                );
                if let Some(sp) = opts.speculative {
                    eprintln!(
                        "speculative {:?} (k <= {}): drafted {} | accepted {} | acceptance rate {:.1}% | {:.2} tokens per forward | {:.1} tok/s",
                        sp.method,
                        sp.k,
                        s.drafted,
                        s.accepted,
                        100.0 * s.accepted as f64 / s.drafted.max(1) as f64,
                        s.generated_tokens as f64 / s.forwards.max(1) as f64,
                        s.decode_tok_s
                    );
                }
            }
            Command::Score { model: args, tokens, top } => {
                let ids = parse_ids(&tokens)?;
                let m = open(&args)?;
                let mut runtime = load(&args, &m)?;
                let logits = pollster::block_on(runtime.score(&ids))?;
                let vocab = runtime.config().vocab_size;
                let mut total = 0.0;
                for (i, row) in logits.chunks_exact(vocab).enumerate() {
                    let mut order: Vec<usize> = (0..vocab).collect();
                    order.select_nth_unstable_by(top.min(vocab) - 1, |&a, &b| row[b].total_cmp(&row[a]));
                    order.truncate(top.min(vocab));
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                    let top_json: Vec<String> = order.iter().map(|&id| format!("[{id},{}]", row[id])).collect();
                    let mut line = format!("{{\"pos\":{i},\"top\":[{}]", top_json.join(","));
                    if let Some(&next) = ids.get(i + 1) {
                        let nll = nll(row, next as usize);
                        total += nll;
                        line += &format!(",\"nll\":{nll}");
                    }
                    println!("{line}}}");
                }
                let n = ids.len().saturating_sub(1).max(1);
                println!("{{\"mean_nll\":{}}}", total / n as f64);
            }
            Command::Tokenize { model: args, text, special } => {
                let m = open(&args)?;
                let tokenizer = Tokenizer::from_gguf(&m.gguf.metadata)?;
                let ids = tokenizer.encode(&text, special)?;
                println!("{}", serde_json::to_string(&ids).expect("ids serialize"));
            }
            Command::Serve { model: args, host, port, model_name, api_key, max_requests, max_connections, max_body_kb, shutdown_grace, draft_model, faults } => {
                if !(0.0..=3600.0).contains(&shutdown_grace) {
                    return Err(Error::InvalidOption { option: "--shutdown-grace", reason: "give 0 to 3600 seconds".into() });
                }
                let path = open(&args)?.path;
                let name = model_name.unwrap_or_else(|| path.file_name().map_or("model".into(), |f| f.to_string_lossy().trim_end_matches(".gguf").to_string()));
                let (engine, thread, describe) = EngineHandle::start(move || {
                    let m = open(&args)?;
                    let tokenizer = Tokenizer::from_gguf(&m.gguf.metadata)?;
                    let template = ChatTemplate::from_gguf(&m.gguf.metadata, &tokenizer)?;
                    let mut runtime = load(&args, &m)?;
                    if let Some(path) = draft_model {
                        let spec = SpecArgs { speculative: Some(SpecArg::Draft), draft_model: Some(path), draft_k: 4, draft_always: false };
                        load_draft(&mut runtime, &args, &spec)?;
                    }
                    Ok((runtime, tokenizer, template))
                })?;
                let describe = format!("{} | {describe}", path.display());
                let opts = ServeOptions {
                    host,
                    port,
                    model_name: name.clone(),
                    api_key,
                    max_requests,
                    max_connections,
                    max_body_bytes: max_body_kb << 10,
                    shutdown_grace: std::time::Duration::from_secs_f64(shutdown_grace),
                    faults,
                };
                serve(engine, opts, |addr| eprintln!("{describe}\nferrolm serve: '{name}' on http://{addr}/v1 (Ctrl-C stops)"))?;
                let _ = thread.join();
            }
            Command::Bench { model: args, synthetic, gen, stream_gen, runs, json, profile } => bench(&args, synthetic.as_deref(), gen, stream_gen, runs, json.as_deref(), profile)?,
            Command::Inspect { model: args } => {
                let m = open(&args)?;
                let g = &m.gguf;
                println!("file: {} (GGUF v{}, {} bytes)", m.path.display(), g.version, g.file_len);
                println!("metadata ({} keys):", g.metadata.len());
                for (k, v) in g.metadata.iter() {
                    println!("  {k:<48} {}", v.summary());
                }
                println!("tensors ({}):", g.tensors.len());
                println!("  {:<36} {:>6} {:>24} {:>12} {:>12}", "name", "type", "dims", "offset", "bytes");
                for t in &g.tensors {
                    println!("  {:<36} {:>6} {:>24} {:>12} {:>12}", t.name, t.ty.name(), format!("{:?}", t.dims), t.offset, t.n_bytes);
                }
                match ferrolm::model::Config::from_gguf(g) {
                    Ok(c) => println!("config: {c:?}"),
                    Err(e) => println!("config: not runnable: {e}"),
                }
            }
        }
        Ok(())
    }

    fn bench(args: &ModelArgs, synthetic: Option<&str>, gen: usize, stream_gen: usize, runs: usize, json: Option<&std::path::Path>, profile: bool) -> Result<()> {
        let (name, bytes) = match synthetic {
            Some(s) => match SYNTHETIC_SHAPES.iter().find(|(n, ..)| *n == s) {
                Some(&(n, shape, quant)) => (format!("synthetic {n} ({quant})"), synthetic_llama_of(shape, quant)),
                None => {
                    let names: Vec<&str> = SYNTHETIC_SHAPES.iter().map(|(n, ..)| *n).collect();
                    return Err(Error::InvalidOption { option: "--synthetic", reason: format!("unknown shape '{s}'; use one of {}", names.join(", ")) });
                }
            },
            None => {
                let m = open(args)?;
                (m.path.display().to_string(), std::fs::read(&m.path)?)
            }
        };
        let t0 = now_ms();
        let gguf = Gguf::read(&bytes[..])?;
        let tokenizer = Tokenizer::from_gguf(&gguf.metadata)?;
        let vocab = ferrolm::model::Config::from_gguf(&gguf)?.vocab_size as u32;
        let prompt: Vec<u32> = match synthetic {
            Some(_) => (0..130u32).map(|i| (i * 7919) % vocab).collect(),
            None => tokenizer.encode_prompt(PRINTING_PRESS_PROMPT, false)?,
        };
        let opts = ModelOptions::new(1024, 128);
        // Synthetic models have no real text to serve or to draft from.
        let stream_gen = if synthetic.is_some() { 0 } else { stream_gen };
        let template = ChatTemplate::from_gguf(&gguf.metadata, &tokenizer)?;
        let mut summary = match args.device {
            DeviceArg::Cpu => {
                let model = SimdModel::load(&gguf, &bytes[..], &opts, args.threads)?;
                let load_ms = now_ms() - t0;
                let bandwidth = model.read_bandwidth();
                let head = serde_json::json!({
                    "adapter": format!("CPU, {} threads", model.threads()), "backend": model.describe(), "threads": model.threads(),
                    "load_ms": load_ms, "weight_bytes_per_token": model.weight_bytes_per_token(), "read_gb_s": bandwidth / 1e9,
                });
                let wb = model.weight_bytes_per_token() as f64;
                let mut engine = Engine::new(model);
                let mut out = pollster::block_on(bench_runs(&mut engine, &tokenizer, template.as_ref(), &prompt, gen, runs, stream_gen))?;
                out["matmul_ceiling_tok_s"] = (1e3 / engine.model().matmuls_ms()).into();
                with_mbu(head, out, wb, bandwidth)
            }
            DeviceArg::Gpu => {
                let gpu = gpu_options(args);
                let model = pollster::block_on(async { GpuModel::load(GpuContext::new(gpu).await?, &gguf, &bytes[..], &opts).await })?;
                let load_ms = now_ms() - t0;
                let bandwidth = pollster::block_on(read_bandwidth(&model))?;
                let alu = pollster::block_on(dequant_rate(&model))?;
                if profile {
                    let (steps, gpu) = model.profile_prompt(&prompt[..prompt.len().min(128)])?;
                    let how = if gpu { "GPU timestamps" } else { "CPU time, a dispatch at a time" };
                    for (step, kernels) in ["prefill", "decode"].iter().zip(steps) {
                        let list: Vec<String> = kernels.iter().map(|(l, ms)| format!("{l} {ms:.2}")).collect();
                        eprintln!("{step} ms per kernel ({how}): {}", list.join(", "));
                    }
                }
                let info = model.ctx.info.clone();
                let head = serde_json::json!({
                    "adapter": info.name, "backend": info.backend, "driver": info.driver, "load_ms": load_ms,
                    "weight_bytes_per_token": model.weight_bytes, "read_gb_s": bandwidth / 1e9,
                    "weight_values_per_token": model.weight_values, "alu_gmac_s": alu / 1e9,
                    "decode_ceiling_tok_s": decode_ceiling(&model, bandwidth, alu),
                });
                let wb = model.weight_bytes as f64;
                let mut engine = Engine::new(model);
                if args.sync {
                    engine.set_pipelined(false);
                }
                // The counters describe the pipelined step (with --sync the step-by-step one);
                // the timed runs use the engine's setting for this adapter.
                let steps = pollster::block_on(step_rows(&mut engine, &tokenizer, &prompt, !args.sync))?;
                eprintln!("decode step (greedy, then temperature 0.7 top-p 0.9 as sampled_): {steps}");
                let out = pollster::block_on(bench_runs(&mut engine, &tokenizer, template.as_ref(), &prompt, gen, runs, stream_gen))?;
                with_mbu(merge(head, steps), out, wb, bandwidth)
            }
            DeviceArg::Reference => return Err(Error::InvalidOption { option: "--device", reason: "bench measures the gpu and cpu backends, not the reference".into() }),
        };
        summary["where"] = "native".into();
        summary["model"] = name.into();
        println!("{summary}");
        if let Some(path) = json {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{summary}")?;
        }
        Ok(())
    }

    /// `head` (backend facts) and `out` (timings) in one summary with the decode MBU.
    fn with_mbu(head: serde_json::Value, out: serde_json::Value, weight_bytes: f64, bandwidth: f64) -> serde_json::Value {
        let mut summary = merge(head, out);
        summary["mbu"] = (weight_bytes * summary["decode_tok_s"].as_f64().unwrap_or(0.0) / bandwidth).into();
        summary
    }

    /// Runs every request through the batching engine at once; one JSON line per request (in
    /// submission order) and one with the engine's stats.
    fn run_batch(runtime: &mut Runtime, tokenizer: &Tokenizer, requests: Vec<Request>) -> Result<()> {
        let ids = requests.into_iter().map(|r| runtime.submit(tokenizer, r)).collect::<Result<Vec<_>>>()?;
        let t0 = now_ms();
        let mut lines = std::collections::BTreeMap::new();
        pollster::block_on(runtime.run(tokenizer, |event| {
            if let Event::Done { id, generation: g, stats } = event {
                let index = ids.iter().position(|&i| i == id).expect("submitted here");
                let line = serde_json::json!({
                    "index": index, "text": g.text, "tokens": g.tokens, "finish_reason": g.finish_reason.as_str(),
                    "prompt_tokens": stats.prompt_tokens, "cached_tokens": stats.cached_tokens,
                    "ttft_ms": stats.ttft_ms, "tpot_ms": stats.tpot_ms, "preemptions": stats.preemptions,
                });
                lines.insert(index, line);
            }
        }))?;
        let secs = (now_ms() - t0) / 1e3;
        let generated: u64 = lines.values().map(|l| l["tokens"].as_array().map_or(0, |t| t.len() as u64)).sum();
        for line in lines.values() {
            println!("{line}");
        }
        println!("{}", serde_json::json!({ "engine": runtime.stats(), "requests": lines.len(), "generated_tokens": generated, "seconds": secs, "tok_s": generated as f64 / secs }));
        Ok(())
    }

    fn parse_ids(s: &str) -> Result<Vec<u32>> {
        let ids = s
            .split(',')
            .map(|t| t.trim().parse::<u32>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidOption { option: "--tokens", reason: format!("expected comma-separated token ids ({e})") })?;
        if ids.is_empty() {
            return Err(Error::InvalidOption { option: "--tokens", reason: "no token ids given".into() });
        }
        Ok(ids)
    }
}
