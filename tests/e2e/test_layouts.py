"""Quorum safety in the layouts operators run: one cluster over several groups, members with no
instance, a two-voter floor, Spot instances, another tool's hooks, learners over an instance
refresh, two invocations at once, members named by host name, and a CA given only through the
trust-store variables.

Each test builds the layout in the local stack (tests/stack), drives the release binary with the
events AWS would send, and reads what really happened: etcd's member list and health, moto's
record of completions, heartbeats and refusals, and the request log. A member is named in the
assertions by its machine (instance ID, or outside node name) whatever etcd calls it.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

from tests.e2e.base import ETCD_NOT_YET, E2ETestCase
from tests.stack import TERMINATING, FunctionProcess, Stack
from tests.stack.aws import LifecycleAction
from tests.stack.tls import make_tls

LOCK_NAME = "etcd-lifecycle-hook/membership"


class VoterWatch:
    """Counts etcd's voting members every 50 ms in the background: the fewest seen."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.fewest: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                count = len(self.stack.etcd.voters())
            except Exception:  # a read during an election: next time
                continue
            self.fewest = count if self.fewest is None else min(self.fewest, count)

    def __enter__(self) -> "VoterWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)


class LayoutCase(E2ETestCase):
    """A stack built with `layout` (Stack keyword arguments) and one function process."""

    layout: dict[str, Any] = {}

    def setUp(self) -> None:
        self.stack = Stack(**{"nodes": self.nodes, **self.layout})
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.fn = self.spawn(**self.function_env)

    # -- assertions ------------------------------------------------------------------------------
    def assertHeld(
        self,
        ok: bool,
        payload: Any,
        instance_id: str,
        *reason: str,
        fn: FunctionProcess | None = None,
    ) -> str:
        """An error answer of type Held for `instance_id` of its group, naming `reason`."""
        message = self.assertFailedWith(ok, payload, *reason, fn=fn)
        self.assertEqual(payload.get("errorType"), "Held", f"{message}{self.context(fn)}")
        prefix = f"held {instance_id} of {self.stack.group_of(instance_id)}"
        self.assertTrue(message.startswith(prefix), f"{message!r} does not start with {prefix!r}")
        return message

    def assertHeldInPlace(self, action: LifecycleAction, beats: int = 1) -> None:
        """Heartbeated `beats` times, not completed, still waiting, its member still there."""
        iid = action.instance_id
        self.assertEqual(len(self.heartbeats_for(iid)), beats, self.context())
        self.assertNotCompleted(iid)
        wait = "Terminating:Wait" if action.transition == TERMINATING else "Pending:Wait"
        self.assertEqual(self.stack.aws.lifecycle_state(iid), wait)

    def voters(self) -> list[str]:
        return sorted(self.stack.machine_of(m) for m in self.stack.etcd.voters())

    def learners(self) -> list[str]:
        members = self.stack.etcd.members()
        return sorted(self.stack.machine_of(m) for m in members if m.is_learner)

    def assertQuorate(self, floor: int = 2) -> None:
        """etcd's ground truth: a healthy majority of the voters, and at least `floor` voters."""
        voters = self.stack.etcd.voters()
        healthy = self.stack.etcd.healthy_voters()
        self.assertGreaterEqual(
            len(healthy),
            len(voters) // 2 + 1,
            f"quorum lost: {len(healthy)} of {len(voters)} voters healthy{self.context()}",
        )
        self.assertGreaterEqual(len(voters), floor, f"fewer than {floor} voters{self.context()}")

    def requests_of(self, action: str) -> list[dict]:
        return self.stack.aws.requests("autoscaling", action)


# ------------------------------------------------------------------------------------------------
# 1. Stale means dead and without an instance, in any group or none
# ------------------------------------------------------------------------------------------------


class TwoGroupsTest(LayoutCase):
    """One cluster over two groups, one per zone."""

    layout = {"groups": {"etcd-a": 2, "etcd-b": 1}}

    def test_launch_and_sweep_in_one_group_never_remove_the_other_groups_members(self):
        stack = self.stack
        everyone = sorted(stack.instance_ids)
        [b1] = stack.instances_of("etcd-b")
        only_a = self.spawn(ASG_NAMES="etcd-a")

        # Scale-out in zone A, by a function that knows only group A.
        new, action = stack.start_launch(group="etcd-a")
        ok, payload = self.invoke(stack.eventbridge(action), fn=only_a)
        self.assertSucceeded(ok, payload, fn=only_a)
        self.assertResult(payload, new, "completed", "CONTINUE", member_removed=False)
        self.assertEqual(
            self.members(), everyone, f"zone B's member {b1} must stay{self.context(only_a)}"
        )
        self.assertCompleted(action, "CONTINUE")

        # The sweep of group A alone, then of both groups.
        for fn in (only_a, self.fn):
            payload = self.assertSucceeded(*self.invoke(stack.scheduled(), fn=fn), fn=fn)
            swept = fn.env["ASG_NAMES"]
            self.assertEqual(self.members(), everyone, f"swept {swept}{self.context(fn)}")
            self.assertFalse(any(r["member_removed"] for r in payload["results"]), payload)
        groups = {r["group"] for r in payload["results"] if r["instance_id"] is None}
        self.assertEqual(groups, {"etcd-a", "etcd-b"}, "ASG_NAMES=etcd-a,etcd-b sweeps both")
        self.assertEqual(stack.aws.heartbeats(), [])

        # Zone B's own scale-in still removes its member.
        action = stack.start_terminate(b1)
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action)))
        self.assertResult(payload, b1, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(self.members(), sorted(set(everyone) - {b1}))
        self.assertQuorate()


class OutsideNodeTest(LayoutCase):
    """A healthy voting member on a machine outside every group (no EC2 instance at all)."""

    nodes = 4  # and the outside node: five voters, so two may be down
    layout = {"outside_nodes": 1}

    def test_a_member_without_an_instance_is_kept_while_it_answers_a_dead_one_is_removed(self):
        stack = self.stack
        outside = "etcd-outside-1"
        everyone = sorted(stack.instance_ids + [outside])

        new, action = stack.start_launch()
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action)))
        self.assertResult(payload, new, "completed", "CONTINUE", member_removed=False)
        self.assertEqual(self.members(), everyone, f"{outside} answers: not stale{self.context()}")
        payload = self.assertSucceeded(*self.invoke(stack.scheduled()))
        self.assertEqual(self.members(), everyone, f"the sweep removed a member{self.context()}")

        # A member that does not answer but whose instance still exists (stopped) is not stale.
        stopped, gone = [f for f in stack.followers() if f != outside][:2]
        stack.stop_instance(stopped)
        payload = self.assertSucceeded(*self.invoke(stack.scheduled()))
        self.assertEqual(
            self.members(), everyone, f"{stopped}'s instance is stopped, not gone{self.context()}"
        )

        # A member whose instance died outside the hooks, and that does not answer, is stale.
        stack.etcd.stop_node(gone)
        stack.aws.terminate_outside_hooks(gone)
        payload = self.assertSucceeded(*self.invoke(stack.scheduled()))
        self.assertEqual(self.members(), sorted(set(everyone) - {gone}), self.context())
        [group_line] = [r for r in payload["results"] if r["instance_id"] is None]
        self.assertTrue(group_line["member_removed"], group_line)
        self.assertIn(outside, self.voters())
        self.assertQuorate()


# ------------------------------------------------------------------------------------------------
# 2. ETCD_MIN_VOTERS: never two voters to one unless told
# ------------------------------------------------------------------------------------------------


class MinVotersTest(LayoutCase):
    def test_three_to_two_then_held_at_the_floor_and_one_only_with_min_voters_one(self):
        stack = self.stack
        first, second = stack.followers()

        action = stack.start_terminate(first)
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action)))
        self.assertResult(payload, first, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(len(self.voters()), 2)

        held = stack.start_terminate(second)
        ok, payload = self.invoke(stack.eventbridge(held))
        self.assertHeld(ok, payload, second, "ETCD_MIN_VOTERS")
        self.assertHeldInPlace(held)
        self.assertMember(second)
        self.assertEqual(len(self.voters()), 2)
        # The sweep holds it too (a heartbeat by instance ID), and says why.
        ok, payload = self.invoke(stack.scheduled())
        self.assertFalse(ok, f"a held instance makes the sweep an error: {payload}")
        self.assertIn("ETCD_MIN_VOTERS", payload["errorMessage"])
        self.assertHeldInPlace(held, beats=2)
        self.assertEqual(self.heartbeats_for(second)[-1]["by"], "instance_id")

        single = self.spawn(ETCD_MIN_VOTERS="1")
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(held), fn=single), fn=single)
        self.assertResult(payload, second, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(len(self.voters()), 1)
        self.assertCompleted(held, "CONTINUE")


# ------------------------------------------------------------------------------------------------
# 3. Spot: only a confirmed interruption skips the hold
# ------------------------------------------------------------------------------------------------


class SpotTest(LayoutCase):
    def test_a_spot_instance_scaled_in_while_a_peer_is_down_is_held(self):
        stack = self.stack
        spot, down = stack.followers()
        stack.make_spot(spot)
        stack.etcd.stop_node(down)
        action = stack.start_terminate(spot)

        ok, payload = self.invoke(stack.eventbridge(action))

        self.assertHeld(ok, payload, spot, "quorum")
        self.assertHeldInPlace(action)
        self.assertMember(spot)
        self.assertEqual(self.members(), sorted(stack.instance_ids))

    def test_a_confirmed_interruption_at_the_voter_floor_is_removed_rather_than_cost_quorum(self):
        """Two voters left (the floor), one a Spot instance being interrupted: kept, its machine
        goes in two minutes and the survivor is one of two, without quorum; so it is removed."""
        stack = self.stack
        first, spot = stack.followers()
        self.deliver_until_done(stack.eventbridge(stack.start_terminate(first)))
        self.assertMember(first, present=False)

        stack.make_spot(spot)
        action = stack.start_terminate(spot)
        stack.interrupt_spot(spot)
        ok, payload = self.invoke(stack.eventbridge(action), timeout_ms=60_000)

        payload = self.assertSucceeded(ok, payload)
        self.assertResult(payload, spot, "completed", "CONTINUE", member_removed=True)
        self.assertMember(spot, present=False)
        self.assertCompleted(action, "CONTINUE")

    def test_a_scale_in_waits_while_a_peers_interruption_is_confirmed(self):
        """Three voters, one a Spot instance being interrupted: scaling another in would leave
        two, and the interrupted one's departure then one. The scale-in waits; the interrupted
        voter's own event removes its member, and the floor then holds the scale-in as before."""
        stack = self.stack
        plain, spot = stack.followers()
        stack.make_spot(spot)
        stack.interrupt_spot(spot)
        held = stack.start_terminate(plain)

        ok, payload = self.invoke(stack.eventbridge(held))
        message = self.assertHeld(ok, payload, plain, "confirmed Spot interruption")
        self.assertIn(spot, message)
        self.assertHeldInPlace(held)
        self.assertEqual(len(self.voters()), 3)

        action = stack.start_terminate(spot)
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action), timeout_ms=60_000))
        self.assertResult(payload, spot, "completed", "CONTINUE", member_removed=True)

        ok, payload = self.invoke(stack.eventbridge(held))
        self.assertHeld(ok, payload, plain, "ETCD_MIN_VOTERS")
        self.assertMember(plain)
        self.assertQuorate()

    def test_a_confirmed_interruption_is_not_held_the_removal_is_retried_until_it_is_done(self):
        self.interrupted_while_a_peer_is_down(shutting_down=False)

    def test_an_instance_already_shutting_down_counts_as_a_confirmed_interruption(self):
        self.interrupted_while_a_peer_is_down(shutting_down=True)

    def interrupted_while_a_peer_is_down(self, shutting_down: bool) -> None:
        """The interruption confirmed while a peer is down: by the Spot request's status
        `marked-for-termination`, or (`shutting_down`) by the instance already `shutting-down`
        while its request still reads `fulfilled`."""
        stack = self.stack
        spot, down = stack.followers()
        stack.make_spot(spot)
        stack.etcd.stop_node(down)
        action = stack.start_terminate(spot)
        stack.interrupt_spot(spot, mark_request=not shutting_down, shutting_down=shutting_down)

        # The peer comes back while the invocation is under way: the function, which cannot
        # hold an interrupted instance, must still be trying when removal becomes safe.
        restart = threading.Timer(1.5, stack.etcd.start_node, args=(down,))
        restart.start()
        self.addCleanup(restart.cancel)
        ok, payload = self.invoke(stack.eventbridge(action), timeout_ms=60_000)

        self.assertNotEqual(
            (payload or {}).get("errorType"), "Held", f"an interruption cannot be held: {payload}"
        )
        payload = self.assertSucceeded(ok, payload)
        self.assertResult(payload, spot, "completed", "CONTINUE", member_removed=True)
        self.assertMember(spot, present=False)
        self.assertCompleted(action, "CONTINUE")
        if not shutting_down:
            self.assertGreaterEqual(
                len(stack.aws.requests("ec2", "DescribeSpotInstanceRequests")),
                1,
                "the interruption was confirmed with the Spot request",
            )
        stack.etcd.wait_healthy()
        self.assertQuorate()


# ------------------------------------------------------------------------------------------------
# 4. Another tool's hook on the same group
# ------------------------------------------------------------------------------------------------


class ForeignHookTest(LayoutCase):
    """`node-drain` belongs to another tool and is listed first by DescribeLifecycleHooks."""

    layout = {"foreign_hooks": {"node-drain": TERMINATING}}
    function_env = {"LIFECYCLE_HOOK_NAMES": "etcd-e2e-launch,etcd-e2e-terminate"}

    def foreign_calls(self) -> list[dict]:
        snapshot = self.stack.aws.registry.snapshot()
        return [
            c
            for kind in ("completions", "heartbeats", "refusals")
            for c in snapshot[kind]
            if c["hook"] == "node-drain"
        ]

    def test_an_event_for_another_tools_hook_is_skipped_and_the_sweep_leaves_it_alone(self):
        stack = self.stack
        asg = stack.aws.client("autoscaling")
        hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=stack.group)["LifecycleHooks"]
        self.assertEqual(hooks[0]["LifecycleHookName"], "node-drain")
        victim = stack.followers()[0]
        ours = stack.start_terminate(victim)
        [foreign] = [a for a in stack.aws.actions_of(victim) if a.hook == "node-drain"]

        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(foreign)))

        line = self.result_for(payload, victim)
        self.assertEqual(line["action"], "skipped", line)
        self.assertIn("LIFECYCLE_HOOK_NAMES", line["detail"])
        self.assertEqual(self.requests_of("CompleteLifecycleAction"), [], self.context())
        self.assertEqual(self.requests_of("RecordLifecycleActionHeartbeat"), [], self.context())
        self.assertEqual(self.members(), sorted(stack.instance_ids))
        self.assertEqual(len(stack.aws.actions_of(victim)), 2)

        # The sweep finishes the etcd hook by instance ID; the drain hook is the other tool's.
        payload = self.assertSucceeded(*self.invoke(stack.scheduled()))
        self.assertMember(victim, present=False)
        self.assertCompleted(ours, "CONTINUE", by="instance_id")
        self.assertEqual(self.foreign_calls(), [], "another tool's action was touched")
        self.assertEqual([a.hook for a in stack.aws.actions_of(victim)], ["node-drain"])
        self.assertEqual(stack.aws.lifecycle_state(victim), "Terminating:Wait")
        lifecycle_calls = self.requests_of("CompleteLifecycleAction") + self.requests_of(
            "RecordLifecycleActionHeartbeat"
        )
        self.assertNotIn("node-drain", {r.get("LifecycleHookName") for r in lifecycle_calls})

    def test_the_sweep_acts_on_each_listed_hook_not_the_first(self):
        stack = self.stack
        both = self.spawn(LIFECYCLE_HOOK_NAMES="node-drain,etcd-e2e-terminate,etcd-e2e-launch")
        victim = stack.followers()[0]
        stack.start_terminate(victim)

        payload = self.assertSucceeded(*self.invoke(stack.scheduled(), fn=both), fn=both)

        done = {c["hook"]: c for c in stack.aws.completions()}
        self.assertEqual(set(done), {"node-drain", "etcd-e2e-terminate"}, self.context(both))
        self.assertEqual(
            {(c["by"], c["result"]) for c in done.values()}, {("instance_id", "CONTINUE")}
        )
        self.assertEqual(stack.aws.actions_of(victim), [])
        self.assertIsNone(stack.aws.lifecycle_state(victim), "it went on once both were done")
        self.assertMember(victim, present=False)
        self.assertTrue(any(r["member_removed"] for r in payload["results"]), payload)


# ------------------------------------------------------------------------------------------------
# 5. Learners over an instance refresh
# ------------------------------------------------------------------------------------------------


class LearnerTest(LayoutCase):
    function_env = {"ETCD_ADD_LEARNER_ON_LAUNCH": "true"}

    def launch_as_learner(self) -> str:
        """A launch the function lets in with its learner added (the node not started yet)."""
        new, action = self.stack.start_launch()
        payload, _ = self.deliver_until_done(self.stack.eventbridge(action))
        self.assertResult(payload, new, "completed", "CONTINUE")
        self.assertIn(new, self.learners(), f"no learner for {new}{self.context()}")
        return new

    def join(self, instance_id: str) -> None:
        """Its bootstrap script starts etcd; the harness waits until etcd would promote it."""
        self.stack.join(instance_id)
        self.stack.etcd.wait_until(
            lambda: self.stack.etcd.in_sync(instance_id), what=f"{instance_id} in sync"
        )

    def test_an_instance_refresh_of_launch_and_terminate_pairs_ends_with_three_voters(self):
        stack = self.stack
        old = list(stack.instance_ids)
        new_ones = []
        with VoterWatch(stack) as watch:
            self.refresh(old, new_ones)
        self.assertEqual(self.voters(), sorted(new_ones), self.context())
        self.assertEqual(self.learners(), [])
        self.assertEqual(len(stack.etcd.healthy_voters()), 3)
        self.assertIsNotNone(watch.fewest)
        self.assertGreaterEqual(watch.fewest, 3, "the number of voters shrank on the way")

    def refresh(self, old: list[str], new_ones: list[str]) -> None:
        """Each old instance replaced in turn: a launch (its learner added, its node joining),
        then the old one's terminate; holds are delivered again, as AWS would."""
        stack = self.stack
        for victim in old:
            new = self.launch_as_learner()
            new_ones.append(new)
            self.join(new)

            action = stack.start_terminate(victim)
            payload, _ = self.deliver_until_done(stack.eventbridge(action))
            self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
            self.assertIn(new, self.voters(), f"{new} promoted, {victim} gone{self.context()}")
            self.assertQuorate()

    def test_a_late_launch_delivery_adds_no_learner_once_the_instance_has_moved_on(self):
        """Deliveries are at least once: the launch event of an instance that has since gone back
        to the warm pool (its member removed, its machine stopped) comes again. A learner added
        for it would never be started, and as etcd takes one learner at a time every later
        launch would wait on it; Auto Scaling says the action is over, so nothing is added."""
        stack = self.stack
        new, action = stack.start_launch()
        launched = stack.eventbridge(action)
        payload, _ = self.deliver_until_done(launched)
        self.assertResult(payload, new, "completed", "CONTINUE")
        self.join(new)
        back = stack.start_warm_scale_in(new)
        payload, _ = self.deliver_until_done(stack.eventbridge(back), hold_words=ETCD_NOT_YET)
        self.assertResult(payload, new, "completed", "CONTINUE", member_removed=True)
        stack.etcd.stop_node(new)
        members = self.members()
        time.sleep(8.0)  # late: etcd takes a new member again a few seconds after a removal

        payload = self.assertSucceeded(*self.invoke(launched))

        line = self.assertResult(payload, new, "skipped", "NONE")
        self.assertIn("late or repeated delivery", line["detail"])
        self.assertNotIn("learner", line["detail"], "no learner was even tried")
        self.assertEqual(self.members(), members, "no learner added for the late delivery")
        second, action = stack.start_launch()
        payload, _ = self.deliver_until_done(stack.eventbridge(action))
        self.assertResult(payload, second, "completed", "CONTINUE")
        self.assertEqual(self.learners(), [second])

    def test_a_launch_is_held_while_another_learner_catches_up_then_let_in(self):
        stack = self.stack
        first = self.launch_as_learner()  # its node is not started yet: a learner catching up
        second, action = stack.start_launch()

        ok, payload = self.invoke(stack.eventbridge(action))

        self.assertHeld(ok, payload, second, "learner")
        self.assertHeldInPlace(action)
        self.assertNotIn(second, self.members())

        self.join(first)
        payload, _ = self.deliver_until_done(stack.eventbridge(action))
        self.assertResult(payload, second, "completed", "CONTINUE")
        self.assertIn(first, self.voters(), "the caught-up learner was promoted")
        self.assertEqual(self.learners(), [second])
        self.assertEqual(stack.aws.lifecycle_state(second), "InService")

    def test_the_sweep_adds_a_learner_for_an_in_service_instance_without_a_member(self):
        stack = self.stack
        new, action = stack.start_launch()
        # Its launch went through without the function (the event was lost and a hook released
        # it): it is InService with no member.
        stack.aws.client("autoscaling").complete_lifecycle_action(
            AutoScalingGroupName=action.group,
            LifecycleHookName=action.hook,
            LifecycleActionToken=action.token,
            LifecycleActionResult="CONTINUE",
        )
        self.assertEqual(stack.aws.lifecycle_state(new), "InService")

        self.assertSucceeded(*self.invoke(stack.scheduled()))

        self.assertEqual(self.learners(), [new], self.context())
        [learner] = [m for m in stack.etcd.members() if m.is_learner]
        self.assertEqual(learner.peer_urls, [f"http://{stack.ip_of(new)}:2380"])
        self.join(new)  # and its node can join as what the function added
        self.assertEqual(self.learners(), [new])


# ------------------------------------------------------------------------------------------------
# 6. Membership changes under etcd's lock
# ------------------------------------------------------------------------------------------------


class LockTest(LayoutCase):
    def test_while_another_holds_the_membership_lock_the_function_holds(self):
        stack = self.stack
        victim = stack.followers()[0]
        lock = stack.etcd.hold_lock(LOCK_NAME, ttl=60)
        action = stack.start_terminate(victim)

        started = time.monotonic()
        ok, payload = self.invoke(stack.eventbridge(action))
        waited = time.monotonic() - started

        self.assertHeld(ok, payload, victim, "membership lock")
        self.assertLess(waited, 10.0, "the lock is waited for a short while only (about 5 s)")
        self.assertHeldInPlace(action)
        self.assertEqual(self.members(), sorted(stack.instance_ids))

        lock.release()
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action)))
        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(stack.etcd.lock_holders(LOCK_NAME), [], "the function released its lock")


class TwoInvocationsTest(LayoutCase):
    """Four voters, one hung: removing either of two healthy followers alone is safe (2 of 3
    healthy left), removing both is not (1 of 2). etcd's own check is off, so only the function
    can keep the cluster. The hung member makes reading the cluster's health take a while (its
    status probe times out), so two invocations that do not serialise their decisions both
    decide on the view they read before either removal."""

    nodes = 4
    layout = {"etcd_args": ["--strict-reconfig-check=false"]}

    def test_two_functions_given_terminates_at_once_remove_one_and_hold_the_other(self):
        stack = self.stack
        fns = [self.fn, self.spawn()]
        for fn in fns:  # warm: clients built, nothing to do
            self.assertSucceeded(*self.invoke(stack.scheduled(), fn=fn), fn=fn)
        # The hung member is the last endpoint, so the function's cluster-level calls meet it last.
        followers = stack.followers()
        hung = [n for n in stack.etcd.nodes if n in followers][-1]
        first, second = [f for f in followers if f != hung]
        stack.etcd.pause_node(hung)
        actions = [stack.start_terminate(first), stack.start_terminate(second)]
        # Both read the group from EC2 at the same moment, so both decide from the same view
        # unless something serialises them.
        stack.aws.rendezvous("ec2", "DescribeInstances", parties=2, timeout_s=10)

        pending = [fn.api.submit(stack.eventbridge(a), 30_000) for fn, a in zip(fns, actions)]
        for inv in pending:
            self.assertTrue(inv.done.wait(45), "no answer")

        removed = [a.instance_id for a in actions if a.instance_id not in self.members()]
        self.assertEqual(
            len(removed), 1, f"removed {removed}{self.context(fns[0])}{self.context(fns[1])}"
        )
        self.assertQuorate()
        for fn, action, inv in zip(fns, actions, pending):
            if action.instance_id in removed:
                self.assertSucceeded(inv.ok, inv.payload, fn=fn)
                self.assertCompleted(action, "CONTINUE")
            else:
                message = self.assertHeld(bool(inv.ok), inv.payload, action.instance_id, fn=fn)
                self.assertTrue(
                    "membership lock" in message or "quorum" in message,
                    f"the hold names neither the lock nor quorum: {message}",
                )
                self.assertHeldInPlace(action)
        met = [r["fault"] for r in stack.aws.requests("ec2", "DescribeInstances")]
        self.assertEqual(met.count("rendezvous"), 2, "both invocations met at DescribeInstances")


# ------------------------------------------------------------------------------------------------
# 7. Matching: host names under a custom domain, a stopped instance
# ------------------------------------------------------------------------------------------------


class HostNameTest(LayoutCase):
    """Members named `ip-127-0-N-M.corp.example` (a custom DHCP domain), four of them."""

    nodes = 4
    layout = {"naming": "hostname", "dns_domain": "corp.example"}

    def test_a_member_named_by_host_name_is_found_by_its_address_also_when_stopped(self):
        stack = self.stack
        victim, stopped = stack.followers()[:2]
        self.assertTrue(stack.member_name(victim).endswith(".corp.example"))

        action = stack.start_terminate(victim)
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action)))
        line = self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertNotIn("already", line["detail"])
        self.assertMember(victim, present=False)

        # Replaced while stopped in EC2: still found by ID, its (dead) member removed.
        stack.stop_instance(stopped)
        action = stack.start_terminate(stopped)
        payload = self.assertSucceeded(*self.invoke(stack.eventbridge(action)))
        self.assertResult(payload, stopped, "completed", "CONTINUE", member_removed=True)
        self.assertMember(stopped, present=False)
        self.assertCompleted(action, "CONTINUE")
        self.assertQuorate()


# ------------------------------------------------------------------------------------------------
# 8. https with the CA only in the trust store
# ------------------------------------------------------------------------------------------------


class TrustStoreTest(LayoutCase):
    """A TLS cluster (client certificates required); no ETCD_CA_FILE: the CA comes from
    SSL_CERT_FILE or SSL_CERT_DIR, as a Lambda adds a private CA without a layer."""

    nodes = 4
    layout = {"etcd_tls": True}

    def trust_store_env(self, **env: str | None) -> dict[str, str | None]:
        return {"ETCD_CA_FILE": None, "SSL_CERT_FILE": None, "SSL_CERT_DIR": None, **env}

    def cert_dir(self, name: str, ca_file: str | None) -> str:
        """A directory in OpenSSL's layout (`<subject hash>.0`), holding `ca_file` if given."""
        path = os.path.join(self.stack.workdir, name)
        os.makedirs(path)
        if ca_file:
            digest = subprocess.run(
                ["openssl", "x509", "-subject_hash", "-noout", "-in", ca_file],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            with open(ca_file) as src, open(os.path.join(path, f"{digest}.0"), "w") as dst:
                dst.write(src.read())
        return path

    def test_the_ca_is_taken_from_ssl_cert_file_or_ssl_cert_dir(self):
        stack = self.stack
        first, second = stack.followers()[:2]
        empty = self.cert_dir("empty-certs", None)

        # Control: a trust store with another CA cannot verify the servers, so nothing changes.
        other = make_tls(os.path.join(stack.workdir, "other-tls"), stack.slot.ips, "another-ca")
        wrong = self.spawn(**self.trust_store_env(SSL_CERT_FILE=other.ca_cert, SSL_CERT_DIR=empty))
        action = stack.start_terminate(first)
        ok, payload = self.invoke(stack.eventbridge(action), fn=wrong)
        self.assertHeld(ok, payload, first, fn=wrong)
        self.assertMember(first)

        by_file = self.spawn(
            **self.trust_store_env(SSL_CERT_FILE=stack.tls.ca_cert, SSL_CERT_DIR=empty)
        )
        ok, payload = self.invoke(stack.eventbridge(action), fn=by_file)
        self.assertSucceeded(ok, payload, fn=by_file)
        self.assertResult(payload, first, "completed", "CONTINUE", member_removed=True)
        self.assertCompleted(action, "CONTINUE")

        ca_dir = self.cert_dir("certs", stack.tls.ca_cert)
        by_dir = self.spawn(**self.trust_store_env(SSL_CERT_DIR=ca_dir))
        action = stack.start_terminate(second)
        ok, payload = self.invoke(stack.eventbridge(action), fn=by_dir)
        self.assertSucceeded(ok, payload, fn=by_dir)
        self.assertResult(payload, second, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(len(self.voters()), 2)
        for fn in (wrong, by_file, by_dir):
            self.assertNotIn("ETCD_CA_FILE", fn.env)


if __name__ == "__main__":
    import unittest

    unittest.main()
