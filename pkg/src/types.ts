// Shapes shared by the page side (index.ts), the engine host (host.ts) and the worker.
import type { WireError } from "./errors.js";

/** A model: a URL (fetched, and cached in the browser), a File/Blob, or the bytes. */
export type ModelSource = string | URL | Blob | ArrayBuffer | Uint8Array;

export type ProgressPhase = "download" | "cache" | "read" | "upload";

/** Load progress; `total` is 0 when unknown. "cache" is a read from the browser's weight cache,
 * "read" a read of a File/Blob, "upload" the model going onto its device. */
export interface Progress {
  phase: ProgressPhase;
  loaded: number;
  total: number;
}

export interface LoadOptions {
  /** Where the model runs: "webgpu", "cpu" (wasm SIMD, threads in cross-origin isolated pages),
   * or "auto" (default): the CPU backend when there is no WebGPU adapter or it is a CPU
   * emulation (SwiftShader, llvmpipe, a fallback adapter), WebGPU otherwise. */
  device?: "auto" | "webgpu" | "cpu";
  /** CPU backend threads (default: one per core, at most 8, when the page is cross-origin
   * isolated; 1 otherwise). More than 1 needs COOP/COEP headers. */
  threads?: number;
  /** Context length in tokens (default: the model's, at most 2048). */
  context?: number;
  /** Use no optional GPU feature. */
  portable?: boolean;
  /** WebGPU: read each step's result before submitting the next (default false: on a real GPU,
   * while every request decodes greedily, the next step runs while this one streams; CPU
   * emulations such as SwiftShader never pipeline). Same output either way; for comparison. */
  sync?: boolean;
  /** Bytes for the paged KV cache (default 256 MiB; never less than one full context). */
  kvBudgetBytes?: number;
  /** WebGPU: the KV cache's element type (default "f16", packed in u32, no `shader-f16`
   * needed; "f32" takes twice the memory a token and is exact against the f32 reference). */
  kvType?: "f16" | "f32";
  /** Keep downloaded models in the browser's Cache Storage (default true). */
  cache?: boolean;
  /** Where ferrolm_bg.wasm is served from (default: beside the package's wasm glue). Named
   * without `wasmRelaxedUrl`, it is used on every browser. */
  wasmUrl?: string;
  /** Where ferrolm_relaxed_bg.wasm (the same build with relaxed-SIMD kernels, used where the
   * browser runs relaxed SIMD) is served from (default: beside the package's wasm glue). */
  wasmRelaxedUrl?: string;
  /** The same for the threaded build (wasm-threads/ferrolm_bg.wasm). */
  wasmThreadsUrl?: string;
  /** The same for the threaded build's relaxed-SIMD binary (wasm-threads/ferrolm_relaxed_bg.wasm). */
  wasmThreadsRelaxedUrl?: string;
}

export interface ModelInfo {
  architecture: string;
  nLayers: number;
  dModel: number;
  vocabSize: number;
  context: number;
  loadMs: number;
  hasChatTemplate: boolean;
  /** The backend and device in words, e.g. "CPU (simd128 kernels, 2 threads, 96.4 MB of weights)". */
  backend: string;
  /** "webgpu", "cpu" or "reference". */
  device: string;
  /** CPU backend threads (1 on WebGPU). */
  threads: number;
}

/** Options the wasm engine takes (OpenAI names). */
export interface GenerateOptions {
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  typical_p?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  repetition_penalty?: number;
  logit_bias?: Record<string, number>;
  seed?: number;
  stop?: string[];
  ignore_eos?: boolean;
  logprobs?: number;
  /** Speculative decoding: "ngram" (prompt lookup) or "draft"; same output, fewer forwards. */
  speculative?: "ngram" | "draft";
  draft_k?: number;
  /** Structured output: any JSON object, or JSON valid against a JSON Schema (always strict). */
  response_format?: ResponseFormat;
  /** ferrolm: output matching this regular expression. */
  regex?: string;
  /** ferrolm: output in the language of this Lark grammar (llguidance's dialect). */
  grammar?: string;
  /** Functions the model may call (chat only); the arguments follow each one's `parameters`. */
  tools?: Tool[];
  /** Default "auto" when there are tools. */
  tool_choice?: "none" | "auto" | "required" | { type: "function"; function: { name: string } };
}

export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; json_schema: { name: string; description?: string; schema?: Record<string, unknown>; strict?: boolean } };

export interface Tool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean };
}

export type Input = { prompt: string } | { messages: { role: string; content: string }[] };

/** Per-request figures from the engine (src/engine/mod.rs `RequestStats`). */
export interface RequestStats {
  prompt_tokens: number;
  cached_tokens: number;
  generated_tokens: number;
  ttft_ms: number;
  tpot_ms: number;
  preemptions: number;
  forwards: number;
  drafted: number;
  accepted: number;
}

export type WireEvent =
  | { type: "token"; id: number; token: number; text: string; drafted: boolean; rejected: number }
  | {
      type: "done";
      id: number;
      finishReason: "stop" | "length" | "cancelled";
      text: string;
      tokens: number[];
      logprobs: { token: number; logprob: number; top: [number, number][] }[];
      stats: RequestStats;
    }
  | { type: "error"; id: number; error: WireError };

export interface KvStats {
  running: number;
  waiting: number;
  kv: { n_blocks: number; used: number; shared: number; cached_free: number; free: number; lookups: number; hits: number; evictions: number };
  block_size: number;
  kv_bytes_per_token: number;
  prefix_hit_rate: number;
  steps: number;
  /** Steps submitted before the one they follow was read (GPU pipelining). */
  chained_steps: number;
  preemptions: number;
  /** The engine's wasm memory (it grows, never shrinks): flat once warm. */
  wasm_memory_bytes: number;
}

/** One KV block: references, whether the prefix cache has it, the running requests holding it
 * (`[request id, first token position]`), and how many of its token slots hold K/V. */
export interface KvBlock {
  refs: number;
  cached: boolean;
  owners: [number, number][];
  filled: number;
}

/** The block pool block by block, with the engine's figures taken at the same moment. */
export interface KvMap {
  blocks: KvBlock[];
  stats: KvStats;
}

/** What MBU is measured against: the backend's read bandwidth and the weight bytes a decode
 * step reads (MBU = weightBytesPerToken x tokens per second / readBytesPerS). */
export interface Bandwidth {
  readBytesPerS: number;
  weightBytesPerToken: number;
}

/** What a transport (worker or in-page) offers the page-side engine. */
export interface Transport {
  load(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelInfo>;
  loadDraft(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<void>;
  submit(input: Input, options: GenerateOptions, onEvent: (e: WireEvent) => void): Promise<number>;
  cancel(id: number): Promise<void>;
  countTokens(input: Input, options: GenerateOptions): Promise<number>;
  engineStats(): Promise<KvStats | null>;
  kvMap(): Promise<KvMap>;
  measureBandwidth(): Promise<Bandwidth>;
  unload(): Promise<void>;
  /** Fault injection for tests (see `Engine.faults`). */
  fault(kind: "lose_device" | "crash_worker"): Promise<void>;
}
