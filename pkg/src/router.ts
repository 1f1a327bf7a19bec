// One engine interface over the in-page engine and a served one: each request goes where it can
// run, and best. Local when its model is loaded, the prompt fits its context and it implements
// every option the request uses; remote when the local engine could not load (no WebGPU, model
// too large), failed (device lost), the prompt is too long, or the app prefers it. Optionally
// through a response cache. Every chunk says where it ran (`ferrolm.route`) and why.
import { ResponseCache } from "./cache.js";
import { FerroError } from "./errors.js";
import { endpoints, unsupportedField } from "./openai.js";
import type { ChatCompletionChunk, ChatEngine, ChatRequest, CompletionChunk, CompletionRequest, Placement } from "./openai.js";

/** The in-page engine as the router uses it (`Engine` from `createEngine`). */
export interface LocalEngine extends ChatEngine {
  readonly info: { context: number };
  countTokens(req: ChatRequest | CompletionRequest): Promise<number>;
}

export interface RouterOptions {
  /** The in-page engine, or the promise `createEngine` returned (while it loads, requests go to
   * `remote`; if it fails to load, they all do). */
  local?: LocalEngine | Promise<LocalEngine>;
  /** A served engine: `createEngine({ remote: {...} })`. */
  remote?: ChatEngine;
  /** "local" (default), "remote", or "fastest": the lower expected time of the request from the
   * measured TTFT and time per token of each side's recent requests. */
  prefer?: "local" | "remote" | "fastest";
  /** Cache finished deterministic responses: a `ResponseCache`, or true for a default one. */
  cache?: ResponseCache | boolean;
}

/** Recent requests on one side, measured where the app sees them (network included). */
export interface RouteStats {
  requests: number;
  /** Means over the last 8 requests; null before the first. */
  ttft_ms: number | null;
  tpot_ms: number | null;
}

type Route = "local" | "remote";
type Chunk = ChatCompletionChunk | CompletionChunk;
const RECENT = 8;

class Timing {
  requests = 0;
  private ttft: number[] = [];
  private tpot: number[] = [];
  add(ttft: number, tpot: number | null) {
    this.requests++;
    this.ttft = [...this.ttft, ttft].slice(-RECENT);
    if (tpot !== null) this.tpot = [...this.tpot, tpot].slice(-RECENT);
  }
  stats(): RouteStats {
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
    return { requests: this.requests, ttft_ms: mean(this.ttft), tpot_ms: mean(this.tpot) };
  }
  /** Expected milliseconds for `tokens` tokens; null until measured. */
  expect(tokens: number): number | null {
    const s = this.stats();
    return s.ttft_ms === null ? null : s.ttft_ms + (s.tpot_ms ?? 0) * Math.max(tokens - 1, 0);
  }
}

export function createRouter(options: RouterOptions): Router {
  return new Router(options);
}

export class Router implements ChatEngine {
  private local: LocalEngine | null = null;
  private localLoad: Promise<unknown> | null = null;
  private localError: FerroError | null = null;
  private readonly remote: ChatEngine | null;
  private readonly prefer: NonNullable<RouterOptions["prefer"]>;
  private readonly cache: ResponseCache | null;
  private readonly timing = { local: new Timing(), remote: new Timing() };
  private readonly api = endpoints(
    (req) => this.run<ChatCompletionChunk>("chat", req),
    (req) => this.run<CompletionChunk>("completion", req),
  );
  readonly chat = this.api.chat;
  readonly completions = this.api.completions;

  constructor(options: RouterOptions) {
    if (!options.local && !options.remote) throw new FerroError("invalid_request", "invalid router options: give local, remote, or both");
    const prefer = options.prefer ?? "local";
    if (!["local", "remote", "fastest"].includes(prefer)) throw new FerroError("invalid_request", `invalid router option prefer "${prefer}": use "local", "remote" or "fastest"`);
    this.prefer = prefer;
    this.remote = options.remote ?? null;
    this.cache = options.cache === true ? new ResponseCache() : options.cache || null;
    if (options.local) {
      this.localLoad = Promise.resolve(options.local).then(
        (e) => (this.local = e),
        (e) => (this.localError = e instanceof FerroError ? e : new FerroError("engine", String((e as Error)?.message ?? e))),
      );
    }
  }

  get model(): string {
    return this.local?.model ?? this.remote?.model ?? "";
  }

  /** Requests and recent timings per side, the cache's figures, and why local is out, if it is. */
  stats(): { local: RouteStats; remote: RouteStats; cache: ReturnType<ResponseCache["stats"]> | null; localError: string | null } {
    return { local: this.timing.local.stats(), remote: this.timing.remote.stats(), cache: this.cache?.stats() ?? null, localError: this.localError?.message ?? null };
  }

  /** Where `req` runs, and why. */
  private async pick(req: ChatRequest | CompletionRequest): Promise<{ engine: ChatEngine; route: Route; reason: string }> {
    const remote = this.remote;
    const toRemote = (reason: string) => ({ engine: remote!, route: "remote" as const, reason });
    if (remote && this.prefer === "remote") return toRemote("the app prefers remote");
    if (this.localLoad && !this.local && !this.localError) {
      if (remote) return toRemote("the local model is still loading");
      await this.localLoad;
    }
    if (!this.local) {
      if (remote) return toRemote(`the local engine is unavailable (${this.localError?.code})`);
      throw this.localError!;
    }
    const local = this.local;
    const toLocal = (reason: string) => ({ engine: local, route: "local" as const, reason });
    if (!remote) return toLocal("there is no remote engine");
    const field = unsupportedField(req);
    if (field !== undefined) return toRemote(`the local engine does not implement "${field}"`);
    if (req.model && remote.model && req.model === remote.model && req.model !== local.model) return toRemote("the request names the remote model");
    const tokens = await local.countTokens(req).catch(() => Infinity);
    if (tokens + 1 > local.info.context) return toRemote(`the prompt has ${tokens} tokens; the local context holds ${local.info.context}`);
    if (this.prefer === "fastest") {
      const n = req.max_tokens ?? 256;
      const [l, r] = [this.timing.local.expect(n), this.timing.remote.expect(n)];
      if (l === null) return toLocal("measuring local");
      if (r === null) return toRemote("measuring remote");
      return l <= r ? toLocal(`faster: ${l.toFixed(0)} ms expected, remote ${r.toFixed(0)} ms`) : toRemote(`faster: ${r.toFixed(0)} ms expected, local ${l.toFixed(0)} ms`);
    }
    return toLocal("the prompt fits the local engine");
  }

  private async *run<T extends Chunk>(kind: "chat" | "completion", req: ChatRequest | CompletionRequest): AsyncGenerator<T> {
    const key = this.cache ? ResponseCache.key(kind, req.model ?? "", req) : null;
    const hit = key ? await this.cache!.get(key) : null;
    if (hit) {
      for (const c of hit) yield { ...c, ferrolm: { ...c.ferrolm, cache: "hit" } } as T;
      return;
    }
    let { engine, route, reason } = await this.pick(req);
    for (;;) {
      const t0 = performance.now();
      let first = 0;
      let last = 0;
      let pieces = 0;
      let tokens = 0;
      const kept: Chunk[] = [];
      try {
        const stream = (kind === "chat" ? await engine.chat.completions.create({ ...(req as ChatRequest), stream: true }) : await engine.completions.create({ ...(req as CompletionRequest), stream: true })) as AsyncIterable<Chunk>;
        for await (const c of stream) {
          const text = "delta" in (c.choices[0] ?? {}) ? (c as ChatCompletionChunk).choices[0].delta.content : (c as CompletionChunk).choices[0]?.text;
          if (text) {
            last = performance.now();
            first ||= last;
            pieces++;
          }
          tokens = c.usage?.completion_tokens ?? tokens;
          const placed: Placement = { route, reason };
          const out = { ...c, ferrolm: { ...c.ferrolm, ...placed } } as T;
          if (key) kept.push(out);
          yield out;
        }
      } catch (e) {
        // A local engine that died before it produced text: the rest goes to the remote one.
        const f = e as FerroError;
        if (route === "local" && this.remote && pieces === 0 && (f?.code === "device_lost" || f?.code === "worker_died")) {
          this.local = null;
          this.localError = f;
          ({ engine, route, reason } = { engine: this.remote, route: "remote", reason: `the local engine failed (${f.code})` });
          continue;
        }
        throw e;
      }
      if (first) {
        const n = tokens || pieces;
        this.timing[route].add(first - t0, n > 1 ? (last - first) / (n - 1) : null);
      }
      if (key) await this.cache!.put(key, kept);
      return;
    }
  }
}
