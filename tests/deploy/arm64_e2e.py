"""The end-to-end tests that matter most, run on the arm64 artifact itself under qemu-user.

Why: every other test runs an x86_64 build, while template.yaml deploys the arm64 bootstrap that
`make package` (cargo-lambda, linked by zig against an old glibc) produces. This runs that very
file, through the same local stack (real etcd, moto's Auto Scaling and EC2, the Runtime API
emulator), on a named subset of tests/e2e that covers each kind of work the function does:

    terminate, leader move, hold (then done once safe), launch with stale-member cleanup, the
    sweep, an SQS batch with a bad record, breaker fail-fast, a bad configuration at start-up.

The tests are the e2e suite's own (by name, not copies); only the binary differs: `BOOTSTRAP`
points at a script that `exec`s qemu with the artifact (tests/deploy/qemu.py). A name that no
longer exists in tests/e2e fails the run loudly rather than shrinking the subset silently.

    .venv/bin/python -m tests.deploy.arm64_e2e [--bootstrap target/lambda/etcd-lifecycle-hook/bootstrap]
    .venv/bin/python -m tests.deploy.arm64_e2e -k hold      # only the subset's tests matching "hold"

Exit status 0 only if every test passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from tests.deploy import check_artifact, qemu
from tests.e2e import run as e2e_run

REPO = e2e_run.REPO
DEFAULT_BOOTSTRAP = os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"),
    "lambda",
    "etcd-lifecycle-hook",
    "bootstrap",
)

# (what it shows, test ID in tests/e2e)
SUBSET = [
    ("terminate", "tests.e2e.test_terminate.TerminateTest.test_terminate_a_follower"),
    ("leader move", "tests.e2e.test_terminate.TerminateTest.test_terminate_the_leader"),
    ("hold", "tests.e2e.test_terminate.TerminateTest.test_unsafe_removal_is_held_then_done_once_safe"),
    (
        "launch with stale cleanup",
        "tests.e2e.test_launch_and_sweep.LaunchTest.test_launch_removes_a_stale_member_and_continues",
    ),
    ("sweep", "tests.e2e.test_launch_and_sweep.SweepTest.test_sweep_finishes_instances_left_waiting"),
    ("SQS batch", "tests.e2e.test_delivery.WrappedDeliveryTest.test_sqs_batch_reports_only_the_bad_record"),
    (
        "breaker fail-fast",
        "tests.e2e.test_faults.DeadEndpointTest.test_circuit_opens_fails_fast_and_a_fresh_process_starts_closed",
    ),
    (
        "bad configuration",
        "tests.e2e.test_startup.StartupTest.test_bad_value_stops_start_up_naming_variable_value_and_expectation",
    ),
]


def missing_tests(wanted: list[str], available: list[str]) -> list[str]:
    return [t for t in wanted if t not in set(available)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the e2e subset on the arm64 bootstrap under qemu.")
    p.add_argument("--bootstrap", default=os.environ.get("ARM64_BOOTSTRAP", DEFAULT_BOOTSTRAP))
    p.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("E2E_ARM64_JOBS", "1")),
                   help="tests at a time (default 1: emulation makes timing-sensitive steps slow)")
    p.add_argument("-k", dest="patterns", action="append", default=[], help="substring of test IDs")
    p.add_argument("--timeout", type=float, default=300.0, help="per test, seconds")
    args = p.parse_args(argv)

    problems = qemu.missing()
    if problems:
        print(f"arm64 e2e: {'; '.join(problems)}: {qemu.SETUP_HINT}", file=sys.stderr)
        return 2
    try:
        with open(args.bootstrap, "rb") as f:
            _, artifact_problems = check_artifact.check_binary(f.read())
    except OSError as e:
        print(f"arm64 e2e: {e}: build it with `make package`", file=sys.stderr)
        return 2
    if artifact_problems:
        print(f"arm64 e2e: {args.bootstrap}: {'; '.join(artifact_problems)}", file=sys.stderr)
        return 2

    ids = [test_id for _, test_id in SUBSET]
    gone = missing_tests(ids, e2e_run.test_ids([]))
    if gone:
        print(
            "arm64 e2e: these tests of the subset no longer exist in tests/e2e; update SUBSET in "
            f"tests/deploy/arm64_e2e.py: {', '.join(gone)}",
            file=sys.stderr,
        )
        return 2
    if args.patterns:
        ids = [i for i in ids if any(pat in i for pat in args.patterns)]
        if not ids:
            print("arm64 e2e: no test of the subset matched", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="arm64-e2e-") as tmp:
        os.environ["BOOTSTRAP"] = qemu.wrapper(args.bootstrap, tmp)
        print(
            f"arm64 e2e: {len(ids)} tests, {args.jobs} at a time, {args.bootstrap} under {qemu.QEMU}",
            flush=True,
        )
        return e2e_run.run_all(
            ids, args.jobs, args.timeout, label="arm64 e2e", note=" (arm64 under qemu)"
        )


if __name__ == "__main__":
    sys.exit(main())
