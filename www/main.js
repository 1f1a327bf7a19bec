// Demo page: loads the default model (or a picked .gguf) into the wasm engine and streams text.
import init, { Engine, EngineDevice } from "/pkg/wasm/ferrolm.js";

const DEFAULT_MODEL = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const $ = (id) => document.getElementById(id);
let engine = null;

async function load(bytes, name) {
  $("go").disabled = true;
  $("status").textContent = `loading ${name} (${(bytes.length / 1e6).toFixed(1)} MB)…`;
  await new Promise((r) => setTimeout(r, 0)); // let the status paint before the synchronous load
  try {
    engine?.free();
    engine = await Engine.load(bytes, EngineDevice.Gpu, 2048, false);
    const info = engine.info();
    $("status").textContent = `${name}: ${info.architecture}, ${info.nLayers} layers, vocab ${info.vocabSize}, on ${info.backend}, loaded in ${info.loadMs.toFixed(0)} ms`;
    $("go").disabled = false;
  } catch (e) {
    $("status").textContent = `error: ${e.message ?? e}`;
  }
}

$("go").onclick = async () => {
  $("go").disabled = true;
  $("out").textContent = "";
  await new Promise((r) => setTimeout(r, 0));
  try {
    const r = await engine.generate($("prompt").value, $("chat").checked, undefined, { max_tokens: Number($("max").value) },
      (piece) => { $("out").textContent += piece; });
    $("metrics").textContent = `prompt ${r.promptTokens} tokens · generated ${r.generatedTokens} (${r.finishReason}) · TTFT ${r.ttftMs.toFixed(0)} ms · prefill ${r.prefillTokS.toFixed(1)} tok/s · decode ${r.decodeTokS.toFixed(1)} tok/s`;
  } catch (e) {
    $("metrics").textContent = `error: ${e.message ?? e}`;
  }
  $("go").disabled = false;
};

$("file").onchange = async (ev) => {
  const f = ev.target.files[0];
  if (f) await load(new Uint8Array(await f.arrayBuffer()), f.name);
};

await init();
const resp = await fetch(DEFAULT_MODEL);
if (resp.ok) {
  await load(new Uint8Array(await resp.arrayBuffer()), DEFAULT_MODEL.split("/").pop());
} else {
  $("status").textContent = `no default model at ${DEFAULT_MODEL} (HTTP ${resp.status}); run 'make models' or pick a file`;
}
