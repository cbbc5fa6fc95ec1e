"""README's "try the samples" path, run as written: `cargo lambda watch` serves the function and
`cargo lambda invoke --data-file` sends it events, with the local stack (real etcd, moto's Auto
Scaling and EC2) standing in for the AWS account, the function's environment given with
`--env-file` as a user would give theirs.

One thing outside the project stands in the way: `cargo lambda watch` (1.9.2) gives every
invocation the deadline `Lambda-Runtime-Deadline-Ms: 600000`, which is 1970-01-01 00:10 UTC. The
function honours its deadline (it starts no membership change it cannot finish), so under `watch`
as it is a terminate is refused "for the deadline" and nothing changes; Lambda itself sends the
real deadline. Hence two classes:

- `WatchAsReadmeGivesItTest`: `cargo lambda watch --release`, which runs `cargo run --release` in
  this checkout (with the same target directory and flags as `make release` it reuses that build
  instead of compiling a second, dev one). A malformed sample is a clear error; a terminate is
  refused naming the deadline, and nothing is removed or completed. If cargo-lambda starts sending
  real deadlines, that test fails and says so: then the full checks below apply to it too.
- `WatchWithRealDeadlinesTest`: `cargo lambda watch --only-lambda-apis` (cargo-lambda's Runtime API
  and invoke endpoint) with the release binary behind tests/deploy/deadline_proxy.py, which puts
  a real deadline (now + 60 s) where watch's is already past. README's three invocations pass: a
  terminate removes the member and completes with CONTINUE; the malformed sample fails naming
  `LifecycleActionToken` and changes nothing; an SQS batch with a bad record answers a partial
  batch response naming only that record.

    .venv/bin/python -m unittest tests.deploy.test_cargo_lambda -v

Needs `scripts/setup.sh deploy` (cargo-lambda in .venv-deploy), etcd, and the release build
(`make release`; `make test-cargo-lambda` does both).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from tests.deploy.deadline_proxy import DeadlineProxy
from tests.stack import Stack, bootstrap_path, events
from tests.stack.aws import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY_BIN = os.path.join(REPO, ".venv-deploy", "bin")
FUNCTION = "etcd-lifecycle-hook"
HOST = "127.0.0.1"
# The first invocation under `watch` waits for `cargo run --release`: fresh after `make release`,
# a whole release build (about 8 minutes on two cores) when not.
FIRST_INVOKE_TIMEOUT = float(os.environ.get("CARGO_LAMBDA_FIRST_INVOKE_TIMEOUT", "900"))
INVOKE_TIMEOUT = 120.0
# Set by cargo lambda watch for the function, or meaningless outside the stack's emulator.
NOT_FROM_THE_ENV_FILE = ("AWS_LAMBDA_", "PATH", "RUST_BACKTRACE")


def tool_env() -> dict[str, str]:
    """cargo-lambda (and the zig it brings) first on PATH, as README's set-up does."""
    env = dict(os.environ)
    env["PATH"] = DEPLOY_BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("CARGO_TERM_COLOR", "never")
    return env


def stop_group(proc: subprocess.Popen | None) -> None:
    """Ends `proc` and the processes it started (its own session, so its own process group)."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class LocalLoop(unittest.TestCase):
    """A stack, `cargo lambda watch` with `watch_args`, and `cargo lambda invoke --data-file`."""

    watch_args: list[str] = []
    first_invoke_timeout = INVOKE_TIMEOUT

    @classmethod
    def setUpClass(cls):
        if not os.access(os.path.join(DEPLOY_BIN, "cargo-lambda"), os.X_OK):
            raise AssertionError(
                "cargo-lambda is not installed in .venv-deploy: run `bash scripts/setup.sh deploy`"
            )
        cls.tmp = tempfile.mkdtemp(prefix="cargo-lambda-loop-")
        cls.logs: dict[str, str] = {}
        cls.procs: list[subprocess.Popen] = []
        # Two of the tests each scale in a follower: four nodes keep the second removal above
        # the ETCD_MIN_VOTERS floor (two voters), so both are removals, not holds.
        cls.stack = Stack(nodes=4)
        cls.stack.up()
        try:
            cls.env_file = os.path.join(cls.tmp, "function.env")
            with open(cls.env_file, "w") as f:
                for key, value in sorted(cls.stack.env().items()):
                    if not key.startswith(NOT_FROM_THE_ENV_FILE):
                        f.write(f"{key}={value}\n")
            cls.port = free_port()
            cls.watch = cls.spawn(
                "watch",
                ["cargo", "lambda", "watch", *cls.watch_args, "--invoke-address", HOST,
                 "--invoke-port", str(cls.port), "--env-file", cls.env_file],
                tool_env(),
            )
            cls.wait_listening()
            cls.start_function()
        except BaseException:
            cls.teardown()
            raise
        cls.first = True

    @classmethod
    def tearDownClass(cls):
        cls.teardown()

    @classmethod
    def teardown(cls):
        for proc in reversed(cls.procs):
            stop_group(proc)
        proxy = getattr(cls, "proxy", None)
        if proxy is not None:
            proxy.stop()
        cls.stack.down()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def start_function(cls):
        """What runs the function besides `watch` (nothing: watch runs it)."""

    @classmethod
    def spawn(cls, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        cls.logs[name] = os.path.join(cls.tmp, f"{name}.log")
        with open(cls.logs[name], "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cargo run and the function too
            )
        cls.procs.append(proc)
        return proc

    @classmethod
    def wait_listening(cls):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cls.watch.poll() is not None:
                raise AssertionError(f"cargo lambda watch exited {cls.watch.returncode}:\n{cls.output()}")
            try:
                socket.create_connection((HOST, cls.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"cargo lambda watch did not listen on {HOST}:{cls.port}:\n{cls.output()}")

    @classmethod
    def output(cls, last: int = 40) -> str:
        out = []
        for name, path in cls.logs.items():
            try:
                with open(path, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                lines = ["<no output>"]
            out.append(f"--- {name} (last lines):\n" + "\n".join(lines[-last:]))
        return "\n".join(out)

    # -- one `cargo lambda invoke --data-file`, as README gives it -------------------------------------
    def invoke_file(self, path: str) -> subprocess.CompletedProcess:
        cls = type(self)
        timeout = cls.first_invoke_timeout if cls.first else INVOKE_TIMEOUT
        cls.first = False
        return subprocess.run(
            ["cargo", "lambda", "invoke", FUNCTION, "--data-file", path,
             "--invoke-address", HOST, "--invoke-port", str(cls.port), "--output-format", "json"],
            cwd=REPO,
            env=tool_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def invoke_event(self, event) -> subprocess.CompletedProcess:
        fd, path = tempfile.mkstemp(suffix=".json", dir=self.tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(event, f)
        return self.invoke_file(path)

    def answer(self, run: subprocess.CompletedProcess) -> dict:
        self.assertEqual(run.returncode, 0, self.explain(run))
        try:
            return json.loads(run.stdout)
        except ValueError:
            self.fail(f"the answer is not JSON{self.explain(run)}")

    def explain(self, run: subprocess.CompletedProcess) -> str:
        return (
            f"\n--- invoke exit {run.returncode}\n--- stdout:\n{run.stdout}\n--- stderr:\n{run.stderr}"
            f"\n--- etcd members: {self.stack.etcd.member_names()}"
            f"\n--- completions: {self.stack.aws.completions()}\n{self.output()}"
        )

    def completed(self, instance_id: str) -> list[str]:
        return [c["result"] for c in self.stack.aws.completions() if c["instance_id"] == instance_id]

    def check_malformed_sample(self):
        members, completions = self.stack.etcd.member_names(), self.stack.aws.completions()

        run = self.invoke_file(os.path.join(REPO, "events", "malformed", "missing-token.json"))

        self.assertNotEqual(run.returncode, 0, f"a malformed event must fail{self.explain(run)}")
        self.assertIn("LifecycleActionToken", run.stdout + run.stderr, self.explain(run))
        self.assertEqual(self.stack.etcd.member_names(), members)
        self.assertEqual(self.stack.aws.completions(), completions)


class WatchAsReadmeGivesItTest(LocalLoop):
    """`cargo lambda watch --release`: the function built and run by cargo-lambda itself."""

    watch_args = ["--release", "--ignore-changes"]
    first_invoke_timeout = FIRST_INVOKE_TIMEOUT

    def test_1_a_malformed_sample_is_a_clear_error_and_changes_nothing(self):
        self.check_malformed_sample()

    def test_2_a_terminate_is_refused_for_the_deadline_watch_gives_and_changes_nothing(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)

        run = self.invoke_event(self.stack.eventbridge(action))

        self.assertNotEqual(
            run.returncode, 0,
            "cargo lambda watch now gives a deadline ahead: use the full checks of "
            f"WatchWithRealDeadlinesTest here, and update README{self.explain(run)}",
        )
        self.assertIn("deadline", run.stdout + run.stderr, self.explain(run))
        self.assertIn(victim, self.stack.etcd.member_names(), self.explain(run))
        self.assertEqual(self.completed(victim), [], self.explain(run))


class WatchWithRealDeadlinesTest(LocalLoop):
    """`cargo lambda watch --only-lambda-apis`, the release binary behind the deadline proxy."""

    watch_args = ["--only-lambda-apis"]

    @classmethod
    def start_function(cls):
        cls.proxy = DeadlineProxy(f"{HOST}:{cls.port}/.rt/{FUNCTION}").start()
        env = cls.stack.env(AWS_LAMBDA_RUNTIME_API=cls.proxy.address, AWS_LAMBDA_FUNCTION_NAME=FUNCTION)
        cls.function = cls.spawn("function", [bootstrap_path()], env)

    def test_1_terminate_removes_the_member_and_completes(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)

        run = self.invoke_event(self.stack.eventbridge(action))

        answer = self.answer(run)
        [line] = [r for r in answer.get("results", []) if r.get("instance_id") == victim]
        self.assertEqual((line["action"], line["result"]), ("completed", "CONTINUE"), answer)
        self.assertNotIn(victim, self.stack.etcd.member_names(), self.explain(run))
        self.assertEqual(self.completed(victim), ["CONTINUE"], self.explain(run))
        self.assertGreaterEqual(self.proxy.rewritten, 1, "watch's deadline was not replaced")

    def test_2_a_malformed_sample_is_a_clear_error_and_changes_nothing(self):
        self.check_malformed_sample()

    def test_3_sqs_batch_reports_only_the_bad_record(self):
        victim = self.stack.followers()[0]
        action = self.stack.start_terminate(victim)
        batch = events.sqs(self.stack.notification(action), "this is not a lifecycle message")

        run = self.invoke_event(batch)

        answer = self.answer(run)
        self.assertEqual(answer.get("batchItemFailures"), [{"itemIdentifier": "msg-1"}], self.explain(run))
        self.assertNotIn(victim, self.stack.etcd.member_names(), self.explain(run))
        self.assertEqual(self.completed(victim), ["CONTINUE"], self.explain(run))


if __name__ == "__main__":
    unittest.main()
