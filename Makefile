# Makefile for qmp_exporter.
#
# `make test` is the one command that CI (.ci/run) and developers run: it
# checks formatting, vets, runs staticcheck, runs every test with the race
# detector (including the end-to-end tests against a real QEMU), fuzzes each
# fuzz target briefly and lints the golden /metrics files with promtool.
# `make help` lists the targets.

# bash with pipefail, so that `go test | tee` fails when go test does.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -ec

# Targets run one after another even under `make -j`, so `make test` stops at
# the first failing step.
.NOTPARALLEL:

GO       ?= go
GOFMT    ?= gofmt
PROMTOOL ?= promtool

MODULE := github.com/qmp-exporter/qmp_exporter
BINARY := qmp_exporter

GOOS   ?= $(shell $(GO) env GOOS)
GOARCH ?= $(shell $(GO) env GOARCH)
BUILD_ROOT := .build
BUILD_DIR  := $(BUILD_ROOT)/$(GOOS)-$(GOARCH)

# Version information stamped into the binary through prometheus/common/version,
# as promu does (see .promu.yml). Every part tolerates a missing git.
VERSION    := $(shell cat VERSION 2>/dev/null || echo unknown)
REVISION   := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH     := $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
BUILD_USER := $(shell id -un 2>/dev/null || echo unknown)@$(shell uname -n 2>/dev/null || echo unknown)
BUILD_DATE := $(shell date -u +%Y%m%d-%H:%M:%S)
VERSION_PKG := github.com/prometheus/common/version
LDFLAGS := \
	-X $(VERSION_PKG).Version=$(VERSION) \
	-X $(VERSION_PKG).Revision=$(REVISION) \
	-X $(VERSION_PKG).Branch=$(BRANCH) \
	-X $(VERSION_PKG).BuildUser=$(BUILD_USER) \
	-X $(VERSION_PKG).BuildDate=$(BUILD_DATE)

# Pinned versions of the tools run with `go run`, so no install step is needed.
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOLANGCI_LINT := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
GOVULNCHECK   := golang.org/x/vuln/cmd/govulncheck@v1.9.0

# Fuzz targets run by fuzz-short, one "package:FuzzName" per line. Adding a
# target is adding a line here.
FUZZ_TARGETS := \
	./qmp/:FuzzDecode \
	./config/:FuzzParse \
	./internal/vmstate/:FuzzFold \
	./collector/:FuzzExposition
FUZZTIME ?= 10s

# Prometheus 3 (and its promtool), which the rules and dashboards are tested
# against besides the system's Prometheus 2: built by `make prometheus3` at
# the github.com/prometheus/prometheus version go.mod pins (v0.3XY.Z is
# Prometheus 3.XY.Z), with Prometheus's own go.mod and without its service
# discovery plugins (remove_all_sd), once per version. The tests find it
# there, or through these variables.
PROMETHEUS3_VERSION := $(shell awk '$$1 == "github.com/prometheus/prometheus" {print $$2}' go.mod)
PROMETHEUS3_DIR     := $(BUILD_ROOT)/tools/prometheus-$(PROMETHEUS3_VERSION)
export PROMETHEUS3_BINARY ?= $(abspath $(PROMETHEUS3_DIR)/prometheus)
export PROMTOOL3          ?= $(abspath $(PROMETHEUS3_DIR)/promtool)

# Extra flags for the race test run, e.g. GOTESTFLAGS='-run TestEndToEnd'.
GOTESTFLAGS ?=
# Verbose log of the last race test run, from which the pass/fail/skip
# counts are taken.
TEST_LOG := $(BUILD_ROOT)/go-test.log

# QEMU 10.0.2 from bookworm-backports, unpacked beside the system's QEMU 7.2
# by `make qemu10` (.ci/qemu10). test-qemu10 runs the packages that start a
# QEMU on it again, except the tests that start none (QEMU10_SKIP) or drive
# the system's QEMU through libvirtd.
QEMU10_DIR  := $(CURDIR)/$(BUILD_ROOT)/qemu-10.0.2
QEMU10_PKGS := ./internal/qemulab/ ./cmd/qmp_exporter/ ./dashboards/
QEMU10_SKIP := Libvirt|ListenerChaos|ReleaseBuild
QEMU10_LOG  := $(BUILD_ROOT)/go-test-qemu10.log

# Prints the module's .go files, tracked or untracked (but not ignored), outside
# any vendor/ directory. Falls back to find(1) without git or outside a clone.
list_go_files = { git ls-files --cached --others --exclude-standard -- '*.go' 2>/dev/null \
	|| find . -name '*.go' -not -path './.build/*' -not -path './.tmp/*' -not -path './.git/*'; } \
	| grep -v -E '(^|/)vendor/' | while read -r f; do if [ -f "$$f" ]; then echo "$$f"; fi; done

# $(call test_summary,LOGS) prints "tests: N passed, N failed, N skipped" from
# the go test logs LOGS (subtests count too).
test_summary = awk '/^ *--- PASS/ {p++} /^ *--- FAIL/ {f++} /^ *--- SKIP/ {s++} \
	END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, s}' $(1)

.DEFAULT_GOAL := all

.PHONY: all build binary crossbuild tarball test style vet staticcheck test-race fuzz-short checkmetrics \
	checkrules test-dashboards prometheus3 qemu10 test-qemu10 \
	test-short gobench lint govulncheck demo clean help

# all: everything CI checks, then the binary.
all: test build

# build: the exporter with version information, in .build/<os>-<arch>/ and ./.
build: binary
	cp $(BUILD_DIR)/$(BINARY) ./$(BINARY)

# binary: the exporter in .build/<os>-<arch>/ only. Static, as .promu.yml
# says (cgo off, the pure-Go resolver and user lookup), so that it runs in
# the busybox image and on any Linux of its architecture.
binary:
	@echo ">> building $(BUILD_DIR)/$(BINARY) $(VERSION) ($(REVISION))"
	@mkdir -p $(BUILD_DIR)
	CGO_ENABLED=0 GOOS=$(GOOS) GOARCH=$(GOARCH) $(GO) build -trimpath -tags netgo,osusergo \
		-ldflags '$(LDFLAGS)' -o $(BUILD_DIR)/$(BINARY) ./cmd/qmp_exporter

# PLATFORMS are those of crossbuild and tarball (.promu.yml's crossbuild).
PLATFORMS ?= linux/amd64 linux/arm64

# crossbuild: a static binary for each of PLATFORMS, in .build/<os>-<arch>/.
crossbuild:
	@for p in $(PLATFORMS); do \
		$(MAKE) --no-print-directory binary GOOS=$${p%/*} GOARCH=$${p#*/}; \
	done

# tarball: for each of PLATFORMS, .build/tarballs/qmp_exporter-VERSION.OS-ARCH.tar.gz
# (the binary, LICENSE and the example configurations, in a directory of the
# same name, the Prometheus layout) and sha256sums.txt beside them.
TARBALL_DIR := $(BUILD_ROOT)/tarballs
tarball: crossbuild
	@rm -rf $(TARBALL_DIR) && mkdir -p $(TARBALL_DIR)
	@for p in $(PLATFORMS); do \
		name=$(BINARY)-$(VERSION).$${p%/*}-$${p#*/}; dir=$(TARBALL_DIR)/$$name; \
		mkdir -p $$dir/examples && \
		cp $(BUILD_ROOT)/$${p%/*}-$${p#*/}/$(BINARY) LICENSE $$dir/ && \
		cp examples/*.yml $$dir/examples/ && \
		tar -C $(TARBALL_DIR) --owner=0 --group=0 -czf $(TARBALL_DIR)/$$name.tar.gz $$name && \
		rm -rf $$dir && echo ">> $(TARBALL_DIR)/$$name.tar.gz"; \
	done
	cd $(TARBALL_DIR) && sha256sum *.tar.gz > sha256sums.txt

# test: the CI gate; each step runs only if the previous ones passed.
test: style vet staticcheck prometheus3 checkrules test-dashboards test-race test-qemu10 fuzz-short checkmetrics
	@$(call test_summary,$(TEST_LOG) $$(ls $(QEMU10_LOG) 2>/dev/null))

# style: fails if gofmt would change any .go file.
style:
	@echo ">> checking gofmt"
	@files=$$($(list_go_files)); \
	out=$$(printf '%s\n' "$$files" | xargs -r -d '\n' $(GOFMT) -l 2>&1) || { echo "$$out" >&2; exit 1; }; \
	if [ -n "$$out" ]; then echo "gofmt -l lists files to reformat (run gofmt -w):" >&2; echo "$$out" >&2; exit 1; fi

# vet: go vet over every package.
vet:
	@echo ">> go vet"
	$(GO) vet ./...

# staticcheck: the pinned staticcheck over every package.
staticcheck:
	@echo ">> staticcheck"
	$(GO) run $(STATICCHECK) ./...

# test-race: go test -race over every package, end-to-end tests included.
# The per-test lines stay visible (the === lines are dropped) and a
# pass/fail/skip count closes the run.
test-race:
	@echo ">> go test -race"
	@mkdir -p $(BUILD_ROOT) && rm -f $(QEMU10_LOG)
	@status=0; \
	$(GO) test -race -count=1 -v $(GOTESTFLAGS) ./... 2>&1 | tee $(TEST_LOG) \
		| grep -v -E '^=== (RUN|PAUSE|CONT|NAME)' || status=$$?; \
	$(call test_summary,$(TEST_LOG)); \
	exit $$status

# qemu10: QEMU 10.0.2 in .build/qemu-10.0.2 (apt-get download and dpkg -x; no root).
qemu10:
	.ci/qemu10 $(QEMU10_DIR)

# test-qemu10: test-race's QEMU tests again on QEMU 10.0.2 (log: QEMU10_LOG).
# If qemu10 fails it warns and skips, except under CI=true, where it fails.
test-qemu10:
	@if ! .ci/qemu10 $(QEMU10_DIR); then \
		if [ "$${CI:-}" = "true" ]; then echo "test-qemu10: no QEMU 10.0 (CI=true)" >&2; exit 1; fi; \
		echo "WARNING: test-qemu10 skipped: make qemu10 failed" >&2; exit 0; \
	fi; \
	echo ">> go test -race on $$($(QEMU10_DIR)/qemu-system-x86_64 --version | sed -n 1p)"; \
	status=0; \
	QEMU_BINARY=$(QEMU10_DIR)/qemu-system-x86_64 $(GO) test -race -count=1 -v -skip '$(QEMU10_SKIP)' \
		$(GOTESTFLAGS) $(QEMU10_PKGS) 2>&1 | tee $(QEMU10_LOG) \
		| grep -v -E '^=== (RUN|PAUSE|CONT|NAME)' || status=$$?; \
	$(call test_summary,$(QEMU10_LOG)); \
	exit $$status

# fuzz-short: each target in FUZZ_TARGETS for FUZZTIME (default 10s).
# A longer run: make fuzz-short FUZZTIME=10m.
fuzz-short:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo ">> fuzzing $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run=XXX -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
	done

# checkmetrics: promtool check metrics on every collector/testdata/*.prom, and
# Prometheus's OpenMetrics parser (a Go test: promtool reads only the text
# format) on every collector/testdata/*.openmetrics. Without promtool the
# first part warns and skips, except under CI=true, where it fails.
checkmetrics: checkmetrics-openmetrics
	@if ! command -v $(PROMTOOL) >/dev/null 2>&1; then \
		if [ "$${CI:-}" = "true" ]; then \
			echo "checkmetrics: $(PROMTOOL) not found (CI=true); install Debian's prometheus package" >&2; exit 1; \
		fi; \
		echo "WARNING: checkmetrics skipped: $(PROMTOOL) not found (install Debian's prometheus package)" >&2; exit 0; \
	fi; \
	shopt -s nullglob; files=(collector/testdata/*.prom); \
	if [ $${#files[@]} -eq 0 ]; then echo "checkmetrics: no collector/testdata/*.prom files" >&2; exit 1; fi; \
	for f in "$${files[@]}"; do \
		echo ">> promtool check metrics $$f"; \
		$(PROMTOOL) check metrics < "$$f"; \
	done

# checkmetrics-openmetrics: Prometheus's OpenMetrics parser on every
# collector/testdata/*.openmetrics (TestOpenMetricsGoldens, which must run).
.PHONY: checkmetrics-openmetrics
checkmetrics-openmetrics:
	@echo ">> OpenMetrics parser on collector/testdata/*.openmetrics"
	@out=$$($(GO) test -count=1 -v -run '^TestOpenMetricsGoldens$$' ./collector/ 2>&1) || { echo "$$out" >&2; exit 1; }; \
	echo "$$out" | grep -E '^ *--- (PASS|FAIL|SKIP)'; \
	echo "$$out" | grep -q '^--- PASS: TestOpenMetricsGoldens' || { echo "checkmetrics: TestOpenMetricsGoldens did not run" >&2; exit 1; }

# checkrules: promtool check rules and promtool test rules on alerts/, with
# the system's promtool and Prometheus 3's. A missing promtool warns and skips,
# except under CI=true, where it fails.
checkrules:
	@for p in $(PROMTOOL) $(PROMTOOL3); do \
		if ! command -v $$p >/dev/null 2>&1; then \
			if [ "$${CI:-}" = "true" ]; then \
				echo "checkrules: $$p not found (CI=true); install Debian's prometheus package, run make prometheus3" >&2; exit 1; \
			fi; \
			echo "WARNING: checkrules skipped for $$p: not found (install Debian's prometheus package, run make prometheus3)" >&2; continue; \
		fi; \
		echo ">> $$p check rules and test rules on alerts/ ($$($$p --version 2>&1 | sed -n 1p))"; \
		$$p check rules alerts/qmp_exporter.rules.yml; \
		$$p test rules alerts/qmp_exporter.rules_test.yml; \
	done

# prometheus3: Prometheus 3 and its promtool into .build/tools/prometheus-<version>/,
# unless there already (a cold build takes minutes; Go's build cache is kept).
prometheus3: $(PROMETHEUS3_DIR)/prometheus

# Built into a temporary directory renamed at the end, so that an interrupted
# build leaves nothing that looks finished. The version is stamped from the
# module's VERSION file, as Prometheus's own build does.
$(PROMETHEUS3_DIR)/prometheus:
	@echo ">> building Prometheus $(PROMETHEUS3_VERSION) into $(PROMETHEUS3_DIR)"
	@rm -rf $(PROMETHEUS3_DIR).tmp
	src=$$($(GO) mod download -json github.com/prometheus/prometheus@$(PROMETHEUS3_VERSION) \
		| sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	version=$$(cat "$$src/VERSION"); \
	GOBIN=$(abspath $(PROMETHEUS3_DIR).tmp) $(GO) install -trimpath -tags remove_all_sd \
		-ldflags "-X github.com/prometheus/common/version.Version=$$version" \
		github.com/prometheus/prometheus/cmd/prometheus@$(PROMETHEUS3_VERSION) \
		github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS3_VERSION)
	@rm -rf $(PROMETHEUS3_DIR) && mv $(PROMETHEUS3_DIR).tmp $(PROMETHEUS3_DIR)
	@$@ --version 2>&1 | sed -n 1p

# test-dashboards: the static checks of dashboards/*.json and alerts/ (structure,
# metric names, PromQL through promtool); their end-to-end test against a real
# Prometheus and QEMU (dashboards/e2e_test.go) runs in test-race.
test-dashboards:
	@echo ">> checking dashboards and alert rules"
	$(GO) test -count=1 -short ./dashboards/ ./alerts/

# test-short: the quick tests only (go test -short), without the race detector.
test-short:
	$(GO) test -short ./...

# gobench: the Go micro-benchmarks of the protocol client, the fold and the
# exposition.
gobench:
	$(GO) test -run=XXX -bench=. -benchmem ./qmp/ ./internal/vmstate/ ./collector/

# bench: whole-process benchmarks of the exporter binary against
# internal/cmd/qmp-loadgen (docs/performance.md): CPU per event, memory per VM, loss,
# /metrics latency, reconnection. About 7 minutes on an idle 2-core machine;
# results in .build/bench/. Flags in BENCHFLAGS, e.g. BENCHFLAGS='-only flood-1 -perf'.
.PHONY: bench
BENCHFLAGS ?=
bench:
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; $(GO) run ./internal/bench -out $(BUILD_ROOT)/bench $(BENCHFLAGS)

# lint: golangci-lint (.golangci.yml), then govulncheck; optional, not in test.
lint:
	@echo ">> golangci-lint"
	$(GO) run $(GOLANGCI_LINT) run
	@$(MAKE) --no-print-directory govulncheck

# govulncheck: known vulnerabilities in the code paths the module uses.
# It needs to reach the Go vulnerability database online.
govulncheck:
	@echo ">> govulncheck"
	$(GO) run $(GOVULNCHECK) ./...

# demo: a real QEMU and the exporter; an event every 2 s, changed metrics printed.
# Ctrl-C ends it. Flags go in ARGS: make demo ARGS='-listen 127.0.0.1:9999'.
# The demo is built, then run as make's own child rather than through
# `go run`, which exits 1 when Ctrl-C interrupts the program it runs even
# though the demo stops cleanly; the demo's status is make's.
demo:
	@mkdir -p $(BUILD_ROOT)
	$(GO) build -o $(BUILD_ROOT)/demo ./internal/cmd/demo
	$(BUILD_ROOT)/demo $(ARGS)

# clean: remove build output.
clean:
	rm -rf $(BUILD_ROOT) ./$(BINARY)

# help: list the targets with their comment.
help:
	@awk '/^# [a-z0-9-]+: / {sub(/^# /, ""); print "  " $$0}' $(MAKEFILE_LIST)
