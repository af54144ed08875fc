# zeroscaler. Run `make help` to list the targets.
#
# bin/ holds the daemon (bin/zeroscaler), the local control plane used by
# the end-to-end tests (bin/etcd, bin/kube-apiserver,
# bin/kube-controller-manager, bin/kubectl), the metrics backends besides
# Debian's Prometheus (bin/prometheus3, bin/victoria-metrics, bin/cortex), and
# the developer tools (bin/helm, bin/golangci-lint).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO      ?= go
BIN     := $(CURDIR)/bin
# promtool ships with Debian's prometheus package; else put it in bin/.
PROMTOOL ?= $(or $(shell command -v promtool 2>/dev/null),$(BIN)/promtool)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN { FS = ":.*## " } \
		/^##@/ { printf "\n%s\n", substr($$0, 5) } \
		/^[a-zA-Z0-9_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

##@ Build

.PHONY: build
build: ## Build the daemon into bin/zeroscaler
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/zeroscaler .

.PHONY: tools
tools: ## Build etcd, kube-apiserver, kube-controller-manager, kubectl, helm, golangci-lint, prometheus3, victoria-metrics and cortex into bin/ (skips what is up to date)
	bash hack/build-tools.sh

.PHONY: prometheus
prometheus: ## Make sure a Prometheus binary exists (installs Debian's package when root)
	@if [[ -x $(BIN)/prometheus ]] || command -v prometheus >/dev/null; then exit 0; fi; \
	if [[ $$(id -u) -ne 0 ]]; then \
		echo "prometheus not found in bin/ or on PATH: run 'sudo apt-get install prometheus' or put a binary at bin/prometheus" >&2; \
		exit 1; \
	fi; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus

##@ Test

.PHONY: test
test: ## Run the alert rule tests, the unit tests, then the end-to-end tests
	$(MAKE) test-rules
	$(MAKE) test-unit
	$(MAKE) test-e2e

.PHONY: test-rules
test-rules: prometheus ## Check the alert rules and run their promtool unit tests
	$(PROMTOOL) check rules deploy/prometheus/rules.yaml
	$(PROMTOOL) test rules deploy/prometheus/rules_test.yaml

.PHONY: test-unit
test-unit: prometheus ## Run the unit tests with the race detector (promtool checks /metrics and the dashboard)
	$(GO) test -race ./...

# The metrics backends of the end-to-end suite (ZEROSCALER_BACKENDS; see the
# README's "Backends"): the scenarios that talk to a backend run against each,
# and the first, a Prometheus, also serves every other test.
E2E_BACKENDS ?= prometheus3,prometheus2,victoriametrics
# The scenarios that run per backend, for test-matrix.
MATRIX_TESTS := ^TestScenario(SleepAndWake|PrometheusOutage|EmptyResult|SeveralSeries|DefaultSettings|BurstBetweenChecksKeepsItAwake)$$
MATRIX_BACKENDS ?= prometheus2,victoriametrics

.PHONY: test-e2e
test-e2e: tools prometheus ## Run the end-to-end tests against a local API server and each metrics backend (E2E_BACKENDS)
	ZEROSCALER_BACKENDS=$(E2E_BACKENDS) KUBEBUILDER_ASSETS=$(BIN) $(GO) test -race -tags e2e -count=1 -timeout 30m ./test/e2e/...

.PHONY: test-matrix
test-matrix: tools prometheus ## Run only the backend scenarios, against MATRIX_BACKENDS
	ZEROSCALER_BACKENDS=$(MATRIX_BACKENDS) KUBEBUILDER_ASSETS=$(BIN) $(GO) test -race -tags e2e -count=1 -timeout 30m -run '$(MATRIX_TESTS)' ./test/e2e/...

##@ Code

.PHONY: vet
vet: ## Run go vet, with and without the e2e build tag
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...

.PHONY: lint
lint: ## Run golangci-lint (.golangci.yml) on all packages, e2e included
	bash hack/build-tools.sh golangci-lint
	$(BIN)/golangci-lint run ./...

.PHONY: fmt
fmt: ## Format all Go files
	gofmt -w $$(git ls-files --cached --others --exclude-standard '*.go')

##@ Demo and benchmarks

DEMO_DIR := $(CURDIR)/.demo

.PHONY: demo
demo: tools prometheus ## Tell zeroscaler's story on a local control plane (about two minutes), then clean up
	KUBEBUILDER_ASSETS=$(BIN) $(GO) run ./hack/demo

.PHONY: demo-up
demo-up: tools prometheus ## Start the demo stack and leave it running; prints KUBECONFIG and what to try
	@mkdir -p $(DEMO_DIR)
	@if [[ -f $(DEMO_DIR)/pid ]] && kill -0 $$(cat $(DEMO_DIR)/pid) 2>/dev/null; then \
		echo "the demo is already up (pid $$(cat $(DEMO_DIR)/pid)); see $(DEMO_DIR)/out or run make demo-down"; exit 0; fi
	@rm -f $(DEMO_DIR)/env
	$(GO) build -o $(DEMO_DIR)/demo ./hack/demo
	@KUBEBUILDER_ASSETS=$(BIN) nohup $(DEMO_DIR)/demo -up -state-dir $(DEMO_DIR) >$(DEMO_DIR)/out 2>&1 & echo $$! >$(DEMO_DIR)/pid
	@for i in $$(seq 1 180); do \
		if [[ -f $(DEMO_DIR)/env ]]; then cat $(DEMO_DIR)/out; exit 0; fi; \
		if ! kill -0 $$(cat $(DEMO_DIR)/pid) 2>/dev/null; then cat $(DEMO_DIR)/out; echo "demo-up failed" >&2; exit 1; fi; \
		sleep 1; done; echo "demo-up timed out; see $(DEMO_DIR)/out" >&2; exit 1

.PHONY: demo-down
demo-down: ## Stop what demo-up started
	@if [[ -f $(DEMO_DIR)/pid ]]; then \
		pid=$$(cat $(DEMO_DIR)/pid); \
		if kill -TERM $$pid 2>/dev/null; then \
			for i in $$(seq 1 30); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; \
			echo "demo stopped"; \
		else echo "demo was not running"; fi; \
		rm -f $(DEMO_DIR)/pid; \
	else echo "demo was not running"; fi

.PHONY: bench
bench: tools prometheus ## Measure scale (N = 1,000 and 10,000 workloads); writes BENCHMARKS.md
	KUBEBUILDER_ASSETS=$(BIN) $(GO) run ./test/bench -out BENCHMARKS.md

.PHONY: image
image: ## Build the container image (needs a Docker engine)
	docker build --build-arg VERSION=$(VERSION) -t zeroscaler:$(VERSION) .
