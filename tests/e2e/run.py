"""Runs the end-to-end tests, several at a time, each in its own Python process.

Why a runner: every test brings up its own etcd cluster, and a fresh cluster refuses membership
changes for about five seconds after it forms, so most of a test's time is spent waiting, not
working. Each test already owns its addresses (a lock-file slot) and its moto account, so running
a few side by side is safe and cuts the suite's wall time; one process per test also means one
test's leftovers can never leak into another.

    .venv/bin/python -m tests.e2e.run            # all, E2E_JOBS (default 3) at a time
    .venv/bin/python -m tests.e2e.run -j 1 -k hold   # only test IDs containing "hold", serially

Exit status 0 only if every test passed. The binary comes from BOOTSTRAP (see tests/stack).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
import unittest

from tests.stack import bootstrap_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ids(patterns: list[str]) -> list[str]:
    suite = unittest.defaultTestLoader.discover(
        os.path.join(REPO, "tests", "e2e"), pattern="test_*.py", top_level_dir=REPO
    )
    ids: list[str] = []

    def walk(s):
        for t in s:
            if isinstance(t, unittest.TestSuite):
                walk(t)
            elif isinstance(t, unittest.loader._FailedTest):  # an import error: report it
                ids.append(t.id())
            else:
                ids.append(t.id())

    walk(suite)
    return [i for i in ids if not patterns or any(p in i for p in patterns)]


def run_one(test_id: str, timeout: float) -> tuple[str, bool, float, str]:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "unittest", "-v", test_id],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        ok, output = proc.returncode == 0, proc.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        ok, output = False, f"{out}\nTIMED OUT after {timeout:.0f}s"
    return test_id, ok, time.monotonic() - started, output


def main() -> int:
    p = argparse.ArgumentParser(description="Run the end-to-end tests in parallel.")
    p.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("E2E_JOBS", "3")))
    p.add_argument("-k", dest="patterns", action="append", default=[], help="substring of test IDs")
    p.add_argument("--timeout", type=float, default=300.0, help="per test, seconds")
    args = p.parse_args()

    binary = bootstrap_path()
    if not os.access(binary, os.X_OK):
        print(
            f"e2e: function binary {binary} is missing: run `cargo build --release` "
            "(or set BOOTSTRAP)",
            file=sys.stderr,
        )
        return 2
    ids = test_ids(args.patterns)
    if not ids:
        print("e2e: no test matched", file=sys.stderr)
        return 2
    print(f"e2e: {len(ids)} tests, {args.jobs} at a time, binary {binary}", flush=True)
    return run_all(ids, args.jobs, args.timeout)


def run_all(ids: list[str], jobs: int, timeout: float, label: str = "e2e", note: str = "") -> int:
    """Runs `ids`, `jobs` at a time, each in its own process; prints a line per test, the output
    of each failure (headed with `note`), and the closing count. Exit status 1 if any failed."""
    started = time.monotonic()
    failed: list[tuple[str, str]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(run_one, i, timeout) for i in ids]
        for future in concurrent.futures.as_completed(futures):
            test_id, ok, seconds, output = future.result()
            print(f"{'ok  ' if ok else 'FAIL'} {test_id} ({seconds:.1f}s)", flush=True)
            if not ok:
                failed.append((test_id, output))
    for test_id, output in failed:
        print(f"\n===== {test_id}{note} =====\n{output}", flush=True)
    total = time.monotonic() - started
    print(f"\n{label}: {len(ids) - len(failed)} passed, {len(failed)} failed in {total:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
