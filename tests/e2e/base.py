"""Shared set-up and assertions of the end-to-end tests.

Each test gets a stack of its own (own loopback addresses, own moto account, own etcd cluster) and
a function process; assertions read what actually happened (moto's record of completions and
heartbeats, etcd's member list, the request log) and only then what the function answered. Every
failure message carries the function's recent output, so a red test explains itself.
"""

from __future__ import annotations

import json
import time
import unittest
from typing import Any

from tests.stack import FunctionProcess, Stack, bootstrap_path, events  # noqa: F401
from tests.stack.aws import LifecycleAction

HOLD_WORD = "held"
# etcd's own "not now" answers (a node just back, a leader just elected), which a redelivery
# outlasts.
ETCD_NOT_YET = ("unhealthy cluster", "no leader")
# The summary's `action` values (src/handler.rs): completed, held, skipped, ignored, failed; its
# `result` values: CONTINUE, ALREADY_DONE, HEARTBEAT, ACTION_OVER, NONE, ERROR.


class E2ETestCase(unittest.TestCase):
    """A fresh 3-node stack and one function process per test."""

    nodes = 3
    function_env: dict[str, str] = {}

    def setUp(self) -> None:
        self.stack = Stack(nodes=self.nodes)
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.fn = self.spawn(**self.function_env)

    # -- running the function ----------------------------------------------------------------------
    def spawn(self, **env: str) -> FunctionProcess:
        return self.stack.spawn(**env)

    def invoke(
        self, event: Any, fn: FunctionProcess | None = None, timeout_ms: int = 30_000
    ) -> tuple[bool, Any]:
        fn = fn or self.fn
        ok, payload = fn.invoke(event, timeout_ms=timeout_ms)
        self._last = (fn, ok, payload)
        return ok, payload

    def deliver_until_done(
        self,
        event: Any,
        fn: FunctionProcess | None = None,
        within_s: float = 20.0,
        hold_words: tuple[str, ...] = (),
    ) -> tuple[dict, list[str]]:
        """Delivers `event` again after each hold, as AWS does (async retry, SQS redelivery),
        until the answer is a success; the only other answer allowed on the way is a hold (etcd
        itself refuses membership changes for a few seconds after a member joins, a node comes
        back or a leader is elected), naming one of `hold_words` when given. Returns the
        successful payload and the hold messages."""
        end = time.monotonic() + within_s
        holds: list[str] = []
        while True:
            ok, payload = self.invoke(event, fn=fn)
            if ok:
                return self.assertSucceeded(ok, payload, fn=fn), holds
            self.assertEqual(payload.get("errorType"), "Held", f"{payload}{self.context(fn)}")
            holds.append(payload["errorMessage"])
            if hold_words:
                self.assertTrue(
                    any(w in holds[-1] for w in hold_words),
                    f"held for another reason than {hold_words}: {holds[-1]}{self.context(fn)}",
                )
            if time.monotonic() > end:
                self.fail(f"still held after {within_s:.0f}s: {holds[-1]}{self.context(fn)}")
            time.sleep(1.0)

    def context(self, fn: FunctionProcess | None = None) -> str:
        fn = fn or self.fn
        try:
            members = [
                f"{m.name or '(unstarted)'}{' (learner)' if m.is_learner else ''}"
                for m in self.stack.etcd.members()
            ]
        except Exception as e:  # the context must never hide the real failure
            members = f"<unreadable: {e}>"
        snapshot = self.stack.aws.registry.snapshot()
        return (
            f"\n--- etcd members: {members}"
            f"\n--- completions: {json.dumps(snapshot['completions'], default=str)}"
            f"\n--- heartbeats: {json.dumps(snapshot['heartbeats'], default=str)}"
            f"\n--- refusals: {json.dumps(snapshot['refusals'], default=str)}"
            f"\n--- requests: {self.stack.aws.counts()}"
            f"\n--- function output (last lines):\n{fn.output(40)}"
        )

    # -- assertions on the answer ----------------------------------------------------------------
    def assertSucceeded(self, ok: bool, payload: Any, fn: FunctionProcess | None = None) -> dict:
        self.assertTrue(ok, f"expected a success answer, got error {payload}{self.context(fn)}")
        self.assertIsInstance(payload, dict, self.context(fn))
        self.assertIsInstance(payload.get("results"), list, f"no results in {payload}")
        self.assertIsInstance(payload.get("breakers"), list, f"no breakers in {payload}")
        return payload

    def assertFailedWith(
        self, ok: bool, payload: Any, *words: str, fn: FunctionProcess | None = None
    ) -> str:
        self.assertFalse(ok, f"expected an error answer, got success {payload}{self.context(fn)}")
        message = (payload or {}).get("errorMessage", "")
        self.assertTrue(message, f"error answer without errorMessage: {payload}")
        for word in words:
            self.assertIn(word, message, f"error message lacks {word!r}{self.context(fn)}")
        return message

    def result_for(self, payload: dict, instance_id: str) -> dict:
        found = [r for r in payload.get("results", []) if r.get("instance_id") == instance_id]
        self.assertEqual(
            len(found), 1, f"expected one result for {instance_id} in {payload}{self.context()}"
        )
        result = found[0]
        for key in ("instance_id", "group", "transition", "action", "result", "detail"):
            self.assertIn(key, result, f"result lacks {key!r}: {result}")
        return result

    def assertResult(
        self, payload: dict, instance_id: str, action: str, result: str, **fields: Any
    ) -> dict:
        """The summary line of `instance_id` says `action` / `result` (and `fields`)."""
        line = self.result_for(payload, instance_id)
        got = {"action": line["action"], "result": line["result"]}
        got.update({k: line.get(k) for k in fields})
        self.assertEqual(got, {"action": action, "result": result, **fields}, f"summary line {line}")
        return line

    def assertBreakersClosed(self, payload: dict) -> None:
        states = {b["dependency"]: b["state"] for b in payload["breakers"]}
        self.assertEqual(
            states,
            {"autoscaling": "CLOSED", "ec2": "CLOSED", "etcd": "CLOSED"},
            f"breakers: {payload['breakers']}",
        )

    # -- assertions on what happened -----------------------------------------------------------------
    def completions_for(self, instance_id: str) -> list[dict]:
        return [c for c in self.stack.aws.completions() if c["instance_id"] == instance_id]

    def heartbeats_for(self, instance_id: str) -> list[dict]:
        return [h for h in self.stack.aws.heartbeats() if h["instance_id"] == instance_id]

    def assertCompleted(
        self, action: LifecycleAction, result: str = "CONTINUE", by: str | None = "token"
    ) -> dict:
        done = self.completions_for(action.instance_id)
        self.assertEqual(
            len(done), 1, f"expected exactly one completion for {action.instance_id}{self.context()}"
        )
        self.assertEqual(done[0]["result"], result, self.context())
        self.assertEqual(done[0]["token"], action.token)
        if by is not None:
            self.assertEqual(done[0]["by"], by, "completed by token or by instance ID")
        return done[0]

    def assertNotCompleted(self, instance_id: str) -> None:
        self.assertEqual(self.completions_for(instance_id), [], self.context())

    def assertMember(self, instance_id: str, present: bool = True) -> None:
        names = self.members()
        if present:
            self.assertIn(instance_id, names, f"{instance_id} should still be a member{self.context()}")
        else:
            self.assertNotIn(instance_id, names, f"{instance_id} should be removed{self.context()}")

    def members(self) -> list[str]:
        """The members, each by its instance ID (or outside node name), whatever etcd calls it."""
        return self.stack.member_ids()
