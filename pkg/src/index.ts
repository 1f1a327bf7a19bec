// ferrolm: quantized LLMs (GGUF) in the browser on WebGPU, behind an OpenAI-style API.
//
//   import { createEngine } from "ferrolm";
//   const engine = await createEngine("/models/SmolLM2-135M-Instruct.Q4_1.gguf", { onProgress: console.log });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true }))
//     out.textContent += chunk.choices[0].delta.content ?? "";
import { FerroError, fromWire } from "./errors.js";
import { endpoints, OPTION_FIELDS, REQUEST_FIELDS, unsupportedField } from "./openai.js";
import type { ChatCompletionChunk, ChatEngine, ChatRequest, CompletionChunk, CompletionRequest, FinishReason, SamplingRequest, Speculation, Timings, TokenLogprob, ToolCall, Usage } from "./openai.js";
import { InlineTransport, WorkerTransport } from "./protocol.js";
import { RemoteEngine, type RemoteOptions } from "./remote.js";
import type { Bandwidth, GenerateOptions, Input, KvMap, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, RequestStats, Tool, Transport, WireEvent } from "./types.js";

export { FerroError } from "./errors.js";
export type { FerroErrorCode } from "./errors.js";
export type { Bandwidth, KvBlock, KvMap, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, ProgressPhase, RequestStats, ResponseFormat, Tool } from "./types.js";
export type {
  ChatCompletion, ChatCompletionChunk, ChatEngine, ChatMessage, ChatRequest, Completion, CompletionChunk, CompletionRequest, FinishReason, Placement, SamplingRequest, Speculation, Timings, TokenLogprob, ToolCall, Usage,
} from "./openai.js";
export { RemoteEngine } from "./remote.js";
export type { RemoteOptions } from "./remote.js";
export { createRouter, Router } from "./router.js";
export type { RouterOptions, RouteStats } from "./router.js";
export { ResponseCache } from "./cache.js";
export type { CacheOptions } from "./cache.js";

export interface EngineOptions extends LoadOptions {
  /** Called as the model downloads, is read from the cache or a file, and goes onto the GPU. */
  onProgress?: (p: Progress) => void;
  /** Run the engine in a dedicated Web Worker (default true); false runs it in the page. */
  worker?: boolean;
  /** The worker script, when a bundler moved it (default: dist/worker.js beside this file). */
  workerUrl?: string | URL;
  /** A draft model sharing the tokenizer, for `speculative: "draft"` requests. */
  draftModel?: ModelSource;
}

export interface EngineStats {
  model: ModelInfo;
  /** Paged KV cache and scheduler: running / waiting requests, blocks used / free / cached. */
  kv: KvStats | null;
  /** The last finished request. */
  last: (Timings & { prompt_tokens: number; completion_tokens: number }) | null;
}

/** Loads a model and returns an engine; `model` is a URL, a File/Blob or the bytes. Or, given
 * `{ remote: { baseURL, apiKey, model, headers } }`, returns an engine with the same interface
 * on a served one (vLLM, TGI, llama.cpp's server, `ferrolm serve`). */
export async function createEngine(remote: { remote: RemoteOptions }): Promise<RemoteEngine>;
export async function createEngine(model: ModelSource, options?: EngineOptions): Promise<Engine>;
export async function createEngine(model: ModelSource | { remote: RemoteOptions }, options: EngineOptions = {}): Promise<Engine | RemoteEngine> {
  if (typeof model === "object" && model !== null && "remote" in model) return new RemoteEngine(model.remote);
  const transport = options.worker === false || typeof Worker === "undefined" ? await InlineTransport.create() : new WorkerTransport(options.workerUrl);
  const { onProgress, worker: _w, workerUrl: _u, draftModel, ...load } = options;
  try {
    const info = await transport.load(model, load, onProgress ?? (() => {}));
    if (draftModel !== undefined) await transport.loadDraft(draftModel, load, onProgress ?? (() => {}));
    const name = typeof model === "string" ? model.split("/").pop()! : model instanceof URL ? model.pathname.split("/").pop()! : typeof File !== "undefined" && model instanceof File ? model.name : "model.gguf";
    return new Engine(transport, info, name);
  } catch (e) {
    await transport.unload().catch(() => {});
    throw e;
  }
}

/** Items pushed by a producer, pulled by an async iterator. */
class Queue<T> {
  private items: T[] = [];
  private wake: (() => void) | null = null;
  push(x: T) {
    this.items.push(x);
    this.wake?.();
  }
  async next(): Promise<T> {
    while (!this.items.length) await new Promise<void>((r) => (this.wake = r));
    this.wake = null;
    return this.items.shift()!;
  }
}

let nextId = 0;

export class Engine implements ChatEngine {
  private lastStats: EngineStats["last"] = null;
  private readonly api = endpoints(
    (req) => this.chatStream(req),
    (req) => this.completionStream(req),
  );
  readonly chat = this.api.chat;
  readonly completions = this.api.completions;

  constructor(private transport: Transport, readonly info: ModelInfo, readonly model: string) {}

  /** The KV block pool block by block (who holds each block, how full, whether cached), with
   * the KV figures of the same moment: what the demo's map draws. */
  kvMap(): Promise<KvMap> {
    return this.transport.kvMap();
  }

  /** The backend's read bandwidth and the weight bytes a decode step reads, for MBU. Takes a
   * moment; on the CPU backend it reads those weights themselves (no extra memory). */
  measureBandwidth(): Promise<Bandwidth> {
    return this.transport.measureBandwidth();
  }

  /** The prompt's length in tokens as the engine would see it (the chat rendered with the
   * model's template and the tools), without running it. */
  countTokens(req: ChatRequest | CompletionRequest): Promise<number> {
    const input: Input = "messages" in req ? { messages: req.messages } : { prompt: req.prompt };
    return this.transport.countTokens(input, toOptions(req, "messages" in req));
  }

  /** Model and adapter, KV cache use, and the last request's timings. */
  async stats(): Promise<EngineStats> {
    return { model: this.info, kv: await this.transport.engineStats(), last: this.lastStats };
  }

  /** Fault injection, for testing how an app handles failures: `loseDevice` destroys the GPU
   * device as a driver reset would (requests in flight fail with `device_lost`);
   * `crashWorker` raises an uncaught error in the engine's worker (everything pending fails
   * with `worker_died`). Either way the engine is done: create a new one. */
  readonly faults = {
    loseDevice: (): Promise<void> => this.transport.fault("lose_device"),
    crashWorker: (): Promise<void> => this.transport.fault("crash_worker"),
  };

  /** Releases the model and its GPU memory; the engine cannot be used afterwards. */
  async unload(): Promise<void> {
    await this.transport.unload();
  }

  /** Submits a request and yields its events until done; cancels on abort or early exit. */
  private async *events(input: Input, req: SamplingRequest): AsyncGenerator<WireEvent & { type: "token" | "done" }> {
    if (req.signal?.aborted) throw new FerroError("aborted", "the request was aborted before it started");
    const q = new Queue<WireEvent>();
    const id = await this.transport.submit(input, toOptions(req, "messages" in input), (e) => q.push(e));
    let finished = false;
    const onAbort = () => void this.transport.cancel(id).catch(() => {});
    req.signal?.addEventListener("abort", onAbort);
    try {
      for (;;) {
        const e = await q.next();
        if (e.type === "error") throw fromWire(e.error);
        if (e.type === "done") {
          finished = true;
          if (e.finishReason === "cancelled") throw new FerroError("aborted", "the request was aborted");
          this.lastStats = { ...timings(e.stats), prompt_tokens: e.stats.prompt_tokens, completion_tokens: e.stats.generated_tokens };
        }
        yield e;
        if (finished) return;
      }
    } finally {
      req.signal?.removeEventListener("abort", onAbort);
      if (!finished) onAbort();
    }
  }

  private async *chatStream(req: ChatRequest): AsyncGenerator<ChatCompletionChunk> {
    const id = `chatcmpl-${Date.now().toString(36)}-${nextId++}`;
    const base = { id, object: "chat.completion.chunk" as const, created: Math.floor(Date.now() / 1000), model: this.model };
    yield { ...base, choices: [{ index: 0, delta: { role: "assistant" }, finish_reason: null }] };
    // With tools, a reply that starts with "{" is a call: held back, then sent as tool_calls.
    const tools = req.tools?.length && req.tool_choice !== "none" ? req.tools : null;
    let held: string | null = null;
    for await (const e of this.events({ messages: req.messages }, req)) {
      if (e.type === "token") {
        if (held === null && tools && e.text.trimStart().startsWith("{")) held = "";
        if (held !== null) held += e.text;
        else if (e.text) yield { ...base, choices: [{ index: 0, delta: { content: e.text }, finish_reason: null }], ...speculation(e, req) };
      } else {
        const call = held !== null && tools ? parseCall(held, tools, id) : null;
        if (call) yield { ...base, choices: [{ index: 0, delta: { tool_calls: [{ index: 0, ...call }] }, finish_reason: null }] };
        else if (held) yield { ...base, choices: [{ index: 0, delta: { content: held }, finish_reason: null }] };
        const finish = call ? "tool_calls" : (e.finishReason as FinishReason);
        yield { ...base, choices: [{ index: 0, delta: {}, finish_reason: finish, logprobs: this.logprobs(e, req) }], usage: usage(e.stats), ferrolm: timings(e.stats) };
      }
    }
  }

  private async *completionStream(req: CompletionRequest): AsyncGenerator<CompletionChunk> {
    const id = `cmpl-${Date.now().toString(36)}-${nextId++}`;
    const base = { id, object: "text_completion" as const, created: Math.floor(Date.now() / 1000), model: this.model };
    for await (const e of this.events({ prompt: req.prompt }, req)) {
      if (e.type === "token") {
        if (e.text) yield { ...base, choices: [{ index: 0, text: e.text, finish_reason: null }], ...speculation(e, req) };
      } else {
        yield { ...base, choices: [{ index: 0, text: "", finish_reason: e.finishReason as FinishReason }], usage: usage(e.stats), ferrolm: timings(e.stats) };
      }
    }
  }

  private logprobs(e: WireEvent & { type: "done" }, req: SamplingRequest): { content: TokenLogprob[] } | null {
    if (!req.logprobs) return null;
    // Token strings are not known on this side: ids are given as strings, as "token_id:<n>".
    const name = (id: number) => `token_id:${id}`;
    return { content: e.logprobs.map((l) => ({ token: name(l.token), logprob: l.logprob, top_logprobs: l.top.map(([t, p]) => ({ token: name(t), logprob: p })) })) };
  }
}

function toOptions(req: SamplingRequest, chat: boolean): GenerateOptions {
  const o: GenerateOptions = {};
  // An option this version does not implement is refused by name: ignoring it would return
  // output the caller did not ask for (free text where `response_format` wanted JSON).
  const bad = unsupportedField(req);
  if (bad !== undefined) {
    throw new FerroError("invalid_request", `invalid request: field "${bad}" is not supported by this version of ferrolm; remove it (supported: ${[...OPTION_FIELDS, ...REQUEST_FIELDS].join(", ")})`);
  }
  for (const k of OPTION_FIELDS) if (req[k] !== undefined) (o as Record<string, unknown>)[k] = req[k];
  if (req.stop !== undefined) o.stop = typeof req.stop === "string" ? [req.stop] : req.stop;
  if (req.logprobs) o.logprobs = chat ? (req.top_logprobs ?? 0) : typeof req.logprobs === "number" ? req.logprobs : 0;
  return o;
}

/** The call a reply makes, if it is one: `{"name": <a tool>, "arguments": {...}}` (the grammar
 * the engine held the reply to). */
function parseCall(text: string, tools: Tool[], id: string): ToolCall | null {
  try {
    const v = JSON.parse(text) as { name?: unknown; arguments?: unknown };
    if (typeof v.name !== "string" || typeof v.arguments !== "object" || v.arguments === null || !tools.some((t) => t.function.name === v.name)) return null;
    return { id: `call_${id}`, type: "function", function: { name: v.name, arguments: JSON.stringify(v.arguments) } };
  } catch {
    return null;
  }
}

/** The `speculation` field of a token's chunk, when the request speculates. */
function speculation(e: WireEvent & { type: "token" }, req: SamplingRequest): { speculation?: Speculation } {
  return req.speculative ? { speculation: { drafted: e.drafted, rejected: e.rejected } } : {};
}

function usage(s: RequestStats): Usage {
  return { prompt_tokens: s.prompt_tokens, completion_tokens: s.generated_tokens, total_tokens: s.prompt_tokens + s.generated_tokens };
}

function timings(s: RequestStats): Timings {
  return {
    ttft_ms: s.ttft_ms,
    tpot_ms: s.tpot_ms,
    tokens_per_s: s.tpot_ms > 0 ? 1000 / s.tpot_ms : 0,
    cached_tokens: s.cached_tokens,
    preemptions: s.preemptions,
    drafted: s.drafted,
    accepted: s.accepted,
  };
}
