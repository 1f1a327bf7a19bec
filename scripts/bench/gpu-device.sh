#!/bin/bash
# Issue 19's real-GPU rows on a lent GPU machine, in one run: the `device` tool runs this in a
# copy of the tree with the release CLI built here carried along (the machine reaches no
# registry, and the real models are larger than a carry), on synthetic models of the real
# shapes: SmolLM2-135M and Llama-3.2-1B (Q4_1), Llama-3.1-8B (Q4_K). Everything it prints, and
# the bench JSON lines, land under $OUT.
#
#   make build    # here, first
#   run(command="bash scripts/bench/gpu-device.sh", carry=["target/release/ferrolm"], timeout_s=540)
set -u
BIN=${FERROLM_BIN:-target/release/ferrolm}
OUT=${OUT:-/tmp/ferrolm-device}
mkdir -p "$OUT"
rows() {
    date -u
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv 2>&1 || true
    ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 || true
    # Seconds each: the 8B builds 4.6 GB of weights first. 420 in all, under the call's 540.
    for run in smollm2-135m:90 llama-3.2-1b:90 llama-3.1-8b-q4k:180; do
        echo "== ${run%:*}"
        timeout "${run#*:}" "$BIN" bench --synthetic "${run%:*}" --device gpu --runs 3 --json "$OUT/bench.jsonl" --profile 2>&1 | grep -v '^{'
        echo "exit ${PIPESTATUS[0]}"
    done
    # Pipelining off, for the ratio (SmolLM2 shape only).
    echo "== smollm2-135m --sync"
    timeout 60 "$BIN" bench --synthetic smollm2-135m --device gpu --runs 3 --sync --json "$OUT/bench.jsonl" 2>&1 | grep -v '^{'
    date -u
}
rows 2>&1 | tee "$OUT/log.txt"
