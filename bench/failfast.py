#!/usr/bin/env python3
"""Fail-fast: a whole terminate invocation while a circuit it needs is open, against the local
stack, with the requests it made to every dependency (expected: none).

For each dependency (`autoscaling`, `etcd`): a function process whose endpoint for it is dead (a
loopback port that accepts connections and resets them, counting them), with
BREAKER_FAILURE_THRESHOLD=1 and a reset timeout of an hour. Invocations are sent until the answer
says "circuit open for <dependency>"; then `--runs` more are timed, from the moment the emulator
queues the event (the warm function waiting in `/next`) to the moment the answer is posted, and
the requests counted: connections to the dead endpoint, requests in the AWS stack's log (per
Action: a hold's heartbeat is a request to Auto Scaling, not to the dependency that is down), and etcd
gRPC requests (etcd's `grpc_server_handled_total` over all members). Last, the floor (bench/floor.rs)
answers the same event the same number of times: the floor of any invocation under this emulator.

    .venv/bin/python bench/failfast.py --bin-dir .bench-bin --runs 50
"""

from __future__ import annotations

import argparse
import os
import sys

from common import REPO, median, ms, percentile, table
from warm import Armer, etcd_counts

from tests.stack import Stack


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=os.path.join(REPO, ".bench-bin"))
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    binary = os.path.join(args.bin_dir, "bootstrap")

    rows = []
    with Stack(nodes=3) as stack:
        armer = Armer(stack)
        for dependency in ("autoscaling", "etcd"):
            dead = stack.dead_endpoint()
            env = {
                "BREAKER_FAILURE_THRESHOLD": "1",
                "BREAKER_RESET_TIMEOUT_SECS": "3600",
                "RETRY_MAX_ATTEMPTS": "2",
            }
            if dependency == "autoscaling":
                env["AWS_ENDPOINT_URL_AUTO_SCALING"] = dead.url
            else:
                env["ETCD_ENDPOINTS"] = dead.url
            fn = stack.spawn(binary, **env)
            # An instance with no etcd member: the invocations that open the circuit change nothing.
            action, _ = armer.arm("gone")
            event = stack.eventbridge(action)
            needle = f"circuit open for {dependency}"
            for _ in range(5):
                ok, payload = fn.invoke(event)
                if not ok and needle in payload.get("errorMessage", ""):
                    break
            else:
                raise RuntimeError(f"the {dependency} circuit never opened: {payload}\n{fn.output()}")

            latencies = []
            dead_before, aws_before, etcd_before = dead.connections, stack.aws.counts(), etcd_counts(stack)
            for _ in range(args.runs):
                inv = fn.api.submit(event)
                if not inv.done.wait(60):
                    raise RuntimeError(f"no answer\n{fn.output()}")
                if inv.ok or needle not in (inv.payload or {}).get("errorMessage", ""):
                    raise RuntimeError(f"expected '{needle}', got {inv.payload}")
                latencies.append((inv.answered_at - inv.queued_at) * 1000)
            etcd_delta = sum((etcd_counts(stack) - etcd_before).values())
            aws_after = stack.aws.counts()
            aws_delta = {k: n - aws_before.get(k, 0) for k, n in aws_after.items()
                         if n != aws_before.get(k, 0)}
            rows.append([
                dependency, str(len(latencies)), ms(median(latencies)),
                ms(percentile(latencies, 99)), ms(max(latencies)),
                str(dead.connections - dead_before),
                "; ".join(f"{k} {n}" for k, n in aws_delta.items()) or "0",
                str(etcd_delta), f'"{inv.payload["errorMessage"][:90]}"',
            ])
            fn.stop()
            stack.functions.remove(fn)
        # The floor of any invocation under this emulator: the floor, same event.
        floor = stack.spawn(os.path.join(args.bin_dir, "floor"))
        latencies = []
        for _ in range(args.runs):
            inv = floor.api.submit(event)
            if not inv.done.wait(60):
                raise RuntimeError("the floor function did not answer")
            latencies.append((inv.answered_at - inv.queued_at) * 1000)
        rows.append(["(floor, same event)", str(len(latencies)), ms(median(latencies)),
                     ms(percentile(latencies, 99)), ms(max(latencies)), "-", "-", "-", "the event"])
    print(table(["open circuit", "n", "median", "p99", "max", "connections to the dead endpoint",
                 "AWS requests", "etcd requests", "answer"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
