// Demo page: the npm package (pkg/dist, built by `make package`) imported the way an app would,
// running the engine in its Web Worker. Streams chat replies; Stop aborts one. "Output" holds a
// reply to a JSON Schema or to a tool call (structured output, enforced token by token).
import { createEngine } from "/pkg/dist/index.js";

const DEFAULT_MODEL = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const $ = (id) => document.getElementById(id);
let engine = null;
let history = [];
let controller = null;

// The tool-call example's functions.
const TOOLS = [
  { type: "function", function: { name: "get_weather", description: "Current weather in a city", parameters: { type: "object", properties: { city: { type: "string", maxLength: 40 }, unit: { enum: ["celsius", "fahrenheit"] } }, required: ["city", "unit"], additionalProperties: false } } },
  { type: "function", function: { name: "send_email", description: "Send an email", parameters: { type: "object", properties: { to: { type: "string", maxLength: 60 }, subject: { type: "string", maxLength: 80 } }, required: ["to", "subject"], additionalProperties: false } } },
];

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

const phases = { download: "downloading", cache: "reading from the browser cache", read: "reading the file", upload: "uploading to the GPU" };

async function load(model, name) {
  $("send").disabled = true;
  try {
    await engine?.unload();
    engine = await createEngine(model, {
      onProgress: (p) => {
        $("status").textContent = `${name}: ${phases[p.phase]} ${(p.loaded / 1e6).toFixed(1)}${p.total ? ` / ${(p.total / 1e6).toFixed(1)}` : ""} MB`;
        $("progress").value = p.total ? p.loaded / p.total : 0;
      },
    });
    const i = engine.info;
    $("status").textContent = `${name}: ${i.architecture}, ${i.nLayers} layers, vocab ${i.vocabSize}, on ${i.backend}, ready in ${i.loadMs.toFixed(0)} ms`;
    $("progress").value = 1;
    history = [];
    $("chat").textContent = "";
    $("send").disabled = false;
  } catch (e) {
    $("status").textContent = `error (${e.code ?? "unknown"}): ${e.message ?? e}`;
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("chat").append(div);
  return div;
}

async function send() {
  const content = $("prompt").value.trim();
  if (!content) return;
  $("send").disabled = true;
  $("stop").disabled = false;
  bubble("user", content);
  const out = bubble("assistant", "");
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...history, { role: "user", content }];
  controller = new AbortController();
  try {
    const stream = await engine.chat.completions.create({
      messages,
      stream: true,
      temperature: Number($("temperature").value),
      top_p: Number($("top_p").value),
      top_k: Number($("top_k").value),
      max_tokens: Number($("max_tokens").value),
      signal: controller.signal,
      ...structured(),
    });
    for await (const chunk of stream) {
      out.textContent += chunk.choices[0].delta.content ?? "";
      for (const call of chunk.choices[0].delta.tool_calls ?? []) {
        out.className = "msg assistant call";
        out.textContent = `${call.function.name}(${call.function.arguments})`;
      }
      $("chat").scrollTop = $("chat").scrollHeight;
      if (chunk.ferrolm) {
        const t = chunk.ferrolm;
        const s = await engine.stats();
        $("metrics").textContent = `TTFT ${t.ttft_ms.toFixed(0)} ms · TPOT ${t.tpot_ms.toFixed(0)} ms · ${t.tokens_per_s.toFixed(1)} tok/s · ${chunk.usage.completion_tokens} tokens (${chunk.choices[0].finish_reason}) · prompt ${chunk.usage.prompt_tokens} tokens, ${t.cached_tokens} from the prefix cache · KV blocks ${s.kv.kv.used} in use, ${s.kv.kv.cached_free} cached, of ${s.kv.kv.n_blocks}`;
      }
    }
    history.push({ role: "user", content }, { role: "assistant", content: out.textContent });
  } catch (e) {
    out.textContent += e.code === "aborted" ? " [stopped]" : ` [error: ${e.message}]`;
  }
  $("send").disabled = false;
  $("stop").disabled = true;
}

$("send").onclick = send;
$("format").onchange = () => ($("schema-box").hidden = $("format").value !== "json");
$("stop").onclick = () => controller?.abort();
$("file").onchange = (ev) => {
  const f = ev.target.files[0];
  if (f) load(f, f.name);
};
load(DEFAULT_MODEL, DEFAULT_MODEL.split("/").pop());
