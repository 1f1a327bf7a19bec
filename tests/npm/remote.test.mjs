// The package's remote engine, router and response cache in headless Chromium against a real
// served engine on loopback: `ferrolm serve` (started here; its /stats show what the server saw),
// or with FERROLM_REMOTE_URL (`make test-remote`) a server we did not write, llama.cpp's, where
// the checks that need ferrolm's own stats or fault injection are skipped.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { join, resolve } from "node:path";
import { chromium } from "./app/node_modules/playwright-core/index.mjs";

const ROOT = resolve(import.meta.dirname, "../..");
const APP = join(ROOT, "tests/npm/app");
const MODEL = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const PROMPT = "What is the capital of France?";
const LONG_PROMPT = `Summarize this: ${"The quick brown fox jumps over the lazy dog. ".repeat(12)}`;
const EXTERNAL = process.env.FERROLM_REMOTE_URL;
const TIMEOUT = 600_000;

const children = [];
let browser, app, main, faulty;

/** Starts `ferrolm serve` on a free port; resolves with its /v1 base URL once it listens. */
function ferrolmServe(device, ...args) {
  const p = spawn(join(ROOT, "target/release/ferrolm"), ["serve", "--device", device, "--threads", "1", "--port", "0", ...args], { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
  children.push(p);
  return new Promise((ok, fail) => {
    p.on("exit", (code) => fail(new Error(`ferrolm serve exited with ${code}`)));
    createInterface({ input: p.stderr }).on("line", (line) => {
      const m = line.match(/on (http:\/\/\S+\/v1)/);
      if (m) ok(m[1]);
    });
  });
}

/** What `ferrolm serve` saw (its /stats), from outside the page. */
async function serverStats(base) {
  return (await fetch(base.replace(/\/v1$/, "/stats"))).json();
}

/** Polls `f` until it returns true (a server notices a closed connection at its next step). */
async function eventually(f, what) {
  for (let i = 0; i < 50; i++) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(what);
}

before(async () => {
  const serve = spawn("python3", [join(ROOT, "scripts/serve.py"), "--port", "8775", "--mount", `/models=${join(ROOT, "models")}`, APP], { stdio: "ignore" });
  children.push(serve);
  app = "http://127.0.0.1:8775";
  main = EXTERNAL ?? (await ferrolmServe("cpu", "--max-requests", "8"));
  // One request at a time (429s), and a GPU device to lose (500s): on lavapipe.
  faulty = EXTERNAL ? null : await ferrolmServe("gpu", "--max-requests", "1", "--faults");
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill();
});

async function open() {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error("[pageerror]", e.message));
  await page.goto(`${app}/index.html`);
  await page.waitForFunction(() => window.ferrolm !== undefined, null, { timeout: 60_000 });
  return page;
}

/** Streams a request through `engine` (a page global) and returns the text and last chunk. */
const STREAM = `async (engine, kind, req) => {
  let text = "";
  let last;
  const create = kind === "chat" ? engine.chat.completions.create : engine.completions.create;
  for await (const c of await create({ ...req, stream: true })) {
    text += (kind === "chat" ? c.choices[0]?.delta.content : c.choices[0]?.text) ?? "";
    last = c;
  }
  return { text, last };
}`;

test("remote engine: streamed greedy text equals the in-page engine's; plain requests; abort closes the upstream request", { timeout: TIMEOUT }, async () => {
  const page = await open();
  const out = await page.evaluate(
    async ({ MODEL, PROMPT, main, STREAM }) => {
      const stream = eval(STREAM);
      const local = await window.ferrolm.createEngine(MODEL);
      const remote = await window.ferrolm.createEngine({ remote: { baseURL: main } });
      const chat = { messages: [{ role: "user", content: PROMPT }], max_tokens: 24 };
      const completion = { prompt: "The printing press was invented by", max_tokens: 16 };
      const r = {
        local: await stream(local, "chat", chat),
        remote: await stream(remote, "chat", chat),
        localCompletion: await stream(local, "completion", completion),
        remoteCompletion: await stream(remote, "completion", completion),
        plain: await remote.chat.completions.create(chat),
      };
      // Abort after two pieces of a long reply.
      const ac = new AbortController();
      let pieces = 0;
      try {
        for await (const c of await remote.chat.completions.create({ ...chat, max_tokens: 1000, ignore_eos: true, stream: true, signal: ac.signal })) {
          if (c.choices[0]?.delta.content && ++pieces === 2) ac.abort();
        }
        r.aborted = "finished";
      } catch (e) {
        r.aborted = { code: e.code, typed: e instanceof window.ferrolm.FerroError };
      }
      return r;
    },
    { MODEL, PROMPT, main, STREAM },
  );
  assert.ok(out.remote.text.length > 0, "the remote reply is empty");
  assert.equal(out.remote.last.choices[0].finish_reason !== null, true);
  assert.equal(out.plain.object, "chat.completion");
  assert.equal(out.plain.choices[0].message.content, out.remote.text, "the plain reply differs from the streamed one");
  assert.ok(out.plain.usage.completion_tokens > 0);
  assert.deepEqual(out.aborted, { code: "aborted", typed: true });
  if (!EXTERNAL) {
    assert.equal(out.remote.text, out.local.text, "ferrolm serve's greedy reply differs from the in-page engine's");
    assert.equal(out.remoteCompletion.text, out.localCompletion.text);
    await eventually(async () => (await serverStats(main)).cancelled >= 1, "the server did not cancel the aborted request");
    await eventually(async () => (await serverStats(main)).engine.running === 0, "the aborted request still runs on the server");
  } else {
    assert.ok(out.remoteCompletion.text.length > 0);
  }
});

test("remote errors are typed, with the HTTP status: 404, 429 (retried after Retry-After), 500, a timeout, no server", { timeout: TIMEOUT }, async () => {
  const page = await open();
  const before = EXTERNAL ? null : await serverStats(main);
  const out = await page.evaluate(
    async ({ main, PROMPT }) => {
      const code = async (f) => {
        try {
          await f();
          return "ok";
        } catch (e) {
          return { code: e.code, status: e.status, message: e.message, typed: e instanceof window.ferrolm.FerroError };
        }
      };
      const chat = { messages: [{ role: "user", content: PROMPT }], max_tokens: 4 };
      const at = (baseURL, more = {}) => window.ferrolm.createEngine({ remote: { baseURL, ...more } });
      return {
        path: await code(async () => (await at(main.replace(/\/v1$/, "/v9"))).chat.completions.create(chat)),
        timeout: await code(async () => (await at(main, { timeout: 300 })).completions.create({ prompt: "Once", max_tokens: 1000, ignore_eos: true })),
        down: await code(async () => (await at("http://127.0.0.1:9/v1")).chat.completions.create(chat)),
        model: await code(async () => (await at(main, { model: "no-such-model" })).chat.completions.create(chat)),
      };
    },
    { main, PROMPT },
  );
  assert.deepEqual([out.path.code, out.path.status, out.path.typed], ["not_found", 404, true], JSON.stringify(out.path));
  assert.equal(out.timeout.code, "timeout", JSON.stringify(out.timeout));
  assert.equal(out.down.code, "network", JSON.stringify(out.down));
  if (EXTERNAL) return;
  assert.deepEqual([out.model.code, out.model.status], ["not_found", 404], JSON.stringify(out.model));
  assert.match(out.model.message, /SmolLM2-135M-Instruct\.Q4_1/);
  // The timed-out request was cancelled on the server.
  await eventually(async () => (await serverStats(main)).cancelled > before.cancelled, "the server did not cancel the timed-out request");

  // 429: the server takes one request at a time. B is refused while A streams, waits the
  // server's Retry-After (1 s) and succeeds once A is aborted; C with no retries fails.
  const busy = await page.evaluate(
    async ({ faulty, PROMPT }) => {
      const e = (more) => window.ferrolm.createEngine({ remote: { baseURL: faulty, ...more } });
      const ac = new AbortController();
      const a = (await e()).completions.create({ prompt: "Once", max_tokens: 2000, ignore_eos: true, stream: true, signal: ac.signal });
      const it = (await a)[Symbol.asyncIterator]();
      await it.next(); // A is running
      let c;
      try {
        await (await e({ maxRetries: 0 })).chat.completions.create({ messages: [{ role: "user", content: PROMPT }], max_tokens: 2 });
        c = "ok";
      } catch (err) {
        c = { code: err.code, status: err.status };
      }
      const t0 = performance.now();
      const b = (await e()).chat.completions.create({ messages: [{ role: "user", content: PROMPT }], max_tokens: 2 });
      setTimeout(() => ac.abort(), 300);
      const r = await b;
      await it.next().catch(() => {});
      return { c, b: r.usage.completion_tokens, waited: performance.now() - t0 };
    },
    { faulty, PROMPT },
  );
  assert.deepEqual(busy.c, { code: "rate_limited", status: 429 });
  assert.equal(busy.b, 2);
  assert.ok(busy.waited >= 900, `B finished after ${busy.waited} ms: it did not wait for Retry-After`);
  assert.ok((await serverStats(faulty)).rejected >= 2);

  // 500: the server's GPU device is lost.
  assert.equal((await fetch(faulty.replace(/\/v1$/, "/ferrolm/faults/lose-device"), { method: "POST" })).status, 200);
  const lost = await page.evaluate(async ({ faulty }) => {
    try {
      await (await window.ferrolm.createEngine({ remote: { baseURL: faulty } })).completions.create({ prompt: "Hi", max_tokens: 2 });
      return "ok";
    } catch (e) {
      return { code: e.code, status: e.status, message: e.message };
    }
  }, { faulty });
  assert.deepEqual([lost.code, lost.status], ["server", 500], JSON.stringify(lost));
  assert.match(lost.message, /device was lost/);
});

test("router: local when the prompt fits, remote when it is longer than the local context, when local cannot load, or when preferred; fastest by measurement; a repeated greedy request is a cache hit", { timeout: TIMEOUT }, async () => {
  const page = await open();
  const served = () => (EXTERNAL ? Promise.resolve({ requests: 0 }) : serverStats(main));
  const before = await served();
  const out = await page.evaluate(
    async ({ MODEL, PROMPT, LONG_PROMPT, main, STREAM }) => {
      const stream = eval(STREAM);
      const { createEngine, createRouter, ResponseCache } = window.ferrolm;
      const remote = await createEngine({ remote: { baseURL: main } });
      const local = createEngine(MODEL, { context: 64 });
      const router = createRouter({ local, remote, cache: new ResponseCache({ maxEntries: 8 }) });
      await local;
      const r = {};
      const ask = (content, more = {}) => stream(router, "chat", { messages: [{ role: "user", content }], max_tokens: 8, ...more });
      r.short = await ask(PROMPT);
      r.tokens = await (await local).countTokens({ messages: [{ role: "user", content: LONG_PROMPT }] });
      r.long = await ask(LONG_PROMPT);
      r.again = await ask(PROMPT);
      r.sampled = [await ask(PROMPT, { temperature: 0.9 }), await ask(PROMPT, { temperature: 0.9 })];
      r.prefers = await stream(createRouter({ local, remote, prefer: "remote" }), "chat", { messages: [{ role: "user", content: PROMPT }], max_tokens: 8 });
      r.cache = router.stats().cache;
      // "fastest": each side once to measure, then the one with the lower expected time.
      const fastest = createRouter({ local: await createEngine(MODEL), remote, prefer: "fastest" });
      r.fastest = [];
      for (let i = 0; i < 3; i++) r.fastest.push((await stream(fastest, "completion", { prompt: `Count: ${i}`, max_tokens: 16, ignore_eos: true })).last.ferrolm);
      r.fastestStats = fastest.stats();
      return r;
    },
    { MODEL, PROMPT, LONG_PROMPT, main, STREAM },
  );
  assert.equal(out.short.last.ferrolm.route, "local", JSON.stringify(out.short.last.ferrolm));
  assert.ok(out.short.text.length > 0);
  assert.ok(out.tokens > 64, `the long prompt has ${out.tokens} tokens`);
  assert.equal(out.long.last.ferrolm.route, "remote", JSON.stringify(out.long.last.ferrolm));
  assert.match(out.long.last.ferrolm.reason, new RegExp(`the prompt has ${out.tokens} tokens; the local context holds 64`));
  assert.ok(out.long.text.length > 0);
  assert.equal(out.again.last.ferrolm.cache, "hit");
  assert.equal(out.again.text, out.short.text);
  assert.ok(!out.sampled.some((s) => s.last.ferrolm.cache), "a sampled request without a seed was served from the cache");
  assert.equal(out.prefers.last.ferrolm.route, "remote");
  assert.deepEqual([out.cache.hits, out.cache.entries], [1, 2], JSON.stringify(out.cache));
  const [f0, f1, f2] = out.fastest;
  assert.deepEqual([f0.route, f1.route], ["local", "remote"], JSON.stringify(out.fastest));
  const { local: l, remote: rm } = out.fastestStats;
  const expect = (s) => s.ttft_ms + s.tpot_ms * 15;
  assert.equal(f2.route, expect(l) <= expect(rm) ? "local" : "remote", JSON.stringify(out.fastestStats));
  assert.match(f2.reason, /^faster: /);
  if (!EXTERNAL) {
    // The long prompt, "prefer remote" and the "fastest" requests that went remote; the rest
    // ran in the page or came from the cache.
    const after = await served();
    assert.equal(after.requests - before.requests, 2 + out.fastest.filter((f) => f.route === "remote").length);
  }

  // The local model cannot load (no WebGPU): everything goes to the remote engine.
  const nogpu = await open();
  const fallback = await nogpu.evaluate(
    async ({ MODEL, PROMPT, main, STREAM }) => {
      delete Navigator.prototype.gpu;
      const stream = eval(STREAM);
      const { createEngine, createRouter } = window.ferrolm;
      const local = createEngine(MODEL, { device: "webgpu", worker: false });
      local.catch(() => {});
      const router = createRouter({ local, remote: await createEngine({ remote: { baseURL: main } }) });
      await local.catch(() => {});
      const r = await stream(router, "chat", { messages: [{ role: "user", content: PROMPT }], max_tokens: 8 });
      return { ferrolm: r.last.ferrolm, text: r.text, stats: router.stats() };
    },
    { MODEL, PROMPT, main, STREAM },
  );
  assert.equal(fallback.ferrolm.route, "remote");
  assert.match(fallback.ferrolm.reason, /no_webgpu/);
  assert.ok(fallback.text.length > 0);
  assert.match(fallback.stats.localError, /WebGPU is not available/);

  // A persisted cache answers after a reload, without asking the server.
  const persisted = async () =>
    nogpu.evaluate(
      async ({ main, PROMPT, STREAM }) => {
        const stream = eval(STREAM);
        const { createEngine, createRouter, ResponseCache } = window.ferrolm;
        const router = createRouter({ remote: await createEngine({ remote: { baseURL: main } }), cache: new ResponseCache({ persist: true }) });
        return (await stream(router, "chat", { messages: [{ role: "user", content: PROMPT }], max_tokens: 5, seed: 7, temperature: 0.5 })).last.ferrolm;
      },
      { main, PROMPT, STREAM },
    );
  assert.equal((await persisted()).cache, undefined);
  await nogpu.reload();
  await nogpu.waitForFunction(() => window.ferrolm !== undefined);
  const requests = (await served()).requests;
  assert.equal((await persisted()).cache, "hit");
  if (!EXTERNAL) assert.equal((await served()).requests, requests, "a persisted hit still asked the server");
});
