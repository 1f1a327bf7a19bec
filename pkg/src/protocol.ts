// Messages between the page and the worker, and the two transports that carry them: a Web
// Worker (the default: the page never janks) or the host in the page itself (tests, or where
// workers are unavailable).
import { FerroError, fromWire, type WireError } from "./errors.js";
import type { EngineHost } from "./host.js";
import type { Bandwidth, GenerateOptions, Input, KvMap, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, Transport, WireEvent } from "./types.js";

export type Call = { call: number } & (
  | { op: "load"; source: ModelSource; opts: LoadOptions }
  | { op: "loadDraft"; source: ModelSource; opts: LoadOptions }
  | { op: "submit"; rid: number; input: Input; options: GenerateOptions }
  | { op: "cancel"; id: number }
  | { op: "countTokens"; input: Input; options: GenerateOptions }
  | { op: "engineStats" }
  | { op: "kvMap" }
  | { op: "measureBandwidth" }
  | { op: "unload" }
  | { op: "fault"; kind: "lose_device" | "crash_worker" }
);

type Reply =
  | { call: number; ok: true; value: unknown }
  | { call: number; ok: false; error: WireError }
  | { call: number; progress: Progress }
  | { rid: number; event: WireEvent };

type OmitCall<T> = T extends unknown ? Omit<T, "call"> : never;

export class WorkerTransport implements Transport {
  private worker: Worker;
  private next = 1;
  private pending = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void; progress?: (p: Progress) => void }>();
  private streams = new Map<number, (e: WireEvent) => void>();
  /** Set once the worker failed: every call after it rejects with this at once. */
  private dead: FerroError | null = null;

  constructor(url?: string | URL) {
    // Written out in full so bundlers (Vite, webpack) see the worker and emit it.
    this.worker = url ? new Worker(url, { type: "module" }) : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = (ev: MessageEvent<Reply>) => {
      const m = ev.data;
      if ("rid" in m) return this.streams.get(m.rid)?.(m.event);
      const p = this.pending.get(m.call);
      if (!p) return;
      if ("progress" in m) return p.progress?.(m.progress);
      this.pending.delete(m.call);
      if (m.ok) p.resolve(m.value);
      else p.reject(fromWire(m.error));
    };
    // An uncaught error in the worker (a script that failed to load, a crash) leaves the engine
    // in an unknown state: the worker is ended and everything waiting on it fails, streams too.
    this.worker.onerror = (ev) => {
      ev.preventDefault();
      this.die(`the ferrolm worker failed (${ev.message || "it could not start or crashed"}); create the engine again`);
    };
    this.worker.onmessageerror = () => this.die("the ferrolm worker sent a message that could not be read; create the engine again");
  }

  private die(message: string) {
    this.end(new FerroError("worker_died", message));
  }

  /** Ends the worker: what waits on it fails with `error`, and so does every later call. */
  private end(error: FerroError) {
    if (this.dead) return;
    this.dead = error;
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
    for (const [rid, s] of this.streams) s({ type: "error", id: rid, error: { code: error.code, message: error.message } });
    this.streams.clear();
  }

  private call<T>(msg: OmitCall<Call>, progress?: (p: Progress) => void, transfer: Transferable[] = []): Promise<T> {
    const call = this.next++;
    if (this.dead) return Promise.reject(this.dead);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(call, { resolve: resolve as (v: unknown) => void, reject, progress });
      this.worker.postMessage({ ...msg, call }, transfer);
    });
  }

  load(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelInfo> {
    // URLs go as strings (the worker fetches them itself); bytes are moved, not copied.
    const src = source instanceof URL ? source.href : typeof source === "string" ? new URL(source, location.href).href : source;
    const transfer = src instanceof ArrayBuffer ? [src] : src instanceof Uint8Array ? [src.buffer as ArrayBuffer] : [];
    return this.call<ModelInfo>({ op: "load", source: src, opts }, onProgress, transfer);
  }

  loadDraft(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<void> {
    const src = source instanceof URL ? source.href : typeof source === "string" ? new URL(source, location.href).href : source;
    return this.call({ op: "loadDraft", source: src, opts }, onProgress);
  }

  async submit(input: Input, options: GenerateOptions, onEvent: (e: WireEvent) => void): Promise<number> {
    const rid = this.next++;
    this.streams.set(rid, (e) => {
      if (e.type !== "token") this.streams.delete(rid);
      onEvent(e);
    });
    try {
      return await this.call<number>({ op: "submit", rid, input, options });
    } catch (e) {
      this.streams.delete(rid);
      throw e;
    }
  }

  cancel(id: number): Promise<void> {
    return this.call({ op: "cancel", id });
  }

  countTokens(input: Input, options: GenerateOptions): Promise<number> {
    return this.call({ op: "countTokens", input, options });
  }

  engineStats(): Promise<KvStats | null> {
    return this.call({ op: "engineStats" });
  }

  kvMap(): Promise<KvMap> {
    return this.call({ op: "kvMap" });
  }

  measureBandwidth(): Promise<Bandwidth> {
    return this.call({ op: "measureBandwidth" });
  }

  async unload(): Promise<void> {
    if (this.dead) return;
    await this.call({ op: "unload" });
    // A terminated worker never answers: later calls must fail, not wait forever.
    this.end(new FerroError("engine", "no model is loaded (it was unloaded); create the engine again"));
  }

  fault(kind: "lose_device" | "crash_worker"): Promise<void> {
    return this.call({ op: "fault", kind });
  }
}

export class InlineTransport implements Transport {
  private constructor(private host: EngineHost) {}
  /** Loaded lazily, so worker-mode pages never fetch the engine's glue code. */
  static async create(): Promise<InlineTransport> {
    const { EngineHost } = await import("./host.js");
    return new InlineTransport(new EngineHost());
  }
  load(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void) {
    return this.host.load(source, opts, onProgress);
  }
  loadDraft(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void) {
    return this.host.loadDraft(source, opts, onProgress);
  }
  submit(input: Input, options: GenerateOptions, onEvent: (e: WireEvent) => void) {
    return this.host.submit(input, options, onEvent);
  }
  cancel(id: number) {
    return this.host.cancel(id);
  }
  countTokens(input: Input, options: GenerateOptions) {
    return this.host.countTokens(input, options);
  }
  engineStats() {
    return this.host.engineStats();
  }
  kvMap() {
    return this.host.kvMap();
  }
  measureBandwidth() {
    return this.host.measureBandwidth();
  }
  unload() {
    return this.host.unload();
  }
  fault(kind: "lose_device" | "crash_worker") {
    if (kind === "crash_worker") return Promise.reject(new FerroError("invalid_request", "this engine runs in the page (worker: false): there is no worker to crash"));
    return this.host.loseDevice();
  }
}
