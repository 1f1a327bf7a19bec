// The engine side: picks the device (WebGPU, or the CPU backend where there is no real GPU) and
// the wasm build (threaded in cross-origin isolated pages), loads the model (streamed from the
// network, the browser's weight cache or a File, never held twice), then drives the wasm
// engine's step loop. Runs in the Web Worker (worker.ts) or, in main-thread mode, in the page.
import type { Engine, ModelBytes } from "../wasm/ferrolm.js";
import { classify, FerroError, toWire } from "./errors.js";
import type { GenerateOptions, Input, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, ProgressPhase, WireEvent } from "./types.js";

const CACHE_NAME = "ferrolm-models-v1";

/** The wasm module: the plain build, or the threaded one (shared memory, Web Workers). */
type Wasm = typeof import("../wasm/ferrolm.js") & { initThreads?: (n: number) => Promise<unknown> };
const modules = new Map<"plain" | "threads", Promise<Wasm>>();
let threadsStarted = 0;

function loadWasm(kind: "plain" | "threads", wasmUrl?: string): Promise<Wasm> {
  let m = modules.get(kind);
  if (!m) {
    m = (async () => {
      // Written out in full so bundlers see both modules.
      const mod = (kind === "threads" ? await import("../wasm-threads/ferrolm.js") : await import("../wasm/ferrolm.js")) as unknown as Wasm;
      await mod.default(wasmUrl ? { module_or_path: wasmUrl } : undefined);
      return mod;
    })();
    modules.set(kind, m);
  }
  return m;
}

type Gpu = { requestAdapter(): Promise<{ isFallbackAdapter?: boolean; info?: Record<string, unknown> } | null> };

/** "gpu" on a real WebGPU adapter; "cpu" without WebGPU or on a CPU emulation of it (a fallback
 * adapter, SwiftShader, llvmpipe, lavapipe), where the CPU backend is several times faster. */
async function pickDevice(want: LoadOptions["device"]): Promise<"gpu" | "cpu"> {
  const gpu = (globalThis.navigator as Navigator & { gpu?: Gpu })?.gpu;
  if (want === "cpu") return "cpu";
  if (want === "webgpu") {
    if (!gpu) {
      throw new FerroError("no_webgpu", "WebGPU is not available in this browser: use Chrome or Edge 113+, Safari 26+ or Firefox 141+ on Windows (or enable WebGPU in the browser's flags), over https or localhost; or load with device \"cpu\"");
    }
    return "gpu";
  }
  if (want !== undefined && want !== "auto") throw new FerroError("invalid_request", `invalid option device "${want}": use "auto", "webgpu" or "cpu"`);
  const adapter = gpu ? await gpu.requestAdapter().catch(() => null) : null;
  if (!adapter) return "cpu";
  const info = adapter.info ?? {};
  const names = ["vendor", "architecture", "device", "description"].map((k) => String(info[k] ?? "")).join(" ");
  const emulated = adapter.isFallbackAdapter || info.isFallbackAdapter === true || /swiftshader|llvmpipe|lavapipe|software/i.test(names);
  return emulated ? "cpu" : "gpu";
}

/** CPU threads: as asked, else one per core (at most 8) in a cross-origin isolated page, else 1. */
function pickThreads(asked: number | undefined): number {
  const isolated = (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === true;
  if (asked !== undefined && (!Number.isInteger(asked) || asked < 1)) throw new FerroError("invalid_request", `invalid option threads ${asked}: a whole number from 1`);
  if (asked !== undefined && asked > 1 && !isolated) {
    throw new FerroError("invalid_request", `invalid option threads ${asked}: threads need a cross-origin isolated page (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp), otherwise use 1`);
  }
  return asked ?? (isolated ? Math.max(1, Math.min(globalThis.navigator?.hardwareConcurrency ?? 1, 8)) : 1);
}

export class EngineHost {
  private engine: Engine | null = null;
  private wasm: Wasm | null = null;
  /** Engine calls are chained: a step in flight must end before the next call starts. */
  private lock: Promise<unknown> = Promise.resolve();
  private listeners = new Map<number, (e: WireEvent) => void>();
  private pumping = false;

  async load(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelInfo> {
    const device = await pickDevice(opts.device);
    let threads = device === "cpu" ? pickThreads(opts.threads) : 1;
    const wasm = await loadWasm(threads > 1 ? "threads" : "plain", threads > 1 ? opts.wasmThreadsUrl : opts.wasmUrl);
    if (threads > 1) {
      // The workers start once per module; a later load uses at most as many.
      if (!threadsStarted) {
        await wasm.initThreads!(threads);
        threadsStarted = threads;
      }
      threads = Math.min(threads, threadsStarted);
    }
    const started = Date.now(); // the engine measures load time on the same clock
    const bytes = await readModel(wasm, source, opts, onProgress);
    const total = bytes.length;
    onProgress({ phase: "upload", loaded: 0, total });
    await this.unload();
    try {
      this.engine = await wasm.Engine.fromBytes(bytes, { device, threads, context: opts.context ?? 0, portable: !!opts.portable, kvBudgetBytes: opts.kvBudgetBytes, startedMs: started });
      this.wasm = wasm;
    } catch (e) {
      throw classify(e);
    }
    onProgress({ phase: "upload", loaded: total, total });
    return this.engine.info() as ModelInfo;
  }

  /** Loads the model that drafts for `speculative: "draft"` requests. */
  async loadDraft(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<void> {
    if (!this.wasm) throw new FerroError("engine", "load a model before its draft model");
    const bytes = await readModel(this.wasm, source, opts, onProgress);
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
async function readModel(wasm: Wasm, source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelBytes> {
  if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
    const view = source instanceof Uint8Array ? source : new Uint8Array(source);
    const bytes = newBytes(wasm, view.length);
    push(bytes, view);
    return bytes;
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    return drain(wasm, new Response(source), source.size, "read", onProgress);
  }
  return readUrl(wasm, new URL(String(source), globalThis.location?.href).href, opts, onProgress);
}

async function readUrl(wasm: Wasm, url: string, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelBytes> {
  const cache = opts.cache !== false && typeof caches !== "undefined" ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = await cache?.match(url);
  if (hit && cache) {
    const size = Number(hit.headers.get("x-ferrolm-size") ?? 0);
    const bytes = await drain(wasm, hit, size, "cache", onProgress);
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
        const bytes = await drain(wasm, stored, total, "cache", onProgress);
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
  return drain(wasm, resp, total, "download", onProgress);
}

function newBytes(wasm: Wasm, size: number): ModelBytes {
  try {
    return new wasm.ModelBytes(size);
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

async function drain(wasm: Wasm, resp: Response, total: number, phase: ProgressPhase, onProgress: (p: Progress) => void): Promise<ModelBytes> {
  const bytes = newBytes(wasm, total);
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
