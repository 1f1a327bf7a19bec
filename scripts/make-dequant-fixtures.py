#!/usr/bin/env python3
"""Writes tests/fixtures/dequant.json: raw block bytes from the real model files and the values
the `gguf` Python package (llama.cpp's reference implementation) dequantizes them to.

    pip install gguf numpy && make models && python3 scripts/make-dequant-fixtures.py
"""
import json
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.join(os.path.dirname(__file__), "..")
PICKS = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", ["blk.0.attn_q.weight", "token_embd.weight", "blk.0.attn_norm.weight"]),
    ("gemma-3-270m-q4_k_m.gguf", None),  # one tensor of each type present
]
VALUES = 512  # values per fixture (two K-quant blocks, sixteen 32-value blocks)

fixtures = []
for file, names in PICKS:
    reader = GGUFReader(os.path.join(ROOT, "models", file))
    seen = set()
    for t in reader.tensors:
        ty = t.tensor_type.name
        if names is not None and t.name not in names:
            continue
        if names is None and (ty in seen or not t.name.startswith("blk.")):
            if not (names is None and ty not in seen and t.name == "token_embd.weight"):
                continue
        seen.add(ty)
        raw = np.frombuffer(t.data.tobytes(), dtype=np.uint8)
        n_values = min(VALUES, int(np.prod(t.shape)))
        block_bytes = len(raw) * n_values // int(np.prod(t.shape))
        chunk = raw[:block_bytes]
        values = dequantize(chunk, t.tensor_type).reshape(-1)[:n_values]
        fixtures.append({
            "model": file, "tensor": t.name, "type": ty, "byte_offset": 0, "values_count": n_values,
            "hex": chunk.tobytes().hex(), "values": [float(v) for v in values.astype(np.float32)],
        })
        print(f"{file} {t.name} {ty}: {n_values} values from {len(chunk)} bytes")

# Types neither file holds: quantize a fixed array with gguf-py, then dequantize it back.
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize
src = (np.sin(np.arange(VALUES, dtype=np.float32) * 0.37) * 3.0).astype(np.float32).reshape(2, VALUES // 2)
for qt in (Q.Q4_0, Q.Q5_1, Q.F16, Q.BF16):
    raw = quantize(src, qt)
    raw = np.frombuffer(raw.tobytes(), dtype=np.uint8)
    values = dequantize(raw, qt).reshape(-1)
    fixtures.append({
        "model": None, "tensor": "synthetic", "type": qt.name, "byte_offset": 0, "values_count": VALUES,
        "hex": raw.tobytes().hex(), "values": [float(v) for v in values.astype(np.float32)],
    })
    print(f"synthetic {qt.name}: {VALUES} values from {len(raw)} bytes")

with open(os.path.join(ROOT, "tests", "fixtures", "dequant.json"), "w") as f:
    json.dump(fixtures, f)
