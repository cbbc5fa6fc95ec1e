"""Every delivery shape the product accepts (EventBridge, SNS, SQS, SNS fanned out to SQS), the
test notification it must ignore, and bad input it must refuse without touching anything and
without dying."""

from __future__ import annotations

import glob
import json
import os
import unittest

from tests.e2e.base import E2ETestCase
from tests.stack import TERMINATING, events


class WrappedDeliveryTest(E2ETestCase):
    def test_sns_delivery(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)

        payload = self.assertSucceeded(*self.invoke(events.sns(self.stack.notification(action))))

        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")
        line = self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)
        self.assertEqual(line["transition"], TERMINATING)
        self.assertNotIn("batchItemFailures", payload, "SNS is all or nothing, not a batch")

    def test_sqs_batch_reports_only_the_bad_record(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        batch = events.sqs(self.stack.notification(action), "this is not a lifecycle message")

        ok, payload = self.invoke(batch)

        self.assertTrue(ok, f"an SQS batch answers a partial batch response: {payload}{self.context()}")
        self.assertEqual(payload.get("batchItemFailures"), [{"itemIdentifier": "msg-1"}])
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")
        self.assertResult(payload, victim, "completed", "CONTINUE", member_removed=True)

    def test_sns_fanned_out_to_sqs(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)

        ok, payload = self.invoke(events.sqs(events.sns_in_sqs(self.stack.notification(action))))

        self.assertTrue(ok, f"{payload}{self.context()}")
        self.assertEqual(payload.get("batchItemFailures"), [])
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")


class IgnoredAndBadInputTest(E2ETestCase):
    """Nothing here may complete, heartbeat or remove anything."""

    def assertNothingHappened(self, members_before: list[str]) -> None:
        self.assertEqual(self.stack.aws.completions(), [], self.context())
        self.assertEqual(self.stack.aws.heartbeats(), [], self.context())
        self.assertEqual(self.stack.aws.count(action="CompleteLifecycleAction"), 0)
        self.assertEqual(self.stack.aws.count(action="RecordLifecycleActionHeartbeat"), 0)
        self.assertEqual(self.members(), members_before)

    def test_test_notification_is_acknowledged_and_ignored(self):
        before = self.members()
        note = events.test_notification(self.stack.group, self.stack.account())
        payload = self.assertSucceeded(*self.invoke(events.sns(note)))
        self.assertEqual([r["action"] for r in payload["results"]], ["ignored"])
        ok, payload = self.invoke(events.sqs(note))
        self.assertTrue(ok, self.context())
        self.assertEqual(payload.get("batchItemFailures"), [])
        self.assertEqual([r["action"] for r in payload["results"]], ["ignored"])
        self.assertNothingHappened(before)

    def test_group_not_configured_is_skipped(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        fn = self.spawn(ASG_NAMES="some-other-group")
        before = self.members()

        ok, payload = self.invoke(self.stack.eventbridge(action), fn=fn)

        self.assertTrue(ok, f"a foreign group is skipped, not an error: {payload}{self.context(fn)}")
        self.assertResult(payload, victim, "skipped", "NONE")
        self.assertNothingHappened(before)

    def test_malformed_events_are_refused_and_the_process_keeps_serving(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        good = self.stack.eventbridge(action)
        detail = good["detail"]
        no_token = dict(detail)
        del no_token["LifecycleActionToken"]
        bad = {
            "an empty object": ({}, []),
            "a bare string": ("terminate i-123", []),
            "no token": ({**good, "detail": no_token}, ["LifecycleActionToken"]),
            "transition disagrees with detail-type": (
                {
                    **good,
                    "detail": {**detail, "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING"},
                },
                [],
            ),
            "unknown transition": (
                {
                    **good,
                    "detail-type": "EC2 Instance-terminate Lifecycle Action",
                    "detail": {**detail, "LifecycleTransition": "autoscaling:EC2_INSTANCE_REBOOTING"},
                },
                [],
            ),
            "SNS message that is not JSON": (events.sns("not json at all"), []),
            "an unknown detail-type": (
                {"detail-type": "Nonsense", "source": "nowhere", "detail": {}},
                [],
            ),
            "no instance ID": (
                {**good, "detail": {k: v for k, v in detail.items() if k != "EC2InstanceId"}},
                ["EC2InstanceId"],
            ),
        }
        for path in sorted(glob.glob(events.sample_path("malformed/*.json"))):
            with open(path) as f:
                bad[f"events/malformed/{os.path.basename(path)}"] = (json.load(f), [])
        before = self.members()
        for name, (event, words) in bad.items():
            with self.subTest(name):
                ok, payload = self.invoke(event)
                self.assertFailedWith(ok, payload, *words)
                self.assertIsInstance(payload.get("errorType"), str)
                self.assertTrue(self.fn.alive(), f"the process died on {name}")
        self.assertNothingHappened(before)
        self.assertEqual(self.stack.aws.lifecycle_state(victim), "Terminating:Wait")

        # The same process still does real work afterwards.
        self.assertSucceeded(*self.invoke(good))
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")

    def test_an_event_from_another_source_is_refused(self):
        """The contract accepts lifecycle events from source `aws.autoscaling` only."""
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        before = self.members()

        ok, payload = self.invoke({**self.stack.eventbridge(action), "source": "aws.ec2"})

        self.assertFailedWith(ok, payload, "source")
        self.assertNothingHappened(before)
