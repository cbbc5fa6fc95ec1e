# Every target installs what it needs first (scripts/setup.sh), so a fresh machine works.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON := .venv/bin/python
BOOTSTRAP := target/release/etcd-lifecycle-hook

.PHONY: all setup release demo test test-rust test-stack test-e2e lint bench ci

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
test: test-rust test-stack test-e2e

test-rust: setup
	$(CARGO) test --locked

test-stack: setup
	$(PYTHON) -m unittest discover -s tests/stack -t .

test-e2e: release
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.e2e.run

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) deny --log-level error check bans licenses sources
	$(PYTHON) tests/stack/check_template.py
	.venv/bin/cfn-lint template.yaml

bench: setup
	$(CARGO) bench --locked --bench resilience

ci: lint test
