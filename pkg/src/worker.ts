// The Web Worker entry: one EngineHost, driven by messages from the page (index.ts). Calls are
// answered with {call, ok, value | error}; request events are posted as {event, rid}.
import { toWire } from "./errors.js";
import { EngineHost } from "./host.js";
import type { Call } from "./protocol.js";

const host = new EngineHost();
const scope = self as unknown as { postMessage(m: unknown): void; onmessage: ((ev: MessageEvent<Call>) => void) | null };

scope.onmessage = async (ev) => {
  const msg = ev.data;
  const reply = (value: unknown) => scope.postMessage({ call: msg.call, ok: true, value });
  try {
    switch (msg.op) {
      case "load":
        return reply(await host.load(msg.source, msg.opts, (progress) => scope.postMessage({ call: msg.call, progress })));
      case "loadDraft":
        return reply(await host.loadDraft(msg.source, msg.opts, (progress) => scope.postMessage({ call: msg.call, progress })));
      case "submit":
        return reply(await host.submit(msg.input, msg.options, (event) => scope.postMessage({ rid: msg.rid, event })));
      case "cancel":
        return reply(await host.cancel(msg.id));
      case "countTokens":
        return reply(await host.countTokens(msg.input, msg.options));
      case "engineStats":
        return reply(await host.engineStats());
      case "kvMap":
        return reply(await host.kvMap());
      case "measureBandwidth":
        return reply(await host.measureBandwidth());
      case "unload":
        return reply(await host.unload());
      case "fault":
        if (msg.kind === "lose_device") return reply(await host.loseDevice());
        // An uncaught error, as a crash in the engine would raise.
        setTimeout(() => {
          throw new Error("ferrolm fault injection: the worker crashed");
        });
        return reply(undefined);
    }
  } catch (e) {
    scope.postMessage({ call: msg.call, ok: false, error: toWire(e) });
  }
};
