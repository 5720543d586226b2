# Serval: one Makefile, the same gates locally and in CI. `make help` lists targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUST_SRC := $(shell find hostagent/sal_core/src -name '*.rs') hostagent/sal_core/Cargo.toml Cargo.lock
PROTO   := registry/api/v1/registry.proto
PY_PACKAGES := registry resolver hostagent deploy dashboard tests bench
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets with what they do
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

.PHONY: system-deps
system-deps: ## Install missing Debian packages (etcd-server, etcd-client, iproute2, dnsmasq-base, chromium)
	@deploy/scripts/ensure-system-packages.sh

$(PY):
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml $(RUST_SRC)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

.PHONY: dev
dev: system-deps $(STAMP) ## Create .venv and build/install everything (Rust included), editable

.PHONY: up
up: dev ## Run the complete local cluster in the foreground (Ctrl-C stops it)
	$(BIN)/serval up

.PHONY: proto
proto: $(STAMP) ## Regenerate the gRPC/protobuf code from registry/api/v1/*.proto
	$(PY) -m grpc_tools.protoc -I . --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --python_out=. --mypy_out=. --grpc_python_out=. $(PROTO)

.PHONY: proto-check
proto-check: $(STAMP) ## Fail when the checked-in generated code drifts from the .proto files
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(PY) -m grpc_tools.protoc -I . --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --python_out=$$tmp --mypy_out=$$tmp --grpc_python_out=$$tmp $(PROTO) && \
	for f in registry_pb2.py registry_pb2.pyi registry_pb2_grpc.py; do \
	  diff -u registry/api/v1/$$f $$tmp/registry/api/v1/$$f >/dev/null || \
	  { echo "proto-check: registry/api/v1/$$f is stale: run 'make proto'"; exit 1; }; \
	done && echo "proto-check: generated code is up to date"

.PHONY: fmt
fmt: $(STAMP) ## Format Python and Rust in place
	$(BIN)/ruff format $(PY_PACKAGES)
	$(BIN)/ruff check --fix $(PY_PACKAGES)
	cargo fmt

.PHONY: lint
lint: $(STAMP) ## ruff format --check, ruff check, cargo fmt --check, cargo clippy -D warnings
	$(BIN)/ruff format --check $(PY_PACKAGES)
	$(BIN)/ruff check $(PY_PACKAGES)
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict on our packages; stubtest of the Rust module's .pyi
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest hostagent.sal_core._native

.PHONY: test-rust
test-rust: ## cargo test of the SAL core
	cargo test --locked

.PHONY: test-unit
test-unit: $(STAMP) ## Python unit tests (pure cores, fakes)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: helm-check
helm-check: $(STAMP) ## Helm chart and image: render, validate (k8s 1.27/1.37 strict), lint, invariants, wheel
	$(BIN)/pytest tests/unit/test_helm_chart.py tests/unit/test_helm_components.py tests/unit/test_container_image.py $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: system-deps $(STAMP) ## Integration tests against real etcd (1 and 3 members) and gRPC
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: system-deps $(STAMP) ## End-to-end: several hosts in network namespaces (root; agents, registry, etcd)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

.PHONY: test
test: dev lint typecheck proto-check test-rust ## The whole suite: set-up, lint, types, Rust and Python tests
	$(BIN)/pytest tests $(PYTEST_ARGS)

.PHONY: bench-registry
bench-registry: dev ## Registry benchmark: throughput vs raw etcd, propagation, memory (table + JSON)
	$(PY) -m bench.registry $(BENCH_ARGS)

.PHONY: bench-dashboard
bench-dashboard: dev ## Dashboard benchmark: page/API server time at 10k services / 100k instances, registration → SSE
	$(PY) -m bench.dashboard $(BENCH_ARGS)

.PHONY: bench-deps
bench-deps: ## Install missing Debian packages of the data-path benchmark (iperf3, haproxy)
	@deploy/scripts/ensure-system-packages.sh --bench

.PHONY: bench-dns-deps
bench-dns-deps: ## Install missing Debian packages of the DNS benchmark (dnsperf, dnsmasq)
	@deploy/scripts/ensure-system-packages.sh --dns-bench

.PHONY: bench-dns
bench-dns: dev bench-dns-deps ## DNS bridge benchmark: dnsperf QPS/loss/p99 vs dnsmasq, registration-to-answer freshness
	$(PY) -m bench.dns $(BENCH_ARGS)

.PHONY: bench-datapath
bench-datapath: dev bench-deps ## Data-path benchmark in netns (root): iperf3 vs direct/haproxy, set-up, migration, agent RSS
	$(PY) -m bench.datapath $(BENCH_ARGS)

.PHONY: bench-sal
bench-sal: ## SAL core benchmark: LPM lookups vs HashMap, build+swap, memory; frame codec (tables)
	cargo bench --locked -p sal_core --bench table --bench frames

FUZZ_SECONDS ?= 60
.PHONY: fuzz-sal
fuzz-sal: ## Mutation-fuzz the SAL frame parser and flow machine (FUZZ_SECONDS=60; FUZZ_SEED to repeat)
	cargo run --release --locked -p sal_core --example fuzz_sal -- --seconds $(FUZZ_SECONDS)

.PHONY: clean
clean: ## Remove build outputs and local state (keeps .venv)
	rm -rf target .state .bench .mypy_cache .ruff_cache .pytest_cache
	find . -name '__pycache__' -type d -prune -exec rm -rf {} +
