"""The reconcile sweep over warm pools and over several groups.

Warm pools: an instance going back to the pool on scale-in waits in `Warmed:Pending:Wait` with a
terminate action (AWS's naming), and a new instance launched into the pool waits in the same
state with a launch action; only DescribeWarmPool lists either. The sweep cannot tell them apart,
so it handles both as leaving the cluster, on the hooks of both transitions: a member is removed
under the quorum check (or the instance held while that is unsafe), and an instance with no
member is let go at once.

Several groups: every group is listed, and every waiting instance of every group heartbeated,
before any group's work starts, so a slow group cannot let another group's actions time out.

Each test drives the release binary with a scheduled event and reads what really happened:
etcd's member list, moto's record of completions, heartbeats and refusals, and the request log.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.base import ETCD_NOT_YET, E2ETestCase
from tests.stack import LAUNCHING, TERMINATING, Stack

WARM_WAIT = "Warmed:Pending:Wait"
WARM_STOPPED = "Warmed:Stopped"
LISTING = ("DescribeLifecycleHooks", "DescribeAutoScalingGroups", "DescribeWarmPool")


class WarmPoolSweepTest(E2ETestCase):
    def sweep_requests(self, since: int) -> list[dict[str, Any]]:
        return self.stack.aws.requests()[since:]

    def test_a_scale_in_back_to_the_warm_pool_is_removed_safely_then_completed(self):
        stack = self.stack
        victim = stack.followers()[0]
        action = stack.start_warm_scale_in(victim)
        self.assertEqual(action.transition, TERMINATING)
        self.assertEqual(stack.warm_state(victim), WARM_WAIT)

        payload, _ = self.deliver_until_done(stack.scheduled(), hold_words=ETCD_NOT_YET)

        self.assertMember(victim, present=False)
        self.assertEqual(len(self.members()), 2)
        self.assertCompleted(action, "CONTINUE", by="instance_id")
        self.assertEqual(stack.warm_state(victim), WARM_STOPPED)
        line = self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(line["transition"], TERMINATING)
        self.assertTrue(line["detail"].startswith(WARM_WAIT), line)
        # The launch hook, which it was not waiting on, answered "already done".
        refused = [r for r in stack.aws.refusals() if r["instance_id"] == victim]
        self.assertTrue(refused, self.context())
        self.assertTrue(all(r["hook"] == stack.seeded.launch_hook for r in refused), refused)

    def test_a_scale_in_back_to_the_warm_pool_is_held_while_its_removal_is_unsafe(self):
        stack = self.stack
        victim, down = stack.followers()
        stack.etcd.stop_node(down)
        action = stack.start_warm_scale_in(victim)

        ok, payload = self.invoke(stack.scheduled())

        message = self.assertFailedWith(ok, payload, f"held {victim}", "quorum")
        self.assertEqual(payload.get("errorType"), "Held", message)
        beats = self.heartbeats_for(victim)
        self.assertEqual(len(beats), 1, self.context())
        self.assertEqual(
            (beats[0]["hook"], beats[0]["token"], beats[0]["by"]),
            (stack.seeded.terminate_hook, action.token, "instance_id"),
        )
        self.assertNotCompleted(victim)
        self.assertMember(victim)
        self.assertEqual(stack.warm_state(victim), WARM_WAIT)

        # Once the peer is back, the next sweep removes the member and lets it go.
        stack.etcd.start_node(down)
        stack.etcd.wait_healthy()
        payload, _ = self.deliver_until_done(stack.scheduled(), hold_words=ETCD_NOT_YET)
        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE", by="instance_id")

    def test_a_launch_into_the_warm_pool_completes_without_touching_etcd(self):
        stack = self.stack
        before = self.members()
        new, action = stack.start_warm_launch()
        self.assertEqual(action.transition, LAUNCHING)

        payload = self.assertSucceeded(*self.invoke(stack.scheduled()))

        self.assertEqual(self.members(), before)
        self.assertCompleted(action, "CONTINUE", by="instance_id")
        self.assertEqual(stack.warm_state(new), WARM_STOPPED)
        line = self.assertResult(payload, new, "completed", "CONTINUE", member_removed=False)
        self.assertIn("no etcd member for this instance", line["detail"])

    def test_every_page_of_the_warm_pool_is_read(self):
        stack = self.stack
        stack.aws.registry.warm_pool_page_size = 1
        victim = stack.followers()[0]
        leaving = stack.start_warm_scale_in(victim)
        new, arriving = stack.start_warm_launch()
        since = len(stack.aws.requests())

        payload, _ = self.deliver_until_done(stack.scheduled(), hold_words=ETCD_NOT_YET)

        pages = [r for r in self.sweep_requests(since) if r["action"] == "DescribeWarmPool"]
        self.assertGreaterEqual(len(pages), 2, self.context())
        self.assertCompleted(leaving, "CONTINUE", by="instance_id")
        self.assertCompleted(arriving, "CONTINUE", by="instance_id")
        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertResult(payload, new, "completed", "CONTINUE", member_removed=False)
        self.assertEqual(stack.warm_state(victim), WARM_STOPPED)
        self.assertEqual(stack.warm_state(new), WARM_STOPPED)


class ThreeGroupSweepTest(E2ETestCase):
    """One cluster over three groups (2 + 2 + 1 voters), each with an instance waiting."""

    groups = {"etcd-a": 2, "etcd-b": 2, "etcd-c": 1}

    def setUp(self) -> None:
        self.stack = Stack(groups=self.groups)
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.fn = self.spawn()

    def test_every_group_is_heartbeated_before_any_work_then_each_is_finished(self):
        stack = self.stack
        scaled_in = stack.followers("etcd-a")[0]
        terminating = stack.start_terminate(scaled_in)
        to_pool = stack.followers("etcd-b")[0]
        warm = stack.start_warm_scale_in(to_pool)
        new, launching = stack.start_launch(group="etcd-c")
        actions = [terminating, warm, launching]
        since = len(stack.aws.requests())

        payload = self.assertSucceeded(*self.invoke(stack.scheduled()))

        # What happened: both leavers' members removed (5 voters to 3), each action completed.
        self.assertEqual(len(self.members()), 3, self.context())
        for gone in (scaled_in, to_pool):
            self.assertMember(gone, present=False)
        for action in actions:
            self.assertCompleted(action, "CONTINUE", by="instance_id")
        self.assertIsNone(stack.aws.lifecycle_state(scaled_in))
        self.assertEqual(stack.warm_state(to_pool), WARM_STOPPED)
        self.assertEqual(stack.aws.lifecycle_state(new), "InService")
        self.assertResult(payload, scaled_in, "completed", "CONTINUE", member_removed=True)
        self.assertResult(payload, to_pool, "completed", "CONTINUE", member_removed=True)
        self.assertResult(payload, new, "completed", "CONTINUE")
        group_lines = [r["group"] for r in payload["results"] if r["instance_id"] is None]
        self.assertEqual(group_lines, list(self.groups), payload["results"])

        # In what order: every group listed, then every waiting action heartbeated, and only
        # then the first group's work (EC2, etcd, completions).
        requests = self.sweep_requests(since)
        order = [(r["service"], r["action"]) for r in requests]
        first_beat = order.index(("autoscaling", "RecordLifecycleActionHeartbeat"))
        first_work = next(
            i
            for i, (service, action) in enumerate(order)
            if service == "ec2" or action == "CompleteLifecycleAction"
        )
        listed = [i for i, (_, action) in enumerate(order) if action in LISTING]
        self.assertEqual(
            sum(1 for i in listed if order[i][1] == "DescribeWarmPool"), 3, order
        )
        self.assertLess(max(listed), first_beat, order)
        beats = [i for i, (_, a) in enumerate(order) if a == "RecordLifecycleActionHeartbeat"]
        self.assertTrue(all(i < first_work for i in beats), order)
        first_work_time = requests[first_work]["time"]
        beaten = {
            h["token"] for h in stack.aws.heartbeats() if h["time"] <= first_work_time
        }
        for action in actions:
            self.assertIn(
                action.token,
                beaten,
                f"{action.instance_id} of {action.group} not heartbeated before the work"
                f"{self.context()}",
            )

    def sweep_requests(self, since: int) -> list[dict[str, Any]]:
        return self.stack.aws.requests()[since:]
