// A served engine behind the same interface as the in-page one: any server that speaks the
// OpenAI HTTP API (vLLM, TGI, SGLang, llama.cpp's server, `ferrolm serve`), over
// /v1/chat/completions and /v1/completions, streamed with server-sent events.
import { FerroError, type FerroErrorCode } from "./errors.js";
import type { ChatCompletion, ChatCompletionChunk, ChatEngine, ChatRequest, Completion, CompletionChunk, CompletionRequest, SamplingRequest } from "./openai.js";

export interface RemoteOptions {
  /** The API's base, e.g. "http://127.0.0.1:8080/v1". */
  baseURL: string;
  /** Sent as `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** The model to ask for, when a request names none. */
  model?: string;
  /** More headers for every request. */
  headers?: Record<string, string>;
  /** Milliseconds a whole request may take, streaming included (default 10 minutes). */
  timeout?: number;
  /** Retries of a request answered 429, each after the server's `Retry-After` (default 2). */
  maxRetries?: number;
}

/** A 429's wait: `Retry-After` in seconds or as an HTTP date, else 1 s; at most a minute. */
function retryDelay(resp: Response): number {
  const h = resp.headers.get("retry-after");
  const secs = h === null ? NaN : Number(h);
  const ms = Number.isFinite(secs) ? secs * 1000 : h ? Date.parse(h) - Date.now() : NaN;
  return Math.min(Math.max(Number.isFinite(ms) ? ms : 1000, 0), 60_000);
}

function codeFor(status: number): FerroErrorCode {
  return status === 401 || status === 403 ? "unauthorized"
    : status === 404 ? "not_found"
    : status === 408 ? "timeout"
    : status === 429 ? "rate_limited"
    : status >= 500 ? "server"
    : "invalid_request";
}

/** The typed error of a failed response, with the server's own message when it sent one. */
async function httpError(resp: Response, url: string): Promise<FerroError> {
  const text = await resp.text().catch(() => "");
  let message = text.slice(0, 500);
  try {
    const body = JSON.parse(text) as { error?: { message?: string } | string; message?: string; detail?: string };
    message = (typeof body.error === "string" ? body.error : body.error?.message) ?? body.message ?? body.detail ?? message;
  } catch {
    // not JSON: the text itself
  }
  return new FerroError(codeFor(resp.status), `${url} answered HTTP ${resp.status}: ${message || resp.statusText}`, resp.status);
}

/** The `data:` payloads of a server-sent-events body, until `[DONE]`. */
async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<unknown> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      // CRLF or CR line ends as LF (a CR at the end may be half of a CRLF: it waits).
      buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n|\r(?!$)/g, "\n");
      let end: number;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue; // a comment or keep-alive
        if (data === "[DONE]") return;
        const v = JSON.parse(data) as { error?: { message?: string; code?: string } };
        if (v.error) throw new FerroError("server", `the server failed during the response: ${v.error.message ?? JSON.stringify(v.error)}`);
        yield v;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

export class RemoteEngine implements ChatEngine {
  private readonly base: string;
  readonly chat = {
    completions: {
      create: ((req: ChatRequest) => (req.stream ? Promise.resolve(this.stream<ChatCompletionChunk>("/chat/completions", req)) : this.once<ChatCompletion>("/chat/completions", req))) as ChatEngine["chat"]["completions"]["create"],
    },
  };
  readonly completions = {
    create: ((req: CompletionRequest) => (req.stream ? Promise.resolve(this.stream<CompletionChunk>("/completions", req)) : this.once<Completion>("/completions", req))) as ChatEngine["completions"]["create"],
  };
  readonly model: string;

  constructor(private readonly opts: RemoteOptions) {
    if (!opts?.baseURL) throw new FerroError("invalid_request", "invalid remote options: baseURL is required, e.g. \"http://127.0.0.1:8080/v1\"");
    this.base = opts.baseURL.replace(/\/+$/, "");
    this.model = opts.model ?? "";
  }

  /** Nothing to release: the served engine stays up. */
  async unload(): Promise<void> {}

  /** A plain request: the server's own completion object (with its usage). */
  private async once<T>(path: string, req: ChatRequest | CompletionRequest): Promise<T> {
    const call = await this.post(path, req, false);
    try {
      return (await call.resp.json()) as T;
    } catch (e) {
      throw call.failed(e);
    } finally {
      call.close();
    }
  }

  /** Streams a request's chunks; aborting (`signal`), the timeout, or leaving the loop early
   * closes the HTTP request, which a served engine takes as a cancel. */
  private async *stream<T>(path: string, req: ChatRequest | CompletionRequest): AsyncGenerator<T> {
    const call = await this.post(path, req, true);
    try {
      for await (const chunk of events(call.resp.body!)) yield chunk as T;
    } catch (e) {
      throw call.failed(e);
    } finally {
      call.close();
    }
  }

  /** Sends a request, retrying 429s after their `Retry-After`; resolves with the successful
   * response, `failed` (an error as its typed FerroError) and `close` (ends the request). */
  private async post(path: string, req: ChatRequest | CompletionRequest, stream: boolean): Promise<{ resp: Response; failed: (e: unknown) => FerroError; close: () => void }> {
    const url = this.base + path;
    const { signal, ...fields } = req as unknown as SamplingRequest & Record<string, unknown>;
    // Greedy unless a temperature is given, as in the page: servers default to sampling.
    const body = JSON.stringify({ ...(this.opts.model ? { model: this.opts.model } : {}), temperature: 0, ...fields, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) });
    if (signal?.aborted) throw new FerroError("aborted", "the request was aborted before it started");
    const ctl = new AbortController();
    const timeout = this.opts.timeout ?? 600_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, timeout);
    const onAbort = () => ctl.abort();
    signal?.addEventListener("abort", onAbort);
    const close = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      ctl.abort(); // a stream left early: the server sees the connection close
    };
    const failed = (e: unknown): FerroError =>
      e instanceof FerroError ? e
      : timedOut ? new FerroError("timeout", `${url} did not finish within ${timeout} ms (the timeout option)`, 408)
      : signal?.aborted ? new FerroError("aborted", "the request was aborted")
      : new FerroError("network", `could not reach ${url} (${(e as Error)?.message ?? e}); check the URL, that the server runs, and that it allows this origin (CORS)`);
    try {
      for (let attempt = 0; ; attempt++) {
        let resp: Response;
        try {
          resp = await fetch(url, { method: "POST", headers: this.headers(stream), body, signal: ctl.signal });
        } catch (e) {
          throw failed(e);
        }
        if (resp.ok && resp.body) return { resp, failed, close };
        if (resp.status === 429 && attempt < (this.opts.maxRetries ?? 2)) {
          const wait = retryDelay(resp);
          await resp.body?.cancel().catch(() => {});
          await new Promise<void>((resolve, reject) => {
            const t = setTimeout(resolve, wait);
            ctl.signal.addEventListener("abort", () => (clearTimeout(t), reject(failed(new Error("aborted")))), { once: true });
          });
          continue;
        }
        throw await httpError(resp, url);
      }
    } catch (e) {
      close();
      throw e;
    }
  }

  private headers(stream: boolean): Record<string, string> {
    return { "content-type": "application/json", accept: stream ? "text/event-stream" : "application/json", ...(this.opts.apiKey ? { authorization: `Bearer ${this.opts.apiKey}` } : {}), ...this.opts.headers };
  }
}
