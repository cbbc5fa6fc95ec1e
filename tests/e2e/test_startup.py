"""Start-up: a configuration value that does not parse stops the function before it serves,
with a message naming the variable, the value and what is expected. No stack is needed: the
function must fail before it calls anything."""

from __future__ import annotations

import os
import tempfile
import unittest

from tests.stack import FunctionDied, FunctionProcess, bootstrap_path
from tests.stack.aws import free_port


class StartupTest(unittest.TestCase):
    def spawn(self, **env: str) -> FunctionProcess:
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_FUNCTION_NAME": "etcd-lifecycle-hook",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_STREAM_NAME": "startup",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/etcd-lifecycle-hook",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "ASG_NAMES": "etcd-e2e",
            "ETCD_ENDPOINTS": "http://127.0.0.1:2379",
        }
        logs = tempfile.TemporaryDirectory(prefix="startup-")
        self.addCleanup(logs.cleanup)
        fn = FunctionProcess(bootstrap_path(), {**base, **env}, logs.name)
        self.addCleanup(fn.stop)
        return fn

    def test_bad_value_stops_start_up_naming_variable_value_and_expectation(self):
        fn = self.spawn(RETRY_MAX_ATTEMPTS="four")
        with self.assertRaises(FunctionDied):
            fn.invoke({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}, wait_s=30)
        fn.proc.wait(10)
        self.assertNotEqual(fn.proc.returncode, 0)
        output = fn.output()
        for part in ("RETRY_MAX_ATTEMPTS", "four", "a whole number of attempts from 1 to 20"):
            self.assertIn(part, output)

    def test_a_voter_floor_that_is_not_a_positive_whole_number_stops_start_up(self):
        for value in ("0", "two"):
            with self.subTest(ETCD_MIN_VOTERS=value):
                fn = self.spawn(ETCD_MIN_VOTERS=value)
                sweep = {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
                with self.assertRaises(FunctionDied):
                    fn.invoke(sweep, wait_s=30)
                fn.proc.wait(10)
                self.assertNotEqual(fn.proc.returncode, 0)
                output = fn.output()
                self.assertIn("ETCD_MIN_VOTERS", output)
                self.assertIn(value, output)

    def test_good_configuration_serves(self):
        fn = self.spawn()
        ok, payload = fn.invoke({"Records": []}, wait_s=30)
        self.assertFalse(ok, "an empty Records list is bad input")
        self.assertIn("Records", payload["errorMessage"])
        self.assertTrue(fn.alive())
        self.assertIsNotNone(fn.api.first_next_at)


if __name__ == "__main__":
    unittest.main()
