"""CLI of the seeded chaos runs (see __init__.py). Exit status: 0 when every run kept every
invariant, 1 when any violation was seen, 2 when nothing could run."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import sys
import time

from tests.stack import bootstrap_path

from .run import run_one


def summary_line(r: dict) -> str:
    s = r.get("stats", {})
    removed = s.get("members_removed", 0)
    holds = s.get("delivery_held", 0)
    flag = "ok  " if not r["violations"] else "FAIL"
    extra = " (cut short by the time budget)" if r.get("cut_short") else ""
    return (
        f"{flag} seed={r['seed']} nodes={r['nodes']} [{r.get('topology', '')}] steps={r['steps_done']}/{r['steps']} "
        f"invocations={s.get('invocations', 0)} removed={removed} held={holds} "
        f"etcd_faults={s.get('etcd_faults', 0)} aws_faults={s.get('aws_faults', 0)} "
        f"spot_interruptions={s.get('spot_interruptions', 0)} "
        f"warm={s.get('warm_scale_ins', 0)}+{s.get('warm_launches', 0)} "
        f"converged={r['converged']} violations={len(r['violations'])} ({r['duration_s']}s){extra}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="base seed; run i uses seed+i (default: from the clock)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=25, help="steps per run")
    p.add_argument("--time-budget", type=float, default=None, help="seconds for the whole command: no run starts, and no step, once spent")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (each has its own stack)")
    p.add_argument("--out", default=None, help="directory for report.json and the logs of failing runs")
    p.add_argument("--keep", action="store_true", help="keep every run's stack directory (.stack/)")
    p.add_argument("--bootstrap", default=None, help="the function binary (default: BOOTSTRAP or the release build)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run's step log")
    p.add_argument(
        "--reuse-addresses",
        action="store_true",
        help="give a terminated instance's address to the next launch at once, as AWS may (off: only once no member refers to it)",
    )
    args = p.parse_args(argv)

    if args.bootstrap:
        os.environ["BOOTSTRAP"] = os.path.abspath(args.bootstrap)
    binary = bootstrap_path()
    if not os.access(binary, os.X_OK):
        print(f"chaos: function binary {binary} is missing: run `cargo build --release` (or set BOOTSTRAP)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    started = time.time()
    stop_at = started + args.time_budget if args.time_budget else None
    print(
        f"chaos: seed {seed}, {args.runs} run(s) of {args.steps} steps, {args.jobs} at a time"
        f"{f', budget {args.time_budget:.0f}s' if args.time_budget else ''}, binary {binary}",
        flush=True,
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)

    def stop(*_):
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()  # each run tears its own stack down
        raise SystemExit(130)

    records: list[dict] = []
    durations: list[float] = []
    next_run = 0
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs))
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with pool:
        running: dict[concurrent.futures.Future, int] = {}

        def can_start() -> bool:
            if next_run >= args.runs:
                return False
            if stop_at is None:
                return True
            estimate = (sum(durations) / len(durations)) if durations else 45.0
            return time.time() + estimate * 0.8 < stop_at

        while True:
            while len(running) < max(1, args.jobs) and can_start():
                f = pool.submit(run_one, seed + next_run, args.steps, stop_at, args.keep, args.out, args.verbose, args.reuse_addresses)
                running[f] = seed + next_run
                next_run += 1
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in done:
                run_seed = running.pop(f)
                try:
                    record = f.result()
                except Exception as e:  # the worker itself died
                    record = {"seed": run_seed, "nodes": 0, "steps": args.steps, "steps_done": 0, "converged": False, "duration_s": 0, "violations": [{"step": 0, "invariant": "harness-error", "detail": repr(e)}], "stats": {}}
                records.append(record)
                durations.append(record["duration_s"])
                print(summary_line(record), flush=True)
                for v in record["violations"]:
                    print(f"     step {v['step']}: {v['invariant']}: {v['detail'][:1500]}", flush=True)
                if record["violations"] or args.verbose:
                    for line in record.get("log_tail", []):
                        print(f"       {line[:300]}", flush=True)
                    if record.get("artifacts"):
                        print(f"     logs: {record['artifacts']}", flush=True)

    elapsed = time.time() - started
    steps = sum(r["steps_done"] for r in records)
    invocations = sum(r.get("stats", {}).get("invocations", 0) for r in records)
    violations = sum(len(r["violations"]) for r in records)
    by_invariant: dict[str, int] = {}
    for r in records:
        for v in r["violations"]:
            by_invariant[v["invariant"]] = by_invariant.get(v["invariant"], 0) + 1
    print(
        f"\nchaos: {len(records)} run(s) of {args.runs} asked, {steps} steps, {invocations} invocations, "
        f"{violations} violation(s){' ' + json.dumps(by_invariant) if by_invariant else ''} in {elapsed:.0f}s "
        f"(seeds {seed}..{seed + max(0, len(records) - 1)})",
        flush=True,
    )
    if args.out:
        report = {
            "base_seed": seed,
            "runs_asked": args.runs,
            "steps_per_run": args.steps,
            "jobs": args.jobs,
            "time_budget_s": args.time_budget,
            "elapsed_s": round(elapsed, 1),
            "runs": len(records),
            "steps": steps,
            "invocations": invocations,
            "violations": violations,
            "by_invariant": by_invariant,
            "records": sorted(records, key=lambda r: r["seed"]),
        }
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)
    if not records:
        return 2
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
