// Typed errors: every failure reaches the page as a FerroError with a code to branch on and a
// message that says what is wrong and what to do.

export type FerroErrorCode =
  | "no_webgpu" // the browser exposes no WebGPU adapter
  | "model_too_large" // the model does not fit the adapter's limits or the tab's memory
  | "unsupported_model" // architecture, tensor type or GGUF version ferrolm does not run
  | "invalid_model" // not a GGUF file, or a corrupt / truncated one
  | "network" // the model URL could not be fetched
  | "aborted" // the request's AbortSignal fired
  | "invalid_request" // bad options or a prompt longer than the context
  | "device_lost" // the GPU device was lost (driver reset, GPU reclaimed): create the engine again
  | "worker_died" // the engine's worker failed or could not start: create the engine again
  | "unauthorized" // a served engine refused the API key (HTTP 401/403)
  | "not_found" // a served engine has no such model or endpoint (HTTP 404)
  | "rate_limited" // a served engine is busy (HTTP 429) and stayed so through the retries
  | "server" // a served engine failed (HTTP 5xx)
  | "timeout" // a served engine did not answer within the timeout
  | "engine"; // anything else (GPU errors)

export class FerroError extends Error {
  /** `status`: the HTTP status, for errors from a served engine. */
  constructor(readonly code: FerroErrorCode, message: string, readonly status?: number) {
    super(message);
    this.name = "FerroError";
  }
}

/** A plain object that crosses the worker boundary. */
export interface WireError {
  code: FerroErrorCode;
  message: string;
}

export function toWire(e: unknown): WireError {
  const f = classify(e);
  return { code: f.code, message: f.message };
}

export function fromWire(w: WireError): FerroError {
  return new FerroError(w.code, w.message);
}

/** Maps the engine's error messages (src/error.rs) onto codes. */
export function classify(e: unknown): FerroError {
  if (e instanceof FerroError) return e;
  const m = String((e as Error)?.message ?? e);
  const code: FerroErrorCode =
    /WebGPU is not available/.test(m) ? "no_webgpu"
    : /GPU device was lost/.test(m) ? "device_lost"
    : /allows at most|can hold at most|cannot allocate|out of memory|KV cache is full/.test(m) ? "model_too_large"
    : /unsupported (model architecture|GGUF version)|has unsupported type/.test(m) ? "unsupported_model"
    : /not a GGUF file|malformed GGUF|is missing from the model file|metadata key|invalid model|model file.s chat template/.test(m) ? "invalid_model"
    : /invalid (option|request|generate options)|the prompt has|outside the vocabulary|prompt is empty/.test(m) ? "invalid_request"
    : "engine";
  return new FerroError(code, m);
}
