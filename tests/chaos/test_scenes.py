"""Scripted scenes for what the seeded chaos runs found (see RELIABILITY.md): each is one exact
sequence, with the release binary against real etcd and the local stack, so a finding reproduces
in seconds and without luck.

Run: .venv/bin/python -m unittest tests.chaos.test_scenes -v   (BOOTSTRAP as for the e2e tests)
"""

from __future__ import annotations

import time
import unittest

from tests.stack import Stack


class AddressReuseTest(unittest.TestCase):
    """An instance dies outside the hooks (its etcd member is now stale), and the next launch
    gets its private address, as EC2 may hand a freed address out again at once."""

    def setUp(self) -> None:
        self.stack = Stack(nodes=3)
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.fn = self.stack.spawn(ETCD_ADD_LEARNER_ON_LAUNCH="true")
        stack = self.stack
        self.dead = stack.followers()[0]
        address = stack.ip_of(self.dead)
        stack.etcd.stop_node(self.dead)
        stack.aws.terminate_outside_hooks(self.dead)
        # EC2 frees a terminated instance's address; moto keeps it taken, so free it there.
        registry = stack.aws.registry
        with registry._lock:
            _, ec2 = registry._backends()
            ec2.get_subnet(stack.seeded.subnet_id).del_subnet_ip(address)
        stack._spare_ips.insert(0, address)
        self.new, self.launch = stack.start_launch()
        self.assertEqual(stack.ip_of(self.new), address)

        # The launch event, then the sweep: both answer success (anything else fails here, in
        # set-up, so the test below is only about membership).
        ok, self.launch_answer = self.fn.invoke(stack.eventbridge(self.launch))
        self.assertTrue(ok, self.launch_answer)
        ok, self.sweep_answer = self.fn.invoke(stack.scheduled())
        self.assertTrue(ok, self.sweep_answer)

    def members(self) -> dict[str, object]:
        return {m.name: m for m in self.stack.etcd.members()}

    def test_the_dead_instances_member_is_removed_and_the_newcomer_added(self):
        members = self.members()
        self.assertNotIn(
            self.dead,
            members,
            f"the member of terminated {self.dead} is still a voter; launch answered "
            f"{self.launch_answer['results']}, sweep answered {self.sweep_answer['results']}",
        )
        peer = f"http://{self.stack.ip_of(self.new)}:2380"
        self.assertTrue(
            any(peer in m.peer_urls and m.is_learner for m in members.values()),
            f"{self.new} was not added as a learner: {members}",
        )



class SweepDuringAnEtcdOutageTest(unittest.TestCase):
    """Two instances wait in Terminating:Wait (their events were lost) while the function cannot
    reach etcd at all (every member's client port refuses it; the cluster itself is fine). Auto
    Scaling answers, so holding is always possible. The sweep runs again and again."""

    SWEEPS = 4

    def setUp(self) -> None:
        self.stack = Stack(nodes=3, etcd_gates=True)
        self.stack.up()
        self.addCleanup(self.stack.down)
        stack = self.stack
        # Small numbers so the breaker opens and half-opens within the scene; the same happens
        # with the defaults (threshold 5, reset 60 s, a sweep every 5 minutes) from the third
        # waiting instance on.
        self.fn = stack.spawn(
            BREAKER_FAILURE_THRESHOLD="2", BREAKER_RESET_TIMEOUT_SECS="1", RETRY_MAX_ATTEMPTS="2"
        )
        self.waiting = stack.followers()
        self.actions = [stack.start_terminate(i) for i in self.waiting]
        for gate in stack.etcd.gates():
            gate.refuse()
        self.answers = []
        for _ in range(self.SWEEPS):
            ok, payload = self.fn.invoke(stack.scheduled())
            self.assertFalse(ok, f"a sweep that could not reach etcd answered success: {payload}")
            self.answers.append(payload["errorMessage"])
            time.sleep(1.2)  # past the breaker's reset: the next sweep finds it half-open
        self.beats = {
            i: sum(1 for h in stack.aws.heartbeats() if h["instance_id"] == i) for i in self.waiting
        }

    def test_every_waiting_instance_is_heartbeated_through_the_outage(self):
        for instance in self.waiting:
            self.assertGreaterEqual(
                self.beats[instance],
                self.SWEEPS - 1,
                f"{instance} got {self.beats[instance]} heartbeat(s) in {self.SWEEPS} sweeps "
                f"(all: {self.beats}); answers: {self.answers}",
            )

    def test_the_sweep_finishes_both_once_etcd_is_back(self):
        for gate in self.stack.etcd.gates():
            gate.clear()
        time.sleep(1.2)
        for _ in range(3):
            ok, payload = self.fn.invoke(self.stack.scheduled())
            if ok:
                break
            time.sleep(1.2)
        self.assertTrue(ok, payload)
        done = {c["instance_id"] for c in self.stack.aws.completions()}
        self.assertEqual(done, set(self.waiting))
        names = self.stack.etcd.member_names()
        for instance in self.waiting:
            self.assertNotIn(instance, names)



class AnswerAfterTheDeadlineTest(unittest.TestCase):
    """The finishing call (CompleteLifecycleAction) gets no answer before the invocation's
    deadline: Auto Scaling stalls longer than the time left."""

    def setUp(self) -> None:
        self.stack = Stack(nodes=3)
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.fn = self.stack.spawn()
        _, action = self.stack.start_launch()
        self.stack.aws.inject("autoscaling", "stall", 1, action="CompleteLifecycleAction", stall_s=6)
        ok, self.payload = self.fn.invoke(self.stack.eventbridge(action), timeout_ms=3000)
        self.assertFalse(ok, f"the completion cannot have succeeded: {self.payload}")
        self.inv = max(self.fn.api.invocations.values(), key=lambda i: i.queued_at)

    def test_the_answer_still_comes_before_the_deadline(self):
        late = self.inv.answered_at - self.inv.deadline_ms / 1000
        self.assertLessEqual(
            late, 0, f"answered {late * 1000:.1f} ms after the deadline: {self.payload}"
        )


if __name__ == "__main__":
    unittest.main()
