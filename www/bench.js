// Browser benchmark page, driven by scripts/bench/run-browser.mjs. Query: model=<file under
// /models/>, device=<gpu|cpu>, threads=<CPU threads; > 1 needs a cross-origin isolated page>, gen=<tokens>, runs=<n>, stream_gen=<tokens per concurrent stream,
// 0: skip>, simd=plain (the simd128 binary even where relaxed SIMD runs). Publishes the summary as window.__bench.

const q = new URLSearchParams(location.search);
const model = q.get("model") || "SmolLM2-135M-Instruct.Q4_1.gguf";
const device = q.get("device") || "gpu";
const threads = Number(q.get("threads") || 1);
const gen = Number(q.get("gen") || 128);
const runs = Number(q.get("runs") || 3);
const streamGen = Number(q.get("stream_gen") || 32);
// A module of one relaxed-SIMD instruction: it validates where the browser runs relaxed SIMD.
const RELAXED_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 25, 1, 23, 0, 253, 12, ...new Array(16).fill(0), 253, 129, 2, 11]);
const status = (s) => { document.getElementById("status").textContent = s; console.log("[bench] " + s); };

async function run() {
  // More than one thread: the threaded build, its workers started before the model loads. The
  // build's relaxed-SIMD binary where the browser runs it (as the npm package picks), or the
  // plain one with simd=plain.
  const dir = threads > 1 ? "/pkg/wasm-threads" : "/pkg/wasm";
  const wasm = await import(`${dir}/ferrolm.js`);
  const relaxed = q.get("simd") !== "plain" && WebAssembly.validate(RELAXED_PROBE);
  await wasm.default(relaxed ? { module_or_path: `${dir}/ferrolm_relaxed_bg.wasm` } : undefined);
  if (threads > 1) await wasm.initThreads(threads);
  const { Engine, ModelBytes } = wasm;
  status("fetching model");
  const resp = await fetch("/models/" + model);
  if (!resp.ok) throw new Error(`model fetch failed: HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const buf = new ModelBytes(bytes.length);
  buf.push(bytes);
  status("loading");
  const engine = await Engine.fromBytes(buf, { device, threads, context: 1024 });
  status("benchmarking");
  const result = JSON.parse(await engine.benchmark(gen, runs, streamGen));
  result.model = model;
  result.user_agent = navigator.userAgent;
  return result;
}

window.__bench = run().then(
  (r) => { status("done"); document.getElementById("out").textContent = JSON.stringify(r, null, 1); return { ok: true, result: r }; },
  (e) => { status("error"); console.error(e); return { ok: false, error: String(e?.stack || e?.message || e) }; },
);
