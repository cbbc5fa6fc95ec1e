# Every target installs what it needs first (scripts/setup.sh), so a fresh machine works.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON := .venv/bin/python
BOOTSTRAP := $(or $(CARGO_TARGET_DIR),target)/release/etcd-lifecycle-hook

.PHONY: all setup release demo test test-rust test-stack test-e2e test-chaos chaos lint bench bench-perf ci

all: test

setup:
	@bash scripts/setup.sh

release: setup
	$(CARGO) build --release --locked

# A lifecycle event handled end to end: real etcd, local Auto Scaling/EC2, the real bootstrap.
demo: release
	$(PYTHON) scripts/demo.py --bootstrap $(BOOTSTRAP)

# All the tests: unit, aws-smithy-mocks, real etcd clusters, the local stack's own tests, then
# end to end against the release binary.
test: test-rust test-stack test-e2e test-chaos

test-rust: setup
	$(CARGO) test --locked

test-stack: setup
	$(PYTHON) -m unittest discover -s tests/stack -t .

test-e2e: release
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.e2e.run

# Seeded chaos against the release binary, real etcd and the local Auto Scaling: the short form
# runs with the tests; `make chaos` is the long run recorded in RELIABILITY.md.
test-chaos: release
	$(PYTHON) -m unittest discover -s tests/chaos -t .
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.chaos --seed 1 --runs 3 --steps 15 --time-budget 240

chaos: release
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.chaos --seed 1000 --runs 200 --steps 25 --jobs 2 --time-budget 2400 --out .stack/chaos

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) deny --log-level error check bans licenses sources
	$(PYTHON) tests/stack/check_template.py
	.venv/bin/cfn-lint template.yaml

bench: setup
	$(CARGO) bench --locked --bench resilience

# Cold start, memory, warm latency, requests per event and fail-fast, side by side (BENCHMARKS.md).
bench-perf:
	bash bench/run.sh

ci: lint test
