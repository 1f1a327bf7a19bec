# ferrolm: every target installs what it needs on a fresh Debian machine, idempotently.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

WASM_TARGET := wasm32-unknown-unknown
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)
TEST_PORT ?= 8765
DEMO_PORT ?= 8080
PROMPT ?= The printing press was invented by
MAX_TOKENS ?= 64
export CHROMEDRIVER ?= /usr/bin/chromedriver
export WASM_BINDGEN_TEST_TIMEOUT ?= 900
export PATH := $(HOME)/.cargo/bin:$(PATH)
# Mesa's Vulkan loader wants a runtime dir; CI shells have none.
export XDG_RUNTIME_DIR ?= /tmp/ferrolm-xdg-$(shell id -u)
$(shell mkdir -p -m 700 $(XDG_RUNTIME_DIR))

.PHONY: help models tools rust-tools system-packages build test-cli test lint test-native test-browser test-npm test-remote test-long run demo wasm package bench fuzz soak test-neon clean

help:
	@echo "make demo   build the wasm package and serve the demo page"
	@echo "make run    generate from the default model in the terminal (PROMPT=..., MAX_TOKENS=...)"
	@echo "make test   every test suite, native and in headless Chromium"

## ---- set-up ---------------------------------------------------------------------------------

models:
	scripts/fetch-models.sh all

system-packages:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v curl >/dev/null \
	    || ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then \
	  echo "installing chromium, chromium-driver, mesa-vulkan-drivers, curl"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver mesa-vulkan-drivers curl >/dev/null; \
	fi

rust-tools:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
	@if [ "$$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $(WASM_BINDGEN_VERSION)" ]; then \
	  echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (matches Cargo.lock)"; \
	  cargo install --quiet --no-default-features wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); \
	fi

tools: system-packages rust-tools

## ---- build ----------------------------------------------------------------------------------

build:
	cargo build --release

# The CLI as `cargo test` builds it (for tests/native/cli.rs): the dev-dependencies widen shared
# crates' features (syn's among them), so a plain `cargo build` after `make test-native` rebuilds
# nearly everything (about 3 minutes on 2 cores); this is a no-op then.
test-cli:
	cargo test --release --no-run

# The npm package's wasm half (wasm-bindgen output, git-ignored): pkg/wasm runs anywhere on one
# thread; pkg/wasm-threads shares its memory with Web Workers (CPU backend threads in
# cross-origin isolated pages). Each has a second binary with relaxed-SIMD kernels (the
# `relaxed-simd` feature) that the loader picks where the browser runs it: the same code and
# exports, so one JS glue serves both (checked here, but for comments), and the same build of std and the
# dependencies (only ferrolm's own crate is compiled twice). The plain binaries must load where
# relaxed SIMD does not: checked with node's validator where node lacks it.
# Atomics need std rebuilt with them: stable rustc with RUSTC_BOOTSTRAP, and the shared-memory
# link arguments rustc no longer adds itself.
THREADS_RUSTFLAGS := --cfg getrandom_backend="wasm_js" -C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 \
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base
# wasm-bindgen's comments name closure shims by their index in the function table, which may
# differ between the two binaries; the glue's code must not.
SAME_GLUE = diff -q <(sed '/^ *\/\/ Cast intrinsic/s/shim_idx: [0-9]*//' $(1)) <(sed '/^ *\/\/ Cast intrinsic/s/shim_idx: [0-9]*//' $(2)) >/dev/null \
  || { echo "$(1) and $(2) differ: the two binaries cannot share one JS glue"; exit 1; }
THREADS_BUILD := RUSTC_BOOTSTRAP=1 RUSTFLAGS='$(THREADS_RUSTFLAGS)' cargo build --release --lib --target $(WASM_TARGET) \
  -Z build-std=std,panic_abort --target-dir target/threads
wasm: rust-tools
	cargo build --release --lib --target $(WASM_TARGET) --features relaxed-simd
	wasm-bindgen --target web --out-dir target/wasm-relaxed target/$(WASM_TARGET)/release/ferrolm.wasm
	cargo build --release --lib --target $(WASM_TARGET)
	wasm-bindgen --target web --out-dir pkg/wasm target/$(WASM_TARGET)/release/ferrolm.wasm
	$(call SAME_GLUE,target/wasm-relaxed/ferrolm.js,pkg/wasm/ferrolm.js)
	cp target/wasm-relaxed/ferrolm_bg.wasm pkg/wasm/ferrolm_relaxed_bg.wasm
	$(THREADS_BUILD) --features threads,relaxed-simd
	wasm-bindgen --target web --out-dir target/wasm-threads-relaxed target/threads/$(WASM_TARGET)/release/ferrolm.wasm
	$(THREADS_BUILD) --features threads
	wasm-bindgen --target web --out-dir pkg/wasm-threads target/threads/$(WASM_TARGET)/release/ferrolm.wasm
	$(call SAME_GLUE,target/wasm-threads-relaxed/ferrolm.js,pkg/wasm-threads/ferrolm.js)
	cp target/wasm-threads-relaxed/ferrolm_bg.wasm pkg/wasm-threads/ferrolm_relaxed_bg.wasm
	node scripts/check-plain-wasm.mjs pkg/wasm/ferrolm_bg.wasm pkg/wasm-threads/ferrolm_bg.wasm

# The npm package: the TypeScript wrapper compiled into pkg/dist, then `npm pack` into dist/.
package: wasm
	cd pkg && npm install --silent --no-audit --no-fund && npx tsc -p .
	mkdir -p dist && cd pkg && npm pack --silent --pack-destination ../dist >/dev/null
	@ls dist/ferrolm-*.tgz

## ---- use ------------------------------------------------------------------------------------

run: models system-packages build
	target/release/ferrolm generate --prompt "$(PROMPT)" --max-tokens $(MAX_TOKENS)

demo: models package
	@echo "demo: http://127.0.0.1:$(DEMO_PORT)/"
	python3 scripts/serve.py --isolated --csp --port $(DEMO_PORT) --mount /pkg=pkg --mount /models=models www

## ---- benchmark ------------------------------------------------------------------------------

BENCH_PORT ?= 8766
PEER_DIR := .tools/peer-bench

# Native (this machine's wgpu adapter, and the CPU backend) and headless Chromium (WebGPU, the
# CPU backend on 1 and 2 threads), SmolLM2, Gemma 3 270M and a synthetic Llama-3.2-1B shape; then
# wllama on the same machine when ../shared/peer-bench exists.
bench: models build wasm
	mkdir -p bench-out && rm -f bench-out/results.jsonl bench-out/peer.jsonl bench-out/llamacpp.jsonl
	target/release/ferrolm bench --runs 3 --json bench-out/results.jsonl
	target/release/ferrolm bench --device cpu --runs 3 --stream-gen 16 --json bench-out/results.jsonl
	target/release/ferrolm bench --model models/gemma-3-270m-q4_k_m.gguf --runs 3 --stream-gen 0 --json bench-out/results.jsonl
	target/release/ferrolm bench --model models/gemma-3-270m-q4_k_m.gguf --device cpu --runs 3 --stream-gen 0 --json bench-out/results.jsonl
	target/release/ferrolm bench --synthetic llama-3.2-1b --runs 1 --gen 8 --json bench-out/results.jsonl
	target/release/ferrolm bench --synthetic tiny-30 --gpu-shapes --runs 1 --gen 32 --json bench-out/results.jsonl
	cd scripts/bench && npm install --silent --no-audit --no-fund
	@python3 scripts/serve.py --isolated --port $(BENCH_PORT) --mount /pkg=pkg --mount /models=models www & pid=$$!; \
	trap "kill $$pid" EXIT; sleep 1; \
	node scripts/bench/run-browser.mjs --port $(BENCH_PORT) --runs 3 >> bench-out/results.jsonl; \
	node scripts/bench/run-browser.mjs --port $(BENCH_PORT) --device cpu --threads 1 --runs 3 --stream-gen 0 >> bench-out/results.jsonl; \
	node scripts/bench/run-browser.mjs --port $(BENCH_PORT) --device cpu --threads 1 --simd plain --runs 3 --stream-gen 0 >> bench-out/results.jsonl; \
	node scripts/bench/run-browser.mjs --port $(BENCH_PORT) --device cpu --threads 2 --runs 3 --stream-gen 16 >> bench-out/results.jsonl; \
	node scripts/bench/run-browser.mjs --port $(BENCH_PORT) --model gemma-3-270m-q4_k_m.gguf --runs 1 --gen 32 --stream-gen 0 >> bench-out/results.jsonl
	@if [ -d ../shared/peer-bench ]; then \
	  mkdir -p $(PEER_DIR) && cp ../shared/peer-bench/*.mjs ../shared/peer-bench/*.js ../shared/peer-bench/*.html $(PEER_DIR)/ && \
	  (cd $(PEER_DIR) && npm install --silent --no-audit --no-fund @wllama/wllama@3.8.1 playwright-core@1.65.1) && \
	  MODEL_DIR=$(CURDIR)/models node $(PEER_DIR)/run.mjs --runs 3 --modes cpu-1thread,cpu-multithread | tee bench-out/peer.jsonl; \
	fi
	@# llama.cpp's own CPU backend on the same cores, where `make test-remote` built it.
	@if [ -x $(LLAMA_VENV)/bin/python ]; then \
	  for m in SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf; do \
	    $(LLAMA_VENV)/bin/python scripts/bench/llamacpp.py --model models/$$m --threads $$(nproc) --runs 3 | tee -a bench-out/llamacpp.jsonl; \
	  done; \
	fi
	python3 scripts/bench/report.py bench-out/results.jsonl bench-out/peer.jsonl bench-out/bench.md bench-out/bench.json bench-out/llamacpp.jsonl

## ---- tests ----------------------------------------------------------------------------------

# Formatting is checked here; clippy (`make lint`, both targets, about 2.5 minutes on 2 cores)
# runs before each commit instead, to keep `make test` within its 30 minutes.
# Set-up runs its three parts side by side: apt and the model download wait on the network while
# wasm-bindgen-cli compiles (without its default TLS stack: the test runner talks plain HTTP to
# chromedriver).
test:
	$(MAKE) --no-print-directory -j3 --output-sync=target models system-packages rust-tools
	cargo fmt --check
	$(MAKE) test-native
	$(MAKE) test-browser
	$(MAKE) test-npm

# Formatting (rustfmt.toml) and clippy on the native and the wasm targets, warnings as errors.
lint:
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	cargo clippy --release --lib --target $(WASM_TARGET) --features relaxed-simd -- -D warnings

test-native:
	cargo test --release -- --nocapture

# wasm-bindgen-test in headless Chromium (flags in webdriver.json); the tests fetch model files
# from a local server started for the run.
# A server already on the port would answer the tests with its own files: refused up front.
test-browser:
	@if curl -s -o /dev/null http://127.0.0.1:$(TEST_PORT)/; then \
	  echo "test-browser: port $(TEST_PORT) is in use (another server would answer the tests); stop it or set TEST_PORT"; exit 1; \
	fi
	@python3 scripts/serve.py --port $(TEST_PORT) --mount /models=models . & pid=$$!; \
	trap "kill $$pid 2>/dev/null" EXIT; \
	for i in $$(seq 50); do curl -sf -o /dev/null http://127.0.0.1:$(TEST_PORT)/Makefile && break; sleep 0.1; done; \
	kill -0 $$pid 2>/dev/null || { echo "test-browser: the test server did not start on port $(TEST_PORT)"; exit 1; }; \
	FERROLM_TEST_SERVER=http://127.0.0.1:$(TEST_PORT) cargo test --release --target $(WASM_TARGET) --test browser --features relaxed-simd

# The npm package as a user gets it: a test app installs the packed tarball, plain ES modules
# and a Vite build, driven in headless Chromium by playwright-core (node's test runner).
test-npm: package test-cli
	cd tests/npm/app && rm -rf node_modules/ferrolm package-lock.json && npm install --silent --no-audit --no-fund
	cd tests/npm/app && npx vite build --logLevel warn
	node --test --test-concurrency=1 tests/npm/package.test.mjs tests/npm/remote.test.mjs

# The long-context cases (tests/native/long_context.rs) on the GPU backend too: natively on lavapipe
# (about 2 minutes a model) and on SwiftShader in Chromium (about 4 minutes); `make test` runs
# them on the reference and the CPU backend, natively and in Chromium.
test-long: models tools
	cargo test --release --test native -- long_context:: --include-ignored --nocapture
	@python3 scripts/serve.py --port $(TEST_PORT) --mount /models=models . & pid=$$!; \
	trap "kill $$pid" EXIT; \
	FERROLM_TEST_SERVER=http://127.0.0.1:$(TEST_PORT) cargo test --release --target $(WASM_TARGET) --test browser --features relaxed-simd -- long_context --include-ignored

# The engine soak (tests/native/soak.rs) at 20x the length `make test` runs it.
soak:
	FERROLM_SOAK_REQUESTS=20000 cargo test --release --test native -- soak:: --nocapture

## ---- fuzzing ------------------------------------------------------------------------------

CARGO_FUZZ_VERSION ?= 0.13.2

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := gguf model tokenizer chat_template request
# Coverage-guided fuzzing (libFuzzer, through cargo-fuzz on stable rustc with RUSTC_BOOTSTRAP) of
# each target in src/api/fuzz.rs for FUZZ_SECONDS, from the seeds in fuzz/corpus/<target>/; new
# inputs stay there (git-ignored), crashes go to fuzz/artifacts/<target>/. `make test` runs a
# short smoke of the same targets (tests/native/fuzz_smoke.rs).
fuzz: rust-tools
	@command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION)
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --fuzz-dir fuzz $$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 \
	    | grep -E "^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+[[:space:]]+DONE)|ERROR|panicked" || true; \
	  test ! -d fuzz/artifacts/$$t || test -z "$$(ls fuzz/artifacts/$$t)" || { echo "crashes in fuzz/artifacts/$$t"; exit 1; }; \
	done

# The CPU backend's NEON kernels against the scalar ones (bit for bit), and its forced logits,
# on aarch64 under qemu: a cross build of the whole crate, so not in `make test`.
AARCH64 := aarch64-unknown-linux-gnu
test-neon:
	@rustup target list --installed | grep -qx $(AARCH64) || rustup target add $(AARCH64)
	@if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user >/dev/null; \
	fi
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
	  cargo test --release --target $(AARCH64) --test native -- cpu_backend:: --nocapture

# The npm package's remote engine, router and response cache (tests/npm/remote.test.mjs) against
# llama.cpp's OpenAI server instead of `ferrolm serve`: compatibility with a server we did not
# write. llama-cpp-python's [server] extra, built from source into .tools/ the first time (about
# 10 minutes on 2 cores), serves the default model. Not in `make test`.
LLAMA_CPP_PYTHON_VERSION ?= 0.3.36
LLAMA_VENV := .tools/llama-cpp-python
REMOTE_PORT ?= 8790
test-remote: models system-packages package
	@if ! $(LLAMA_VENV)/bin/python -c "import llama_cpp.server" 2>/dev/null; then \
	  if ! command -v g++ >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential python3-venv >/dev/null; \
	  fi; \
	  python3 -m venv $(LLAMA_VENV); \
	  echo "building llama-cpp-python $(LLAMA_CPP_PYTHON_VERSION) from source"; \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(LLAMA_VENV)/bin/pip install --quiet --no-binary llama-cpp-python "llama-cpp-python[server]==$(LLAMA_CPP_PYTHON_VERSION)"; \
	fi
	cd tests/npm/app && rm -rf node_modules/ferrolm package-lock.json && npm install --silent --no-audit --no-fund
	@$(LLAMA_VENV)/bin/python -m llama_cpp.server --model models/SmolLM2-135M-Instruct.Q4_1.gguf --host 127.0.0.1 --port $(REMOTE_PORT) --n_ctx 2048 >/tmp/ferrolm-llama-server.log 2>&1 & pid=$$!; \
	trap "kill $$pid" EXIT; \
	for i in $$(seq 120); do curl -sf http://127.0.0.1:$(REMOTE_PORT)/v1/models >/dev/null && break; sleep 1; done; \
	FERROLM_REMOTE_URL=http://127.0.0.1:$(REMOTE_PORT)/v1 node --test --test-concurrency=1 tests/npm/remote.test.mjs

clean:
	cargo clean
	rm -rf pkg/wasm pkg/dist dist tests/npm/app/node_modules tests/npm/app/dist
