"""The world a chaos run plays in, the ways it can change, and the invariants checked after each step.

The world is a `tests.stack.Stack` (moto's Auto Scaling/EC2 with lifecycle actions, a real etcd
cluster, the release binary under the Runtime API emulator) plus what AWS and the machines do by
themselves, modelled here:

* a completed terminate terminates the instance, and its etcd node dies with the machine;
* an instance may die outside the hooks (EC2 API, hardware): no hook runs, its node is gone;
* a launched instance's node starts etcd (`--initial-cluster-state existing`) once its member
  exists: the learner the function added at launch, or, failing that, one its bootstrap script
  adds (as a kubeadm join does) when no other learner is catching up;
* an instance going back to a warm pool on scale-in waits in `Warmed:Pending:Wait` on the
  terminate hooks (out of its group's listing; its node runs on); once they are all completed it
  rests in the pool in `Warmed:Stopped`, stopped in EC2, and its node stops with it (the pool's
  instances are never launched out of it again here); an instance launched into a warm pool
  waits there on the launch hooks, then rests stopped the same way, and never runs etcd;
* an address comes back into use once no member refers to it any more; with `reuse_addresses`,
  as soon as its instance is terminated, as AWS does (a member of a dead instance may then share
  its address with a new instance: see RELIABILITY.md for what that shows);
* layouts chosen per run (`Topology`): one cluster over several groups (one per zone, all in
  `ASG_NAMES`); Spot instances, whose confirmed interruption (the Spot request
  `marked-for-termination`, then the terminate hook) ends with the instance reclaimed
  `SPOT_NOTICE_S` later whatever the hook says; another tool's terminate hook on every group
  (listed first, `LIFECYCLE_HOOK_NAMES` naming only ours), whose actions that tool completes one
  step after they start; instance refreshes (a launch, then the old instance's terminate once the
  new one is InService); a warm pool on every group (never with Spot instances, which AWS does not
  allow), scale-ins going back to it (at most `WARM_POOL_MAX` instances in pools at once, as a
  full pool makes a scale-in a plain one) and launches into it; instances stopped in EC2 (their
  node with them) and started again;
* AWS faults come in bursts (`run.AWS_FAULT_BURST_S`): a throttle, 503 or stall burst answers at
  most its number of requests, and ends after a few seconds whatever is left of it, as a rate
  limit refills; refused connections last under two seconds.

Ground truth is read straight from the processes (etcd's status on each node's own address, moto's
models), never from what the function says.

Invariants (a violation names the step, the invariant and what was seen):

* quorum: after every step, a majority of the voting members answer, unless the chaos itself has
  stopped or paused so many voters that no majority is up; and a step that only delivers events
  (the function's work) never takes a cluster that had quorum to one without;
* no wrong removal: a member that disappears in a step belongs to an instance that is terminating,
  terminated, going back to or resting in a warm pool (`Warmed:*`: out of the cluster), or no
  longer in its group (a stopped instance that is still in its group exists: its member stays);
* no healthy member removed: a member that answered `Status` before a step and is gone after it
  belongs to an instance whose terminate the chaos started (scale-in, to a warm pool or out of
  the group, refresh, Spot interruption): nothing else (a launch, a sweep, another group's
  event) removes a live member;
* the voter floor: a step that removes a voter never leaves fewer voting members than
  `ETCD_MIN_VOTERS` (default 2), unless the floor is crossed by removing Spot instances whose
  interruption was confirmed (their members kept, a cluster at the floor loses quorum when the
  machines go), the step's other removals staying above it, and at least one voter is left; the chaos itself never removes a member (it only
  stops, pauses and kills nodes), so a membership below the floor is always the function's doing;
* another tool's hook untouched: no `CompleteLifecycleAction` or
  `RecordLifecycleActionHeartbeat` is ever made (or even attempted) on a hook that is not
  ours, except the other tool's own completions, which the world makes in-process;
* no silent success: an invocation (or SQS record) answered as success leaves its lifecycle action
  completed; a sweep answered as success leaves no action it could see waiting;
* not lost: no lifecycle action goes longer than the hooks' heartbeat timeout (scaled down to
  `HEARTBEAT_TIMEOUT_S`) without a heartbeat or completion; a sweep runs whenever an action has
  waited `SWEEP_EVERY_S`, as the schedule would (PRODUCT.md: more often than the timeout);
* in time: every invocation is answered before its deadline, and (for deliveries that ran alone)
  its completions and heartbeats are recorded before it;
* no crash, no hang: the function never dies and always answers;
* finished: once the faults clear, the sweep completes every action and removes every member of
  every terminated instance and of every instance resting stopped in a warm pool, every voting
  member is healthy, and (with learners) every InService instance (not one in a warm pool) has
  a member.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.stack import FunctionDied, FunctionProcess, InvocationTimeout, Stack, events
from tests.stack.aws import LAUNCHING, TERMINATING, WARM_STOPPED, WARM_WAIT, LifecycleAction
from tests.stack.etcd import EtcdError, Member, gateway

HEARTBEAT_TIMEOUT_S = 60.0
SWEEP_EVERY_S = 15.0
# A Spot interruption's two-minute notice, scaled down: the instance is reclaimed this long after
# the notice whatever its hook says.
SPOT_NOTICE_S = 30.0
QUIESCE_TIMEOUT_MS = 20_000
STUCK_S = 40.0  # the end: sweeps that change nothing for this long will not finish it
FOREIGN_HOOK = "node-drain"  # another tool's terminate hook, on every group when the run has one
# Instances in warm pools at once (all groups): a full pool makes a scale-in a plain one. Pool
# instances keep their addresses (they are only stopped), so this also bounds what they hold.
WARM_POOL_MAX = 2
# EC2 states in which an instance still exists (PRODUCT.md: a member of one is never stale).
EXISTING = ("pending", "running", "stopping", "stopped")
SHAPES = ("eventbridge", "sns", "sqs", "sns_in_sqs", "sqs_with_test_notification")
SHAPE_WEIGHTS = (40, 20, 20, 15, 5)
AUTOSCALING_ACTIONS = (
    None,
    "CompleteLifecycleAction",
    "RecordLifecycleActionHeartbeat",
    "DescribeAutoScalingGroups",
    "DescribeLifecycleHooks",
)


@dataclass
class Topology:
    """The layout a run is built with (chosen by its seed; see run.py)."""

    groups: dict[str, int] = field(default_factory=lambda: {"chaos": 3})
    spot: bool = False  # Spot instances, and their interruptions
    foreign_hook: bool = False  # another tool's terminate hook on every group
    learners: bool = False  # ETCD_ADD_LEARNER_ON_LAUNCH, and instance refreshes
    concurrent: bool = False  # deliveries in pairs on the two execution environments
    warm_pool: bool = False  # a warm pool on every group: scale-ins back to it, launches into it

    def stack_args(self) -> dict[str, Any]:
        return {
            "groups": dict(self.groups),
            "foreign_hooks": {FOREIGN_HOOK: TERMINATING} if self.foreign_hook else None,
        }

    def env(self) -> dict[str, str]:
        # Deliveries draw their timeout from 3.5 to 20 s: a 2 s reserve fits the shortest (one
        # that does not is refused as a configuration error, not held).
        env = {
            "ETCD_ADD_LEARNER_ON_LAUNCH": "true" if self.learners else "false",
            "DEADLINE_RESERVE_MS": "2000",
        }
        if self.foreign_hook:
            env["LIFECYCLE_HOOK_NAMES"] = ",".join(
                f"{g}-{t}" for g in self.groups for t in ("launch", "terminate")
            )
        return env

    def describe(self) -> str:
        parts = ["+".join(f"{g}:{n}" for g, n in self.groups.items())]
        parts += [
            name for name in ("spot", "foreign_hook", "learners", "concurrent", "warm_pool") if getattr(self, name)
        ]  # fmt: skip
        return " ".join(parts)


@dataclass
class Violation:
    step: int
    invariant: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "invariant": self.invariant, "detail": self.detail}


@dataclass
class Tracked:
    """A lifecycle action the chaos started."""

    action: LifecycleAction
    deliveries: int = 0
    lost_reported: bool = False
    foreign: bool = False  # another tool's action: its events must be skipped
    warm: bool = False  # into a warm pool (back on scale-in, or launched into it)


@dataclass
class Delivery:
    token: str | None  # None: the scheduled sweep
    shape: str = "eventbridge"


@dataclass
class Answer:
    delivery: Delivery
    ok: bool
    payload: Any
    started: float
    answered_at: float | None
    deadline: float
    error: str | None = None  # the function died or never answered


@dataclass
class Snapshot:
    """Ground truth at one moment."""

    members: dict[int, Member] | None  # None: no etcd node answered
    healthy: set[int] = field(default_factory=set)

    @property
    def voters(self) -> list[Member]:
        return [m for m in (self.members or {}).values() if not m.is_learner]

    @property
    def quorate(self) -> bool:
        voters = self.voters
        if not voters:
            return False
        return sum(1 for m in voters if m.id in self.healthy) >= len(voters) // 2 + 1

    def describe(self) -> str:
        if self.members is None:
            return "no etcd node answered"
        parts = []
        for m in sorted(self.members.values(), key=lambda m: m.name):
            tag = "learner" if m.is_learner else "voter"
            parts.append(f"{m.name or '(unstarted)'}:{tag}:{'up' if m.id in self.healthy else 'DOWN'}")
        return ", ".join(parts)


class World:
    def __init__(
        self,
        stack: Stack,
        rng: random.Random,
        env: dict[str, str],
        binary: str | None = None,
        topology: Topology | None = None,
    ):
        self.stack = stack
        self.rng = rng
        self.env = env
        self.binary = binary  # None: the release build (BOOTSTRAP)
        self.topology = topology or Topology(groups=dict(stack.group_sizes))
        self.reuse_addresses = False
        self.beyond_tolerance = 0  # etcd faults the chaos made past what quorum survives
        self.gates = {s: stack.aws_gate(s) for s in ("autoscaling", "ec2")}
        self.fns: list[FunctionProcess] = [self.spawn(), self.spawn()]
        self.max_size = len(stack.slot.ips)
        for group in stack.groups:
            stack.aws.client("autoscaling", control=True).update_auto_scaling_group(
                AutoScalingGroupName=group, MaxSize=self.max_size
            )
            if self.topology.warm_pool:
                stack.aws.ensure_warm_pool(group)  # DescribeWarmPool lists it from the start
        # Hooks that are not the function's (another tool's), on any group.
        self.foreign_hooks = {h for g in stack.groups.values() for h in g.foreign_hooks}
        self.foreign_done: set[str] = set()  # tokens the other tool (the world) completed
        self.foreign_started: dict[str, int] = {}  # token -> step it started in
        self.terminated_by_hook: set[str] = set()  # instances whose terminate the chaos started
        self.interrupted: dict[str, float] = {}  # Spot instance -> time of its notice
        self.refreshes: list[tuple[str, str]] = []  # (new, old): old's terminate once new is InService
        self.spot_noticed: set[str] = set()  # every Spot instance that got its notice
        self.foreign_reported: set[str] = set()
        self.held_at_floor: set[str] = set()  # terminates left held at ETCD_MIN_VOTERS at the end
        self.tracked: dict[str, Tracked] = {}
        self.inflight: list[Delivery] = []
        self.down: dict[str, str] = {}  # node name -> "stopped" | "paused", by the chaos
        self.order: list[str] = list(stack.instance_ids)  # creation order: seeded choices
        self.inservice_since: dict[str, float] = {}  # monotonic time it was first seen InService
        self.recycled: set[str] = set()
        self.violations: list[Violation] = []
        self.stats: Counter = Counter()
        self.step_no = 0
        self.log: list[str] = []
        self.last_sweep = time.monotonic()
        self.hook_timeout_s = HEARTBEAT_TIMEOUT_S

    # ------------------------------------------------------------------------------------------
    # Reading the world
    # ------------------------------------------------------------------------------------------
    def _models(self):
        registry = self.stack.aws.registry
        return registry, *registry._backends()

    def lifecycle_states(self) -> dict[str, str]:
        """Instance ID -> lifecycle state, for the instances in every group and in every group's
        warm pool (`Warmed:Pending:Wait`, `Warmed:Stopped`)."""
        registry, asg, _ = self._models()
        with registry._lock:
            states = {
                s.instance.id: s.lifecycle_state
                for name in self.stack.groups
                for s in asg.autoscaling_groups[name].instance_states
            }
            for name in self.stack.groups:
                states.update(registry.warm_pools.get(name, {}))
            return states

    def warm_state(self, instance_id: str) -> str | None:
        """Its state in a warm pool (`Warmed:Pending:Wait`, `Warmed:Stopped`), None when in none."""
        return self.stack.warm_state(instance_id)

    def in_warm_pools(self) -> list[str]:
        return [i for i in self.order if self.warm_state(i) is not None]

    def ec2_state(self, instance_id: str) -> str:
        _, _, ec2 = self._models()
        return ec2.get_instance(instance_id).state

    def live(self, instance_id: str) -> bool:
        """Running in EC2 (an instance waiting in `Warmed:Pending:Wait` still runs: callers that
        mean "serving" also ask for `InService`)."""
        return self.ec2_state(instance_id) in ("pending", "running")

    def exists(self, instance_id: str) -> bool:
        """The instance still exists in EC2 (running, or stopped: its member is not stale). One
        resting in a warm pool exists too, stopped: whether its member may stay is asked of
        `warm_state`, not of this."""
        return self.ec2_state(instance_id) in EXISTING

    def ours(self, action: LifecycleAction) -> bool:
        return action.hook not in self.foreign_hooks

    def active_tokens(self) -> set[str]:
        """The function's waiting actions (another tool's are that tool's business)."""
        return {a.token for a in self.stack.aws.active_actions() if self.ours(a)}

    def instances(self) -> dict[str, str]:
        """Every instance any group ever had -> its private IP."""
        return {i: ip for g in self.stack.groups.values() for i, ip in g.instances.items()}

    def group_of(self, instance_id: str) -> str:
        return self.stack.group_of(instance_id)

    def is_spot(self, instance_id: str) -> bool:
        _, _, ec2 = self._models()
        return getattr(ec2.get_instance(instance_id), "lifecycle", None) == "spot"

    def floor(self) -> int:
        return int(self.env.get("ETCD_MIN_VOTERS") or 2)

    def release_ip(self, ip: str) -> None:
        """AWS frees a terminated instance's private address; moto keeps it: free it there."""
        registry, _, ec2 = self._models()
        with registry._lock:
            ec2.get_subnet(self.stack.seeded.subnet_id).del_subnet_ip(ip)

    def ip_of(self, instance_id: str) -> str:
        return self.instances()[instance_id]

    def instance_of(self, member: Member) -> str | None:
        """The instance a member belongs to: by name, else by the address in its peer URL."""
        instances = self.instances()
        if member.name in instances:
            return member.name
        for url in member.peer_urls:
            host = url.split("://", 1)[-1].rsplit(":", 1)[0]
            for iid, ip in instances.items():
                if ip == host and iid not in self.recycled:
                    return iid
        return None

    def snapshot(self) -> Snapshot:
        etcd = self.stack.etcd
        try:
            members = {m.id: m for m in etcd.members()}
        except EtcdError:
            return Snapshot(None)
        snap = Snapshot(members)
        for m in members.values():
            node = etcd.nodes.get(m.name)
            if node is None or not node.answering():
                continue
            try:
                status = gateway(node.client_url, "/v3/maintenance/status", timeout=1.0)
            except EtcdError:
                continue
            if int(status["header"]["member_id"]) == m.id:
                snap.healthy.add(m.id)
        return snap

    def spawn(self) -> FunctionProcess:
        """A new execution environment (a cold start: its breakers start closed)."""
        return self.stack.spawn(self.binary, **self.env)

    def wait_answering(self, name: str, timeout: float = 15.0) -> None:
        node = self.stack.etcd.nodes.get(name)
        end = time.monotonic() + timeout
        while node is not None and node.answering() and time.monotonic() < end:
            try:
                gateway(node.client_url, "/v3/maintenance/status", timeout=1.0)
                return
            except EtcdError:
                time.sleep(0.1)

    # ------------------------------------------------------------------------------------------
    # Recording
    # ------------------------------------------------------------------------------------------
    def violate(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(self.step_no, invariant, detail))
        self.note(f"VIOLATION {invariant}: {detail}")

    def note(self, text: str) -> None:
        self.log.append(f"[{self.step_no}] {text}")

    # ------------------------------------------------------------------------------------------
    # Deliveries (the function's work)
    # ------------------------------------------------------------------------------------------
    def shape(self) -> str:
        return self.rng.choices(SHAPES, SHAPE_WEIGHTS)[0]

    def event(self, d: Delivery) -> Any:
        if d.token is None:
            return self.stack.scheduled()
        tracked = self.tracked[d.token]
        action = tracked.action
        note = self.stack.notification(action)
        where: dict[str, str] = {}
        if tracked.warm:  # as AWS says it: from the group (or EC2, new) into the warm pool
            origin = "EC2" if action.transition == LAUNCHING else "AutoScalingGroup"
            where = {"Origin": origin, "Destination": "WarmPool"}
            note.update(where)
        if d.shape == "eventbridge":
            return self.stack.eventbridge(action, **where)
        if d.shape == "sns":
            return events.sns(note)
        if d.shape == "sqs":
            return events.sqs(note)
        if d.shape == "sns_in_sqs":
            return events.sqs(events.sns_in_sqs(note))
        return events.sqs(note, events.test_notification(self.stack.group, self.stack.account()))

    def timeout_ms(self) -> int:
        return self.rng.choice((20_000,) * 6 + (3_500, 5_000, 8_000))

    def invoke(self, d: Delivery, fn_index: int, timeout_ms: int) -> Answer:
        fn = self.fns[fn_index]
        event = self.event(d)
        started = time.time()
        try:
            ok, payload = fn.invoke(event, timeout_ms=timeout_ms)
        except (FunctionDied, InvocationTimeout) as e:
            self.fns[fn_index] = self.spawn()
            return Answer(d, False, None, started, None, started + timeout_ms / 1000, str(e)[:2000])
        inv = max(fn.api.invocations.values(), key=lambda i: i.queued_at)
        return Answer(d, ok, payload, started, inv.answered_at, inv.deadline_ms / 1000)

    def deliver(
        self, deliveries: list[Delivery], concurrent: bool = False, timeout_ms: int | None = None
    ) -> list[Answer]:
        """Delivers each (on both execution environments at once when `concurrent`), then
        checks the answers (`timeout_ms`: the invocations' timeout, else a seeded choice)."""
        timeout_ms = timeout_ms or self.timeout_ms()
        active_before = self.active_tokens()
        if concurrent and len(deliveries) > 1:
            answers: list[Answer | None] = [None] * len(deliveries)

            def run(i: int) -> None:
                answers[i] = self.invoke(deliveries[i], i % len(self.fns), timeout_ms)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(deliveries))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done = [a for a in answers if a is not None]
        else:
            done = [self.invoke(d, self.rng.randrange(len(self.fns)), timeout_ms) for d in deliveries]
        for answer in done:
            self.check_answer(answer, active_before, alone=not concurrent or len(deliveries) == 1)
        return done

    def check_answer(self, a: Answer, active_before: set[str], alone: bool) -> None:
        d = a.delivery
        what = "sweep" if d.token is None else f"{d.shape} for {self.describe_token(d.token)}"
        self.stats["invocations"] += 1
        if a.error is not None:
            kind = "crash" if "exited" in a.error or "init error" in a.error else "no-answer"
            self.violate(kind, f"{what}: {a.error}")
            return
        if a.answered_at is not None and a.answered_at > a.deadline:
            self.violate("in-time", f"{what} answered {a.answered_at - a.deadline:.3f}s after its deadline")
        active_after = self.active_tokens()
        if d.token is None:
            self.stats["sweeps"] += 1
            self.last_sweep = time.monotonic()
            if a.ok:
                left = sorted(self.describe_token(t) for t in (active_before & active_after))
                if left:
                    self.violate("silent-success", f"sweep answered success, still waiting: {left}")
            self.note(f"sweep -> {'ok' if a.ok else 'error: ' + str((a.payload or {}).get('errorMessage', ''))[:160]}")
            return
        tracked = self.tracked[d.token]
        tracked.deliveries += 1
        if tracked.foreign:
            # Another tool's hook: acknowledged and skipped (check_foreign proves no call).
            self.stats["foreign_deliveries"] += 1
            self.note(f"{what} (hook {tracked.action.hook}) -> {'ok' if a.ok else 'error ' + str((a.payload or {}).get('errorMessage', ''))[:160]}")
            return
        success = a.ok
        if d.shape != "eventbridge" and d.shape != "sns":  # an SQS batch: msg-0 is the action's
            failures = (a.payload or {}).get("batchItemFailures", []) if a.ok else []
            success = a.ok and {"itemIdentifier": "msg-0"} not in failures
        if success and d.token in active_after:
            self.violate("silent-success", f"{what} answered success but the action is still waiting: {str(a.payload)[:400]}")
        registry = self.stack.aws.registry.snapshot()
        records = [
            r for r in registry["completions"] + registry["heartbeats"]
            if r["token"] == d.token and a.started <= r["time"] <= (a.answered_at or r["time"])
        ]  # fmt: skip
        if alone:
            for r in records:
                if r["time"] > a.deadline:
                    self.violate("in-time", f"{what}: lifecycle call recorded {r['time'] - a.deadline:.3f}s after the deadline")
        completed = any(c["token"] == d.token for c in registry["completions"])
        if d.token not in active_after:
            self.stats["delivery_done" if completed else "delivery_action_over"] += 1
        elif records:
            self.stats["delivery_held"] += 1
        else:
            self.stats["delivery_missed"] += 1  # error answered, no heartbeat: redelivery's job
        message = "" if a.ok else str((a.payload or {}).get("errorMessage", ""))[:160]
        self.note(f"{what} -> {'ok' if a.ok else 'error'} {message}")

    def describe_token(self, token: str) -> str:
        a = self.tracked[token].action
        kind = "terminate" if a.transition == TERMINATING else "launch"
        if self.tracked[token].warm:
            kind = f"warm-pool {kind}"
        return f"{kind} {a.instance_id}" + (f" ({a.hook})" if self.tracked[token].foreign else "")

    def track(self, action: LifecycleAction) -> Tracked:
        warm = self.warm_state(action.instance_id) == WARM_WAIT
        self.tracked[action.token] = Tracked(action, warm=warm)
        if action.transition == TERMINATING:
            self.terminated_by_hook.add(action.instance_id)
        for other in self.stack.aws.actions_of(action.instance_id):
            if not self.ours(other) and other.token not in self.tracked:
                self.tracked[other.token] = Tracked(other, foreign=True, warm=warm)
        return self.tracked[action.token]

    def foreign_of(self, action: LifecycleAction) -> list[Tracked]:
        return [t for t in self.tracked.values() if t.foreign and t.action.instance_id == action.instance_id
                and t.action.token in {a.token for a in self.stack.aws.actions_of(action.instance_id)}]  # fmt: skip

    def dispatch_new(self, action: LifecycleAction) -> None:
        """A new action's event: delivered now (sometimes twice), later, or never (lost: the
        sweep must find it)."""
        for foreign in self.foreign_of(action):
            if self.rng.random() < 0.4:  # the other tool's event reaches the function too
                self.deliver([Delivery(foreign.action.token, self.shape())])
        roll = self.rng.random()
        d = Delivery(action.token, self.shape())
        if roll < 0.70:
            twice = self.rng.random() < 0.15
            if twice:
                self.deliver([d, Delivery(action.token, self.shape())], concurrent=self.rng.random() < 0.5)
            elif self.topology.concurrent and self.rng.random() < 0.3:
                self.note("the event and a sweep at once")
                self.deliver([d, Delivery(None)], concurrent=True)
            else:
                self.deliver([d])
        elif roll < 0.90:
            self.inflight.append(d)
            self.note(f"event of {self.describe_token(action.token)} held back")
        else:
            self.note(f"event of {self.describe_token(action.token)} lost")

    # ------------------------------------------------------------------------------------------
    # What AWS and the machines do by themselves
    # ------------------------------------------------------------------------------------------
    def agent(self) -> None:
        etcd = self.stack.etcd
        self.other_tool()
        for iid, noticed in list(self.interrupted.items()):
            if time.monotonic() - noticed >= SPOT_NOTICE_S:
                del self.interrupted[iid]
                if self.exists(iid):
                    # The notice is over: AWS reclaims the instance whatever its hooks say.
                    self.stack.aws.terminate_outside_hooks(iid)
                    self.note(f"Spot instance {iid} reclaimed at the end of its notice")
        states = self.lifecycle_states()
        instances = self.instances()
        for name in list(etcd.nodes):
            if name in instances and not self.exists(name):
                etcd.forget_node(name)  # the machine is gone, and its etcd with it
                self.down.pop(name, None)
                self.note(f"node {name} gone with its instance")
        for iid in self.order:
            if iid in etcd.nodes and states.get(iid) == WARM_STOPPED:
                # Its hooks are done and it rests in the warm pool, stopped in EC2: its node
                # stops with the machine (the data stays on its volume, as a stopped disk's).
                how = self.down.pop(iid, None)
                if etcd.nodes[iid].running():
                    etcd.stop_node(iid)
                    self.note(f"node {iid} stopped with its instance in the warm pool{f' (was {how})' if how else ''}")
        for iid in self.order:
            if iid in states and states[iid] == "InService":
                self.inservice_since.setdefault(iid, time.monotonic())
        snap = self.snapshot()
        if snap.members is None:
            return
        used = {
            url.split("://", 1)[-1].rsplit(":", 1)[0]
            for m in snap.members.values()
            for url in m.peer_urls + m.client_urls
        }
        for iid in self.order:
            ip = self.ip_of(iid)
            free = self.reuse_addresses or ip not in used
            if iid not in self.recycled and not self.exists(iid) and free and iid not in etcd.nodes:
                self.recycled.add(iid)
                self.release_ip(ip)
                self.stack._spare_ips.append(ip)
        for iid in self.order:
            if states.get(iid) != "InService" or not self.live(iid) or iid in self.down:
                continue
            peer = f"http://{self.ip_of(iid)}:2380"
            mine = [m for m in snap.members.values() if peer in m.peer_urls]
            if mine and mine[0].name not in ("", iid):
                continue  # its address is still a dead instance's member's: etcd cannot start
            node = etcd.nodes.get(iid)
            if node is not None:
                if not node.running() and mine:
                    # Stopped by itself while still a member, or never got going (the membership
                    # changed between reading it and starting): its machine starts it again, as
                    # systemd would; a node that never joined (its member is still unstarted)
                    # starts afresh from the membership as it is now, as a bootstrap script does.
                    if mine[0].name == "":
                        shutil.rmtree(node.data_dir, ignore_errors=True)
                        node.initial_cluster = self.initial_cluster(snap, iid, peer)
                    etcd.start_node(iid)
                    self.note(f"node {iid} restarted by its machine")
                continue
            if not mine:
                if self.topology.learners:
                    continue  # the function adds its learner (at launch, or the sweep)
                waited = time.monotonic() - self.inservice_since.get(iid, time.monotonic())
                if waited < 3.0 or any(m.is_learner for m in snap.members.values()) or not snap.quorate:
                    continue
                try:
                    etcd.add_member(peer, learner=True)
                except EtcdError as e:
                    self.note(f"bootstrap of {iid} could not add its learner: {str(e)[:120]}")
                    continue
                self.note(f"bootstrap of {iid} added its own learner")
                snap = self.snapshot()
                if snap.members is None:
                    return
            etcd.add_node(iid, self.ip_of(iid), self.initial_cluster(snap, iid, peer))
            self.note(f"node {iid} starts etcd and joins")

    def other_tool(self) -> None:
        """Another tool (a node drain) owns `FOREIGN_HOOK`: it completes each of its actions one
        step after it started (in-process: nothing goes through the fault layer or its log)."""
        registry = self.stack.aws.registry
        for a in self.stack.aws.active_actions():
            if self.ours(a):
                continue
            started = self.foreign_started.setdefault(a.token, self.step_no)
            if self.step_no > started:
                try:
                    registry.complete(a.group, a.hook, a.token, None, "CONTINUE")
                except Exception as e:  # already over (the instance was reclaimed)
                    self.note(f"other tool could not complete {a.hook} of {a.instance_id}: {e}")
                    continue
                self.foreign_done.add(a.token)
                self.note(f"other tool completed its {a.hook} action of {a.instance_id}")

    @staticmethod
    def initial_cluster(snap: Snapshot, name: str, peer: str) -> str:
        """`--initial-cluster` for a node joining as `name`: every current member."""
        return ",".join(
            f"{m.name or (name if peer in m.peer_urls else f'unstarted-{m.id:x}')}={m.peer_urls[0]}"
            for m in (snap.members or {}).values()
            if m.peer_urls
        )

    # ------------------------------------------------------------------------------------------
    # Invariants checked after each step
    # ------------------------------------------------------------------------------------------
    def reclaimed_voters_down(self, snap: Snapshot) -> list:
        """Voters not healthy in `snap` whose Spot instance got its interruption notice."""
        return [m for m in snap.voters if m.id not in snap.healthy and self.instance_of(m) in self.spot_noticed]

    def check_step(self, before: Snapshot, after: Snapshot, function_step: bool) -> None:
        etcd = self.stack.etcd
        if after.members is not None and not after.quorate:
            down_voters = [
                m for m in after.voters if m.name in self.down or m.name not in etcd.nodes
                or not etcd.nodes[m.name].running()
            ]  # fmt: skip
            up = len(after.voters) - len(down_voters)
            if up >= len(after.voters) // 2 + 1:
                self.violate("quorum", f"no healthy majority although the chaos left {up} of {len(after.voters)} voters up: {after.describe()}")
            else:
                self.stats["steps_without_quorum_by_chaos"] += 1
        if function_step and before.members is not None and before.quorate and after.members is not None and not after.quorate:
            # A Spot instance reclaimed at the end of its notice (its hook completed with its
            # member kept, as the function must when removal is unsafe) is AWS's doing.
            reclaimed = self.reclaimed_voters_down(after)
            if reclaimed:
                self.stats["quorum_lost_to_spot_reclaim"] += 1
                self.note(f"quorum lost with interrupted Spot instance(s) {[m.name for m in reclaimed]}: {after.describe()}")
            else:
                self.violate("quorum", f"deliveries took the cluster from quorum to none: before {before.describe()}; after {after.describe()}")
        if before.members is not None and after.members is not None:
            removed = [m for mid, m in before.members.items() if mid not in after.members]
            states = self.lifecycle_states()
            for m in removed:
                self.stats["members_removed"] += 1
                iid = self.instance_of(m)
                legit = (
                    iid is None
                    or iid not in states
                    or states[iid].startswith(("Terminating", "Warmed:"))  # leaving, or in a pool
                    or not self.exists(iid)
                )
                if not legit:
                    self.violate("wrong-removal", f"member {m.name or m.id} of {iid} ({states.get(iid)}, {self.ec2_state(iid)}) was removed")
                if m.id in before.healthy and (iid is None or iid not in self.terminated_by_hook):
                    where = f"{iid} of {self.group_of(iid)} ({states.get(iid)}, {self.ec2_state(iid)})" if iid else "no instance"
                    self.violate("healthy-removal", f"member {m.name or m.id} answered Status and was removed without its instance's terminate: {where}")
            floor = self.floor()
            after_voters = {m.id for m in after.voters}
            gone_voters = [m for m in before.voters if m.id not in after_voters]
            # A confirmed Spot interruption may go below the floor (never to zero): kept, its
            # machine goes in two minutes anyway and a cluster at the floor loses quorum. The
            # other removals of the step must not cross the floor by themselves.
            plain_gone = [m for m in gone_voters if self.instance_of(m) not in self.spot_noticed]
            before_voters = {m.id for m in before.voters}
            promoted = [m for m in after.voters if m.id not in before_voters]  # learners made voters
            most = len(before.voters) + len(promoted)
            interrupted = len(plain_gone) < len(gone_voters) and most - len(plain_gone) >= floor
            if len(after.voters) < floor and len(after.voters) < len(before.voters):
                if interrupted and after.voters:
                    self.stats["below_floor_for_spot_interruption"] += 1
                    self.note(f"below the voter floor for a confirmed Spot interruption: {before.describe()} -> {after.describe()}")
                else:
                    self.violate("min-voters", f"{len(before.voters)} voters -> {len(after.voters)}, below ETCD_MIN_VOTERS={floor}: before {before.describe()}; after {after.describe()}")
        self.check_foreign()
        now = time.time()
        active = {a.token: a for a in self.stack.aws.active_actions()}
        heartbeats: dict[str, float] = {}
        for h in self.stack.aws.heartbeats():
            heartbeats[h["token"]] = max(heartbeats.get(h["token"], 0.0), h["time"])
        for token, action in active.items():
            tracked = self.tracked.get(token)
            last = max(action.started, heartbeats.get(token, 0.0))
            if tracked and not tracked.foreign and not tracked.lost_reported and now - last > self.hook_timeout_s:
                tracked.lost_reported = True
                self.violate("lost", f"{self.describe_token(token)}: no heartbeat or completion for {now - last:.0f}s (hook timeout {self.hook_timeout_s:.0f}s)")

    def check_foreign(self) -> None:
        """No lifecycle call of the function (made, refused or even attempted) names a hook
        that is not ours; the other tool's own completions are the world's (`foreign_done`)."""
        if not self.foreign_hooks:
            return
        snap = self.stack.aws.registry.snapshot()
        seen = [
            f"{kind[:-1]} of {c['hook']} for {c.get('instance_id')}"
            for kind in ("completions", "heartbeats", "refusals")
            for c in snap[kind]
            if c["hook"] in self.foreign_hooks and not (kind == "completions" and c["token"] in self.foreign_done)
        ]  # fmt: skip
        seen += [
            f"{r['action']} request for {r.get('InstanceId') or r.get('LifecycleActionToken')} on {r['LifecycleHookName']}"
            for r in self.stack.aws.requests("autoscaling")
            if r.get("LifecycleHookName") in self.foreign_hooks
            and r["action"] in ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")
        ]  # fmt: skip
        new = [x for x in seen if x not in self.foreign_reported]
        if new:
            self.foreign_reported.update(new)
            self.violate("foreign-hook", f"another tool's lifecycle action touched: {new}")

    def oldest_wait(self) -> float:
        now = time.time()
        heartbeats: dict[str, float] = {}
        for h in self.stack.aws.heartbeats():
            heartbeats[h["token"]] = max(heartbeats.get(h["token"], 0.0), h["time"])
        ages = [now - max(a.started, heartbeats.get(a.token, 0.0)) for a in self.stack.aws.active_actions()]
        return max(ages, default=0.0)

    # ------------------------------------------------------------------------------------------
    # The end: faults clear, the sweep finishes
    # ------------------------------------------------------------------------------------------
    def quiesce(self, budget_s: float = 120.0) -> bool:
        self.stack.aws.clear_faults()
        for gate in self.gates.values():
            gate.clear()
        for name in list(self.down):
            self.heal(name)
        # Faults are over, and so are too-short timeouts: with the default deadline reserve
        # (4.5 s) a 3.5 s invocation can only heartbeat.
        if self.inflight:
            self.deliver(self.inflight, timeout_ms=QUIESCE_TIMEOUT_MS)
            self.inflight.clear()
        end = time.monotonic() + budget_s
        last_change, previous = time.monotonic(), None
        while True:
            self.agent()
            self.deliver([Delivery(None)], timeout_ms=QUIESCE_TIMEOUT_MS)
            left = sorted(self.unfinished())
            if not left:
                return True
            if left != previous:
                last_change, previous = time.monotonic(), left
            if time.monotonic() > end or time.monotonic() - last_change > STUCK_S:
                break  # out of time, or nothing has moved for STUCK_S: the verdict stands
            time.sleep(1.0)
        snap = self.snapshot()
        reclaimed_voter_down = snap.members is not None and bool(self.reclaimed_voters_down(snap))
        if (self.stats.get("quorum_lost_to_spot_reclaim") or reclaimed_voter_down) and not snap.quorate:
            # AWS reclaimed an interrupted Spot voter whose removal was unsafe (the function
            # completes such a hook with the member kept: no hold can stop an interruption), and
            # that took quorum: only disaster recovery finishes from here. Removals were checked
            # at every step, and the loss itself was checked to be the reclaim's.
            self.stats["unrecoverable_after_spot_reclaim"] += 1
            self.note(f"etcd did not regain quorum after a Spot reclaim took it: {snap.describe()}; left: {left}")
            return False
        if self.beyond_tolerance and not snap.quorate:
            # The chaos itself took down more voters than quorum survives, and etcd did not come
            # back from it (e.g. raft's two-to-one shrink hazard, etcd-io/etcd#7464): nothing can
            # finish without disaster recovery. Removals were checked at every step.
            self.stats["unrecoverable_after_chaos"] += 1
            self.note(f"etcd did not regain quorum after the chaos went beyond tolerance: {snap.describe()}; left: {left}")
            return False
        for item in left:
            self.violate("finished", item)
        return False

    def unfinished(self) -> list[str]:
        out = [f"{self.describe_token(t)} still waiting" for t in self.active_tokens() if t in self.tracked]
        snap = self.snapshot()
        if snap.members is None:
            return out + ["no etcd node answers"]
        floor = self.floor()
        at_floor = len(snap.voters) <= floor and not any(m.is_learner for m in snap.members.values())
        for t in self.active_tokens():
            a = self.tracked[t].action if t in self.tracked else None
            if at_floor and a is not None and a.transition == TERMINATING:
                # Held at ETCD_MIN_VOTERS with no learner to promote: the contract, not a
                # failure (the group's minimum size is the operator's to keep above the floor).
                out = [x for x in out if x != f"{self.describe_token(t)} still waiting"]
                self.held_at_floor.add(a.instance_id)
        for m in snap.members.values():
            iid = self.instance_of(m)
            if iid is None or not self.exists(iid):
                out.append(f"member {m.name or m.id} of terminated instance {iid} not removed")
            elif self.warm_state(iid) == WARM_STOPPED:
                out.append(f"member {m.name or m.id} of {iid}, stopped in the warm pool, not removed")
        for m in snap.voters:
            if m.id not in snap.healthy:
                out.append(f"voting member {m.name} unhealthy")
        if self.topology.learners:
            # The sweep adds a learner for a running instance of the group that has no member.
            states = self.lifecycle_states()
            peers = {u for m in snap.members.values() for u in m.peer_urls}
            for iid in self.order:
                if states.get(iid) == "InService" and self.live(iid) and f"http://{self.ip_of(iid)}:2380" not in peers:
                    out.append(f"InService instance {iid} has no member")
        return out

    # ------------------------------------------------------------------------------------------
    # Chaos on etcd
    # ------------------------------------------------------------------------------------------
    def heal(self, name: str) -> None:
        how = self.down.pop(name, None)
        etcd = self.stack.etcd
        if how == "instance-stopped" and self.ec2_state(name) == "stopped":
            registry, _, ec2 = self._models()
            with registry._lock:
                ec2.start_instances([name])
        if name not in etcd.nodes:
            return
        if how == "paused":
            etcd.resume_node(name)
        elif how == "instance-stopped":
            snap = self.snapshot()
            if snap.members is None or any(peer == etcd.nodes[name].peer_url for m in snap.members.values() for peer in m.peer_urls):
                etcd.start_node(name)
        else:
            snap = self.snapshot()
            member = snap.members and any(m.name == name for m in snap.members.values())
            if not member and snap.members is not None:
                return  # removed while down: it would only refuse to start
            etcd.start_node(name)
        self.wait_answering(name)
        self.note(f"{'instance' if how == 'instance-stopped' else 'etcd'} {name} {'resumed' if how == 'paused' else 'started'}")
