# SwiftMoE build, test and demo entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
PYTHON ?= python3
BIN := bin
STRATEGIES := $(notdir $(wildcard plugins/cmd/swiftmoe-strategy-*))
GO_TEST_TIMEOUT ?= 900s
# Fuzz budgets are counts, not durations: Go 1.26's fuzz coordinator can fail a run bounded by
# time with a bare "context deadline exceeded" at the deadline under load (go.dev/issue/75804,
# fixed in Go 1.27); a count has no deadline to race.
FUZZ_TIME ?= 8000x
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/pyshim$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help deps build proto proto-check lint fmt test test-go fuzz-go test-py demo bench bench-planner plans-vs gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

deps: ## install the pinned Go modules and Python packages the build and tests need
	@$(GO) version >/dev/null 2>&1 || { echo "Go is required (1.26 or newer): install it from your distribution or go.dev" >&2; exit 1; }
	$(GO) mod download
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-torchtitan.txt

build: ## build bin/swiftmoe-sidecar and bin/swiftmoe-strategy-NAME for every built-in strategy
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/swiftmoe-sidecar ./sidecar/cmd/swiftmoe-sidecar
	@for s in $(STRATEGIES); do echo "$(GO) build -o $(BIN)/$$s ./plugins/cmd/$$s"; $(GO) build -o $(BIN)/$$s ./plugins/cmd/$$s || exit 1; done
	$(PYTHON) pyshim/swiftmoe/engine/native/build.py --optional $(BIN)

proto: ## regenerate bridge/gen (Go) and pyshim/swiftmoe/_proto (Python) from bridge/proto
	scripts/genproto.sh

proto-check: ## fail when the committed generated code is stale
	scripts/checkproto.sh

lint: ## gofmt, go vet, go mod tidy check and ruff
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$out" ]; then echo "gofmt would change: $$out" >&2; exit 1; fi
	$(GO) vet ./...
	@cp go.mod /tmp/swiftmoe-go.mod.bak; cp go.sum /tmp/swiftmoe-go.sum.bak; $(GO) mod tidy; \
	if ! git diff --quiet -- go.mod go.sum; then git diff -- go.mod go.sum; cp /tmp/swiftmoe-go.mod.bak go.mod; cp /tmp/swiftmoe-go.sum.bak go.sum; echo "go mod tidy changes go.mod/go.sum: run it and commit" >&2; exit 1; fi
	$(PYTHON) -m ruff check pyshim test examples scripts
	$(PYTHON) -m ruff format --check pyshim test examples scripts

fmt: ## format Go and Python sources
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')
	$(PYTHON) -m ruff format pyshim test examples scripts

test: deps proto-check lint build test-go fuzz-go test-py ## install what is needed and run every test
	@echo "make test: all tests passed"

test-go: ## Go tests with the race detector
	$(GO) test -race -timeout $(GO_TEST_TIMEOUT) ./...

fuzz-go: ## every Go fuzz target for FUZZ_TIME (8000 runs) each; go test -fuzz takes one target per run
	@git grep -l '^func Fuzz' -- '*_test.go' | while read -r f; do \
	  for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f"); do \
	    echo "$(GO) test -run '^$$' -fuzz '^$$t$$' -fuzztime $(FUZZ_TIME) ./$$(dirname "$$f")"; \
	    $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZ_TIME) "./$$(dirname "$$f")" || exit 1; \
	  done; \
	done

test-py: build ## Python and cross-language tests
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) pyshim/tests test

demo: deps build ## the main job: see README
	scripts/demo.sh

bench: deps build ## benchmarks (not tests): planner, round trip, split, training step
	scripts/bench.sh

bench-planner: ## the planner's CPU time per plan against REF, side by side (make bench-planner REF=main~3; INSTR=1 adds instructions per plan)
	@test -n "$(REF)" || { echo "make bench-planner: set REF to the commit to compare with, e.g. REF=HEAD~3" >&2; exit 2; }
	scripts/bench_planner_vs.sh $(if $(ROUNDS),-r $(ROUNDS)) $(if $(INSTR),-i) "$(REF)"

plans-vs: ## the swiftmoe strategy's plans against REF's, request by request, and the quality of those that differ (make plans-vs REF=main~3; CASES=N, default 20000)
	@test -n "$(REF)" || { echo "make plans-vs: set REF to the commit to compare with, e.g. REF=HEAD~3" >&2; exit 2; }
	scripts/plans_vs.sh $(if $(CASES),-n $(CASES)) "$(REF)"

gpu-check: ## one GPU: the engine (NCCL, bf16, grouped GEMMs) against the unpatched model and static EP, as JSON
	$(PYTHON) scripts/gpu_check.py --json out/gpu-check.json --profile out/gpu-profile.txt

clean: ## remove build outputs
	rm -rf $(BIN) build dist *.egg-info
