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

from tests.stack import Stack

from . import saboteur
from .world import Delivery, World


class CheckerTest(unittest.TestCase):
    def world(self, mode: str | None = None, etcd_args: list[str] | None = None) -> World:
        stack = Stack(nodes=3, group="chaos", etcd_args=etcd_args)
        stack.up()
        self.addCleanup(stack.down)
        return World(stack, random.Random(0), self.env(mode), self.binary(mode))

    def binary(self, mode: str | None) -> str | None:
        if mode is None:
            return None
        tmp = tempfile.TemporaryDirectory(prefix="saboteur-")
        self.addCleanup(tmp.cleanup)
        return saboteur.wrapper(tmp.name)

    @staticmethod
    def env(mode: str | None) -> dict[str, str]:
        return {"SABOTEUR_MODE": mode} if mode else {}

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
        self.step(world, lambda: world.deliver([Delivery(action.token)]))
        self.assertEqual(world.violations, [], world.log)
        self.assertIn(victim, etcd.member_names())
        self.assertTrue(world.stack.aws.heartbeats(), "held without a heartbeat")

        # A function that removes without checking breaks quorum: the checker says so.
        self.use(world, "reckless")
        self.step(world, lambda: world.deliver([Delivery(action.token)]))
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
        self.step(world, lambda: world.deliver([Delivery(action.token, "sqs")]))
        self.assertIn("silent-success", self.invariants(world), world.log)

        # Wrong removal: a running, non-terminating instance loses its member.
        self.use(world, "wrong-member")
        self.step(world, lambda: world.deliver([Delivery(action.token)]))
        self.assertIn("wrong-removal", self.invariants(world), world.log)

        # Unfinished: the terminated instance's member is still there once faults are gone.
        self.assertFalse(world.quiesce(budget_s=2))
        self.assertIn("finished", self.invariants(world), world.log)
        self.assertTrue(
            any(victim in v.detail for v in world.violations if v.invariant == "finished"),
            [v.detail for v in world.violations],
        )


if __name__ == "__main__":
    unittest.main()
