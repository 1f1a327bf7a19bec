// The engine side: loads the wasm module and the model (streamed from the network, the browser's
// weight cache or a File, never held twice), then drives the wasm engine's step loop. Runs in
// the Web Worker (worker.ts) or, in main-thread mode, in the page.
import init, { Engine, ModelBytes } from "../wasm/ferrolm.js";
import { classify, FerroError, toWire } from "./errors.js";
import type { GenerateOptions, Input, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, ProgressPhase, WireEvent } from "./types.js";

const CACHE_NAME = "ferrolm-models-v1";
let wasmReady: Promise<unknown> | null = null;

export class EngineHost {
  private engine: Engine | null = null;
  /** Engine calls are chained: a step in flight must end before the next call starts. */
  private lock: Promise<unknown> = Promise.resolve();
  private listeners = new Map<number, (e: WireEvent) => void>();
  private pumping = false;

  async load(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelInfo> {
    const gpu = (globalThis.navigator as Navigator & { gpu?: unknown })?.gpu;
    if (!gpu) {
      throw new FerroError("no_webgpu", "WebGPU is not available in this browser: use Chrome or Edge 113+, Safari 26+ or Firefox 141+ on Windows (or enable WebGPU in the browser's flags), over https or localhost");
    }
    wasmReady ??= init(opts.wasmUrl ? { module_or_path: opts.wasmUrl } : undefined);
    await wasmReady;
    const started = Date.now(); // the engine measures load time on the same clock
    const bytes = await readModel(source, opts, onProgress);
    const total = bytes.length;
    onProgress({ phase: "upload", loaded: 0, total });
    await this.unload();
    try {
      this.engine = await Engine.fromBytes(bytes, { context: opts.context ?? 0, portable: !!opts.portable, kvBudgetBytes: opts.kvBudgetBytes, startedMs: started });
    } catch (e) {
      throw classify(e);
    }
    onProgress({ phase: "upload", loaded: total, total });
    return this.engine.info() as ModelInfo;
  }

  /** Loads the model that drafts for `speculative: "draft"` requests. */
  async loadDraft(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<void> {
    const bytes = await readModel(source, opts, onProgress);
    await this.run(async (e) => {
      try {
        await e.loadDraft(bytes, !!opts.portable);
      } catch (err) {
        throw classify(err);
      }
    });
  }

  private run<T>(f: (e: Engine) => T | Promise<T>): Promise<T> {
    const next = this.lock.then(() => {
      if (!this.engine) throw new FerroError("engine", "no model is loaded (it was unloaded); create the engine again");
      return f(this.engine);
    });
    this.lock = next.catch(() => undefined);
    return next;
  }

  /** Queues a request; `onEvent` gets its token events and finally its done (or error) event. */
  async submit(input: Input, options: GenerateOptions, onEvent: (e: WireEvent) => void): Promise<number> {
    const id = await this.run((e) => {
      let id: number;
      try {
        id = e.submit(input, options);
      } catch (err) {
        throw classify(err);
      }
      this.listeners.set(id, onEvent);
      return id;
    });
    this.pump();
    return id;
  }

  async cancel(id: number): Promise<void> {
    const done = await this.run((e) => e.cancel(id) as WireEvent | null);
    if (done) this.deliver([done]);
  }

  engineStats(): Promise<KvStats | null> {
    return this.run((e) => e.engineStats() as KvStats | null);
  }

  async unload(): Promise<void> {
    if (!this.engine) return;
    await this.lock;
    for (const [id, l] of this.listeners) l({ type: "error", id, error: { code: "aborted", message: "the engine was unloaded" } });
    this.listeners.clear();
    this.engine.free();
    this.engine = null;
  }

  private deliver(events: WireEvent[]) {
    for (const ev of events) {
      this.listeners.get(ev.id)?.(ev);
      if (ev.type !== "token") this.listeners.delete(ev.id);
    }
  }

  /** Steps while requests are in flight, yielding to the event loop between steps so that new
   * requests and cancellations join at the next step. */
  private pump() {
    if (this.pumping) return;
    this.pumping = true;
    void (async () => {
      try {
        while (this.engine && (await this.run((e) => e.hasWork()))) {
          this.deliver((await this.run((e) => e.step())) as WireEvent[]);
          await new Promise((r) => setTimeout(r, 0));
        }
      } catch (err) {
        const error = toWire(err);
        for (const [id, l] of this.listeners) l({ type: "error", id, error });
        this.listeners.clear();
      } finally {
        this.pumping = false;
      }
    })();
  }
}

/** Reads a model into wasm memory chunk by chunk, reporting progress. */
async function readModel(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelBytes> {
  if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
    const view = source instanceof Uint8Array ? source : new Uint8Array(source);
    const bytes = newBytes(view.length);
    push(bytes, view);
    return bytes;
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    return drain(new Response(source), source.size, "read", onProgress);
  }
  return readUrl(new URL(String(source), globalThis.location?.href).href, opts, onProgress);
}

async function readUrl(url: string, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelBytes> {
  const cache = opts.cache !== false && typeof caches !== "undefined" ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = await cache?.match(url);
  if (hit && cache) {
    const size = Number(hit.headers.get("x-ferrolm-size") ?? 0);
    const bytes = await drain(hit, size, "cache", onProgress);
    if (!size || bytes.length === size) return bytes;
    bytes.free();
    await cache.delete(url); // a partial entry: fetch again
  }
  let resp: Response;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new FerroError("network", `could not fetch the model from ${url} (${(e as Error).message}); check the URL, the connection, and that the server allows this origin (CORS)`);
  }
  if (!resp.ok || !resp.body) {
    throw new FerroError("network", `fetching the model from ${url} failed: HTTP ${resp.status} ${resp.statusText}`);
  }
  const total = resp.headers.get("content-encoding") ? 0 : Number(resp.headers.get("content-length") ?? 0);
  if (cache) {
    // The download streams to disk through the cache (progress counted on the way), then is
    // read back from it: the page never holds the file twice.
    let seen = 0;
    const counter = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctl) {
        seen += chunk.length;
        onProgress({ phase: "download", loaded: seen, total });
        ctl.enqueue(chunk);
      },
    });
    try {
      // Cache.put stores the entry only once the whole body arrived, so a broken download leaves
      // nothing behind; the expected size guards against a server that cut the body short.
      const headers = new Headers({ "content-type": "application/octet-stream", "x-ferrolm-size": String(total) });
      await cache.put(url, new Response(resp.body.pipeThrough(counter), { headers }));
      const stored = await cache.match(url);
      if (stored) {
        const bytes = await drain(stored, total, "cache", onProgress);
        if (!total || bytes.length === total) return bytes;
        bytes.free();
        await cache.delete(url);
        throw new FerroError("network", `the download of ${url} ended after ${seen} of ${total} bytes; try again`);
      }
    } catch (e) {
      if (e instanceof FerroError) throw e;
      // Quota or storage errors: fall back to a plain download below.
      await cache.delete(url).catch(() => false);
    }
    resp = await fetch(url);
    if (!resp.ok || !resp.body) throw new FerroError("network", `fetching the model from ${url} failed: HTTP ${resp.status}`);
  }
  return drain(resp, total, "download", onProgress);
}

function newBytes(size: number): ModelBytes {
  try {
    return new ModelBytes(size);
  } catch (e) {
    throw classify(e);
  }
}

function push(bytes: ModelBytes, chunk: Uint8Array) {
  try {
    bytes.push(chunk);
  } catch (e) {
    bytes.free();
    throw classify(e);
  }
}

async function drain(resp: Response, total: number, phase: ProgressPhase, onProgress: (p: Progress) => void): Promise<ModelBytes> {
  const bytes = newBytes(total);
  const reader = resp.body!.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    push(bytes, value);
    loaded += value.length;
    onProgress({ phase, loaded, total });
  }
  return bytes;
}
