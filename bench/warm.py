#!/usr/bin/env python3
"""Warm invocation latency of terminate events, end to end against the local stack (moto's Auto
Scaling and EC2, a real 3-node etcd cluster on loopback), with the AWS and etcd requests each
event made.

Every invocation needs a lifecycle action of its own, so each one is armed first (not timed): a new
instance joins the group (moto) and pauses in `Terminating:Wait`. Two kinds, interleaved:

- `remove`: the instance's etcd member exists (a learner whose peer URL is the instance's IP,
  added before the event), so the function lists the members, asks each voter for its status,
  checks quorum, removes the member (sent to the leader) and completes the action;
- `gone`: the instance has no etcd member (already removed), so the function lists the members,
  asks each voter for its status and completes the action.

Latency: from the moment the emulator queues the event (the warm function is already waiting in
`/next`) to the moment the answer is posted. AWS requests: the stack's request log (per Action).
etcd requests: the sum over the members of etcd's own `grpc_server_handled_total` counters
(per method), read over HTTP at `/metrics` before and after each invocation (the bench makes no
etcd call in between). The time moto spends answering is added up too (a wrapper around moto
inside the stack's fault layer): the rest is the function, etcd and the loopback.

With `--cold`, each invocation gets a freshly spawned process instead (latency from the spawn to
the answer): the cold start plus the first real event.

With `--connections`, each binary runs under `strace -e trace=connect` and every event also
reports how many TCP connections the function opened to etcd's client port: each one is a TLS
handshake with `--tls` (the cluster then serves its clients over TLS with client certificates).
strace stops the process at each connect, so quote latency from a run without it.

    .venv/bin/python bench/warm.py --bin-dir .bench-bin --runs 100
    .venv/bin/python bench/warm.py --variant before=/tmp/a --variant after=/tmp/b --cold --runs 20
    .venv/bin/python bench/warm.py --variant before=/tmp/a --variant after=/tmp/b --tls --connections
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import REPO, median, ms, percentile, table, vm_hwm_kib

from tests.stack import Stack, events
from tests.stack.aws import TERMINATING, launch_instance
from tests.stack.etcd import EtcdError

KINDS = ("remove", "gone")
METRIC = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="([^"]+)"[^}]*\} (\S+)$')


ETCD_CLIENT_PORT = "htons(2379)"


def etcd_counts(stack: Stack) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for url in stack.etcd.endpoints():
        with urllib.request.urlopen(url + "/metrics", timeout=5,
                                    context=stack.etcd.ssl_context) as r:
            for line in r.read().decode().splitlines():
                m = METRIC.match(line)
                if m:
                    total[m.group(1)] += int(float(m.group(2)))
    return total


class Armer:
    """Hands out terminate actions on fresh instances (unique loopback IPs of the stack's /24)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.next_host = 30

    def arm(self, kind: str):
        if self.next_host > 250:
            raise RuntimeError("out of addresses in this slot: use fewer runs")
        ip = f"127.0.{self.stack.slot.n}.{self.next_host}"
        self.next_host += 1
        aws, seeded = self.stack.aws, self.stack.seeded
        instance_id = launch_instance(aws, seeded.subnet_id, None, ip)
        aws.client("autoscaling").attach_instances(
            AutoScalingGroupName=seeded.group, InstanceIds=[instance_id]
        )
        seeded.instances[instance_id] = ip
        member = None
        if kind == "remove":
            deadline = time.monotonic() + 30
            while True:
                try:
                    member = self.stack.etcd.add_member(f"http://{ip}:2380", learner=True)
                    break
                except EtcdError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        action = self.stack.start_terminate(instance_id)
        return action, member

    def forget_terminated(self) -> None:
        """Drops terminated instances from moto's EC2 state (AWS forgets them within the hour): moto
        scans every instance it ever ran for each DescribeInstances, so without this its answers
        slow down run after run and the figures drift."""
        _, ec2 = self.stack.aws.registry._backends()
        for rid, reservation in list(ec2.reservations.items()):
            if all(i.state == "terminated" for i in reservation.instances):
                del ec2.reservations[rid]


class ConnectLog:
    """The connect() calls of one binary, as `strace` writes them: the binary is wrapped in a
    script that execs it under strace, and each event's share is what the log gained during it."""

    def __init__(self, binary: str, workdir: str, name: str):
        self.path = os.path.join(workdir, f"{name}.connect.log")
        self.wrapper = os.path.join(workdir, f"{name}.traced")
        with open(self.wrapper, "w") as f:
            f.write("#!/bin/sh\n"
                    f"exec strace -f -qq -e trace=connect -e signal=none -o '{self.path}' "
                    f"'{binary}'\n")
        os.chmod(self.wrapper, 0o755)
        self.offset = 0

    def take(self) -> int:
        """Connections to etcd's client port since the last call."""
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines()
                   if "connect(" in line and ETCD_CLIENT_PORT in line)


def traced_child(pid: int) -> int:
    """The binary strace runs (its first child), for its peak RSS."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


class MotoClock:
    """Wraps moto inside the stack's fault layer to add up the time moto spends answering, so the
    function's own share of an invocation is the total minus this."""

    def __init__(self, stack: Stack):
        self.spent = 0.0
        layer = stack.aws.layer
        inner = layer.app

        def timed(environ, start_response):
            t = time.perf_counter()
            try:
                return inner(environ, start_response)
            finally:
                self.spent += time.perf_counter() - t

        layer.app = timed


def check(stack: Stack, kind: str, action, member, ok: bool, payload) -> None:
    if not ok:
        raise RuntimeError(f"{kind}: error answer {payload}")
    done = [c for c in stack.aws.completions() if c["token"] == action.token]
    if len(done) != 1 or done[0]["result"] != "CONTINUE":
        raise RuntimeError(f"{kind}: action not completed with CONTINUE: {payload}")
    if member is not None and member.id in {m.id for m in stack.etcd.members()}:
        raise RuntimeError(f"{kind}: member {member.id:x} still there: {payload}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=os.path.join(REPO, ".bench-bin"))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=BINARY")
    p.add_argument("--runs", type=int, default=100, help="invocations per kind and variant")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--cold", action="store_true", help="a fresh process per invocation")
    p.add_argument("--tls", action="store_true", help="etcd serves clients over TLS")
    p.add_argument("--connections", action="store_true",
                   help="count each event's TCP connections to etcd (runs the binaries under strace)")
    p.add_argument("--json")
    args = p.parse_args()

    variants = [tuple(v.split("=", 1)) for v in args.variant] or [
        ("rust", os.path.join(args.bin_dir, "bootstrap"))
    ]
    variants = [(n, os.path.abspath(b)) for n, b in variants]
    kinds = args.kinds.split(",")
    if args.runs * len(kinds) * len(variants) + 3 * len(variants) > 220:
        p.error("at most about 220 invocations fit in one stack's addresses")

    samples = []
    traces = tempfile.mkdtemp(prefix="warm-connect-")
    logs = {}
    if args.connections:
        if args.cold:
            p.error("--connections counts a warm process's connections: not with --cold")
        logs = {name: ConnectLog(binary, traces, name) for name, binary in variants}
        variants = [(name, logs[name].wrapper) for name, _ in variants]
    with Stack(nodes=3, etcd_tls=args.tls) as stack:
        armer = Armer(stack)
        clock = MotoClock(stack)
        fns = {}
        if not args.cold:
            for name, binary in variants:
                fns[name] = stack.spawn(binary)
                for _ in range(3):  # warm-up, not counted
                    action, _ = armer.arm("gone")
                    fns[name].invoke(stack.eventbridge(action))
                    armer.forget_terminated()
                if name in logs:
                    logs[name].take()
        combos = [(v, k) for v in variants for k in kinds]
        for r in range(args.runs):
            shift = r % len(combos)
            for (name, binary), kind in combos[shift:] + combos[:shift]:
                action, member = armer.arm(kind)
                event = stack.eventbridge(action)
                aws_before = stack.aws.counts()
                etcd_before = etcd_counts(stack)
                moto_before = clock.spent
                if args.cold:
                    fn = stack.spawn(binary)
                    inv = fn.api.submit(event)
                    if not inv.done.wait(60):
                        raise RuntimeError(f"no answer\n{fn.output()}")
                    latency = (inv.answered_at - fn.spawned_at) * 1000
                    ok, payload = bool(inv.ok), inv.payload
                else:
                    fn = fns[name]
                    inv = fn.api.submit(event)
                    if not inv.done.wait(60):
                        raise RuntimeError(f"no answer\n{fn.output()}")
                    latency = (inv.answered_at - inv.queued_at) * 1000
                    ok, payload = bool(inv.ok), inv.payload
                moto_ms = (clock.spent - moto_before) * 1000
                connections = logs[name].take() if name in logs else None
                etcd_after = etcd_counts(stack)
                aws_after = stack.aws.counts()
                if args.cold:
                    fn.stop()
                    stack.functions.remove(fn)
                check(stack, kind, action, member, ok, payload)
                armer.forget_terminated()
                samples.append({
                    "variant": name,
                    "kind": kind,
                    "ms": latency,
                    "moto_ms": moto_ms,
                    "connections": connections,
                    "aws": {k: aws_after[k] - aws_before.get(k, 0) for k in aws_after
                            if aws_after[k] != aws_before.get(k, 0)},
                    "etcd": {k: etcd_after[k] - etcd_before[k] for k in etcd_after
                             if etcd_after[k] != etcd_before[k]},
                })
            print(f"round {r + 1}/{args.runs}", file=sys.stderr, flush=True)
        peaks = {name: vm_hwm_kib(traced_child(fn.proc.pid) if logs else fn.proc.pid)
                 for name, fn in fns.items()}
        if logs:
            # strace leaves its tracee running when it is stopped: end the binary first.
            for fn in fns.values():
                child = traced_child(fn.proc.pid)
                if child != fn.proc.pid:
                    os.kill(child, signal.SIGTERM)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(samples, f, indent=1)

    rows = []
    for name, _ in variants:
        for kind in kinds:
            mine = [s for s in samples if s["variant"] == name and s["kind"] == kind]
            xs = [s["ms"] for s in mine]
            aws = collections.Counter(json.dumps(s["aws"], sort_keys=True) for s in mine)
            etcd = collections.Counter(json.dumps(s["etcd"], sort_keys=True) for s in mine)
            rows.append([
                name, kind, str(len(xs)), ms(median(xs)), ms(percentile(xs, 99)), ms(max(xs)),
                ms(median([s["moto_ms"] for s in mine])),
                ms(median([s["ms"] - s["moto_ms"] for s in mine])),
                ms(percentile([s["ms"] - s["moto_ms"] for s in mine], 99)),
                "; ".join(f"{k} x{n}" for k, n in aws.most_common()),
                "; ".join(f"{k} x{n}" for k, n in etcd.most_common()),
            ])
            if logs:
                conns = collections.Counter(s["connections"] for s in mine)
                rows[-1].append("; ".join(f"{k} x{n}" for k, n in sorted(conns.items())))
    print(table(["variant", "event", "n", "median", "p99", "max", "in moto, median",
                 "outside moto, median", "outside moto, p99",
                 "AWS requests per event (x how many events)",
                 "etcd gRPC requests per event (x how many events)"]
                + (["etcd connections per event (x how many events)"] if logs else []), rows))
    for name, kib in peaks.items():
        print(f"\n- {name}: VmHWM after all {args.runs * len(kinds) + 3} invocations: "
              f"{kib / 1024:.1f} MiB")
    if len(variants) > 1:
        print()
        base = variants[0][0]
        for kind in kinds:
            b = median([s["ms"] for s in samples if s["variant"] == base and s["kind"] == kind])
            for name, _ in variants[1:]:
                o = median([s["ms"] for s in samples if s["variant"] == name and s["kind"] == kind])
                print(f"- {kind}: {name} / {base} = x{o / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
