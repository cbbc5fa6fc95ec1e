"""Scale-in: the terminate hook removes the instance's etcd member and releases the instance, and
never removes one when that would cost quorum (it holds instead)."""

from __future__ import annotations

from tests.e2e.base import ETCD_NOT_YET, HOLD_WORD, E2ETestCase
from tests.stack import TERMINATING, events


class TerminateTest(E2ETestCase):
    def test_terminate_a_follower(self):
        victim = self.stack.followers()[0]
        leader = self.stack.leader()
        action = self.stack.start_terminate(victim)

        payload = self.assertSucceeded(*self.invoke(self.stack.eventbridge(action)))

        self.assertMember(victim, present=False)
        self.assertEqual(len(self.members()), 2)
        self.assertCompleted(action, "CONTINUE")
        self.assertEqual(self.stack.etcd.leader(), leader, "removing a follower moved the leader")
        self.assertIsNone(self.stack.aws.lifecycle_state(victim), "instance left the group")
        result = self.assertResult(
            payload, victim, "completed", "CONTINUE", member_removed=True, leader_moved=False
        )
        self.assertEqual(result["group"], self.stack.group)
        self.assertEqual(result["transition"], TERMINATING)
        self.assertBreakersClosed(payload)

    def test_terminate_the_leader(self):
        victim = self.stack.leader()
        action = self.stack.start_terminate(victim)

        payload = self.assertSucceeded(*self.invoke(self.stack.eventbridge(action)))

        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")
        self.stack.etcd.wait_until(
            lambda: self.stack.etcd.leader() not in (None, victim), what="a new leader"
        )
        self.assertIn(self.stack.etcd.leader(), self.members())
        result = self.assertResult(
            payload, victim, "completed", "CONTINUE", member_removed=True, leader_moved=True
        )
        self.assertEqual(result["transition"], TERMINATING)

    def test_unsafe_removal_is_held_then_done_once_safe(self):
        leader = self.stack.leader()
        victim, down = self.stack.followers()
        self.stack.etcd.stop_node(down)
        action = self.stack.start_terminate(victim)

        ok, payload = self.invoke(self.stack.eventbridge(action))

        message = self.assertFailedWith(ok, payload, HOLD_WORD, victim, "quorum")
        self.assertEqual(payload.get("errorType"), "Held")
        self.assertEqual(len(self.heartbeats_for(victim)), 1, self.context())
        self.assertNotCompleted(victim)
        self.assertEqual(sorted(self.members()), sorted(self.stack.instance_ids))
        self.assertEqual(self.stack.aws.lifecycle_state(victim), "Terminating:Wait")

        # Through SQS the held record is a failed batch item, so it is delivered again.
        ok, payload = self.invoke(events.sqs(self.stack.notification(action)))
        self.assertTrue(ok, f"an SQS batch answers a partial batch response: {payload}")
        self.assertEqual(payload.get("batchItemFailures"), [{"itemIdentifier": "msg-0"}])
        self.assertEqual(len(self.heartbeats_for(victim)), 2, self.context())
        self.assertNotCompleted(victim)

        # The node comes back: the redelivered event now removes and completes.
        self.stack.etcd.start_node(down)
        self.stack.etcd.wait_ready()
        payload, _ = self.deliver_until_done(
            self.stack.eventbridge(action), hold_words=ETCD_NOT_YET
        )
        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")
        self.assertIn(self.stack.etcd.leader(), (leader, down))

    def test_the_same_event_twice_is_harmless(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        event = self.stack.eventbridge(action)

        self.assertSucceeded(*self.invoke(event))
        members_after_first = self.members()
        payload = self.assertSucceeded(*self.invoke(event))

        self.assertEqual(self.members(), members_after_first)
        self.assertEqual(len(members_after_first), 2)
        self.assertCompleted(action, "CONTINUE")
        self.assertResult(payload, victim, "completed", "ALREADY_DONE", member_removed=False)
        self.assertEqual(len(self.stack.aws.refusals()), 1, "the second completion was refused")

    def test_endpoints_discovered_from_instance_addresses(self):
        fn = self.spawn(ETCD_ENDPOINTS="", ETCD_CLIENT_SCHEME="http")
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)

        payload = self.assertSucceeded(*self.invoke(self.stack.eventbridge(action), fn=fn), fn=fn)

        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")

    def test_a_reserve_not_below_the_timeout_is_refused_naming_it(self):
        fn = self.spawn(DEADLINE_RESERVE_MS="5000")
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)

        # A 4 s invocation cannot keep 5 s in reserve: every delivery would only ever hold "too
        # little time". Each invocation still holds the action (a heartbeat, so the hook does
        # not time out while the configuration is fixed) and answers the configuration error.
        for _ in range(2):
            ok, payload = self.invoke(self.stack.eventbridge(action), fn=fn, timeout_ms=4000)
            self.assertFailedWith(ok, payload, "DEADLINE_RESERVE_MS=5000", "timeout", fn=fn)
            self.assertEqual(payload.get("errorType"), "InvalidConfiguration", payload)
        self.assertEqual(len(self.heartbeats_for(victim)), 2, self.context(fn))
        self.assertNotCompleted(victim)
        self.assertMember(victim, present=True)

