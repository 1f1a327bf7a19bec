// The engine side: picks the device (WebGPU, or the CPU backend where there is no real GPU) and
// the wasm build (threaded in cross-origin isolated pages), loads the model (streamed from the
// network, the browser's weight cache or a File, never held twice), then drives the wasm
// engine's step loop. Runs in the Web Worker (worker.ts) or, in main-thread mode, in the page.
import type { Engine, ModelBytes } from "../wasm/ferrolm.js";
import { classify, FerroError, toWire } from "./errors.js";
import type { Bandwidth, GenerateOptions, Input, KvMap, KvStats, LoadOptions, ModelInfo, ModelSource, Progress, ProgressPhase, WireEvent } from "./types.js";

const CACHE_NAME = "ferrolm-models-v1";

/** The wasm module: the plain build, or the threaded one (shared memory, Web Workers). */
type Wasm = typeof import("../wasm/ferrolm.js") & { initThreads?: (n: number) => Promise<unknown> };
const modules = new Map<"plain" | "threads", Promise<Wasm>>();
let threadsStarted = 0;
/** Each module's wasm memory, for the stats. */
const memories = new WeakMap<object, WebAssembly.Memory>();

/** A module of one relaxed-SIMD instruction (`i32x4.relaxed_trunc_f32x4_s`): it validates
 * where the browser runs relaxed SIMD. */
const RELAXED_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 25, 1, 23, 0, 253, 12, ...new Array(16).fill(0), 253, 129, 2, 11]);

/** Whether this browser runs WebAssembly relaxed SIMD. */
function relaxedSimd(): boolean {
  try {
    return WebAssembly.validate(RELAXED_PROBE);
  } catch {
    return false;
  }
}

/** A build's binaries to try, in order: its relaxed-SIMD one where the browser runs it (faster
 * 4-bit kernels, the same results; one JS glue serves both) unless the page named only its own
 * plain one, then the plain one (undefined: the glue's default beside it). */
function binaries(kind: "plain" | "threads", opts: Pick<LoadOptions, "wasmUrl" | "wasmRelaxedUrl" | "wasmThreadsUrl" | "wasmThreadsRelaxedUrl">): (string | undefined)[] {
  const [url, relaxedUrl] = kind === "threads" ? [opts.wasmThreadsUrl, opts.wasmThreadsRelaxedUrl] : [opts.wasmUrl, opts.wasmRelaxedUrl];
  if (!relaxedSimd() || (url && !relaxedUrl)) return [url];
  // Written out in full so bundlers ship the files.
  const beside = kind === "threads" ? new URL("../wasm-threads/ferrolm_relaxed_bg.wasm", import.meta.url).href : new URL("../wasm/ferrolm_relaxed_bg.wasm", import.meta.url).href;
  return [relaxedUrl ?? beside, url];
}

/** `kind`'s module, instantiated from the first of `binaries` that loads (a relaxed binary a
 * site did not deploy falls back to the plain one). A worker, or a page with `worker: false`,
 * holds one instance of each module: the first engine's binary serves the later ones there. */
function loadWasm(kind: "plain" | "threads", binaries: (string | undefined)[]): Promise<Wasm> {
  let m = modules.get(kind);
  if (!m) {
    m = (async () => {
      // Written out in full so bundlers see both modules.
      const mod = (kind === "threads" ? await import("../wasm-threads/ferrolm.js") : await import("../wasm/ferrolm.js")) as unknown as Wasm;
      let error: unknown;
      for (const url of binaries) {
        try {
          const out = (await mod.default(url ? { module_or_path: url } : undefined)) as { memory?: WebAssembly.Memory };
          if (out.memory) memories.set(mod, out.memory);
          return mod;
        } catch (e) {
          error = e;
        }
      }
      throw error;
    })();
    // A failed load is tried again by the next engine.
    m.catch(() => modules.delete(kind));
    modules.set(kind, m);
  }
  return m;
}

type Gpu = { requestAdapter(): Promise<{ isFallbackAdapter?: boolean; info?: Record<string, unknown>; limits?: { maxStorageBufferBindingSize: number; maxBufferSize: number } } | null> };

/** The largest buffer the engine may bind on this browser's adapter (what it will get). */
async function maxBinding(): Promise<number> {
  const adapter = await (globalThis.navigator as Navigator & { gpu?: Gpu })?.gpu?.requestAdapter().catch(() => null);
  const l = adapter?.limits;
  return l ? Math.min(l.maxStorageBufferBindingSize, l.maxBufferSize) : Number.MAX_SAFE_INTEGER;
}

/** Reads the GGUF header off the first chunks of a model as they arrive, and refuses a model
 * that cannot load here (not GGUF, unsupported, too large for the tab or the adapter) before
 * the rest is downloaded. */
class HeaderCheck {
  private head: Uint8Array[] = [];
  private have = 0;
  private need = 1 << 16;
  private done: boolean;
  constructor(private wasm: Wasm, private total: number, private device: "gpu" | "cpu", private binding: number) {
    this.done = total === 0; // unknown length: the load itself decides
  }
  /** Throws the typed error when the header rules the model out. */
  push(chunk: Uint8Array) {
    if (this.done) return;
    this.head.push(chunk);
    this.have += chunk.length;
    if (this.have < Math.min(this.need, this.total)) return;
    const prefix = new Uint8Array(this.have);
    let at = 0;
    for (const c of this.head) prefix.set(c, (at += c.length) - c.length);
    let needed: number;
    try {
      needed = this.wasm.checkModelHeader(prefix, this.total, this.device, this.binding);
    } catch (e) {
      this.done = true;
      throw classify(e);
    }
    // A header past 64 MB is left to the load (it bounds what it reads).
    this.done = needed === 0 || needed > 64 << 20;
    this.need = needed;
    if (this.done) this.head = [];
  }
}

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
  /** A lost GPU device: the engine cannot run again, every call fails with this. */
  private lost: FerroError | null = null;

  async load(source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void): Promise<ModelInfo> {
    const device = await pickDevice(opts.device);
    let threads = device === "cpu" ? pickThreads(opts.threads) : 1;
    const wasm = await loadWasm(threads > 1 ? "threads" : "plain", binaries(threads > 1 ? "threads" : "plain", opts));
    if (threads > 1) {
      // The workers start once per module; a later load uses at most as many.
      if (!threadsStarted) {
        await wasm.initThreads!(threads);
        threadsStarted = threads;
      }
      threads = Math.min(threads, threadsStarted);
    }
    const started = Date.now(); // the engine measures load time on the same clock
    const binding = device === "gpu" ? await maxBinding() : 0;
    const check = (total: number) => new HeaderCheck(wasm, total, device, binding);
    const bytes = await readModel(wasm, source, opts, onProgress, check);
    const total = bytes.length;
    onProgress({ phase: "upload", loaded: 0, total });
    await this.unload();
    this.lost = null;
    try {
      this.engine = await wasm.Engine.fromBytes(bytes, { device, threads, context: opts.context ?? 0, portable: !!opts.portable, sync: !!opts.sync, kvBudgetBytes: opts.kvBudgetBytes, kvType: opts.kvType, startedMs: started });
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
      if (this.lost) throw this.lost;
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

  countTokens(input: Input, options: GenerateOptions): Promise<number> {
    return this.run((e) => {
      try {
        return e.countTokens(input, options);
      } catch (err) {
        throw classify(err);
      }
    });
  }

  engineStats(): Promise<KvStats | null> {
    const memory = this.wasm ? memories.get(this.wasm) : undefined;
    return this.run((e) => ({ ...(e.engineStats() as KvStats), wasm_memory_bytes: memory?.buffer.byteLength ?? 0 }));
  }

  kvMap(): Promise<KvMap> {
    return this.run((e) => e.kvMap() as KvMap);
  }

  measureBandwidth(): Promise<Bandwidth> {
    return this.run(async (e) => {
      try {
        return (await e.measureBandwidth()) as Bandwidth;
      } catch (err) {
        throw classify(err);
      }
    });
  }

  /** Fault injection: destroys the GPU device as a driver reset would. */
  loseDevice(): Promise<void> {
    return this.run((e) => {
      try {
        e.loseDevice();
      } catch (err) {
        throw classify(err);
      }
    });
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
        const f = classify(err);
        if (f.code === "device_lost") this.lost = f;
        for (const [id, l] of this.listeners) l({ type: "error", id, error: toWire(f) });
        this.listeners.clear();
      } finally {
        this.pumping = false;
      }
    })();
  }
}

/** Gathers a model chunk by chunk (kept in JavaScript memory until the engine has read it),
 * reporting progress. */
async function readModel(wasm: Wasm, source: ModelSource, opts: LoadOptions, onProgress: (p: Progress) => void, check?: (total: number) => HeaderCheck): Promise<ModelBytes> {
  if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
    const view = source instanceof Uint8Array ? source : new Uint8Array(source);
    const bytes = newBytes(wasm, view.length);
    push(bytes, view);
    return bytes;
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    return drain(newBytes(wasm, source.size), new Response(source), source.size, "read", onProgress, check?.(source.size));
  }
  return readUrl(wasm, new URL(String(source), globalThis.location?.href).href, opts, onProgress, check);
}

async function readUrl(wasm: Wasm, url: string, opts: LoadOptions, onProgress: (p: Progress) => void, check?: (total: number) => HeaderCheck): Promise<ModelBytes> {
  const cache = opts.cache !== false && typeof caches !== "undefined" ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = await cache?.match(url);
  if (hit && cache) {
    const size = Number(hit.headers.get("x-ferrolm-size") ?? 0);
    const bytes = await drain(newBytes(wasm, size), hit, size, "cache", onProgress);
    if (!size || bytes.length === size) return bytes;
    release(bytes);
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
  // A file the tab cannot hold fails before the download.
  let bytes: ModelBytes;
  try {
    bytes = newBytes(wasm, total);
  } catch (e) {
    await resp.body.cancel().catch(() => {});
    throw e;
  }
  const header = check?.(total);
  if (cache) {
    // The download streams to disk through the cache (progress counted on the way, the header
    // checked on the first chunks), then is read back from it: the page never holds the file
    // twice.
    let seen = 0;
    let refused: FerroError | null = null;
    const counter = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctl) {
        seen += chunk.length;
        try {
          header?.push(chunk);
        } catch (e) {
          refused = classify(e);
          ctl.error(refused); // cancels the download
          return;
        }
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
        await drain(bytes, stored, total, "cache", onProgress);
        if (!total || bytes.length === total) return bytes;
        release(bytes);
        await cache.delete(url);
        throw new FerroError("network", `the download of ${url} ended after ${seen} of ${total} bytes; try again`);
      }
    } catch (e) {
      if (refused || e instanceof FerroError) {
        release(bytes);
        throw refused ?? e;
      }
      // Quota or storage errors: fall back to a plain download below, into fresh memory.
      await cache.delete(url).catch(() => false);
      if (bytes.length) {
        release(bytes);
        bytes = newBytes(wasm, total);
      }
    }
    resp = await fetch(url);
    if (!resp.ok || !resp.body) {
      release(bytes);
      throw new FerroError("network", `fetching the model from ${url} failed: HTTP ${resp.status}`);
    }
  }
  return drain(bytes, resp, total, "download", onProgress, check?.(total));
}

const released = new WeakSet<ModelBytes>();
/** Frees model bytes once, however many error paths reach them. */
function release(bytes: ModelBytes) {
  if (released.has(bytes)) return;
  released.add(bytes);
  bytes.free();
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
    release(bytes);
    throw classify(e);
  }
}

/** Reads `resp` into `bytes` (freed on failure), checking the header on the way when `header`. */
async function drain(bytes: ModelBytes, resp: Response, total: number, phase: ProgressPhase, onProgress: (p: Progress) => void, header?: HeaderCheck): Promise<ModelBytes> {
  const reader = resp.body!.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    try {
      header?.push(value);
    } catch (e) {
      release(bytes);
      await reader.cancel().catch(() => {});
      throw e;
    }
    push(bytes, value);
    loaded += value.length;
    onProgress({ phase, loaded, total });
  }
  return bytes;
}
