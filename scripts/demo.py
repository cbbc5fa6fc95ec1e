#!/usr/bin/env python3
"""A guided run of the function against a local stack: real etcd, local Auto Scaling and EC2, and
the real `bootstrap` binary under a Lambda Runtime API emulator.

Why: it shows in a minute, in plain words, what the function does to a live etcd cluster, and it
checks every claim it prints against etcd's member list, the lifecycle completions and heartbeats
that Auto Scaling recorded, and the function's answers. It exits non-zero if anything did not
happen as described, so it doubles as a smoke test (`make demo`).

The story, on a group of four instances whose etcd members are named after their instance IDs,
with the function configured as README recommends for replacements (ETCD_ADD_LEARNER_ON_LAUNCH=true,
ETCD_MIN_VOTERS at its default of 2):
 1. scale-in of the etcd leader (events/terminate.json): leadership moves, the member is removed,
    the lifecycle action is completed with CONTINUE;
 2. scale-in while another node is down: removing the member would leave too few healthy voters,
    so the function holds the instance (heartbeat), removes nothing, completes nothing, and answers
    an error so the event comes back;
 3. the down node's instance dies for good (terminated outside Auto Scaling's hooks) and a
    replacement launches (events/launch.json): the launch removes the dead node's stale member,
    adds the replacement as a learner, and lets the new instance in with CONTINUE;
 4. the held event comes back (events/sns-terminate.json, through SNS): removing the member now
    would leave a single voter, below ETCD_MIN_VOTERS, and the replacement's etcd has not started,
    so it is held again;
 5. the replacement's node starts etcd and joins as the learner (as its bootstrap script would);
 6. the held event comes back once more: the caught-up learner is promoted first, so removing the
    member leaves two voters; it is removed and the action completed;
 7. scale-out back to three: a new instance is added as a learner, its node joins, and the
    scheduled sweep promotes it. The cluster ends with three healthy voters.

    .venv/bin/python scripts/demo.py [--bootstrap target/release/etcd-lifecycle-hook]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.stack import Stack, bootstrap_path, events  # noqa: E402
from tests.stack.aws import LifecycleAction  # noqa: E402

# How the function runs in the story: replacements join as learners; the voter floor is the default.
FUNCTION_ENV = {"ETCD_ADD_LEARNER_ON_LAUNCH": "true", "ETCD_MIN_VOTERS": "2"}
# How long etcd wants a peer connected before it counts it for a membership change.
ETCD_CONNECTED_S = 5.5


class Demo:
    def __init__(self, stack: Stack, fn):
        self.stack = stack
        self.fn = fn
        self.failures: list[str] = []

    # -- output ----------------------------------------------------------------------------------
    @staticmethod
    def say(text: str = "") -> None:
        print(text, flush=True)

    def check(self, condition: bool, claim: str, otherwise: str) -> bool:
        if condition:
            self.say(f"   ok  {claim}")
        else:
            self.say(f"   NOT {claim}: {otherwise}")
            self.failures.append(claim)
        return condition

    def answer(self, ok: bool, payload) -> None:
        kind = "answered" if ok else "answered with an error"
        text = json.dumps(payload, separators=(",", ":"))
        if len(text) > 600:
            text = text[:600] + "..."
        self.say(f"   the function {kind}: {text}")

    # -- reading the world -----------------------------------------------------------------------
    def members(self) -> list[str]:
        return self.stack.etcd.member_names()

    def name(self, instance_id: str) -> str:
        return f"{instance_id} ({self.stack.ip_of(instance_id)})"

    def event(self, sample: str, action: LifecycleAction, fallback):
        if events.has_sample(sample):
            self.say(f"   delivering events/{sample} with this action's token, group, hook and instance")
            return events.from_sample(sample, action)
        self.say(f"   (events/{sample} not found: delivering a built event instead)")
        return fallback

    def completions(self, instance_id: str) -> list[dict]:
        return [c for c in self.stack.aws.completions() if c["instance_id"] == instance_id]

    def heartbeats(self, instance_id: str) -> list[dict]:
        return [h for h in self.stack.aws.heartbeats() if h["instance_id"] == instance_id]

    def invoke(self, event):
        ok, payload = self.fn.invoke(event, timeout_ms=30_000)
        self.answer(ok, payload)
        return ok, payload

    # -- the story -------------------------------------------------------------------------------
    def run(self) -> None:
        stack = self.stack
        self.say(
            f"Auto Scaling group {stack.group!r}: {len(stack.instance_ids)} instances, hooks "
            f"{stack.seeded.launch_hook!r} and {stack.seeded.terminate_hook!r}"
        )
        self.say(f"etcd members: {', '.join(self.name(i) for i in self.members())}")
        self.say(f"etcd leader: {stack.leader()}")
        self.say(f"the function: {', '.join(f'{k}={v}' for k, v in FUNCTION_ENV.items())}")

        # 1. Scale-in of the leader.
        leader = stack.leader()
        self.say(f"\n1. Scale-in picks the etcd leader {leader}: it waits in Terminating:Wait")
        action = stack.start_terminate(leader)
        ok, payload = self.invoke(self.event("terminate.json", action, stack.eventbridge(action)))
        self.check(ok, "the invocation succeeded", f"{payload}")
        self.check(leader not in self.members(), f"member {leader} removed", f"members {self.members()}")
        stack.etcd.wait_until(lambda: stack.etcd.leader() not in (None, leader), what="a new leader")
        new_leader = stack.etcd.leader()
        self.check(
            new_leader is not None and new_leader != leader,
            f"leadership moved from {leader} to {new_leader}",
            "no other member leads",
        )
        line = _line(payload, leader) if ok else {}
        self.check(bool(line.get("leader_moved")), "the function reports that it moved leadership first", f"{line}")
        self.check_completed(leader)
        self.check(stack.aws.lifecycle_state(leader) is None, "the instance left the group", "still in the group")

        # 2. Scale-in while another node is down.
        victim, down = sorted(stack.followers())[:2]
        self.say(f"\n2. etcd on {down} stops; then scale-in picks {victim}")
        stack.etcd.stop_node(down)
        held = stack.start_terminate(victim)
        before = self.members()
        ok, payload = self.invoke(self.event("terminate.json", held, stack.eventbridge(held)))
        self.check_held(ok, payload, victim, "quorum", before, beats=1)

        # 3. The down node dies for good; a replacement launches and is added as a learner.
        self.say(f"\n3. {down}'s instance dies outside Auto Scaling's hooks; a replacement launches")
        stack.aws.terminate_outside_hooks(down)
        new, launch = stack.start_launch()
        self.say(f"   new instance {self.name(new)} waits in Pending:Wait")
        ok, payload = self.invoke_until_done(
            self.event("launch.json", launch, stack.eventbridge(launch)), new
        )
        self.check(ok, "the invocation succeeded", f"{payload}")
        self.check(down not in self.members(), f"stale member {down} removed", f"members {self.members()}")
        self.check(self.learners() == [new], f"{new} added as a learner", f"learners {self.learners()}")
        self.check_completed(new, what=f"launch of {new}")
        self.check(stack.aws.lifecycle_state(new) == "InService", f"{new} is InService", f"{stack.aws.lifecycle_state(new)}")

        # 4. The held event comes back: still unsafe, now because of the voter floor.
        self.say(f"\n4. The held scale-in of {victim} is delivered again, through SNS")
        self.say(f"   voters now: {', '.join(self.voters())}; {new}'s etcd has not started yet")
        before = self.members()
        ok, payload = self.invoke(self.event("sns-terminate.json", held, events.sns(stack.notification(held))))
        self.check_held(ok, payload, victim, "ETCD_MIN_VOTERS", before, beats=2)

        # 5. The replacement's node starts etcd and joins as the learner.
        self.say(f"\n5. {new}'s bootstrap script starts etcd: it joins as the learner the function added")
        self.join(new)

        # 6. The held event comes back once more: the learner is promoted first, so it is safe.
        self.say(f"\n6. The held scale-in of {victim} is delivered again, through SNS")
        ok, payload = self.invoke_until_done(
            self.event("sns-terminate.json", held, events.sns(stack.notification(held))), victim
        )
        self.check(ok, "the invocation succeeded", f"{payload}")
        self.check(new in self.voters(), f"learner {new} promoted to voter first", f"voters {self.voters()}")
        self.check(victim not in self.members(), f"member {victim} removed now that it is safe", f"members {self.members()}")
        self.check_completed(victim)

        # 7. Back to three voters.
        self.say("\n7. Scale-out back to three voters")
        third, launch = stack.start_launch()
        self.say(f"   new instance {self.name(third)} waits in Pending:Wait")
        ok, payload = self.invoke_until_done(
            self.event("launch.json", launch, stack.eventbridge(launch)), third
        )
        self.check(ok, "the invocation succeeded", f"{payload}")
        self.check(self.learners() == [third], f"{third} added as a learner", f"learners {self.learners()}")
        self.check_completed(third, what=f"launch of {third}")
        self.join(third)
        self.say("   the scheduled sweep runs (events/scheduled-sweep.json)")
        ok, payload = self.invoke(self.event_sweep())
        self.check(ok, "the invocation succeeded", f"{payload}")
        self.check(third in self.voters(), f"learner {third} promoted by the sweep", f"voters {self.voters()}")

        voters = self.voters()
        healthy = sorted(m.name for m in stack.etcd.healthy_voters())
        self.check(
            len(voters) == 3 and healthy == voters and not self.learners(),
            f"the cluster ends healthy: three voters ({', '.join(voters)}), all answering",
            f"voters {voters}, healthy {healthy}, learners {self.learners()}",
        )
        self.say(f"\netcd members now: {', '.join(self.members())}; leader {stack.etcd.leader()}")

    # -- steps and checks used more than once ----------------------------------------------------
    def voters(self) -> list[str]:
        return sorted(m.name for m in self.stack.etcd.voters())

    def learners(self) -> list[str]:
        """Learners, each by its instance (a learner has no name until its node starts)."""
        members = self.stack.etcd.members()
        return sorted(self.stack.machine_of(m) for m in members if m.is_learner)

    def join(self, instance_id: str) -> None:
        """The node joins and catches up; then the demo gives it the five seconds etcd wants a
        peer connected before it counts it for a membership change (a real node has had them
        long before the held event comes back)."""
        started = time.monotonic()
        self.stack.join(instance_id)
        self.stack.etcd.wait_until(
            lambda: self.stack.etcd.in_sync(instance_id), timeout=30, what=f"{instance_id} caught up"
        )
        self.check(
            self.stack.etcd.in_sync(instance_id),
            f"{instance_id}'s etcd started and caught up with the leader",
            "it did not catch up",
        )
        time.sleep(max(0.0, started + ETCD_CONNECTED_S - time.monotonic()))

    def invoke_until_done(self, event, instance_id: str, attempts: int = 5):
        """Delivers `event`, and again while etcd itself refuses the change for a moment (it
        does for a few seconds after a member joins or a leader is elected), as AWS would."""
        for attempt in range(attempts):
            before = self.members()
            ok, payload = self.invoke(event)
            refused = not ok and "unhealthy cluster" in payload.get("errorMessage", "")
            if not refused or attempt == attempts - 1:
                return ok, payload
            self.check(
                not self.completions(instance_id) and self.members() == before,
                "held while etcd refuses the change for a moment: membership unchanged, nothing completed",
                f"members {self.members()}, completions {self.completions(instance_id)}",
            )
            self.say("   delivering it again in two seconds, as AWS would")
            time.sleep(2)
        return ok, payload

    def event_sweep(self):
        if events.has_sample("scheduled-sweep.json"):
            return events.from_sample("scheduled-sweep.json")
        return self.stack.scheduled()

    def check_completed(self, instance_id: str, what: str = "lifecycle action") -> None:
        done = self.completions(instance_id)
        self.check(
            [c["result"] for c in done] == ["CONTINUE"],
            f"{what} completed with CONTINUE",
            f"completions {done}",
        )

    def check_held(
        self, ok: bool, payload, instance_id: str, why: str, before: list[str], beats: int
    ) -> None:
        message = payload.get("errorMessage", "") if not ok else ""
        self.check(
            not ok and message.startswith(f"held {instance_id}") and why in message,
            f"the invocation answered an error naming the hold and its cause ({why})",
            f"{payload}",
        )
        self.check(
            len(self.heartbeats(instance_id)) == beats,
            f"heartbeat recorded for {instance_id}: the wait restarts",
            f"heartbeats {self.heartbeats(instance_id)}",
        )
        done = self.completions(instance_id)
        self.check(done == [], "no completion: the instance keeps waiting", f"{done}")
        self.check(self.members() == before, "no member removed", f"members {self.members()}")
        state = self.stack.aws.lifecycle_state(instance_id)
        self.check(state == "Terminating:Wait", f"{instance_id} still in Terminating:Wait", f"{state}")


def _line(payload: dict, instance_id: str) -> dict:
    for line in payload.get("results", []):
        if line.get("instance_id") == instance_id:
            return line
    return {}


def main() -> int:
    p = argparse.ArgumentParser(description="Run the function against a local etcd + Auto Scaling stack.")
    p.add_argument("--bootstrap", default=bootstrap_path(), help="the function binary")
    p.add_argument("--keep", action="store_true", help="keep logs and etcd data under .stack/")
    args = p.parse_args()
    binary = os.path.abspath(args.bootstrap)
    if not os.access(binary, os.X_OK):
        print(f"demo: {binary} is missing: run `cargo build --release` first", file=sys.stderr)
        return 2

    started = time.monotonic()
    print("Starting: local Auto Scaling + EC2, a 4-node etcd cluster, the function under a Lambda Runtime API emulator", flush=True)
    stack = Stack(nodes=4, group="etcd-demo", keep=args.keep)
    demo = None
    try:
        stack.up()
        fn = stack.spawn(binary, **FUNCTION_ENV)
        demo = Demo(stack, fn)
        demo.run()
    except Exception as e:  # say what broke, with the function's output, then tear down
        print(f"\ndemo: stopped by {type(e).__name__}: {e}", file=sys.stderr)
        if stack.functions:
            print(f"--- function output ---\n{stack.functions[-1].output()}", file=sys.stderr)
        return 1
    finally:
        stack.down()
    elapsed = time.monotonic() - started
    if demo.failures:
        print(f"\ndemo: {len(demo.failures)} expectation(s) not met ({elapsed:.0f}s): " + "; ".join(demo.failures))
        return 1
    print(
        f"\ndemo: everything happened as described ({elapsed:.0f}s): two holds, and the cluster "
        "ended with three healthy voters; the stack is torn down"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
