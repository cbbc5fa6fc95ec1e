"""Scripted scenes for what the seeded chaos runs found (see RELIABILITY.md): each is one exact
sequence, with the release binary against real etcd and the local stack, so a finding reproduces
in seconds and without luck.

Run: .venv/bin/python -m unittest tests.chaos.test_scenes -v   (BOOTSTRAP as for the e2e tests)
"""

from __future__ import annotations

import random
import time
import unittest

from tests.stack import Stack
from tests.stack.aws import WARM_STOPPED, WARM_WAIT

from .world import Delivery, Topology, World


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
        # Four nodes: the two scale-ins leave two voters, the ETCD_MIN_VOTERS floor (default 2).
        self.stack = Stack(nodes=4, etcd_gates=True)
        self.stack.up()
        self.addCleanup(self.stack.down)
        stack = self.stack
        # Small numbers so the breaker opens and half-opens within the scene; the same happens
        # with the defaults (threshold 5, reset 60 s, a sweep every 5 minutes) from the third
        # waiting instance on.
        self.fn = stack.spawn(
            BREAKER_FAILURE_THRESHOLD="2", BREAKER_RESET_TIMEOUT_SECS="1", RETRY_MAX_ATTEMPTS="2"
        )
        self.waiting = stack.followers()[:2]
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


class LaunchIntoAZoneWithoutAVoterTest(unittest.TestCase):
    """One cluster over two groups (one per zone), endpoints found from the groups' instances
    (`ETCD_ENDPOINTS` empty), learners on. Zone B's only instance is scaled in (three voters to
    two, safe); then zone B scales out again. The cluster is alive and quorate in zone A, but
    none of zone B's running instances is a member that answers.

    Found by the seeded chaos (seed 1 of the short run: a zone group whose old voter was
    terminated and whose next instances were launched while its only other peer was a learner:
    each launch was completed as "no etcd peer answered: the cluster is being bootstrapped",
    without its learner, and every later sweep of that group left it without a member)."""

    def setUp(self) -> None:
        self.stack = Stack(groups={"etcd-a": 2, "etcd-b": 1})
        self.stack.up()
        self.addCleanup(self.stack.down)
        stack = self.stack
        self.fn = stack.spawn(ETCD_ENDPOINTS="", ETCD_ADD_LEARNER_ON_LAUNCH="true")
        [self.b1] = stack.instances_of("etcd-b")
        ok, payload = self.fn.invoke(stack.eventbridge(stack.start_terminate(self.b1)))
        self.assertTrue(ok, payload)
        self.assertNotIn(self.b1, stack.etcd.member_names(), payload)
        self.new, action = stack.start_launch(group="etcd-b")
        self.launch_ok, self.launch_answer = self.fn.invoke(stack.eventbridge(action))
        self.sweeps = []
        for _ in range(2):
            self.sweeps.append(self.fn.invoke(stack.scheduled()))

    def test_the_newcomer_gets_its_learner_or_is_held_never_let_in_without_it(self):
        peer = f"http://{self.stack.ip_of(self.new)}:2380"
        members = self.stack.etcd.members()
        added = any(peer in m.peer_urls for m in members)
        completed = [c for c in self.stack.aws.completions() if c["instance_id"] == self.new]
        self.assertTrue(
            added or not completed,
            f"{self.new} of etcd-b was let in (launch answered {self.launch_answer}) and has no "
            f"member after {len(self.sweeps)} sweeps ({[p for _, p in self.sweeps]}); the "
            f"cluster in etcd-a was healthy: {[m.name for m in members]}",
        )
        self.assertTrue(added, f"no learner for {self.new} after the sweeps: {self.sweeps}")



class LockLeftAfterRemovingTheOnlyKnownEndpointTest(unittest.TestCase):
    """One cluster over two groups, endpoints found from the groups' instances (`ETCD_ENDPOINTS`
    empty). Zone B's only instance is scaled in: the function knows the cluster only through
    that instance's address, takes the membership lock there, removes that very member (safe:
    three voters to two), and completes.

    Found while building the multi-group chaos layout: the lock then stays held until its lease
    runs out (the invocation's whole timeout), and every membership change anywhere in the
    cluster holds as "another membership change is under way" in the meantime."""

    def test_the_membership_lock_is_free_once_the_terminate_is_done(self):
        stack = Stack(groups={"etcd-a": 2, "etcd-b": 1})
        stack.up()
        self.addCleanup(stack.down)
        fn = stack.spawn(ETCD_ENDPOINTS="")
        [b1] = stack.instances_of("etcd-b")
        ok, payload = fn.invoke(stack.eventbridge(stack.start_terminate(b1)), timeout_ms=30_000)
        self.assertTrue(ok, payload)
        self.assertNotIn(b1, stack.etcd.member_names(), payload)
        holders = stack.etcd.lock_holders("etcd-lifecycle-hook/membership")
        self.assertEqual(holders, [], f"the membership lock is still held after {payload}")
        ok, payload = fn.invoke(stack.scheduled())
        self.assertTrue(ok, payload)
        details = " ".join(r["detail"] for r in payload["results"])
        self.assertNotIn("cannot take the membership lock: the membership lock", details)



class TerminateRedeliveredAfterItsMemberWentTest(unittest.TestCase):
    """One cluster over two groups, endpoints found from the groups' instances (`ETCD_ENDPOINTS`
    empty). Zone B's only instance is scaled in; its member is removed, but Auto Scaling fails
    every completion attempt (503), so the invocation answers an error and the event comes back.

    Found by the seeded chaos (seed 1001, `--steps 25`: step 18 removed the member and the
    completion failed; every redelivery and sweep after it held the instance with "cannot take
    the membership lock: no etcd endpoint answered", since the only addresses the function knew
    for that group were the removed member's and a new instance's with no etcd yet; the
    terminate was still waiting at the end; in this scene each redelivery answers "circuit open
    for etcd": the one address it knows for that group refuses, so etcd's breaker opens). The
    member is already gone: the redelivery has nothing left to do but complete."""

    def test_the_redelivery_completes(self):
        stack = Stack(groups={"etcd-a": 2, "etcd-b": 1})
        stack.up()
        self.addCleanup(stack.down)
        fn = stack.spawn(ETCD_ENDPOINTS="", RETRY_MAX_ATTEMPTS="3", BREAKER_RESET_TIMEOUT_SECS="1")
        [b1] = stack.instances_of("etcd-b")
        action = stack.start_terminate(b1)
        stack.aws.inject("autoscaling", "503", 3, action="CompleteLifecycleAction")
        ok, payload = fn.invoke(stack.eventbridge(action), timeout_ms=20_000)
        self.assertFalse(ok, f"the completion cannot have succeeded: {payload}")
        self.assertNotIn(b1, stack.etcd.member_names(), payload)
        answers = []
        for _ in range(3):  # AWS redelivers; the lock a first attempt may have left expires
            ok, payload = fn.invoke(stack.eventbridge(action), timeout_ms=20_000)
            answers.append(payload)
            if ok:
                break
            time.sleep(5)
        self.assertTrue(ok, f"the terminate of {b1} (member already removed) never completed: {answers}")
        self.assertTrue(any(c["instance_id"] == b1 for c in stack.aws.completions()))


class WarmPoolWorldScene(unittest.TestCase):
    """A three-node group with a warm pool, learners on launch, every step checked by the chaos
    world's invariants (a base: it has no test of its own)."""

    def setUp(self) -> None:
        stack = Stack(nodes=3)
        stack.up()
        self.addCleanup(stack.down)
        topology = Topology(groups=dict(stack.group_sizes), warm_pool=True, learners=True)
        self.world = World(stack, random.Random(0), {"ETCD_ADD_LEARNER_ON_LAUNCH": "true"}, topology=topology)

    def step(self, action, function_step: bool = True) -> None:
        world = self.world
        world.step_no += 1
        before = world.snapshot()
        action()
        world.agent()
        world.check_step(before, world.snapshot(), function_step)


class WarmPoolScaleInUnderTheChaosInvariantsTest(WarmPoolWorldScene):
    """A warm pool on the group. A follower goes back to the pool on scale-in while another
    follower's etcd is down: its removal would leave one healthy voter of two, so the function
    must hold it (heartbeat). Then the node comes back, the event is lost, and the sweeps must find
    the instance in `Warmed:Pending:Wait` (only DescribeWarmPool lists it), remove its member and
    let it go: it rests stopped in the pool, its node with it. Then an instance is launched into
    the pool: it completes at once, without a member. Every step is checked by the chaos
    world's invariants, and the world's end (`quiesce`) must find nothing left to finish."""

    def test_held_while_unsafe_then_found_by_the_sweep_and_removed(self):
        world, stack, etcd = self.world, self.world.stack, self.world.stack.etcd
        victim, down = etcd.followers()
        etcd.stop_node(down)
        world.down[down] = "stopped"

        action = world.track(stack.start_warm_scale_in(victim)).action
        self.step(lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertIn(victim, etcd.member_names(), world.log)
        self.assertEqual(stack.warm_state(victim), WARM_WAIT, world.log)
        self.assertTrue(
            any(h["token"] == action.token for h in stack.aws.heartbeats()), f"held without a heartbeat: {world.log}"
        )

        self.step(lambda: world.heal(down), function_step=False)
        # The event was lost: the schedule's sweeps (etcd refuses membership changes for a few
        # seconds after a member comes back: those sweeps hold again).
        for _ in range(8):
            self.step(lambda: world.deliver([Delivery(None)], timeout_ms=20_000))
            if action.token not in world.active_tokens():
                break
            time.sleep(1.0)
        self.assertEqual(world.violations, [], world.log)
        self.assertNotIn(victim, etcd.member_names(), world.log)
        self.assertTrue(any(c["token"] == action.token for c in stack.aws.completions()), world.log)
        self.assertEqual(stack.warm_state(victim), WARM_STOPPED, world.log)
        self.assertEqual(world.ec2_state(victim), "stopped")
        self.assertFalse(etcd.nodes[victim].running(), world.log)
        self.assertEqual(world.stats["members_removed"], 1, world.log)

        before = set(etcd.member_names())
        new, launch = stack.start_warm_launch(control=True)
        world.order.append(new)
        world.track(launch)
        self.step(lambda: world.deliver([Delivery(launch.token, "sqs")], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertEqual(set(etcd.member_names()), before, world.log)
        self.assertEqual(stack.warm_state(new), WARM_STOPPED, world.log)
        self.assertNotIn(new, etcd.nodes)

        world.step_no += 1
        self.assertTrue(world.quiesce(budget_s=60), f"{world.unfinished()}: {world.log}")
        self.assertEqual(world.violations, [], world.log)



class LateLaunchDeliveryAfterTheWarmPoolTest(WarmPoolWorldScene):
    """Learners on, a warm pool on the group. An instance is launched (its learner added, its node
    joining), then scaled in back to the pool: its member is removed and it rests stopped there.
    Then its launch event comes again, late, as SNS, SQS or Lambda's retries may deliver it.

    Found by the seeded chaos on etcd 3.5 (seed 5117): the late launch added a learner for the
    stopped instance (its completion answered "already done"); no node would ever start it, the
    stale cleanup never removes a member whose instance still exists, and as etcd takes one
    learner at a time every later launch was held behind it for good. The function now asks
    Auto Scaling whether the action still waits just before adding the learner."""

    def test_the_late_launch_adds_no_learner_and_later_launches_go_on(self):
        world, stack, etcd = self.world, self.world.stack, self.world.stack.etcd
        new, launch = stack.start_launch(control=True)
        world.order.append(new)
        world.track(launch)
        self.step(lambda: world.deliver([Delivery(launch.token)], timeout_ms=20_000))
        self.assertIn(new, etcd.nodes, f"its node joined: {world.log}")

        back = world.track(stack.start_warm_scale_in(new)).action
        for _ in range(8):  # etcd refuses changes for a moment after the learner joined
            self.step(lambda: world.deliver([Delivery(back.token)], timeout_ms=20_000))
            if back.token not in world.active_tokens():
                break
            time.sleep(1.0)
        self.assertEqual(stack.warm_state(new), WARM_STOPPED, world.log)
        before = set(etcd.member_names())
        time.sleep(8.0)  # late: etcd takes a new member again a few seconds after a removal

        self.step(lambda: world.deliver([Delivery(launch.token, "sns")], timeout_ms=20_000))
        self.assertEqual(set(etcd.member_names()), before, f"a learner was added: {world.log}")
        self.assertFalse(any(m.is_learner for m in etcd.members()), world.log)

        later, action = stack.start_launch(control=True)
        world.order.append(later)
        world.track(action)
        self.step(lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertNotIn(action.token, world.active_tokens(), f"the next launch is let in: {world.log}")
        world.step_no += 1
        self.assertTrue(world.quiesce(budget_s=60), f"{world.unfinished()}: {world.log}")
        self.assertEqual(world.violations, [], world.log)

if __name__ == "__main__":
    unittest.main()
