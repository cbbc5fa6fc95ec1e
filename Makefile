# Every target installs what it needs first (scripts/setup.sh), so a fresh machine works.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON := .venv/bin/python
BOOTSTRAP := target/release/etcd-lifecycle-hook

.PHONY: all setup build release demo test test-rust test-e2e lint bench ci clean-stack

all: test

setup:
	@bash scripts/setup.sh

release: setup
	$(CARGO) build --release --locked

# A lifecycle event handled end to end: real etcd, local Auto Scaling/EC2, the real bootstrap.
demo: release
	$(PYTHON) scripts/demo.py --bootstrap $(BOOTSTRAP)

# All the tests: unit, aws-smithy-mocks, real etcd clusters, then end to end against the
# release binary.
test: test-rust test-e2e

test-rust: setup
	$(CARGO) test --locked

test-e2e: release
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m unittest discover -s tests/e2e -t . -v

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

bench: setup
	$(CARGO) bench --locked --bench resilience

ci: lint test
