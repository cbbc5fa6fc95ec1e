"""The fault matrix: a terminate under each fault of each dependency, with the release binary.

For Auto Scaling, EC2 and etcd, and for each fault (throttling, a 5xx, a timeout from a stalled
answer, a refused connection, a slow answer near the deadline), one scale-in is handled while the
fault is in place. Whatever the fault, the outcome must be one of:

* completed: the member is gone (or was never there) and CONTINUE was recorded;
* held: a heartbeat was recorded and the invocation answered an error naming the hold (so the
  event comes back), and nothing was removed that the cluster could not spare;

never lost (neither completed nor heartbeated before the invocation's deadline), and never a
removal that breaks quorum. Each case then checks, with the fault still in place, that a healthy
majority of the voting members is left and that no member but the victim's was removed; then it
clears the fault, delivers the event again if it was held, and checks that the work is finished.

How the faults are made (see tests/stack): AWS answers come from the stack's fault layer (the real
throttling codes, 503, stalled answers); refused connections from a TCP gate in front of the
service (its port closed); etcd's "try again" answers (`ResourceExhausted` "too many requests",
`Unavailable` "leader changed") from gates on the members' advertised client URLs that answer
gRPC themselves; a hung etcd node is SIGSTOPped, a dead one stopped. Transient faults are sized to
fit the retry policy, so they must be ridden out ("completed"); outages last the whole invocation,
so the function must hold. The one outage no function can hold through is Auto Scaling itself
(the heartbeat goes there): that case checks the honest answer (an error, so the event is
delivered again) and the recovery.

Every case is its own test (own stack, own function process, fresh breakers), so the e2e runner
runs them side by side.
"""

from __future__ import annotations

import threading
import time
import unittest
from dataclasses import dataclass
from typing import Any

from tests.e2e.base import ETCD_NOT_YET, HOLD_WORD, E2ETestCase
from tests.stack import FunctionProcess, Stack, TcpGate
from tests.stack.aws import LifecycleAction
from tests.stack.etcd import EtcdError, gateway
from tests.stack.gate import GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE

# The resilience layer's debug line for each retry (src/resilience/mod.rs); the cases read it to
# prove a transport fault was met, and to open a refused port again once it was.
RETRY_LINE = "transient failure; retrying"
# A 2 s deadline reserve, so the short invocations below (3.5 to 6 s) leave time to work: a
# reserve at or above an invocation's time is refused as a configuration error.
LOG_ENV = {"RUST_LOG": "etcd_lifecycle_hook=debug,info", "DEADLINE_RESERVE_MS": "2000"}
COMPLETED, HELD = "completed", "held"


@dataclass
class Run:
    """One delivery of a terminate event and what the runtime saw of it."""

    action: LifecycleAction
    event: dict[str, Any]
    ok: bool
    payload: Any
    queued_at: float
    deadline: float  # epoch seconds
    answered_at: float



class FaultMatrixCase(E2ETestCase):
    """A fresh 3-node stack per case; the function is spawned by the case (after its gates)."""

    etcd_gates = False

    def setUp(self) -> None:
        self.stack = Stack(nodes=self.nodes, etcd_gates=self.etcd_gates)
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.fn: FunctionProcess | None = None

    def function(self, **env: str) -> FunctionProcess:
        self.fn = self.spawn(**{**LOG_ENV, **env})
        return self.fn

    # -- running -------------------------------------------------------------------------------
    def terminate(self, victim: str, timeout_ms: int = 30_000) -> Run:
        assert self.fn is not None, "spawn the function first"
        action = self.stack.start_terminate(victim)
        event = self.stack.eventbridge(action)
        ok, payload = self.invoke(event, timeout_ms=timeout_ms)
        inv = max(self.fn.api.invocations.values(), key=lambda i: i.queued_at)
        return Run(
            action, event, ok, payload, inv.queued_at, inv.deadline_ms / 1000, inv.answered_at
        )

    def retries_logged(self, dependency: str) -> int:
        assert self.fn is not None
        return sum(
            1
            for line in self.fn.json_logs()
            if line.get("message") == RETRY_LINE and line.get("dependency") == dependency
        )

    def refuse_until_retried(
        self, gate: TcpGate, dependency: str, retries: int = 2, longest_s: float = 5.0
    ) -> None:
        """Closes `gate` now and opens it again once the function has logged `retries` more
        retries of `dependency` (or after `longest_s`, so a case cannot hang)."""
        before = self.retries_logged(dependency)
        gate.refuse()

        def watch() -> None:
            end = time.monotonic() + longest_s
            while time.monotonic() < end and self.retries_logged(dependency) < before + retries:
                time.sleep(0.01)
            gate.open()

        threading.Thread(target=watch, daemon=True).start()

    # -- the outcome ---------------------------------------------------------------------------
    def assertNotLost(self, run: Run, allowed: tuple[str, ...] = (COMPLETED, HELD)) -> str:
        """Completed or held by this delivery, recorded before its deadline, and answered so."""
        instance = run.action.instance_id
        done = [c for c in self.completions_for(instance) if c["time"] >= run.queued_at]
        beats = [h for h in self.heartbeats_for(instance) if h["time"] >= run.queued_at]
        if done:
            outcome, at = COMPLETED, done[0]["time"]
        elif beats:
            outcome, at = HELD, beats[0]["time"]
        else:
            self.fail(
                f"LOST: {instance} was neither completed nor heartbeated; answer {run.payload}"
                f"{self.context(self.fn)}"
            )
        self.assertIn(outcome, allowed, f"answer {run.payload}{self.context(self.fn)}")
        self.assertLessEqual(
            at,
            run.deadline,
            f"{outcome} {at - run.deadline:.3f}s after the invocation's deadline{self.context(self.fn)}",
        )
        self.assertIsNotNone(run.answered_at, "no answer")
        self.assertLessEqual(
            run.answered_at,
            run.deadline,
            f"answered {run.answered_at - run.deadline:.3f}s after the deadline{self.context(self.fn)}",
        )
        if outcome == COMPLETED:
            self.assertTrue(run.ok, f"completed but answered an error: {run.payload}")
            self.assertEqual(len(done), 1, f"completed more than once: {done}")
            self.assertEqual(done[0]["result"], "CONTINUE")
            self.assertEqual(self.result_for(run.payload, instance)["action"], "completed")
        else:
            message = self.assertFailedWith(run.ok, run.payload, HOLD_WORD, instance, fn=self.fn)
            self.assertEqual(run.payload.get("errorType"), "Held", message)
        return outcome

    def healthy_voters(self) -> tuple[int, int, list[str]]:
        """etcd's ground truth, straight to the nodes (never through a gate): healthy voting
        members, voting members, and every member's name."""
        etcd = self.stack.etcd
        members = etcd.members()
        voters = [m for m in members if not m.is_learner]
        healthy = 0
        for m in voters:
            node = etcd.nodes.get(m.name)
            if node is None or not node.answering():
                continue
            try:
                status = gateway(node.client_url, "/v3/maintenance/status", timeout=1.0)
            except EtcdError:
                continue
            if int(status["header"]["member_id"]) == m.id:
                healthy += 1
        return healthy, len(voters), sorted(m.name for m in members)

    def assertQuorumKept(self, victim: str) -> None:
        """With the fault still in place: a healthy majority of voters, and every member but the
        victim's still there."""
        healthy, voters, names = self.healthy_voters()
        self.assertGreaterEqual(
            healthy,
            voters // 2 + 1,
            f"quorum broken: {healthy} of {voters} voting members healthy, members {names}"
            f"{self.context(self.fn)}",
        )
        others = [i for i in self.stack.instance_ids if i != victim]
        for other in others:
            self.assertIn(other, names, f"{other} was removed but was not terminating")

    def finish(self, run: Run, outcome: str) -> None:
        """Faults cleared: a held action is finished by the event delivered again."""
        if outcome == HELD:
            # A node that just came back must be connected for a few seconds before etcd's
            # strict reconfig check accepts a removal (etcd's rule, not the function's).
            self.stack.etcd.wait_ready()
            # The leader the function moves leadership to may still count the node that came
            # back as not connected long enough: etcd refuses, the function holds, and the
            # event comes back, as it would from AWS.
            payload, _ = self.deliver_until_done(
                run.event, self.fn, hold_words=ETCD_NOT_YET
            )
            self.assertResult(payload, run.action.instance_id, "completed", "CONTINUE")
        done = self.completions_for(run.action.instance_id)
        self.assertEqual([c["result"] for c in done], ["CONTINUE"], self.context(self.fn))
        self.assertMember(run.action.instance_id, present=False)
        healthy, voters, names = self.healthy_voters()
        self.assertEqual((healthy, voters), (2, 2), f"members {names}{self.context(self.fn)}")

    def aws_faults_met(self, service: str, kind: str, action: str | None = None) -> int:
        return sum(1 for r in self.stack.aws.requests(service, action) if r["fault"] == kind)


class AutoScalingFaultTest(FaultMatrixCase):
    """The lifecycle calls themselves (complete, heartbeat) fail, stall or are refused."""

    def transient(self, kind: str) -> None:
        self.function()
        self.stack.aws.inject("autoscaling", kind, 3, action="CompleteLifecycleAction")
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertEqual(self.aws_faults_met("autoscaling", kind, "CompleteLifecycleAction"), 3)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED, "3 faults fit 4 attempts")
        self.finish(run, COMPLETED)

    def test_throttling(self):
        self.transient("throttle")

    def test_5xx(self):
        self.transient("503")

    def test_timeout_from_a_stalled_answer(self):
        self.function()
        # Longer than one attempt may last (3 s): the attempt is cut and retried. The stalled
        # request still reaches Auto Scaling afterwards, as a slow AWS request may.
        self.stack.aws.inject("autoscaling", "stall", 1, action="CompleteLifecycleAction", stall_s=5)
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertEqual(self.aws_faults_met("autoscaling", "stall"), 1)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED)
        self.finish(run, COMPLETED)

    def test_connection_refused(self):
        gate = self.stack.aws_gate("autoscaling")
        self.function(RETRY_MAX_ATTEMPTS="10")
        # Closed from the moment the flow starts (its first call is EC2's) until the function
        # has retried Auto Scaling twice: the completion meets a closed port.
        self.stack.aws.on_request(
            "ec2", "DescribeInstances", lambda _: self.refuse_until_retried(gate, "autoscaling")
        )
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertGreaterEqual(self.retries_logged("autoscaling"), 2, "the refusal was not met")
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED)
        self.finish(run, COMPLETED)

    def test_slow_heartbeat_near_the_deadline(self):
        self.function()
        victim, down = self.stack.followers()
        self.stack.etcd.stop_node(down)  # removal unsafe: the function must hold
        # The heartbeat takes 2.5 s of a 3.5 s invocation (reserve 2 s): it must still land.
        self.stack.aws.inject(
            "autoscaling", "stall", 1, action="RecordLifecycleActionHeartbeat", stall_s=2.5
        )
        run = self.terminate(victim, timeout_ms=3500)
        self.assertEqual(self.aws_faults_met("autoscaling", "stall"), 1)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.stack.etcd.start_node(down)
        self.finish(run, HELD)

    def test_outage_for_the_whole_invocation_answers_an_error_then_recovers(self):
        """Nothing can be heartbeated without Auto Scaling: the function must not claim success,
        must not break quorum, and the event delivered again after the outage finishes it."""
        gate = self.stack.aws_gate("autoscaling")
        self.function()
        gate.refuse()
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertFailedWith(run.ok, run.payload, victim, fn=self.fn)
        self.assertNotCompleted(victim)
        self.assertEqual(self.heartbeats_for(victim), [])
        self.assertQuorumKept(victim)
        gate.open()
        ok, payload = self.invoke(run.event)
        self.assertSucceeded(ok, payload, self.fn)
        self.finish(run, COMPLETED)


class Ec2FaultTest(FaultMatrixCase):
    """DescribeInstances (the instance and its peers) fails, stalls or is refused."""

    def transient(self, kind: str) -> None:
        self.function()
        self.stack.aws.inject("ec2", kind, 3, action="DescribeInstances")
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertEqual(self.aws_faults_met("ec2", kind, "DescribeInstances"), 3)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED, "3 faults fit 4 attempts")
        self.finish(run, COMPLETED)

    def test_throttling(self):
        self.transient("throttle")

    def test_5xx(self):
        self.transient("503")

    def test_timeout_from_a_stalled_answer(self):
        self.function()
        self.stack.aws.inject("ec2", "stall", 1, action="DescribeInstances", stall_s=5)
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertEqual(self.aws_faults_met("ec2", "stall"), 1)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED)
        self.finish(run, COMPLETED)

    def test_connection_refused(self):
        gate = self.stack.aws_gate("ec2")
        self.function(RETRY_MAX_ATTEMPTS="10")
        self.refuse_until_retried(gate, "ec2")
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertGreaterEqual(self.retries_logged("ec2"), 2, "the refusal was not met")
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED)
        self.finish(run, COMPLETED)

    def test_slow_answer_near_the_deadline(self):
        self.function()
        # The instance list arrives 2.7 s into a 5 s invocation, 0.3 s before the reserve (2 s):
        # removing in the time left or holding are both right; losing the action is not.
        self.stack.aws.inject("ec2", "stall", 1, action="DescribeInstances", stall_s=2.7)
        victim = self.stack.followers()[0]
        run = self.terminate(victim, timeout_ms=5000)
        self.assertEqual(self.aws_faults_met("ec2", "stall"), 1)
        self.assertQuorumKept(victim)
        self.finish(run, self.assertNotLost(run))

    def test_outage_for_the_whole_invocation_holds(self):
        self.function()
        self.stack.aws.inject("ec2", "503", 1000)
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.assertIn("instances", run.payload["errorMessage"])
        self.stack.aws.clear_faults()
        self.finish(run, HELD)

    def test_deadline_reserve_short_invocation_with_a_stalled_call(self):
        """4.5 s to the deadline, 2 s of it reserved: the stalled call is cut at 3 s, no retry
        fits before the reserve, and the heartbeat lands before the deadline."""
        self.function()
        self.stack.aws.inject("ec2", "stall", 1, action="DescribeInstances", stall_s=6)
        victim = self.stack.followers()[0]
        run = self.terminate(victim, timeout_ms=4500)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.assertMember(victim, present=True)
        self.finish(run, HELD)


class EtcdProcessFaultTest(FaultMatrixCase):
    """etcd nodes that are down (connections refused) or hung (SIGSTOP: connections accepted by
    the kernel, never answered, so every call to them times out)."""

    def test_connection_refused_the_dead_member_is_removed(self):
        self.function()
        victim = self.stack.followers()[0]
        self.stack.etcd.stop_node(victim)
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED, "2 healthy of 2 left is safe")
        self.finish(run, COMPLETED)

    def test_connection_refused_a_peer_down_holds(self):
        self.function()
        victim, down = self.stack.followers()
        self.stack.etcd.stop_node(down)
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD, "1 healthy of 2 left would lose quorum")
        self.assertMember(victim, present=True)
        self.stack.etcd.start_node(down)
        self.finish(run, HELD)

    def test_timeout_the_hung_member_is_removed(self):
        self.function()
        victim = self.stack.followers()[0]
        self.stack.etcd.pause_node(victim)
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED)
        self.stack.etcd.resume_node(victim)
        self.finish(run, COMPLETED)

    def test_timeout_a_hung_peer_holds(self):
        self.function()
        victim, hung = self.stack.followers()
        self.stack.etcd.pause_node(hung)
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.assertMember(victim, present=True)
        self.stack.etcd.resume_node(hung)
        self.finish(run, HELD)

    def test_timeout_a_hung_leader_holds(self):
        self.function()
        hung = self.stack.leader()
        victim = self.stack.followers()[0]
        self.stack.etcd.pause_node(hung)
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.stack.etcd.resume_node(hung)
        self.finish(run, HELD)


class EtcdAnswerFaultTest(FaultMatrixCase):
    """etcd answers "try again" or answers slowly: gates on the members' advertised client URLs
    (the only addresses the function knows) fail or delay its connections."""

    etcd_gates = True

    def gates(self) -> list[TcpGate]:
        return self.stack.etcd.gates()

    def transient(self, code: int, message: str) -> None:
        self.function()
        # One failed connection per member: the whole first pass over the endpoints fails.
        for gate in self.gates():
            gate.grpc_error(1, code, message)
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertEqual(sum(g.faulted.get("grpc", 0) for g in self.gates()), 3)
        self.assertGreaterEqual(self.retries_logged("etcd"), 1, "the fault was not retried")
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), COMPLETED)
        self.finish(run, COMPLETED)

    def test_throttling(self):
        self.transient(GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests")

    def test_5xx_unavailable(self):
        self.transient(GRPC_UNAVAILABLE, "etcdserver: leader changed")

    def test_timeout_every_member_stalls_then_holds_before_the_deadline(self):
        self.function()
        for gate in self.gates():
            gate.stall(1000, 30)
        victim = self.stack.followers()[0]
        run = self.terminate(victim, timeout_ms=6000)
        for gate in self.gates():
            gate.clear()
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.assertMember(victim, present=True)
        self.finish(run, HELD)

    def test_connection_refused_by_every_member_holds(self):
        self.function()
        for gate in self.gates():
            gate.refuse()
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        self.assertIn("etcd", run.payload["errorMessage"])
        for gate in self.gates():
            gate.clear()
        self.finish(run, HELD)

    def test_slow_answers_near_the_deadline(self):
        self.function()
        # Every etcd answer takes 1.2 s of a 6 s invocation (reserve 2 s): the flow reaches
        # the removal near the reserve. Removed-and-completed and held are both right.
        for gate in self.gates():
            gate.delay(1000, 1.2)
        victim = self.stack.followers()[0]
        run = self.terminate(victim, timeout_ms=6000)
        self.assertQuorumKept(victim)
        outcome = self.assertNotLost(run)
        for gate in self.gates():
            gate.clear()
        self.finish(run, outcome)

    def test_outage_of_try_again_answers_holds(self):
        self.function()
        for gate in self.gates():
            gate.grpc_error(1000, GRPC_UNAVAILABLE, "etcdserver: no leader")
        victim = self.stack.followers()[0]
        run = self.terminate(victim)
        self.assertQuorumKept(victim)
        self.assertEqual(self.assertNotLost(run), HELD)
        for gate in self.gates():
            gate.clear()
        self.finish(run, HELD)


if __name__ == "__main__":
    unittest.main()
