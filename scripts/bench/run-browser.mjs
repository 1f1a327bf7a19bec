// Runs www/bench.html in headless Chromium (same flags as the peer benchmark) and prints the
// summary JSON. Usage: node run-browser.mjs --port 8766 [--model F] [--device gpu|cpu] [--threads N] [--gen 128] [--runs 3] [--stream-gen 32] [--simd plain]
import { chromium } from "playwright-core";

const argv = process.argv.slice(2);
const opt = (name, def) => { const i = argv.indexOf("--" + name); return i >= 0 ? argv[i + 1] : def; };
const port = Number(opt("port", 8766));
const qs = new URLSearchParams({ model: opt("model", "SmolLM2-135M-Instruct.Q4_1.gguf"), device: opt("device", "gpu"), threads: opt("threads", "1"), gen: opt("gen", "128"), runs: opt("runs", "3"), stream_gen: opt("stream-gen", "32"), simd: opt("simd", "auto") });
const timeoutMs = Number(opt("timeout", 1200)) * 1000;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-unsafe-webgpu"],
});
try {
  const page = await (await browser.newContext()).newPage();
  page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`[pageerror] ${e}\n`));
  await page.goto(`http://127.0.0.1:${port}/bench.html?${qs}`);
  await page.waitForFunction(() => window.__bench !== undefined, null, { timeout: 60000 });
  const out = await page.evaluate(() => window.__bench, null, { timeout: timeoutMs });
  if (!out.ok) throw new Error(out.error);
  console.log(JSON.stringify(out.result));
} finally {
  await browser.close();
}
