"""The resilience layer seen from outside: transient AWS faults are retried to success; a dead
dependency opens its circuit, after which invocations fail at once without a single call, until a
fresh execution environment starts closed again."""

from __future__ import annotations

import re

from tests.e2e.base import E2ETestCase


class TransientFaultTest(E2ETestCase):
    function_env = {"RETRY_MAX_ATTEMPTS": "4"}

    def test_503_and_throttling_are_retried_until_the_action_completes(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        aws = self.stack.aws
        aws.inject("ec2", "throttle", 2, action="DescribeInstances")
        aws.inject("autoscaling", "503", 1, action="CompleteLifecycleAction")
        aws.inject("autoscaling", "throttle", 1, action="CompleteLifecycleAction")

        payload = self.assertSucceeded(*self.invoke(self.stack.eventbridge(action)))

        self.assertEqual(aws.pending_faults(), [], "every injected fault was met")
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")
        completes = aws.requests("autoscaling", "CompleteLifecycleAction")
        self.assertEqual([r["fault"] for r in completes], ["503", "throttle", None])
        describes = aws.requests("ec2", "DescribeInstances")
        self.assertEqual([r["fault"] for r in describes][:3], ["throttle", "throttle", None])
        self.assertBreakersClosed(payload)

    def test_a_stalled_call_is_cut_off_and_retried(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        # Longer than one attempt may take (src/aws/mod.rs: ATTEMPT_TIMEOUT, 3 s), far shorter
        # than the invocation's deadline: the attempt must be abandoned and the call retried.
        self.stack.aws.inject("ec2", "stall", 1, action="DescribeInstances", stall_s=6.0)

        payload = self.assertSucceeded(*self.invoke(self.stack.eventbridge(action)))

        self.assertCompleted(action, "CONTINUE")
        self.assertMember(victim, present=False)
        describes = self.stack.aws.requests("ec2", "DescribeInstances")
        self.assertGreaterEqual(len(describes), 2, "the stalled attempt was not retried")
        self.assertEqual(describes[0]["fault"], "stall")
        self.assertBreakersClosed(payload)


class DeadEndpointTest(E2ETestCase):
    THRESHOLD = 2

    def test_circuit_opens_fails_fast_and_a_fresh_process_starts_closed(self):
        dead = self.stack.dead_endpoint()
        env = {
            "AWS_ENDPOINT_URL_AUTO_SCALING": dead.url,
            "BREAKER_FAILURE_THRESHOLD": str(self.THRESHOLD),
            "BREAKER_RESET_TIMEOUT_SECS": "3600",
            "RETRY_MAX_ATTEMPTS": "3",
        }
        fn = self.spawn(**env)
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        event = self.stack.eventbridge(action)

        # Invocations fail while the failures are counted, until the circuit opens.
        opened = None
        for _ in range(self.THRESHOLD + 1):
            ok, payload = self.invoke(event, fn=fn)
            self.assertFalse(ok, f"nothing can complete with Auto Scaling dead: {payload}")
            if "circuit open for autoscaling" in payload.get("errorMessage", ""):
                opened = payload
                break
        self.assertIsNotNone(opened, f"the circuit never opened{self.context(fn)}")
        self.assertGreaterEqual(dead.connections, self.THRESHOLD)

        # Open: the next invocation fails at once and makes no request to anyone.
        calls_before = (dead.connections, self.stack.aws.count())
        members_before = self.members()
        ok, payload = self.invoke(event, fn=fn)
        message = self.assertFailedWith(ok, payload, "circuit open for autoscaling", fn=fn)
        self.assertRegex(message, r"circuit open for autoscaling; retry after \d+s")
        seconds = int(re.search(r"retry after (\d+)s", message).group(1))
        self.assertLessEqual(seconds, 3600)
        self.assertGreater(seconds, 0)
        self.assertEqual((dead.connections, self.stack.aws.count()), calls_before)
        self.assertEqual(self.members(), members_before)
        self.assertNotCompleted(victim)

        # A fresh execution environment starts closed: it tries Auto Scaling again ...
        fresh = self.spawn(**env)
        connections = dead.connections
        ok, payload = self.invoke(event, fn=fresh)
        self.assertFalse(ok)
        self.assertGreater(dead.connections, connections, "a fresh process must try again")

        # ... and with Auto Scaling back, the redelivered event finishes the job.
        healthy = self.spawn()
        self.assertSucceeded(*self.invoke(event, fn=healthy), fn=healthy)
        self.assertMember(victim, present=False)
        self.assertCompleted(action, "CONTINUE")
