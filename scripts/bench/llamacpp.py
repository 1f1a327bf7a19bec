"""llama.cpp's own CPU backend on this machine's cores (llama-cpp-python, built from source by
`make test-remote` into .tools/llama-cpp-python): load, prefill and decode figures comparable
with `ferrolm bench --device cpu` (same GGUF, the printing-press prompt, greedy, 128 tokens).

    .tools/llama-cpp-python/bin/python scripts/bench/llamacpp.py --model M --threads 2 --runs 3

Prints one JSON line per run and a summary line of medians, from llama.cpp's own perf counters.
"""
import argparse
import json
import re
import statistics
import time

import llama_cpp

ROOT = __file__.rsplit("/scripts/", 1)[0]


def printing_press_prompt():
    # The prompt as ferrolm's bench uses it: the Rust constant, string continuations joined.
    src = open(f"{ROOT}/src/api/bench.rs").read()
    body = re.search(r'PRINTING_PRESS_PROMPT: &str = "(.*?)";', src, re.S).group(1)
    return re.sub(r"\\\n", "", body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=f"{ROOT}/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gen", type=int, default=128)
    a = ap.parse_args()
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    load_ms = (time.perf_counter() - t0) * 1000
    prompt = llm.tokenize(printing_press_prompt().encode(), add_bos=False, special=False)
    runs = []
    for _ in range(a.runs):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        t0 = time.perf_counter()
        n = 0
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            n += 1
            if n == 1:
                ttft_ms = (time.perf_counter() - t0) * 1000
            if n >= a.gen:
                break
        p = llama_cpp.llama_perf_context(llm.ctx)
        run = {"prompt_tokens": len(prompt), "gen_tokens": n, "ttft_ms": ttft_ms,
               "prefill_tok_s": p.n_p_eval / (p.t_p_eval_ms / 1000), "decode_tok_s": p.n_eval / (p.t_eval_ms / 1000)}
        print(json.dumps(run))
        runs.append(run)
    med = {k: statistics.median(r[k] for r in runs) for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s")}
    print(json.dumps({"summary": "median", "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "model": a.model.split("/")[-1],
                      "threads": a.threads, "runs": a.runs, "load_ms": load_ms, **med,
                      "system": llama_cpp.llama_print_system_info().decode().strip()}))


if __name__ == "__main__":
    main()
