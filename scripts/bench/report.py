#!/usr/bin/env python3
"""Turns bench-out/results.jsonl (ferrolm, native and browser), bench-out/peer.jsonl (wllama
medians from ../shared/peer-bench) and, when given, bench-out/llamacpp.jsonl (llama.cpp's native
CPU backend, scripts/bench/llamacpp.py) into bench-out/bench.md and bench-out/bench.json."""
import json
import sys


def lines(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip().startswith("{")]
    except FileNotFoundError:
        return []


ours = lines(sys.argv[1])
peer = [p for p in lines(sys.argv[2]) if p.get("summary") == "median"] if len(sys.argv) > 2 else []
out_md, out_json = sys.argv[3], sys.argv[4]
llamacpp = [p for p in lines(sys.argv[5]) if p.get("summary") == "median"] if len(sys.argv) > 5 else []

rows = ["| where | model | adapter | load ms | TTFT ms | prefill tok/s | decode tok/s | sampled decode tok/s | read GB/s | MBU | GEMV GMAC/s | decode ceiling tok/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in ours:
    model = r.get("model", "").split("/")[-1]
    rows.append(f"| {r['where']} | {model} | {r['adapter']} | {r['load_ms']:.0f} | {r['ttft_ms']:.0f} | "
                f"{r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | {r.get('sampled_decode_tok_s', 0):.2f} | {r['read_gb_s']:.2f} | {100 * r['mbu']:.0f}% | "
                f"{r.get('alu_gmac_s', 0):.2f} | {r.get('decode_ceiling_tok_s', r.get('matmul_ceiling_tok_s', 0)):.1f} |")
md = ["# ferrolm benchmark", "", "Greedy, the peer benchmark's printing-press prompt, medians of the runs;",
      "sampled decode: the same at temperature 0.7, top-p 0.9 (a chat app's usual settings).",
      "GEMV GMAC/s: the decode GEMV's Q4_1 arithmetic with no memory reads (shaders/dequant_probe.wgsl);",
      "decode ceiling: what reading the weights at read GB/s and multiplying them at GEMV GMAC/s allow",
      "(times add on CPU-emulated adapters, where both are bound by the same cores; the slower bounds on GPUs);",
      "on the CPU backend, the decode step's matrix products alone (the same kernels, threads and barriers).", ""] + rows

counted = [r for r in ours if "dispatches_per_step" in r]
if counted:
    md += ["", "## GPU decode step: what one step of steady greedy decode costs the host", "",
           "Targets (issue 19): <= 5 dispatches a layer + 3, one submit, <= 512 bytes written, 0 blocking",
           "waits while a later step is queued; encode + submit <= 0.35 ms on synthetic tiny-30 (GPU kernel shapes);",
           "GPU busy >= 90% of steady decode's wall time (real GPUs).",
           "GPU busy: the steps' compute passes timed with timestamp queries over their wall-clock time", "(- where the adapter has no timestamps).", "",
           "| where | model | dispatches | passes | submits | bytes written | blocking waits | encode ms | submit ms | GPU ms | GPU busy |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for r in counted:
        md.append(f"| {r['where']} | {r.get('model', '').split('/')[-1]} | {r['dispatches_per_step']:.0f} | {r['passes_per_step']:.0f} | "
                  f"{r['submits_per_step']:.0f} | {r['bytes_written_per_step']:.0f} | {r['blocking_waits_per_step']:.0f} | {r['encode_ms_per_step']:.3f} | {r.get('submit_ms_per_step', 0):.3f} | "
                  f"{fmt(r.get('gpu_ms_per_step'), '.3f')} | {fmt(r.get('gpu_busy'), '.0%')} |")

serving = [r for r in ours if r.get("serving")]
if serving:
    md += ["", "## Batching engine: concurrent streams and prefix cache", "",
           "Aggregate generated tok/s of N greedy streams (8-token prompts), and TTFT of a request whose",
           "300-token prefix is cold vs cached.", "",
           "| where | model | 1 | 2 | 4 | 8 streams | 8 / 1 | TTFT cold ms | TTFT hit ms | hit / cold |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in serving:
        s = r["serving"]
        tps = dict((n, t) for n, t in s["streams"])
        md.append(f"| {r['where']} | {r.get('model', '').split('/')[-1]} | " + " | ".join(f"{tps[n]:.1f}" for n in (1, 2, 4, 8)) +
                  f" | {tps[8] / tps[1]:.2f}x | {s['ttft_cold_ms']:.0f} | {s['ttft_hit_ms']:.0f} | {100 * s['ttft_hit_ms'] / s['ttft_cold_ms']:.0f}% |")

def per_case_table(key, title, columns, cells):
    """A table with one row per case of every result that has `key` (a list of cases)."""
    results = [r for r in ours if r.get(key)]
    if not results:
        return []
    out = ["", title, "", "| where | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 1)]
    for r in results:
        out += [f"| {r['where']} | " + " | ".join(cells(c)) + " |" for c in r[key]]
    return out


md += per_case_table(
    "speculative", "## Speculative decoding (n-gram prompt lookup, k <= 4; <= 2 on CPU-emulated adapters)",
    ["prompt", "tokens", "plain decode tok/s", "speculative tok/s", "speedup", "acceptance", "tokens / forward"],
    lambda s: [s["name"], str(s["generated_tokens"]), f"{s['plain_decode_tok_s']:.1f}", f"{s['speculative_decode_tok_s']:.1f}",
               f"{s['speedup']:.2f}x", f"{100 * s['accepted'] / max(s['drafted'], 1):.0f}%", f"{s['tokens_per_forward']:.2f}"])

md += per_case_table(
    "constrained", "## Structured output (greedy, JSON Schema, against free decoding of as many tokens)",
    ["schema", "tokens", "free decode tok/s", "constrained tok/s", "constrained / free", "grammar ms / token", "tokens / forward"],
    lambda c: [c["name"], str(c["generated_tokens"]), f"{c['free_decode_tok_s']:.1f}", f"{c['constrained_decode_tok_s']:.1f}",
               f"{c['ratio']:.2f}x", f"{c['constraint_ms_per_token']:.3f}", f"{c['tokens_per_forward']:.2f}"])

if peer:
    md += ["", "## wllama 3.8.1 in the same Chromium (../shared/peer-bench)", "",
           "| mode | TTFT ms | prefill tok/s | decode tok/s |", "|---|---:|---:|---:|"]
    for p in peer:
        md.append(f"| {p['mode']} | {p.get('ttft_ms')} | {p.get('prefill_tok_s')} | {p.get('decode_tok_s')} |")
    browser = next((r for r in ours if r["where"] == "browser" and not r.get("threads")), None)
    mt = next((p for p in peer if p["mode"] == "cpu-multithread"), None)
    st = next((p for p in peer if p["mode"] == "cpu-1thread"), None)
    for r in (r for r in ours if r["where"] == "browser" and r.get("threads") and "SmolLM2" in r.get("model", "")):
        peer_row = mt if r["threads"] > 1 else st
        if not peer_row or not peer_row.get("decode_tok_s"):
            continue
        target = "3x" if r["threads"] > 1 else "2x"
        kernels = r.get("backend", "").split("(")[-1].split(" kernels")[0]
        md += ["", f"## ferrolm CPU backend in Chromium, {r['threads']} thread(s), {kernels} kernels / wllama {peer_row['mode']}", "",
               f"- decode: {r['decode_tok_s']:.1f} vs {peer_row['decode_tok_s']} tok/s = {r['decode_tok_s'] / peer_row['decode_tok_s']:.2f}x (target >= {target})",
               f"- prefill: {r['prefill_tok_s']:.1f} vs {peer_row['prefill_tok_s']} tok/s = {r['prefill_tok_s'] / peer_row['prefill_tok_s']:.2f}x",
               f"- TTFT: {r['ttft_ms']:.0f} ms vs {peer_row['ttft_ms']} ms (target <= 1000 ms)",
               f"- load: {r['load_ms']:.0f} ms vs {peer_row.get('load_ms')} ms",
               f"- decode MBU: {100 * r['mbu']:.0f}% of the wasm read probe's {r['read_gb_s']:.2f} GB/s (target >= 60%)",
               f"- decode / its matrix products alone: {r['decode_tok_s']:.1f} / {r.get('matmul_ceiling_tok_s', 0):.1f} tok/s"]
    if browser and mt and mt.get("decode_tok_s"):
        md += ["", "## ferrolm WebGPU in Chromium / wllama 2 threads", "",
               f"- decode: {browser['decode_tok_s'] / mt['decode_tok_s']:.2f}x (target >= 1x)",
               f"- prefill: {browser['prefill_tok_s'] / mt['prefill_tok_s']:.2f}x (target >= 5x)",
               f"- TTFT: {browser['ttft_ms']:.0f} ms vs {mt['ttft_ms']} ms (target <= 1000 ms)",
               f"- decode MBU: {100 * browser['mbu']:.0f}% of the read probe's {browser['read_gb_s']:.2f} GB/s (target >= 70%)"]
        if browser.get("decode_ceiling_tok_s"):
            md.append(f"- decode ceiling on this adapter (bandwidth and arithmetic probes): {browser['decode_ceiling_tok_s']:.1f} tok/s "
                      f"= {browser['decode_ceiling_tok_s'] / mt['decode_tok_s']:.2f}x wllama")

if llamacpp:
    md += ["", "## ferrolm's CPU backend / llama.cpp's, natively on the same cores", "",
           "Target (issue 18): decode on par. llama.cpp's figures are its own perf counters.", "",
           "| model | threads | llama.cpp decode tok/s | ferrolm decode tok/s | decode ratio | llama.cpp prefill tok/s | ferrolm prefill tok/s | prefill ratio | TTFT ms (llama.cpp / ferrolm) | load ms (llama.cpp / ferrolm) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for p in llamacpp:
        r = next((r for r in ours if r["where"] == "native" and r.get("threads") == p["threads"] and r.get("model", "").endswith(p["model"])), None)
        if r:
            md.append(f"| {p['model']} | {p['threads']} | {p['decode_tok_s']:.1f} | {r['decode_tok_s']:.1f} | {r['decode_tok_s'] / p['decode_tok_s']:.2f}x | "
                      f"{p['prefill_tok_s']:.1f} | {r['prefill_tok_s']:.1f} | {r['prefill_tok_s'] / p['prefill_tok_s']:.2f}x | "
                      f"{p['ttft_ms']:.0f} / {r['ttft_ms']:.0f} | {p['load_ms']:.0f} / {r['load_ms']:.0f} |")

open(out_md, "w").write("\n".join(md) + "\n")
json.dump({"ferrolm": ours, "wllama": peer, "llamacpp": llamacpp}, open(out_json, "w"), indent=1)
print("\n".join(md))
