# `make bench` (issue 7): Envoy CPU per request, throughput, fixed-rate latency and memory of
# keyward against no filter, Envoy's native api_key_auth, a no-op Rust Wasm filter and an
# ext_authz service, plus a metered streamed chat completion against the same stream through no
# filter and the no-op filter, interleaved in one run. See bench/README.md.
#
# Included from the top Makefile, which defines TOOLS, VENV, VENV_STAMP, WASM and `wasm`.
# Nothing is installed system-wide: the load generator is bench/loadgen (std-only Rust, builds in
# seconds). Debian's wrk cannot send at a fixed rate (no wrk2), and `cargo install oha` takes
# about 7 minutes here; a 300-line client does closed-loop and coordinated-omission-corrected
# fixed-rate runs and reports JSON.
#
#   make bench                                 # about 9 minutes on 2 cores
#   make bench BENCH_ARGS="--rounds 3 --large-keys 100000"
#   make bench BENCH_ARGS="--update-readme"    # also put the table into bench/README.md

BENCH_TARGET_DIR := $(CURDIR)/bench/target
BENCH_NOOP_WASM  := $(BENCH_TARGET_DIR)/wasm32-unknown-unknown/release/keyward_bench_noop.wasm
BENCH_PYTHON     := $(VENV)/bin/python
BENCH_ARGS       ?=

.PHONY: bench bench-tools bench-callgrind valgrind

## bench: run the benchmark; results in bench/results/latest.{json,md}
bench: $(VENV_STAMP) wasm native bench-tools valgrind
	$(BENCH_PYTHON) bench/run_bench.py --wasm $(CURDIR)/$(WASM) --native-module $(CURDIR)/$(NATIVE_SO) \
		--noop-wasm $(BENCH_NOOP_WASM) --tools $(BENCH_TARGET_DIR)/release $(BENCH_ARGS)

## bench-callgrind: instructions, cache misses and mispredictions per request under valgrind
## (deterministic, unlike CPU time); CALLGRIND_ARGS="--workdir DIR --wasm this=... --wasm base=..."
## where DIR is a `make bench BENCH_ARGS="--workdir DIR ..."` work directory. Needs valgrind.
bench-callgrind: $(VENV_STAMP) bench-tools valgrind
	$(BENCH_PYTHON) bench/callgrind_envoy.py $(CALLGRIND_ARGS)

# valgrind counts the --ab-wasm builds at the end of `make bench` (and runs bench-callgrind).
valgrind:
	@command -v valgrind >/dev/null || apt-get install -y -q valgrind || \
		{ apt-get update -q && apt-get install -y -q valgrind; }

## bench-tools: build the no-op filter (plain and with keyward's host calls), the load generator + upstream and the ext_authz service
bench-tools:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	cargo build --release --locked --manifest-path bench/noop-filter/Cargo.toml \
		--target wasm32-unknown-unknown --target-dir $(BENCH_TARGET_DIR)
	cargo build --release --locked --manifest-path bench/noop-filter/Cargo.toml --features host-calls \
		--target wasm32-unknown-unknown --target-dir $(BENCH_TARGET_DIR)/host-calls
	cargo build --release --locked --manifest-path bench/loadgen/Cargo.toml --target-dir $(BENCH_TARGET_DIR)
	cargo build --release --locked --manifest-path bench/extauthz/Cargo.toml --target-dir $(BENCH_TARGET_DIR)

# `make scale` (issue #3): 1k, 100k and 1M keys pushed through the chunked policy sync into Envoy
# (--concurrency 2): time to apply, memory per key, request latency during the load, CPU per
# request after it. About 2-3 minutes; not part of `make test`. See docs/scale.md.
SCALE_ARGS ?=

.PHONY: scale scale-native

## scale: measure the chunked policy sync at 1k/100k/1M keys; results in bench/results/scale.{json,md}
scale: $(VENV_STAMP) wasm bench-tools
	$(BENCH_PYTHON) bench/scale.py --wasm $(CURDIR)/$(WASM) --tools $(BENCH_TARGET_DIR)/release $(SCALE_ARGS)

## scale-native: the same on the native build (1M keys applied once per process); results in bench/results/scale-native.{json,md}
scale-native: $(VENV_STAMP) native bench-tools
	$(BENCH_PYTHON) bench/scale.py --host native --native $(CURDIR)/$(NATIVE_SO) --tools $(BENCH_TARGET_DIR)/release $(SCALE_ARGS)
