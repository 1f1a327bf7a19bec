#!/usr/bin/env python3
"""The x86-64 code Chromium's V8 generates for wasm functions, and the loops in it.

Release Chromium has no disassembler (`--print-wasm-code` prints sizes only), but V8's
`--perf-prof` writes each compiled function's bytes to a jitdump file (perf's format) in the
renderer's working directory. This loads a page with TurboFan only (`--no-liftoff`), reads the
functions whose names contain FUNCTION, disassembles them with objdump and lists their loops
(backward jumps) that do vector work, with an instruction mix. Loops are what to compare between kernel variants:
instructions per loop trip, vector work, and spills (`rbp`-relative moves).

Usage (serve the page first, e.g. `python3 scripts/serve.py --isolated --port 8811 ...`):
  python3 scripts/bench/v8-code.py --url 'http://127.0.0.1:8811/bench.html?device=cpu&threads=2&runs=1&gen=8&stream_gen=0' \
      --function 'relaxed::q4_groups_16' [--seconds 60] [--out /tmp/v8-code]
"""

import argparse
import collections
import glob
import os
import re
import struct
import subprocess

JIT_CODE_LOAD = 0


def jitdump_functions(path):
    """(name, address, code bytes) of each code-load record of a jitdump file."""
    data = open(path, "rb").read()
    if data[:4] != b"DTiJ":
        raise SystemExit(f"{path}: not a jitdump file")
    offset = struct.unpack_from("<I", data, 8)[0]  # the header's size
    while offset + 16 <= len(data):
        kind, size, _timestamp = struct.unpack_from("<IIQ", data, offset)
        if size == 0 or offset + size > len(data):
            break
        if kind == JIT_CODE_LOAD:
            _pid, _tid, _vma, address, code_size, _index = struct.unpack_from("<IIQQQQ", data, offset + 16)
            name_start = offset + 56
            name_end = data.index(b"\0", name_start)
            code = data[name_end + 1 : name_end + 1 + code_size]
            yield data[name_start:name_end].decode("utf-8", "replace"), address, code
        offset += size


def disassemble(code, address, path):
    """objdump's listing of `code` at `address`, as (address, text) pairs."""
    with open(path + ".bin", "wb") as f:
        f.write(code)
    listing = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={address:#x}", path + ".bin"],
        check=True, capture_output=True, text=True,
    ).stdout
    with open(path + ".s", "w") as f:
        f.write(listing)
    out = []
    for line in listing.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\t[0-9a-f ]+\t(.*)", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def loops(instructions):
    """(start, end, instructions) of each backward jump's span, innermost (shortest) first."""
    found = []
    for address, text in instructions:
        m = re.match(r"j\w+\s+0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < address:
            start = int(m.group(1), 16)
            found.append((start, address, [t for a, t in instructions if start <= a <= address]))
    return sorted(found, key=lambda loop: len(loop[2]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--function", required=True, help="a substring of the wasm function's name")
    ap.add_argument("--seconds", type=int, default=60, help="how long the page runs before Chromium is stopped")
    ap.add_argument("--out", default="/tmp/v8-code")
    ap.add_argument("--max-loop", type=int, default=2000, help="longest loop listed, in instructions (longer spans are jumps back to shared paths)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for old in glob.glob(os.path.join(args.out, "jit-*.dump")):
        os.remove(old)
    flags = ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--js-flags=--perf-prof --no-liftoff"]
    subprocess.run(["timeout", str(args.seconds), args.chromium, *flags, args.url], cwd=args.out,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    for dump in sorted(glob.glob(os.path.join(args.out, "jit-*.dump"))):
        for name, address, code in jitdump_functions(dump):
            if args.function not in name or (name, len(code)) in seen:
                continue
            seen.add((name, len(code)))
            base = os.path.join(args.out, re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-120:])
            instructions = disassemble(code, address, base)
            print(f"{name}: {len(code)} bytes, {len(instructions)} instructions -> {base}.s")
            for start, end, body in loops(instructions):
                mix = collections.Counter(t.split()[0] for t in body if t and not t.startswith("("))
                spills = sum("(%rbp)" in t and t.startswith("vmov") for t in body)
                vector = sum(n for m, n in mix.items() if m.startswith("v") and not m.startswith("vmov") and m != "vbroadcastss")
                if vector == 0 or len(body) > args.max_loop:
                    continue
                top = ", ".join(f"{m} {n}" for m, n in mix.most_common(12))
                print(f"  loop {start:#x}-{end:#x}: {len(body)} instructions, {vector} vector operations, {spills} spill moves; {top}")
    if not seen:
        raise SystemExit(f"no compiled function named like {args.function!r}: did the page run it within {args.seconds} s?")


if __name__ == "__main__":
    main()
