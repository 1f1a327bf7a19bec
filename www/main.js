// Demo page: the npm package (pkg/dist, built by `make package`) imported the way an app would,
// running the engine in its Web Worker. Up to four conversations run at once (continuous
// batching) behind one shared system prompt (prefix caching); the KV map draws the engine's
// block pool as it fills; speculative decoding marks confirmed drafts and rejections in the
// text; the chart plots each conversation's tokens per second, shading its prefill.
import { createEngine } from "/pkg/dist/index.js";

const $ = (id) => document.getElementById(id);
const COLORS = ["#0b57d0", "#c5221f", "#188038", "#a142f4", "#e37400", "#007b83", "#b80672", "#5f6368"];
const WINDOW_MS = 60_000;
let engine = null;
let panes = [];
let map = null;
let polling = false;
/** The backend's read bandwidth and weight bytes a token, for MBU (measured after each load). */
let bandwidth = null;
/** When each block last left the prefix cache (evicted for new contents), by block index. */
const evictedAt = new Map();

// The tool-call example's functions.
const TOOLS = [
  { type: "function", function: { name: "get_weather", description: "Current weather in a city", parameters: { type: "object", properties: { city: { type: "string", maxLength: 40 }, unit: { enum: ["celsius", "fahrenheit"] } }, required: ["city", "unit"], additionalProperties: false } } },
  { type: "function", function: { name: "send_email", description: "Send an email", parameters: { type: "object", properties: { to: { type: "string", maxLength: 60 }, subject: { type: "string", maxLength: 80 } }, required: ["to", "subject"], additionalProperties: false } } },
];
const PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Why is the sky blue?", "What does a compiler do?"];

// What to do about each typed error (FerroError codes).
const ADVICE = {
  no_webgpu: "this browser has no WebGPU: pick the CPU backend",
  model_too_large: "pick a smaller model or the other backend",
  unsupported_model: "ferrolm runs llama, qwen2 and gemma3 GGUF files",
  invalid_model: "the file is not a complete GGUF model: download it again",
  network: "check that the model URL is served",
  device_lost: "the GPU was reset: load the model again",
  worker_died: "the engine crashed: load the model again",
};

/** The request fields the "Output" choice adds. */
function structured() {
  switch ($("format").value) {
    case "json":
      return { response_format: { type: "json_schema", json_schema: { name: "reply", schema: JSON.parse($("schema").value) } } };
    case "tools":
      return { tools: TOOLS, tool_choice: "required" };
    default:
      return {};
  }
}

const phases = { download: "downloading", cache: "reading from the browser cache", read: "reading the file", upload: "loading into the engine" };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function load(source, name) {
  for (const b of [$("load"), $("send-all"), ...panes.map((p) => p.send)]) b.disabled = true;
  try {
    await engine?.unload();
    engine = null;
    engine = await createEngine(source, {
      device: $("device").value,
      onProgress: (p) => {
        setStatus(`${name}: ${phases[p.phase]} ${(p.loaded / 1e6).toFixed(1)}${p.total ? ` / ${(p.total / 1e6).toFixed(1)}` : ""} MB`);
        $("progress").value = p.total ? p.loaded / p.total : 0;
      },
    });
    const i = engine.info;
    setStatus(`${name}: ${i.architecture}, ${i.nLayers} layers, vocab ${i.vocabSize}, context ${i.context}, on ${i.backend}, ready in ${i.loadMs.toFixed(0)} ms`);
    bandwidth = null;
    setStatus(`${$("status").textContent} · measuring read bandwidth…`);
    bandwidth = await engine.measureBandwidth();
    setStatus(`${$("status").textContent.replace(" · measuring read bandwidth…", "")} · read bandwidth ${(bandwidth.readBytesPerS / 1e9).toFixed(1)} GB/s, ${(bandwidth.weightBytesPerToken / 1e6).toFixed(1)} MB of weights a token`);
    $("progress").value = 1;
    makePanes();
    await refreshMap();
  } catch (e) {
    const advice = ADVICE[e.code];
    setStatus(`error (${e.code ?? "unknown"}): ${e.message ?? e}${advice ? ` — ${advice}` : ""}`, true);
  }
  $("load").disabled = false;
}

function makePanes() {
  const n = Number($("pane-count").value);
  for (const p of panes) p.controller?.abort();
  $("panes").textContent = "";
  panes = Array.from({ length: n }, (_, i) => {
    const el = $("pane").content.firstElementChild.cloneNode(true);
    const color = COLORS[i];
    el.style.setProperty("--pane", color);
    el.querySelector("h3").textContent = `Conversation ${i + 1}`;
    const pane = { i, el, color, history: [], controller: null, busy: false, series: [], spans: [], chat: el.querySelector(".chat"), prompt: el.querySelector(".prompt"), send: el.querySelector(".send"), stop: el.querySelector(".stop"), metrics: el.querySelector(".metrics") };
    pane.prompt.value = PROMPTS[i];
    pane.send.disabled = !engine;
    pane.send.onclick = () => send(pane);
    pane.stop.onclick = () => pane.controller?.abort();
    pane.prompt.onkeydown = (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) send(pane);
    };
    $("panes").append(el);
    return pane;
  });
  $("send-all").disabled = !engine;
  drawLegend();
}

function bubble(pane, role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  pane.chat.append(div);
  return div;
}

async function send(pane) {
  const content = pane.prompt.value.trim();
  if (!content || pane.busy || !engine) return;
  pane.busy = true;
  pane.send.disabled = true;
  pane.stop.disabled = false;
  bubble(pane, "user", content);
  const out = bubble(pane, "assistant", "");
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...pane.history, { role: "user", content }];
  pane.controller = new AbortController();
  const started = performance.now();
  const run = { start: started, first: null, end: null, tokens: [] };
  pane.spans.push(run);
  pollMap();
  let text = "";
  try {
    const stream = await engine.chat.completions.create({
      messages,
      stream: true,
      temperature: Number($("temperature").value),
      top_p: Number($("top_p").value),
      top_k: Number($("top_k").value),
      max_tokens: Number($("max_tokens").value),
      signal: pane.controller.signal,
      ...($("speculative").checked ? { speculative: "ngram" } : {}),
      ...structured(),
    });
    for await (const chunk of stream) {
      const piece = chunk.choices[0].delta.content ?? "";
      if (piece) {
        const now = performance.now();
        if (run.first === null) {
          run.first = now;
          // Each conversation's first token: the map shows its blocks, however short it is.
          refreshMap();
        }
        run.tokens.push(now);
        text += piece;
        const spec = chunk.speculation;
        if (spec?.rejected) {
          const mark = document.createElement("span");
          mark.className = "rejected";
          mark.textContent = `✗${spec.rejected}`;
          mark.title = `${spec.rejected} drafted tokens rejected here`;
          out.append(mark);
        }
        const span = document.createElement("span");
        span.textContent = piece;
        if (spec?.drafted) {
          span.className = "drafted";
          span.title = "a drafted token the model confirmed";
        }
        out.append(span);
      }
      for (const call of chunk.choices[0].delta.tool_calls ?? []) {
        out.className = "msg assistant call";
        out.textContent = text = `${call.function.name}(${call.function.arguments})`;
      }
      pane.chat.scrollTop = pane.chat.scrollHeight;
      if (chunk.ferrolm) {
        const t = chunk.ferrolm;
        const spec = t.drafted ? ` · drafts ${t.accepted}/${t.drafted} accepted, ${(chunk.usage.completion_tokens / Math.max(1, chunk.usage.completion_tokens - t.accepted)).toFixed(2)} tokens a forward` : "";
        pane.metrics.textContent = `TTFT ${t.ttft_ms.toFixed(0)} ms · TPOT ${t.tpot_ms.toFixed(0)} ms · ${t.tokens_per_s.toFixed(1)} tok/s${mbu(t.tokens_per_s * (1 - t.accepted / Math.max(1, chunk.usage.completion_tokens)))} · ${chunk.usage.completion_tokens} tokens (${chunk.choices[0].finish_reason}) · prompt ${chunk.usage.prompt_tokens}, ${t.cached_tokens} from the prefix cache${spec}`;
      }
    }
    pane.history.push({ role: "user", content }, { role: "assistant", content: text });
  } catch (e) {
    out.append(e.code === "aborted" ? " [stopped]" : ` [error (${e.code}): ${e.message}]`);
  }
  run.end = performance.now();
  pane.busy = false;
  pane.send.disabled = false;
  pane.stop.disabled = true;
}

/** " · MBU n%": weight bytes a forward x forwards per second / the measured read bandwidth
 * (tokens per second, less confirmed drafts, which come with no weight read of their own). */
function mbu(tokensPerS) {
  return bandwidth ? ` · MBU ${((100 * bandwidth.weightBytesPerToken * tokensPerS) / bandwidth.readBytesPerS).toFixed(0)}%` : "";
}

// ---- the KV map ------------------------------------------------------------------------------

/** Refreshes the map while any conversation runs (and once after), every 50 ms: a short
 * request on the CPU backend now ends within half a second, and the map should show it. */
async function pollMap() {
  if (polling) return;
  polling = true;
  while (engine && panes.some((p) => p.busy)) {
    await refreshMap();
    drawChart();
    await new Promise((r) => setTimeout(r, 50));
  }
  polling = false;
  await refreshMap();
  drawChart();
}

/** Colour of a request: one per engine request id. */
const requestColor = (id) => COLORS[(id - 1) % COLORS.length];

function layout(canvas, n) {
  const cols = Math.ceil(Math.sqrt((n * canvas.width) / canvas.height));
  const cell = Math.floor(Math.min(canvas.width / cols, canvas.height / Math.ceil(n / cols)));
  return { cols, cell };
}

async function refreshMap() {
  if (!engine) return;
  const before = map;
  try {
    map = await engine.kvMap();
  } catch {
    return;
  }
  const now = performance.now();
  before?.blocks.forEach((b, i) => b.cached && !map.blocks[i]?.cached && evictedAt.set(i, now));
  const canvas = $("kvmap");
  const ctx = canvas.getContext("2d");
  const { blocks, stats } = map;
  const { cols, cell } = layout(canvas, blocks.length);
  const bs = stats.block_size;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const counts = { used: 0, shared: 0, cached: 0, free: 0, evicted: 0, requests: new Set(blocks.flatMap((b) => b.owners.map((o) => o[0]))).size };
  blocks.forEach((b, i) => {
    const x = (i % cols) * cell;
    const y = Math.floor(i / cols) * cell;
    ctx.fillStyle = "#ececf0";
    ctx.fillRect(x + 1, y + 1, cell - 2, cell - 2);
    if (b.refs > 0) {
      counts.used++;
      const owner = b.owners[0]?.[0];
      ctx.fillStyle = owner ? requestColor(owner) : "#888";
      const h = Math.max(2, Math.round(((cell - 2) * b.filled) / bs));
      ctx.fillRect(x + 1, y + cell - 1 - h, cell - 2, h);
      if (b.refs > 1) {
        counts.shared++;
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 2;
        ctx.strokeRect(x + 2, y + 2, cell - 4, cell - 4);
      }
    } else if (b.cached) {
      counts.cached++;
      ctx.strokeStyle = "#0b57d0";
      ctx.lineWidth = 1;
      ctx.strokeRect(x + 2.5, y + 2.5, cell - 5, cell - 5);
    } else {
      counts.free++;
    }
    if (now - (evictedAt.get(i) ?? -1e9) < 2000) {
      counts.evicted++;
      ctx.strokeStyle = "#a00";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(x + 2, y + 2);
      ctx.lineTo(x + cell - 2, y + cell - 2);
      ctx.stroke();
    }
  });
  const legend = $("kv-legend");
  legend.textContent = "";
  const item = (color, text, outline) => {
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = outline ? "#fff" : color;
    if (outline) sw.style.borderColor = color;
    legend.append(sw, text);
  };
  item("#0b57d0", `in use ${counts.used} (colour per request, height = tokens filled)`);
  item("#000", `shared ${counts.shared}`, true);
  item("#0b57d0", `cached, free ${counts.cached}`, true);
  item("#a00", `evicted from the cache in the last 2 s ${counts.evicted}`, true);
  item("#ececf0", `free ${counts.free} of ${blocks.length} · ${bs} tokens a block · ${stats.kv.evictions} evictions in all · prefix hits ${stats.kv.hits}/${stats.kv.lookups}`);
  // For tests: what the map drew, and the engine's figures of the same moment.
  window.demo.lastMap = { drawn: counts, stats: stats.kv };
}

$("kvmap").onmousemove = (ev) => {
  const tip = $("kv-tip");
  const canvas = $("kvmap");
  if (!map) return;
  const r = canvas.getBoundingClientRect();
  const { cols, cell } = layout(canvas, map.blocks.length);
  const scale = canvas.width / r.width;
  const i = Math.floor(((ev.clientY - r.top) * scale) / cell) * cols + Math.floor(((ev.clientX - r.left) * scale) / cell);
  const b = map.blocks[i];
  if (!b || (ev.clientX - r.left) * scale >= cols * cell) {
    tip.hidden = true;
    return;
  }
  const bs = map.stats.block_size;
  const who = b.owners.map(([id, first]) => `request ${id} tokens ${first}-${first + bs - 1}`).join(", ");
  tip.textContent = `block ${i}: ${b.refs > 0 ? `${who}, ${b.filled}/${bs} filled, ${b.refs} reference${b.refs > 1 ? "s" : ""}` : b.cached ? "cached, free (a later prompt with this prefix reuses it)" : "free"}`;
  const box = canvas.parentElement.parentElement.getBoundingClientRect();
  tip.style.left = `${ev.clientX - box.left + 12}px`;
  tip.style.top = `${ev.clientY - box.top + 12}px`;
  tip.hidden = false;
};
$("kvmap").onmouseleave = () => ($("kv-tip").hidden = true);

// ---- the tokens-per-second chart -------------------------------------------------------------

/** The chart's legend, with each conversation's tokens per second and MBU over the last second. */
function drawLegend(rates = []) {
  const legend = $("chart-legend");
  legend.textContent = "";
  for (const p of panes) {
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = p.color;
    const r = rates[p.i];
    legend.append(sw, `conversation ${p.i + 1}${r ? ` ${r} tok/s${mbu(r)}` : ""}`);
  }
  legend.append(" · shaded: prefill (waiting for the first token)");
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const now = performance.now();
  const runs = panes.flatMap((p) => p.spans.map((s) => ({ ...s, color: p.color })));
  // From the first request on (at least 10 s, at most the last minute).
  const span = Math.min(WINDOW_MS, Math.max(10_000, now - Math.min(now, ...runs.map((r) => r.start))));
  const t0 = now - span;
  // tok/s of each conversation over the last second, sampled every 250 ms.
  const series = panes.map((p) => {
    const ts = p.spans.flatMap((s) => s.tokens);
    const pts = [];
    for (let t = Math.max(t0, (p.spans[0]?.start ?? now) - 250); t <= now; t += 250) pts.push([t, ts.filter((x) => x > t - 1000 && x <= t).length]);
    return { color: p.color, pts };
  });
  const top = Math.max(10, ...series.flatMap((s) => s.pts.map((p) => p[1])));
  const X = (t) => ((t - t0) / span) * canvas.width;
  const Y = (v) => canvas.height - 14 - (v / top) * (canvas.height - 24);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const r of runs) {
    ctx.fillStyle = `${r.color}22`;
    ctx.fillRect(X(r.start), 0, X(r.first ?? r.end ?? now) - X(r.start), canvas.height - 14);
  }
  ctx.fillStyle = "#555";
  ctx.font = "11px system-ui";
  ctx.fillText(`${top.toFixed(0)} tok/s`, 4, 12);
  ctx.fillText(`last ${Math.round(span / 1000)} s`, canvas.width - 56, canvas.height - 2);
  drawLegend(series.map((s) => s.pts.at(-1)?.[1] ?? 0));
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.pts.forEach(([t, v], k) => (k ? ctx.lineTo(X(t), Y(v)) : ctx.moveTo(X(t), Y(v))));
    ctx.stroke();
  }
}

// ---- wiring ----------------------------------------------------------------------------------

// For tests (tests/npm/package.test.mjs).
window.demo = {
  lastMap: null,
  refreshMap,
  get engine() {
    return engine;
  },
};
$("send-all").onclick = () => panes.forEach((p) => send(p));
$("pane-count").onchange = () => engine && makePanes();
$("format").onchange = () => ($("schema-box").hidden = $("format").value !== "json");
$("model").onchange = () => {
  if ($("model").value === "file") $("file").click();
};
$("file").onchange = (ev) => {
  const f = ev.target.files[0];
  if (f) load(f, f.name);
};
$("load").onclick = () => {
  const v = $("model").value;
  if (v === "file") return $("file").click();
  load(v, v.split("/").pop());
};
makePanes();
$("load").click();
