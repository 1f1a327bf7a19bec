// An exact-match cache of finished deterministic responses (greedy, or sampled with a seed),
// keyed by the model, the messages or prompt and every option: a repeated request streams its
// stored chunks at once. Bounded in entries, bytes and age; in memory, and optionally in the
// browser's Cache Storage so it survives a reload.
import type { ChatCompletionChunk, ChatRequest, CompletionChunk, CompletionRequest } from "./openai.js";

export interface CacheOptions {
  /** Most responses kept (default 256). */
  maxEntries?: number;
  /** Most bytes of stored chunks kept in memory (default 16 MiB). */
  maxBytes?: number;
  /** Older responses are misses (default 1 hour). */
  maxAgeMs?: number;
  /** Also keep responses in Cache Storage: true, or the cache's name (default off). */
  persist?: boolean | string;
}

type Chunk = ChatCompletionChunk | CompletionChunk;

interface Entry {
  key: string;
  created: number;
  bytes: number;
  chunks: Chunk[];
}

/** JSON with object keys sorted, so equal requests give equal keys. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`).join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

async function sha256(text: string): Promise<string | null> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return null; // not a secure context: memory only
  const digest = await subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class ResponseCache {
  private mem = new Map<string, Entry>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private readonly maxEntries: number;
  private readonly maxBytes: number;
  private readonly maxAgeMs: number;
  private readonly storeName: string | null;

  constructor(opts: CacheOptions = {}) {
    this.maxEntries = opts.maxEntries ?? 256;
    this.maxBytes = opts.maxBytes ?? 16 << 20;
    this.maxAgeMs = opts.maxAgeMs ?? 3_600_000;
    this.storeName = opts.persist ? (typeof opts.persist === "string" ? opts.persist : "ferrolm-responses-v1") : null;
  }

  /** The key of a request to `model`, or null when its response is not deterministic (sampled
   * without a seed) and so never cached. */
  static key(kind: "chat" | "completion", model: string, req: ChatRequest | CompletionRequest): string | null {
    if ((req.temperature ?? 0) > 0 && req.seed === undefined) return null;
    const { signal: _s, stream: _t, ...rest } = req;
    return canonical({ kind, model, ...rest });
  }

  /** The stored chunks of `key`, or null. */
  async get(key: string): Promise<Chunk[] | null> {
    let e = this.mem.get(key) ?? (await this.load(key));
    if (e && Date.now() - e.created > this.maxAgeMs) {
      await this.drop(e);
      e = undefined;
    }
    if (!e) {
      this.misses++;
      return null;
    }
    this.hits++;
    // Most recently used last: eviction takes the first.
    this.mem.delete(key);
    this.mem.set(key, e);
    return e.chunks;
  }

  /** Stores a finished response's chunks. */
  async put(key: string, chunks: Chunk[]): Promise<void> {
    const text = JSON.stringify(chunks);
    const e: Entry = { key, created: Date.now(), bytes: text.length * 2, chunks };
    if (e.bytes > this.maxBytes) return;
    const old = this.mem.get(key);
    if (old) this.bytes -= old.bytes;
    this.mem.delete(key);
    this.mem.set(key, e);
    this.bytes += e.bytes;
    while (this.mem.size > this.maxEntries || this.bytes > this.maxBytes) await this.drop(this.mem.values().next().value!);
    const store = await this.store();
    const hash = store && (await sha256(key));
    if (store && hash) {
      await store.put(this.url(hash), new Response(JSON.stringify(e), { headers: { "content-type": "application/json" } })).catch(() => {});
      // The stored copies are bounded like the memory: the oldest go first.
      const keys = await store.keys().catch(() => [] as readonly Request[]);
      for (const old of keys.slice(0, Math.max(0, keys.length - this.maxEntries))) await store.delete(old).catch(() => false);
    }
  }

  /** Forgets every response, stored ones included. */
  async clear(): Promise<void> {
    this.mem.clear();
    this.bytes = 0;
    if (this.storeName && typeof caches !== "undefined") await caches.delete(this.storeName).catch(() => false);
  }

  stats(): { entries: number; bytes: number; hits: number; misses: number } {
    return { entries: this.mem.size, bytes: this.bytes, hits: this.hits, misses: this.misses };
  }

  private url(hash: string): string {
    return `https://ferrolm.invalid/responses/${hash}`;
  }

  private async store(): Promise<Cache | null> {
    if (!this.storeName || typeof caches === "undefined") return null;
    return caches.open(this.storeName).catch(() => null);
  }

  private async drop(e: Entry) {
    if (this.mem.get(e.key) === e) {
      this.mem.delete(e.key);
      this.bytes -= e.bytes;
    }
    const store = await this.store();
    const hash = store && (await sha256(e.key));
    if (store && hash) await store.delete(this.url(hash)).catch(() => false);
  }

  /** A stored entry of `key` from Cache Storage (after a reload), into memory. */
  private async load(key: string): Promise<Entry | undefined> {
    const store = await this.store();
    const hash = store && (await sha256(key));
    const resp = store && hash ? await store.match(this.url(hash)).catch(() => undefined) : undefined;
    if (!resp) return undefined;
    const e = (await resp.json().catch(() => null)) as Entry | null;
    if (!e || e.key !== key || !Array.isArray(e.chunks)) return undefined;
    this.mem.set(key, e);
    this.bytes += e.bytes;
    return e;
  }
}
