"""The chaos invariants catch what they claim to catch, and the real function keeps them in the
same scenes.

Scenes are scripted (no randomness) on the chaos `World`, with the release binary or with a
deliberately wrong function (saboteur.py). The quorum scene turns etcd's own guard off
(`--strict-reconfig-check=false`): etcd would otherwise refuse a quorum-breaking removal by
itself, and the scene would prove nothing about the function's quorum check or the checker.

Run: .venv/bin/python -m unittest tests.chaos.test_checker -v   (BOOTSTRAP as for the e2e tests)
"""

from __future__ import annotations

import random
import tempfile
import time
import unittest

from tests.stack import TERMINATING, Stack
from tests.stack.aws import WARM_STOPPED

from . import saboteur
from .world import FOREIGN_HOOK, Delivery, World


class CheckerTest(unittest.TestCase):
    def world(
        self,
        mode: str | None = None,
        etcd_args: list[str] | None = None,
        real_env: dict[str, str] | None = None,
        **layout,
    ) -> World:
        stack = Stack(**{"nodes": 3, "group": "chaos", "etcd_args": etcd_args, **layout})
        stack.up()
        self.addCleanup(stack.down)
        self.real_env = dict(real_env or {})
        return World(stack, random.Random(0), self.env(mode), self.binary(mode))

    def binary(self, mode: str | None) -> str | None:
        if mode is None:
            return None
        tmp = tempfile.TemporaryDirectory(prefix="saboteur-")
        self.addCleanup(tmp.cleanup)
        return saboteur.wrapper(tmp.name)

    def env(self, mode: str | None) -> dict[str, str]:
        return {"SABOTEUR_MODE": mode} if mode else dict(getattr(self, "real_env", {}))

    def use(self, world: World, mode: str | None) -> None:
        """Both execution environments become `mode` (None: the real function)."""
        for fn in world.fns:
            fn.stop()
        world.env, world.binary = self.env(mode), self.binary(mode)
        world.fns = [world.spawn(), world.spawn()]

    def step(self, world: World, action, function_step: bool = True) -> None:
        world.step_no += 1
        before = world.snapshot()
        action()
        world.agent()
        world.check_step(before, world.snapshot(), function_step)

    def invariants(self, world: World) -> list[str]:
        return [v.invariant for v in world.violations]

    def test_quorum_break_is_caught_and_the_function_holds_instead(self):
        world = self.world(etcd_args=["--strict-reconfig-check=false"])
        etcd = world.stack.etcd
        victim, down = etcd.followers()
        etcd.stop_node(down)
        world.down[down] = "stopped"
        action = world.track(world.stack.start_terminate(victim)).action

        # The real function, without etcd's guard: its own quorum check must hold the instance.
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertIn(victim, etcd.member_names())
        self.assertTrue(world.stack.aws.heartbeats(), "held without a heartbeat")

        # A function that removes without checking breaks quorum: the checker says so.
        self.use(world, "reckless")
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertNotIn(victim, etcd.member_names(), "the saboteur did not remove: no test")
        self.assertIn("quorum", self.invariants(world), world.log)

    def test_silent_success_wrong_removal_lost_and_unfinished_are_caught(self):
        world = self.world()
        etcd = world.stack.etcd
        victim = etcd.followers()[0]

        # Lost: an action nobody heartbeats for longer than the hook's timeout.
        world.hook_timeout_s = 0.5
        action = world.track(world.stack.start_terminate(victim)).action
        time.sleep(0.7)
        self.step(world, lambda: None, function_step=False)
        self.assertEqual(self.invariants(world), ["lost"], world.log)
        world.hook_timeout_s = 3600

        # Silent success: answered as done, nothing done.
        self.use(world, "silent")
        self.step(world, lambda: world.deliver([Delivery(action.token, "sqs")], timeout_ms=20_000))
        self.assertIn("silent-success", self.invariants(world), world.log)

        # Wrong removal: a running, non-terminating instance loses its member.
        self.use(world, "wrong-member")
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertIn("wrong-removal", self.invariants(world), world.log)

        # Unfinished: the terminated instance's member is still there once faults are gone.
        self.assertFalse(world.quiesce(budget_s=2))
        self.assertIn("finished", self.invariants(world), world.log)
        self.assertTrue(
            any(victim in v.detail for v in world.violations if v.invariant == "finished"),
            [v.detail for v in world.violations],
        )

    def test_removing_a_healthy_member_of_another_group_is_caught(self):
        world = self.world(groups={"chaos-a": 2, "chaos-b": 2})
        stack, etcd = world.stack, world.stack.etcd
        a1, a2 = stack.instances_of("chaos-a")

        # The real function: zone A's scale-in removes zone A's member, nothing else.
        first = world.track(stack.start_terminate(a1)).action
        self.step(world, lambda: world.deliver([Delivery(first.token)], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertNotIn(a1, etcd.member_names())

        # A function that removes a live member of zone B on zone A's terminate.
        self.use(world, "other-group")
        before = set(etcd.member_names())
        second = world.track(stack.start_terminate(a2)).action
        self.step(world, lambda: world.deliver([Delivery(second.token)], timeout_ms=20_000))
        gone = before - set(etcd.member_names())
        self.assertTrue(gone & set(stack.instances_of("chaos-b")), f"the saboteur did not remove: no test ({gone})")
        self.assertIn("healthy-removal", self.invariants(world), world.log)

    def test_shrinking_to_one_voter_is_caught_and_the_function_holds_at_the_floor(self):
        world = self.world()
        stack, etcd = world.stack, world.stack.etcd
        first, second = etcd.followers()
        action = world.track(stack.start_terminate(first)).action
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertEqual(len(etcd.voters()), 2, world.log)

        # The real function holds the second scale-in at ETCD_MIN_VOTERS (default 2).
        action = world.track(stack.start_terminate(second)).action
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertIn(second, etcd.member_names())
        self.assertTrue(any(h["instance_id"] == second for h in stack.aws.heartbeats()), "held without a heartbeat")

        # A function without the floor takes two voters to one: the checker says so.
        self.use(world, "shrink")
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertEqual(len(etcd.voters()), 1, "the saboteur did not shrink: no test")
        self.assertIn("min-voters", self.invariants(world), world.log)

    def test_completing_another_tools_hook_is_caught(self):
        world = self.world(
            foreign_hooks={FOREIGN_HOOK: TERMINATING},
            real_env={"LIFECYCLE_HOOK_NAMES": "chaos-launch,chaos-terminate"},
        )
        stack, etcd = world.stack, world.stack.etcd
        first, second = etcd.followers()

        # The real function: our hook's event is handled, the other tool's event skipped; the
        # other tool (the world) completes its own action one step later.
        ours = world.track(stack.start_terminate(first)).action
        [theirs] = [t.action for t in world.foreign_of(ours)]
        self.step(world, lambda: world.deliver([Delivery(theirs.token), Delivery(ours.token)], timeout_ms=20_000))
        self.step(world, lambda: world.deliver([Delivery(None)], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertNotIn(first, etcd.member_names())
        self.assertIn(theirs.token, world.foreign_done, world.log)

        # A function that completes every hook of the instance, the other tool's included.
        self.use(world, "foreign-hook")
        ours = world.track(stack.start_terminate(second)).action
        self.step(world, lambda: world.deliver([Delivery(ours.token)], timeout_ms=20_000))
        self.assertTrue(
            any(c["hook"] == FOREIGN_HOOK and c["instance_id"] == second for c in stack.aws.completions()),
            "the saboteur did not complete the other tool's action: no test",
        )
        self.assertIn("foreign-hook", self.invariants(world), world.log)

    def test_a_member_left_behind_in_the_warm_pool_is_caught_and_the_function_leaves_none(self):
        # Four voters: the real function's removal leaves three, so the member the saboteur
        # leaves behind (its node stopped with the instance) still leaves a majority up.
        world = self.world(nodes=4)
        stack, etcd = world.stack, world.stack.etcd
        first, second = etcd.followers()[:2]

        # The real function: the scale-in back to the warm pool removes the member, then
        # completes; the instance rests stopped in the pool, its node with it, nothing left.
        action = world.track(stack.start_warm_scale_in(first)).action
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertEqual(world.violations, [], world.log)
        self.assertNotIn(first, etcd.member_names())
        self.assertEqual(stack.warm_state(first), WARM_STOPPED, world.log)
        self.assertFalse(etcd.nodes[first].running(), world.log)
        self.assertEqual(world.unfinished(), [], world.log)

        # A function that completes the action and keeps the member: the instance is stopped
        # in the pool with its member still a voter, which no sweep calls stale (it exists).
        self.use(world, "keep-member")
        action = world.track(stack.start_warm_scale_in(second)).action
        self.step(world, lambda: world.deliver([Delivery(action.token)], timeout_ms=20_000))
        self.assertIn(second, etcd.member_names(), "the saboteur removed the member: no test")
        self.assertEqual(stack.warm_state(second), WARM_STOPPED, "the saboteur did not complete: no test")
        self.assertEqual(world.violations, [], world.log)  # quorum kept, nothing removed
        self.assertFalse(world.quiesce(budget_s=2))
        self.assertIn("finished", self.invariants(world), world.log)
        self.assertTrue(
            any(second in v.detail and "warm pool" in v.detail for v in world.violations if v.invariant == "finished"),
            [v.detail for v in world.violations],
        )


if __name__ == "__main__":
    unittest.main()
