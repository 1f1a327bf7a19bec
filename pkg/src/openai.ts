// The OpenAI API's shapes as every ferrolm engine speaks them (the in-page engine, a served one
// through `RemoteEngine`, the router), and the helpers they share.
import type { GenerateOptions } from "./types.js";

/** Sampling and stopping, with the OpenAI API's names (the engine's options, see types.ts);
 * the default is greedy (temperature 0). */
export interface SamplingRequest extends Omit<GenerateOptions, "stop" | "logprobs"> {
  stop?: string | string[];
  /** Chat: `logprobs: true` with `top_logprobs: n`; completions: `logprobs: n`. */
  logprobs?: boolean | number;
  top_logprobs?: number;
  /** Cancels the request; the engine stays usable. */
  signal?: AbortSignal;
  /** The model asked for: a served engine may serve several; the in-page one serves its own. */
  model?: string;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}

export interface ChatRequest extends SamplingRequest {
  messages: ChatMessage[];
  stream?: boolean;
}

export interface CompletionRequest extends SamplingRequest {
  prompt: string;
  stream?: boolean;
}

/** Where a request ran: set by the router (`createRouter`) and the response cache. */
export interface Placement {
  /** "local": the in-page engine; "remote": the served one. */
  route?: "local" | "remote";
  /** Why the router chose it. */
  reason?: string;
  /** "hit": the response came from the response cache. */
  cache?: "hit";
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** ferrolm's own figures, on the last chunk and on every completion. */
export interface Timings {
  ttft_ms: number;
  tpot_ms: number;
  tokens_per_s: number;
  cached_tokens: number;
  preemptions: number;
  drafted: number;
  accepted: number;
}

export type FinishReason = "stop" | "length" | "tool_calls";

/** A call the model made (OpenAI's shape): `arguments` is JSON text that follows the function's `parameters`. */
export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface TokenLogprob {
  token: string;
  logprob: number;
  top_logprobs: { token: string; logprob: number }[];
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: {
    index: 0;
    delta: { role?: "assistant"; content?: string; tool_calls?: (ToolCall & { index: number })[] };
    finish_reason: FinishReason | null;
    logprobs?: { content: TokenLogprob[] } | null;
  }[];
  usage?: Usage;
  ferrolm?: Partial<Timings> & Placement;
  /** With `speculative`, on chunks carrying a token: the token was a draft the model confirmed
   * (`drafted`), or it replaced `rejected` drafts. */
  speculation?: Speculation;
}

export interface Speculation {
  drafted: boolean;
  rejected: number;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: {
    index: 0;
    message: { role: "assistant"; content: string | null; tool_calls?: ToolCall[] };
    finish_reason: FinishReason;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  usage: Usage;
  ferrolm: Partial<Timings> & Placement;
}

export interface CompletionChunk {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: { index: 0; text: string; finish_reason: FinishReason | null }[];
  usage?: Usage;
  ferrolm?: Partial<Timings> & Placement;
  speculation?: Speculation;
}

export type Completion = CompletionChunk & { usage: Usage; ferrolm: Partial<Timings> & Placement };


type ChatCreate = {
  (req: ChatRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
  (req: ChatRequest & { stream?: false }): Promise<ChatCompletion>;
  (req: ChatRequest): Promise<AsyncIterable<ChatCompletionChunk> | ChatCompletion>;
};

type CompletionCreate = {
  (req: CompletionRequest & { stream: true }): Promise<AsyncIterable<CompletionChunk>>;
  (req: CompletionRequest & { stream?: false }): Promise<Completion>;
  (req: CompletionRequest): Promise<AsyncIterable<CompletionChunk> | Completion>;
};

/** What every engine offers: the in-page `Engine`, `RemoteEngine` and `Router`. */
export interface ChatEngine {
  readonly chat: { completions: { create: ChatCreate } };
  readonly completions: { create: CompletionCreate };
  /** The model's name as responses give it. */
  readonly model: string;
}

/** `create` for both endpoints from one streaming implementation each: a request without
 * `stream: true` gets the chunks assembled into one response. */
export function endpoints(chat: (req: ChatRequest) => AsyncIterable<ChatCompletionChunk>, completion: (req: CompletionRequest) => AsyncIterable<CompletionChunk>) {
  return {
    chat: { completions: { create: ((req: ChatRequest) => (req.stream ? Promise.resolve(chat(req)) : assembleChat(chat(req)))) as ChatCreate } },
    completions: { create: ((req: CompletionRequest) => (req.stream ? Promise.resolve(completion(req)) : assembleCompletion(completion(req)))) as CompletionCreate },
  };
}

/** One `chat.completion` from a stream's chunks (usage may come on a last chunk without choices,
 * as OpenAI sends it with `stream_options.include_usage`). */
export async function assembleChat(chunks: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletion> {
  let content = "";
  const calls: ToolCall[] = [];
  let first: ChatCompletionChunk | undefined;
  let finish: FinishReason = "stop";
  let logprobs = null as ChatCompletion["choices"][0]["logprobs"];
  let usage: Usage | undefined;
  let ferrolm: ChatCompletion["ferrolm"] = {};
  for await (const c of chunks) {
    first ??= c;
    const choice = c.choices[0];
    content += choice?.delta.content ?? "";
    for (const { index: _i, ...call } of choice?.delta.tool_calls ?? []) calls.push(call);
    if (choice?.finish_reason) finish = choice.finish_reason;
    // OpenAI sends each chunk's tokens with it; ferrolm sends them all on the last chunk.
    if (choice?.logprobs?.content) logprobs = { content: [...(logprobs?.content ?? []), ...choice.logprobs.content] };
    usage = c.usage ?? usage;
    ferrolm = { ...ferrolm, ...c.ferrolm };
  }
  if (!first) throw new Error("the stream ended without a chunk");
  const message = calls.length ? { role: "assistant" as const, content: null, tool_calls: calls } : { role: "assistant" as const, content };
  return { id: first.id, object: "chat.completion", created: first.created, model: first.model, choices: [{ index: 0, message, finish_reason: finish, logprobs }], usage: usage!, ferrolm };
}

/** One `text_completion` from a stream's chunks. */
export async function assembleCompletion(chunks: AsyncIterable<CompletionChunk>): Promise<Completion> {
  let text = "";
  let first: CompletionChunk | undefined;
  let finish: FinishReason = "stop";
  let usage: Usage | undefined;
  let ferrolm: Completion["ferrolm"] = {};
  for await (const c of chunks) {
    first ??= c;
    text += c.choices[0]?.text ?? "";
    if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
    usage = c.usage ?? usage;
    ferrolm = { ...ferrolm, ...c.ferrolm };
  }
  if (!first) throw new Error("the stream ended without a chunk");
  return { id: first.id, object: "text_completion", created: first.created, model: first.model, choices: [{ index: 0, text, finish_reason: finish }], usage: usage!, ferrolm };
}

/** The engine options a request may carry, and the fields that say what it is and how it is
 * delivered (`model`: OpenAI clients always send it; an engine serves one model). */
export const OPTION_FIELDS = [
  "max_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "seed", "ignore_eos",
  "speculative", "draft_k", "response_format", "regex", "grammar", "tools", "tool_choice",
] as const;
export const REQUEST_FIELDS = ["messages", "prompt", "stream", "signal", "model", "stop", "logprobs", "top_logprobs"] as const;

/** The first field of `req` the in-page engine does not implement, if any. */
export function unsupportedField(req: object): string | undefined {
  const known = new Set<string>([...OPTION_FIELDS, ...REQUEST_FIELDS]);
  return Object.keys(req).find((k) => !known.has(k) && (req as Record<string, unknown>)[k] !== undefined);
}
