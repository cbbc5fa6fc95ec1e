"""One seeded chaos run: a fresh stack, `steps` random steps with the invariants checked after
each, then the faults cleared and the sweep left to finish (see world.py)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from typing import Any

from tests.stack import Stack

from .world import AUTOSCALING_ACTIONS, SWEEP_EVERY_S, WARM_POOL_MAX, Delivery, Topology, World

# Steps that only deliver events: the function's work, held to "never makes quorum worse".
FUNCTION_STEPS = {
    "terminate", "launch", "deliver_held_back", "redeliver", "concurrent", "sweep",
    "spot_interrupt", "refresh", "refresh_terminate", "terminate_pair", "warm_scale_in", "warm_launch",
}  # fmt: skip
ZONES = ("chaos-a", "chaos-b", "chaos-c")
# How long an injected AWS fault (a throttle, a 503 or a stall burst) lasts at most: a burst as AWS
# gives them. Counted in requests alone, a burst met only by a breaker's one probe per sweep
# stretched over as many sweeps as it had requests (seed 8195: four throttles, four sweeps, over
# a minute): an Auto Scaling outage longer than a hook's timeout, which no function can heartbeat
# through and which the breaker is there to wait out quietly (see RELIABILITY.md).
AWS_FAULT_BURST_S = 10.0


# Every three consecutive seeds meet every layout at least once (the short run is seeds 1-3).
FORCED = {1: {"zones", "spot"}, 2: {"learners", "concurrent", "warm_pool"}, 0: {"foreign_hook", "zones", "concurrent"}}


def choose_topology(rng: random.Random, nodes: int, learners: bool, seed: int) -> Topology:
    """The layout of one run, from its seed: one group or one per zone (2 or 3), Spot
    instances, another tool's hook, learners (with instance refreshes), deliveries in pairs, a
    warm pool on every group (never with Spot instances: AWS refuses a warm pool on a group that
    launches Spot instances)."""
    forced = FORCED[seed % 3]
    if rng.random() < 0.5 and "zones" not in forced:
        groups = {"chaos": nodes}
    else:
        zones = rng.choice((2, 3))
        groups = {z: nodes // zones + (1 if i < nodes % zones else 0) for i, z in enumerate(ZONES[:zones])}
    topology = Topology(
        groups=groups,
        spot=rng.random() < 0.4 or "spot" in forced,
        foreign_hook=rng.random() < 0.4 or "foreign_hook" in forced,
        learners=learners or "learners" in forced,
        concurrent=rng.random() < 0.4 or "concurrent" in forced,
    )
    # Drawn apart, so a run without a warm pool makes the same decisions it made before pools.
    warm = random.Random(f"warm-pool:{seed}").random() < 0.35
    if "warm_pool" in forced or (warm and not topology.spot):
        topology.warm_pool, topology.spot = True, False
    return topology


def refreshable(world: World, states: dict[str, str]) -> list[tuple[str, str]]:
    """Refresh pairs whose new instance is InService: the old one's terminate is due."""
    return [(new, old) for new, old in world.refreshes if states.get(new) == "InService"]


def choose(world: World) -> str:
    states = world.lifecycle_states()
    inservice = [i for i in world.order if states.get(i) == "InService" and world.live(i)]
    active = world.active_tokens()
    waiting = [t for t in world.tracked if t in active and world.tracked[t].deliveries > 0]
    topo = world.topology
    # A refresh whose new instance never went InService (abandoned, died) is over.
    world.refreshes = [(new, old) for new, old in world.refreshes if new in states]
    options: list[tuple[str, int]] = []
    if len(inservice) >= 2:
        options.append(("terminate", 18))
    can_launch = bool(world.stack._spare_ips) and len(states) < world.max_size - 1
    if can_launch:
        options.append(("launch", 14 if len(inservice) < 4 else 6))
    if topo.learners and can_launch and not world.refreshes and len(inservice) >= 2:
        options.append(("refresh", 8))
    if refreshable(world, states):
        options.append(("refresh_terminate", 20))
    if topo.spot and len(inservice) >= 3 and any(world.is_spot(i) for i in inservice):
        options.append(("spot_interrupt", 10))
    if topo.concurrent and len(inservice) >= 4:
        options.append(("terminate_pair", 6))
    room = topo.warm_pool and len(world.in_warm_pools()) < WARM_POOL_MAX
    if room and len(inservice) >= 2:
        options.append(("warm_scale_in", 12))
    if room and can_launch:
        options.append(("warm_launch", 4))
    if len(inservice) >= 3:
        options.append(("stop_instance", 2))
    if world.inflight:
        options.append(("deliver_held_back", 10))
    if waiting:
        options.append(("redeliver", 8))
    if len(world.inflight) + len(waiting) >= 2:
        options.append(("concurrent", 5))
    options += [
        ("etcd_stop", 5),
        ("etcd_pause", 4),
        ("aws_fault", 8),
        ("aws_refuse", 3),
        ("sweep", 6),
        ("cold_start", 2),
    ]
    if world.down:
        options.append(("etcd_heal", 12))
    if len(inservice) >= 3:
        options.append(("die", 2))
    kinds, weights = zip(*options)
    return world.rng.choices(kinds, weights)[0]


def within_tolerance(world: World, name: str) -> bool:
    """Whether taking `name` down leaves a healthy majority of voters."""
    snap = world.snapshot()
    if snap.members is None:
        return False
    voters = snap.voters
    if not any(m.name == name and m.id in snap.healthy for m in voters):
        return True
    unhealthy = sum(1 for m in voters if m.id not in snap.healthy)
    return unhealthy + 1 <= (len(voters) - 1) // 2


def do(world: World, kind: str) -> None:
    rng, stack, etcd = world.rng, world.stack, world.stack.etcd
    states = world.lifecycle_states()
    inservice = [i for i in world.order if states.get(i) == "InService" and world.live(i)]
    active = world.active_tokens()
    if kind == "terminate":
        iid = inservice[rng.randrange(len(inservice))]
        tracked = world.track(stack.start_terminate(iid))
        world.note(f"scale-in of {iid} ({world.group_of(iid)}{', Spot' if world.is_spot(iid) else ''})")
        world.dispatch_new(tracked.action)
    elif kind == "launch":
        launch(world, rng.choice(sorted(stack.groups)))
    elif kind == "refresh":
        old = inservice[rng.randrange(len(inservice))]
        new = launch(world, world.group_of(old), f"instance refresh of {old}: ")
        world.refreshes.append((new, old))
    elif kind == "refresh_terminate":
        new, old = refreshable(world, states)[0]
        world.refreshes.remove((new, old))
        if states.get(old) != "InService" or not world.live(old):
            world.note(f"instance refresh: {old} already gone")
            return
        tracked = world.track(stack.start_terminate(old))
        world.note(f"instance refresh: {new} InService, terminate {old}")
        world.dispatch_new(tracked.action)
    elif kind == "spot_interrupt":
        spots = [i for i in inservice if world.is_spot(i)]
        iid = spots[rng.randrange(len(spots))]
        if not within_tolerance(world, iid):
            world.note(f"Spot instance {iid} spared: its loss would leave no majority")
            return
        stack.interrupt_spot(iid)
        world.interrupted[iid] = time.monotonic()
        world.spot_noticed.add(iid)
        world.stats["spot_interruptions"] += 1
        tracked = world.track(stack.start_terminate(iid))
        world.note(f"Spot interruption of {iid} ({world.group_of(iid)}): marked-for-termination, terminate hook")
        world.dispatch_new(tracked.action)
    elif kind == "warm_scale_in":
        iid = inservice[rng.randrange(len(inservice))]
        if not within_tolerance(world, iid):
            world.note(f"{iid} kept in service: its leaving would leave no healthy majority")
            return
        tracked = world.track(stack.start_warm_scale_in(iid))
        world.stats["warm_scale_ins"] += 1
        world.note(f"scale-in of {iid} ({world.group_of(iid)}) back to the warm pool: Warmed:Pending:Wait")
        world.dispatch_new(tracked.action)
    elif kind == "warm_launch":
        group = rng.choice(sorted(stack.groups))
        iid, action = stack.start_warm_launch(group=group, control=True)
        world.order.append(iid)
        world.track(action)
        world.stats["warm_launches"] += 1
        world.note(f"launch into the warm pool of {group}: {iid} at {world.ip_of(iid)}, Warmed:Pending:Wait")
        world.dispatch_new(action)
    elif kind == "terminate_pair":
        first, second = rng.sample(inservice, 2)
        pair = [world.track(stack.start_terminate(i)).action for i in (first, second)]
        world.note(f"scale-in of {first} and {second}, both events at once on two environments")
        world.deliver([Delivery(a.token, world.shape()) for a in pair], concurrent=True)
    elif kind == "stop_instance":
        iid = inservice[rng.randrange(len(inservice))]
        if not within_tolerance(world, iid):
            world.note(f"{iid} left running: stopping it would leave no majority")
            return
        stack.stop_instance(iid)
        world.down[iid] = "instance-stopped"
        world.stats["instances_stopped"] += 1
        world.note(f"instance {iid} stopped in EC2 (its node with it), still in {world.group_of(iid)}")
    elif kind == "deliver_held_back":
        d = world.inflight.pop(rng.randrange(len(world.inflight)))
        world.deliver([d])
    elif kind == "redeliver":
        waiting = [t for t in world.tracked if t in active and world.tracked[t].deliveries > 0]
        world.deliver([Delivery(waiting[rng.randrange(len(waiting))], world.shape())])
    elif kind == "concurrent":
        waiting = [t for t in world.tracked if t in active and world.tracked[t].deliveries > 0]
        pool = [("held", i) for i in range(len(world.inflight))] + [("again", t) for t in waiting]
        picks = rng.sample(pool, 2)
        deliveries = []
        for src, x in sorted(picks, key=lambda p: p[0] == "again"):
            if src == "held":
                deliveries.append(world.inflight[x])
            else:
                deliveries.append(Delivery(x, world.shape()))
        world.inflight = [d for d in world.inflight if d not in deliveries]
        world.note("two deliveries at once")
        world.deliver(deliveries, concurrent=True)
    elif kind in ("etcd_stop", "etcd_pause"):
        candidates = [n for n in world.order if n in etcd.nodes and etcd.nodes[n].answering() and n not in world.down]
        if not candidates:
            return
        name = candidates[rng.randrange(len(candidates))]
        too_many = rng.random() < 0.10
        kill = rng.random() < 0.5
        fits = within_tolerance(world, name)
        if not too_many and not fits:
            world.note(f"etcd {name} left up: one more down would leave no majority")
            return
        too_many = too_many and not fits
        if kind == "etcd_stop":
            etcd.stop_node(name, kill=kill)
            world.down[name] = "stopped"
        else:
            etcd.pause_node(name)
            world.down[name] = "paused"
        world.stats["etcd_faults"] += 1
        if too_many:
            world.beyond_tolerance += 1
        world.note(f"etcd {name} {'killed' if kill and kind == 'etcd_stop' else 'stopped' if kind == 'etcd_stop' else 'paused'}{' (beyond tolerance)' if too_many else ''}")
    elif kind == "etcd_heal":
        downed = [n for n in world.order if n in world.down]
        world.heal(downed[rng.randrange(len(downed))])
    elif kind == "aws_fault":
        service = rng.choice(("autoscaling", "ec2"))
        fault = rng.choice(("throttle", "503", "stall"))
        times = rng.randint(1, 5)
        action = rng.choice(AUTOSCALING_ACTIONS) if service == "autoscaling" else rng.choice((None, "DescribeInstances"))
        stall_s = round(rng.uniform(1.0, 4.0), 2) if fault == "stall" else 0.0
        stack.aws.inject(service, fault, times, action=action, stall_s=stall_s, lasts_s=AWS_FAULT_BURST_S)
        world.stats["aws_faults"] += 1
        world.note(f"AWS fault: {service} {action or '*'} {fault} x{times}{f' {stall_s}s' if stall_s else ''} within {AWS_FAULT_BURST_S:.0f}s")
    elif kind == "aws_refuse":
        service = rng.choice(("autoscaling", "ec2"))
        seconds = round(rng.uniform(0.2, 2.0), 2)
        world.gates[service].refuse_for(seconds)
        world.stats["aws_faults"] += 1
        world.note(f"AWS {service} refuses connections for {seconds}s")
    elif kind == "sweep":
        world.deliver([Delivery(None)])
    elif kind == "cold_start":
        i = rng.randrange(len(world.fns))
        world.fns[i].stop()
        world.fns[i] = world.spawn()
        world.note(f"execution environment {i} replaced (cold start, breakers closed)")
    elif kind == "die":
        iid = inservice[rng.randrange(len(inservice))]
        if not within_tolerance(world, iid):
            world.note(f"{iid} spared: its death would leave no majority")
            return
        stack.aws.terminate_outside_hooks(iid)
        world.stats["deaths"] += 1
        world.note(f"{iid} died outside the hooks")
    else:
        raise ValueError(kind)


def launch(world: World, group: str, why: str = "") -> str:
    """A scale-out in `group` (a Spot instance half the time in a Spot run); returns its ID."""
    spot = world.topology.spot and world.rng.random() < 0.5
    iid, action = world.stack.start_launch(control=True, group=group, spot=spot)
    world.order.append(iid)
    world.track(action)
    world.note(f"{why}scale-out: {iid} at {world.ip_of(iid)} in {group}{' (Spot)' if spot else ''}")
    world.dispatch_new(action)
    return iid


def run_one(
    seed: int,
    steps: int,
    stop_at: float | None = None,
    keep: bool = False,
    out_dir: str | None = None,
    verbose: bool = False,
    reuse_addresses: bool = False,
) -> dict[str, Any]:
    """Runs one seeded chaos run; returns its record (violations, counts, time)."""
    # A stopped run still tears its stack down (etcd nodes, function processes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(seed)
    nodes = rng.choice((3, 3, 5))
    learners = rng.random() < 0.7
    env = {
        # Endpoints from the groups' addresses: a fixed list goes stale once the first
        # instances are replaced.
        "ETCD_ENDPOINTS": "",
        "BREAKER_RESET_TIMEOUT_SECS": "3",
        "RETRY_MAX_ATTEMPTS": str(rng.choice((3, 4, 5))),
    }
    topology = choose_topology(rng, nodes, learners, seed)
    learners = topology.learners
    env.update(topology.env())
    started = time.monotonic()
    record: dict[str, Any] = {
        "seed": seed,
        "nodes": nodes,
        "learners_on_launch": learners,
        "topology": topology.describe(),
        "reuse_addresses": reuse_addresses,
        "steps": steps,
        "steps_done": 0,
        "cut_short": False,
        "converged": False,
        "violations": [],
        "stats": {},
    }
    stack = Stack(nodes=nodes, keep=True, **topology.stack_args())
    world: World | None = None
    try:
        stack.up()
        if topology.spot:
            for iid in stack.instance_ids:
                if rng.random() < 0.5:
                    stack.make_spot(iid)
        world = World(stack, rng, env, topology=topology)
        world.reuse_addresses = reuse_addresses
        for i in range(1, steps + 1):
            if stop_at is not None and time.time() > stop_at:
                record["cut_short"] = True
                break
            world.step_no = i
            before = world.snapshot()
            if world.oldest_wait() > SWEEP_EVERY_S:
                kind = "sweep"  # the schedule: more often than the hooks' heartbeat timeout
            else:
                kind = choose(world)
            world.stats[f"step_{kind}"] += 1
            do(world, kind)
            world.agent()
            world.check_step(before, world.snapshot(), kind in FUNCTION_STEPS)
            record["steps_done"] = i
        world.step_no = steps + 1
        record["converged"] = world.quiesce()
    except Exception:  # a broken run is reported, not hidden
        record["violations"].append({"step": world.step_no if world else 0, "invariant": "harness-error", "detail": traceback.format_exc()[-3000:]})
    finally:
        if world is not None:
            record["violations"] += [v.as_dict() for v in world.violations]
            record["stats"] = dict(world.stats)
            if world.held_at_floor:
                record["stats"]["held_at_floor_at_end"] = len(world.held_at_floor)
            if verbose:
                record["log_tail"] = world.log
            elif record["violations"]:
                record["log_tail"] = world.log[-60:]
        record["duration_s"] = round(time.monotonic() - started, 1)
        failed = bool(record["violations"])
        if out_dir and failed and world is not None:
            dest = os.path.join(out_dir, f"seed-{seed}")
            os.makedirs(dest, exist_ok=True)
            with open(os.path.join(dest, "steps.log"), "w") as f:
                f.write("\n".join(world.log) + "\n")
            logs = os.path.join(stack.workdir, "logs")
            if os.path.isdir(logs):
                shutil.copytree(logs, os.path.join(dest, "function-logs"), dirs_exist_ok=True)
            etcd_logs = os.path.join(stack.workdir, "etcd")
            if os.path.isdir(etcd_logs):
                for name in os.listdir(etcd_logs):
                    if name.endswith(".log"):
                        shutil.copy(os.path.join(etcd_logs, name), dest)
            with open(os.path.join(dest, "record.json"), "w") as f:
                json.dump(record, f, indent=1, default=str)
            record["artifacts"] = dest
        stack.keep = keep
        stack.down()
    return record
