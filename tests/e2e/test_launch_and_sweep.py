"""Scale-out and the reconcile sweep: a launch clears members left behind by instances that died
without a hook; the scheduled sweep finishes work whose event never arrived."""

from __future__ import annotations

from tests.e2e.base import E2ETestCase
from tests.stack import LAUNCHING


class LaunchTest(E2ETestCase):
    def test_launch_removes_a_stale_member_and_continues(self):
        gone = self.stack.followers()[0]
        # The instance dies outside Auto Scaling's hooks (EC2 API, hardware): no terminate event.
        self.stack.etcd.stop_node(gone)
        self.stack.aws.terminate_outside_hooks(gone)
        new, action = self.stack.start_launch()

        payload = self.assertSucceeded(*self.invoke(self.stack.eventbridge(action)))

        self.assertMember(gone, present=False)
        self.assertEqual(len(self.members()), 2)
        self.assertNotIn(new, self.members(), "learners are off by default")
        self.assertCompleted(action, "CONTINUE")
        self.assertEqual(self.stack.aws.lifecycle_state(new), "InService")
        line = self.assertResult(payload, new, "completed", "CONTINUE")
        self.assertEqual(line["transition"], LAUNCHING)
        self.assertIn(f"stale member {gone}", line["detail"])


class SweepTest(E2ETestCase):
    def test_sweep_finishes_instances_left_waiting(self):
        victim = self.stack.followers()[0]
        # Paused, but the events were lost: only the sweep can find them.
        terminating = self.stack.start_terminate(victim)
        new, launching = self.stack.start_launch()

        payload = self.assertSucceeded(*self.invoke(self.stack.scheduled()))

        self.assertMember(victim, present=False)
        self.assertCompleted(terminating, "CONTINUE", by="instance_id")
        self.assertCompleted(launching, "CONTINUE", by="instance_id")
        self.assertIsNone(self.stack.aws.lifecycle_state(victim))
        self.assertEqual(self.stack.aws.lifecycle_state(new), "InService")
        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertResult(payload, new, "completed", "CONTINUE")

    def test_sweep_removes_members_of_instances_gone_without_a_hook(self):
        gone = self.stack.followers()[0]
        self.stack.etcd.stop_node(gone)
        self.stack.aws.terminate_outside_hooks(gone)

        payload = self.assertSucceeded(*self.invoke(self.stack.scheduled()))

        self.assertMember(gone, present=False)
        self.assertEqual(len(self.members()), 2)
        [group_line] = payload["results"]
        self.assertTrue(group_line["member_removed"], group_line)
        self.assertIn(f"stale member {gone}", group_line["detail"])
        self.assertEqual(self.stack.aws.completions(), [], "nothing was waiting")

    def test_sweep_with_nothing_to_do_changes_nothing(self):
        before = self.members()
        payload = self.assertSucceeded(*self.invoke(self.stack.scheduled()))
        self.assertEqual(self.members(), before)
        self.assertEqual(self.stack.aws.completions(), [])
        self.assertEqual(self.stack.aws.heartbeats(), [])
        [group_line] = payload["results"]
        self.assertEqual((group_line["group"], group_line["instance_id"]), (self.stack.group, None))

    def test_sweep_without_groups_is_a_clear_error(self):
        fn = self.spawn(ASG_NAMES="")
        ok, payload = self.invoke(self.stack.scheduled(), fn=fn)
        self.assertFailedWith(ok, payload, "ASG_NAMES", fn=fn)
