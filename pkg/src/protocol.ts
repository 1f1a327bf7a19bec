// Messages between the page and the worker, and the two transports that carry them: a Web
// Worker (the default: the page never janks) or the host in the page itself (tests, or where
// workers are unavailable).
import { fromWire, type WireError } from "./errors.js";
import type { EngineHost } from "./host.js";
import type { GenerateOptions, Input, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, Transport, WireEvent } from "./types.js";

export type Call = { call: number } & (
  | { op: "load"; source: ModelSource; opts: LoadOptions }
  | { op: "loadDraft"; source: ModelSource; opts: LoadOptions }
  | { op: "submit"; rid: number; input: Input; options: GenerateOptions }
  | { op: "cancel"; id: number }
  | { op: "engineStats" }
  | { op: "unload" }
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
    this.worker.onerror = (ev) => {
      const error = fromWire({ code: "engine", message: `the ferrolm worker failed: ${ev.message}` });
      for (const p of this.pending.values()) p.reject(error);
      this.pending.clear();
    };
  }

  private call<T>(msg: OmitCall<Call>, progress?: (p: Progress) => void, transfer: Transferable[] = []): Promise<T> {
    const call = this.next++;
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

  engineStats(): Promise<KvStats | null> {
    return this.call({ op: "engineStats" });
  }

  async unload(): Promise<void> {
    await this.call({ op: "unload" });
    this.worker.terminate();
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
  engineStats() {
    return this.host.engineStats();
  }
  unload() {
    return this.host.unload();
  }
}
