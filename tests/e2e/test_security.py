"""Secrets never reach the output: the release binary at its most verbose (RUST_LOG=trace and
AWS_LAMBDA_LOG_LEVEL=TRACE), given known AWS credentials (secret key and session token) and an
etcd client key it really uses (etcd over TLS with `--client-cert-auth`), across successes, holds,
retries, bad input, TLS failures and start-up failures. Everything the processes write (stdout,
stderr) and every answer they give Lambda is scanned for the secrets and for any form of the key
material: the PEM armour, its base64 lines, the raw bytes as hex, and the PEM bytes as a Rust
`Vec<u8>` Debug list (which is how a derived `Debug` of a TLS identity would print them).

`ScannerTest` proves the scan itself finds each of those forms, so a clean result means something.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
import tempfile
import unittest
from typing import Any, Iterable

from tests.e2e.base import E2ETestCase
from tests.stack import FunctionDied, FunctionProcess, Stack, events
from tests.stack.tls import make_tls

SECRET_KEY = "sEcReTkEy" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(31))
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEtEsT" + base64.b64encode(secrets.token_bytes(240)).decode()
ACCESS_KEY = "ASIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
VERBOSE = {"RUST_LOG": "trace", "AWS_LAMBDA_LOG_LEVEL": "TRACE"}


def key_forms(pem: str) -> dict[str, str]:
    """Recognisable pieces of one PEM private key, by how a log could show them."""
    lines = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    body = "".join(lines)
    der = base64.b64decode(body)
    raw = pem.encode()
    # The PEM armour ("-----BEGIN PRIVATE KEY-----", "... RSA PRIVATE KEY-----", the END line):
    # the bare words also name the expected content in a start-up error ("ETCD_KEY_FILE=...
    # holds no PEM PRIVATE KEY"), which is no key material.
    forms = {"PEM armour": "PRIVATE KEY-----", "base64 (joined)": body[100:160]}
    for i, line in enumerate(lines):
        if len(line) >= 40:
            forms[f"base64 line {i}"] = line
    forms["DER as hex"] = der[64:96].hex()
    forms["DER as hex (upper)"] = der[64:96].hex().upper()
    forms["PEM bytes as Debug list"] = ", ".join(str(b) for b in raw[120:140])
    forms["DER bytes as Debug list"] = ", ".join(str(b) for b in der[64:80])
    return forms


def secret_forms(key_pems: Iterable[str]) -> dict[str, str]:
    forms = {
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SECRET_ACCESS_KEY (first 20)": SECRET_KEY[:20],
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_SESSION_TOKEN (first 40)": SESSION_TOKEN[:40],
        "AWS_SESSION_TOKEN (a middle slice)": SESSION_TOKEN[120:160],
    }
    for n, pem in enumerate(key_pems):
        for name, value in key_forms(pem).items():
            forms[f"key {n}: {name}"] = value
    return forms


def scan(texts: Iterable[tuple[str, str]], forms: dict[str, str]) -> list[str]:
    """Every (where, text) that holds one of `forms`, described without repeating the secret."""
    found = []
    for where, text in texts:
        for name, value in forms.items():
            if value and value in text:
                at = text.index(value)
                found.append(f"{name} in {where}: ...{text[max(0, at - 60):at]}<HERE>")
    return found


class ScannerTest(unittest.TestCase):
    """The scan finds every form of leak it claims to find (no stack needed)."""

    def test_each_form_is_found(self):
        with tempfile.TemporaryDirectory() as d:
            pem = make_tls(d, ["127.0.0.1"]).client_key_pem()
        forms = secret_forms([pem])
        raw = pem.encode()
        der = base64.b64decode("".join(l for l in pem.splitlines() if not l.startswith("-----")))
        planted = {
            "pem": json.dumps({"tls": pem}),
            "debug list": "Identity { key: [" + ", ".join(str(b) for b in raw) + "] }",
            "hex": der.hex(),
            "joined": "".join(l for l in pem.splitlines() if not l.startswith("-----")),
            "secret": f'{{"secret_access_key":"{SECRET_KEY}"}}',
            "token": f"x-amz-security-token: {SESSION_TOKEN}",
        }
        for label, text in planted.items():
            self.assertTrue(scan([(label, text)], forms), f"{label} leak not found")
        self.assertEqual(scan([("clean", '{"level":"INFO","message":"ok"}')], forms), [])


class SecretsNeverLoggedTest(E2ETestCase):
    def setUp(self) -> None:
        self.stack = Stack(nodes=3, etcd_tls=True)
        self.stack.up()
        self.addCleanup(self.stack.down)
        self.answers: list[tuple[str, Any]] = []
        self.keys = [self.stack.tls.client_key_pem()]

    def secret_env(self, **extra: str) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_SESSION_TOKEN": SESSION_TOKEN,
            # The story removes two of three members: its last removal leaves one voter, which
            # only an operator who asked for a single node allows.
            "ETCD_MIN_VOTERS": "1",
            **VERBOSE,
            **extra,
        }

    def call(self, label: str, fn: FunctionProcess, event: Any, **kw) -> tuple[bool, Any]:
        ok, payload = fn.invoke(event, **kw)
        self.answers.append((f"answer to {label}", json.dumps(payload)))
        return ok, payload

    def start_up_failure(self, label: str, **env: str) -> FunctionProcess:
        """A function that must stop at start-up (or fail its calls): its output is scanned."""
        fn = self.spawn(**self.secret_env(**env))
        try:
            ok, payload = fn.invoke(self.stack.scheduled(), wait_s=30)
            self.answers.append((f"answer to {label}", json.dumps(payload)))
        except FunctionDied:
            pass  # stopped at start-up, as it should: its output is what matters
        return fn

    @staticmethod
    def read(path: str) -> str:
        with open(path) as f:
            return f.read()

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.stack.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_no_secret_in_any_output_across_successes_and_failures(self):
        stack = self.stack
        fn = self.fn = self.spawn(**self.secret_env())
        leader = stack.leader()
        first, second = stack.followers()

        # 1. A terminate over TLS with the client certificate: succeeds.
        action = stack.start_terminate(first)
        payload = self.assertSucceeded(*self.call("terminate", fn, stack.eventbridge(action)), fn=fn)
        self.assertResult(payload, first, "completed", "CONTINUE", member_removed=True)

        # 2. Bad input.
        ok, _ = self.call("bad input", fn, {"detail-type": "nonsense"})
        self.assertFalse(ok)

        # 3. A hold while the leader is down (no quorum), its heartbeat retried through a 503,
        #    then the sweep holding it again, then an SQS batch with a poison record.
        stack.etcd.stop_node(leader)
        stack.aws.inject("autoscaling", "503", 2, action="RecordLifecycleActionHeartbeat")
        held = stack.start_terminate(second)
        ok, payload = self.call("held terminate", fn, stack.eventbridge(held))
        self.assertFailedWith(ok, payload, "held", second, fn=fn)
        ok, payload = self.call("sweep", fn, stack.scheduled())
        self.assertFalse(ok, f"the sweep holds too: {payload}")
        ok, payload = self.call(
            "sqs batch", fn, events.sqs(stack.notification(held), "not a lifecycle message")
        )
        self.assertTrue(ok)
        self.assertEqual(len(payload["batchItemFailures"]), 2, payload)
        self.assertGreaterEqual(len(self.heartbeats_for(second)), 3, self.context(fn))
        stack.etcd.start_node(leader)
        stack.etcd.wait_ready()
        payload = self.assertSucceeded(*self.call("redelivered", fn, stack.eventbridge(held)), fn=fn)
        self.assertResult(payload, second, "completed", "CONTINUE", member_removed=True)

        # 4. TLS that cannot work: the servers' certificates are signed by another CA.
        other = make_tls(os.path.join(stack.workdir, "other-tls"), stack.slot.ips, "another-ca")
        self.keys.append(other.client_key_pem())
        wrong_ca = self.spawn(**self.secret_env(ETCD_CA_FILE=other.ca_cert))
        new, launch = stack.start_launch()
        ok, payload = self.call("launch with a wrong CA", wrong_ca, stack.eventbridge(launch))
        self.call("sweep with a wrong CA", wrong_ca, stack.scheduled())

        # 5. Key files that cannot be used: start-up must stop, naming the variable, not the key.
        pem = self.keys[0]
        lines = pem.strip().splitlines()
        body = lines[1:-1]
        middle = len(body) // 2
        broken = body[:middle] + ["A" * len(body[middle])] + body[middle + 1 :]
        self.keys.append("\n".join([lines[0], *broken, lines[-1]]) + "\n")
        for label, env in {
            "a corrupted key": {"ETCD_KEY_FILE": self.write("corrupted.key", self.keys[-1])},
            "a key without PEM markers": {"ETCD_KEY_FILE": self.write("bare.key", "\n".join(body))},
            "a key where the certificate goes": {"ETCD_CERT_FILE": stack.tls.client_key},
            "a key where the CA goes": {"ETCD_CA_FILE": stack.tls.client_key},
            "a key that is not the certificate's": {"ETCD_KEY_FILE": other.client_key},
            "a certificate and key in one file as the key": {
                "ETCD_KEY_FILE": self.write(
                    "both.pem", self.read(stack.tls.client_cert) + pem
                )
            },
        }.items():
            self.start_up_failure(label, **env)

        # The scan means something: verbose output, and the secrets really were in use.
        functions = list(stack.functions)
        lines_out = [(f"output of function {n}", l) for n, f in enumerate(functions) for l in f.lines()]
        self.assertGreater(len(lines_out), 1000, "trace logging did not produce much output")
        self.assertTrue(
            any('"level":"TRACE"' in l for _, l in lines_out), "no TRACE line: the level was not applied"
        )
        signed = [
            r for r in stack.aws.requests() if r["service"] in ("autoscaling", "ec2") and r["action"] in (
                "DescribeInstances", "CompleteLifecycleAction", "RecordLifecycleActionHeartbeat",
                "DescribeAutoScalingGroups", "DescribeLifecycleHooks", "DescribeAutoScalingInstances",
            ) and r.get("session_token")
        ]  # fmt: skip
        self.assertTrue(signed, "no request carried the session token")
        self.assertTrue(all(r["session_token"] == SESSION_TOKEN for r in signed))

        for fn_ in functions:
            fn_.stop()  # every line flushed before the scan
        lines_out = [(f"output of function {n}", l) for n, f in enumerate(functions) for l in f.lines()]
        leaks = scan(lines_out + self.answers, secret_forms(self.keys))
        self.assertEqual(
            leaks,
            [],
            f"{len(leaks)} secret(s) in the output; first ones:\n" + "\n".join(leaks[:10]),
        )


if __name__ == "__main__":
    unittest.main()
