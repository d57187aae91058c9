# `make soak` (issue 5): a bounded fault and soak run on loopback. The real `keyward serve`
# (behind a fault-injecting proxy), a local JSON/SSE upstream and Envoy 1.40 with
# `--concurrency 2` and the filter in lease-mode sync; mixed traffic at a fixed rate for
# SOAK_SECONDS while the policy changes every second, a tampered and a stale snapshot are served,
# the control plane fails, is cut off, and is killed and restarted. Prints its figures and writes
# target/soak/report.json; exits non-zero, saying why, when a pass criterion fails.
# See soak/README.md.
#
# Included from the top Makefile, which defines VENV_STAMP, PY, WASM and `wasm`.
#
#   make soak                                   # 180 s of load, about 3.5 minutes in all
#   make soak SOAK_SECONDS=60
#   make soak SOAK_ARGS="--rate 200 --classes-off query_param"
#   make soak SOAK_ARGS="--window-s 0.05"       # see the revocation check trip

SOAK_SECONDS ?= 180
SOAK_ARGS    ?=

.PHONY: soak soak-native

## soak: bounded fault and soak run (SOAK_SECONDS, default 180); report in target/soak/
soak: $(VENV_STAMP) wasm
	cargo build -p keyward
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) soak/soak.py --keyward $(CURDIR)/target/debug/keyward \
		--wasm $(CURDIR)/$(WASM) --out $(CURDIR)/target/soak $(SOAK_ARGS)

## soak-native: the same run on the native build (the Envoy dynamic module); report in target/soak-native/
soak-native: $(VENV_STAMP) native
	cargo build -p keyward
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) soak/soak.py --host native --keyward $(CURDIR)/target/debug/keyward \
		--native-module $(CURDIR)/$(NATIVE_SO) --out $(CURDIR)/target/soak-native $(SOAK_ARGS)
