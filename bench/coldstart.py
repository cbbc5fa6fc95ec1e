#!/usr/bin/env python3
"""Cold start and peak memory: the release `bootstrap`, the Python baseline and the floor,
interleaved in one run under the same Runtime API emulator (tests/stack/runtime_api.py).

For each run of each variant: a fresh emulator with the first event (a test notification,
events/test-notification.json) already queued, then the process is spawned. Measured:

- init: from just before the spawn to the first `GET /next` the emulator receives;
- first answer: from the spawn to the moment the answer to that first event is posted;
- VmHWM: peak resident set size from /proc/<pid>/status right after the first answer.

The variants are interleaved (every round runs each once, in a rotating order) so machine noise
lands on all of them alike; a first round warms the page cache and is not counted.

    .venv/bin/python bench/coldstart.py --bin-dir .bench-bin --runs 20
    .venv/bin/python bench/coldstart.py --variant before=/tmp/old-bootstrap --variant after=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import REPO, lambda_env, median, ms, table, vm_hwm_kib

from tests.stack.aws import AwsServer
from tests.stack.runtime_api import RuntimeApi

EVENT = os.path.join(REPO, "events", "test-notification.json")
PY_DIR = os.path.join(REPO, "bench", "python_baseline")


def python_command(venv: str) -> list[str]:
    return [os.path.join(venv, "bin", "python"), "-m", "awslambdaric", "handler.handler"]


def one_run(name: str, command: list[str], cwd: str | None, aws_endpoint: str, event) -> dict:
    api = RuntimeApi().start()
    # A killed function leaves its last `/next` connection reset: not worth a traceback.
    api._server.handle_error = lambda *a: None
    try:
        inv = api.submit(event, timeout_ms=30_000)
        env = lambda_env(api.address, aws_endpoint)
        if cwd:
            env["LAMBDA_TASK_ROOT"] = cwd
        with tempfile.TemporaryFile() as out:
            t0 = time.time()
            proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
            try:
                if not inv.done.wait(30):
                    raise RuntimeError(f"{name}: no answer in 30 s")
                hwm = vm_hwm_kib(proc.pid)
            finally:
                proc.kill()
                proc.wait()
            if not inv.ok or api.first_next_at is None or hwm is None:
                out.seek(0)
                raise RuntimeError(
                    f"{name}: bad run (ok={inv.ok}, payload={inv.payload}, hwm={hwm})\n"
                    + out.read().decode("utf-8", "replace")[-3000:]
                )
        return {
            "variant": name,
            "init_ms": (api.first_next_at - t0) * 1000,
            "answer_ms": (inv.answered_at - t0) * 1000,
            "hwm_kib": hwm,
        }
    finally:
        api.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=os.path.join(REPO, ".bench-bin"),
                   help="holds `bootstrap` and `floor` (bench/setup.sh)")
    p.add_argument("--python-venv", default=os.path.join(REPO, ".venv-bench"))
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=BINARY",
                   help="compare these binaries instead of the default three")
    p.add_argument("--json", help="write every sample here")
    args = p.parse_args()

    variants: list[tuple[str, list[str], str | None]] = []
    if args.variant:
        for spec in args.variant:
            name, _, path = spec.partition("=")
            variants.append((name, [os.path.abspath(path)], None))
    else:
        variants = [
            ("rust", [os.path.join(args.bin_dir, "bootstrap")], None),
            ("python", python_command(args.python_venv), PY_DIR),
            ("floor", [os.path.join(args.bin_dir, "floor")], None),
        ]
    with open(EVENT) as f:
        event = json.load(f)

    aws = AwsServer().start()
    samples: list[dict] = []
    try:
        for name, cmd, cwd in variants:  # warm-up round, not counted
            one_run(name, cmd, cwd, aws.endpoint, event)
        for r in range(args.runs):
            k = r % len(variants)
            for name, cmd, cwd in variants[k:] + variants[:k]:
                samples.append(one_run(name, cmd, cwd, aws.endpoint, event))
            print(f"round {r + 1}/{args.runs}", file=sys.stderr, flush=True)
    finally:
        aws.stop()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(samples, f, indent=1)

    names = [v[0] for v in variants]
    stats = {}
    for name in names:
        mine = [s for s in samples if s["variant"] == name]
        stats[name] = {
            "init": median([s["init_ms"] for s in mine]),
            "answer": median([s["answer_ms"] for s in mine]),
            "hwm": median([s["hwm_kib"] for s in mine]) / 1024,
            "hwm_max": max(s["hwm_kib"] for s in mine) / 1024,
            "n": len(mine),
        }
    rows = [
        [n, str(stats[n]["n"]), ms(stats[n]["init"]), ms(stats[n]["answer"]),
         f"{stats[n]['hwm']:.1f} MiB (max {stats[n]['hwm_max']:.1f})"]
        for n in names
    ]
    print(table(["variant", "runs", "init (spawn to first /next), median",
                 "first answer, median", "VmHWM, median"], rows))
    print()
    # Every pair, slower over faster: the Rust function against the Python baseline and the floor.
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            hi, lo = (a, b) if stats[a]["init"] >= stats[b]["init"] else (b, a)
            print(f"- {hi} / {lo}: init x{stats[hi]['init'] / stats[lo]['init']:.2f}, "
                  f"first answer x{stats[hi]['answer'] / stats[lo]['answer']:.2f}, "
                  f"VmHWM x{stats[hi]['hwm'] / stats[lo]['hwm']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
