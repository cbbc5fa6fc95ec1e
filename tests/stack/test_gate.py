"""Checks of the transport faults (gate.py) and of the etcd faults (pause, gated clusters, a node
joining): if these fail, a fault-matrix or chaos failure says nothing about the function.

Run: .venv/bin/python -m unittest tests.stack.test_gate -v
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
import unittest
import urllib.request

from tests.stack import AddressSlot, Stack
from tests.stack.etcd import EtcdCluster, EtcdError, gateway
from tests.stack.gate import (
    GRPC_RESOURCE_EXHAUSTED,
    GRPC_UNAVAILABLE,
    TcpGate,
    port_is_refused,
)

ETCDCTL = shutil.which("etcdctl")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class GateTest(unittest.TestCase):
    def setUp(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.gate = TcpGate(self.server.server_address[:2])
        self.addCleanup(self.gate.close)

    def test_forwards_then_refuses_then_forwards_again(self):
        self.assertEqual(get(self.gate.url), b"hello")
        self.gate.refuse()
        self.assertTrue(port_is_refused(self.gate.host, self.gate.port), "connect was not refused")
        with self.assertRaises(OSError):
            get(self.gate.url)
        self.gate.open()
        self.assertEqual(get(self.gate.url), b"hello")

    def test_refuse_for_opens_again_by_itself(self):
        self.gate.refuse_for(0.3)
        self.assertTrue(port_is_refused(self.gate.host, self.gate.port))
        deadline = time.monotonic() + 5
        while self.gate.refusing and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(get(self.gate.url), b"hello")

    def test_refuse_cuts_open_connections(self):
        conn = socket.create_connection((self.gate.host, self.gate.port), timeout=5)
        self.addCleanup(conn.close)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = conn.recv(4096)
            self.assertTrue(chunk, f"closed after {answer!r}")
            answer += chunk
        self.gate.refuse()
        try:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            after = conn.recv(4096)
        except OSError:
            after = b""  # reset: the cut the gate makes
        self.assertEqual(after, b"", "a connection open before refuse() must be cut")

    def test_reset_counts_down(self):
        self.gate.reset(2)
        for _ in range(2):
            with self.assertRaises(OSError):
                get(self.gate.url)
        self.assertEqual(get(self.gate.url), b"hello")
        self.assertEqual(self.gate.faulted, {"reset": 2})
        self.assertEqual(self.gate.pending(), 0)

    def test_stall_gives_no_answer(self):
        self.gate.stall(1, 5.0)
        started = time.monotonic()
        with self.assertRaises(OSError):  # socket.timeout is an OSError
            get(self.gate.url, timeout=0.5)
        self.assertGreaterEqual(time.monotonic() - started, 0.45)
        self.assertEqual(get(self.gate.url), b"hello")

    def test_delay_answers_late(self):
        self.gate.delay(1, 0.6)
        started = time.monotonic()
        self.assertEqual(get(self.gate.url), b"hello")
        self.assertGreaterEqual(time.monotonic() - started, 0.55, "the answer was not held back")
        started = time.monotonic()
        self.assertEqual(get(self.gate.url), b"hello")
        self.assertLess(time.monotonic() - started, 0.5, "only one connection was to be delayed")


@unittest.skipUnless(ETCDCTL, "etcdctl is not installed")
class GrpcErrorTest(unittest.TestCase):
    """A real gRPC client (etcdctl) reads the gate's HTTP/2 answer as an etcd error."""

    def etcdctl(self, endpoint: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=3s", "--command-timeout=5s", *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def test_every_call_gets_the_armed_status(self):
        gate = TcpGate(("127.0.0.1", 9))  # nothing upstream: only armed connections answer
        self.addCleanup(gate.close)
        gate.grpc_error(1, GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests")
        out = self.etcdctl(gate.url, "member", "list")
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertIn("etcdserver: too many requests", out.stderr)
        self.assertEqual(gate.faulted, {"grpc": 1})


class GatedEtcdTest(unittest.TestCase):
    def setUp(self):
        self.slot = AddressSlot.acquire()
        self.addCleanup(self.slot.release)
        ips = self.slot.ips[:3]
        self.cluster = EtcdCluster(["g1", "g2", "g3"], ips, gated=True)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()

    def test_members_advertise_the_gates_and_checks_bypass_them(self):
        members = {m.name: m for m in self.cluster.members()}
        for name, node in self.cluster.nodes.items():
            self.assertEqual(members[name].client_urls, [f"http://{node.ip}:2379"])
            self.assertEqual(node.client_url, f"http://{node.ip}:2381")
        self.assertEqual(self.cluster.endpoints(), [f"http://{ip}:2379" for ip in self.slot.ips[:3]])
        # Faults on every gate leave the module's own checks untouched.
        for gate in self.cluster.gates():
            gate.refuse()
        self.assertEqual(len(self.cluster.members()), 3)
        self.assertIsNotNone(self.cluster.leader())

    @unittest.skipUnless(ETCDCTL, "etcdctl is not installed")
    def test_through_a_gate_grpc_errors_then_the_real_answer(self):
        gate = self.cluster.nodes["g1"].gate
        gate.grpc_error(1, GRPC_UNAVAILABLE, "etcdserver: leader changed")
        run = lambda: subprocess.run(  # noqa: E731
            [ETCDCTL, f"--endpoints={gate.url}", "--dial-timeout=3s", "member", "list"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        first = run()
        self.assertIn("leader changed", first.stderr + first.stdout)
        second = run()
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(sorted(line.split(", ")[2] for line in second.stdout.splitlines()), ["g1", "g2", "g3"])

    def test_pause_hangs_a_node_and_resume_brings_it_back(self):
        leader = self.cluster.wait_healthy()
        victim = next(n for n in self.cluster.nodes if n != leader)
        self.cluster.pause_node(victim)
        node = self.cluster.nodes[victim]
        self.assertTrue(node.running() and node.paused)
        self.assertNotIn(victim, [n.name for n in self.cluster.running_nodes()])
        with self.assertRaises(EtcdError) as ctx:
            gateway(node.client_url, "/v3/maintenance/status", timeout=0.5)
        self.assertEqual(ctx.exception.status, 0, "a paused node answers nothing")
        self.assertEqual(len(self.cluster.members()), 3, "the others still serve")
        self.cluster.resume_node(victim)
        self.cluster.wait_until(
            lambda: gateway(node.client_url, "/v3/maintenance/status", timeout=1), what="resumed"
        )

    def test_a_paused_node_can_be_stopped(self):
        victim = self.cluster.followers()[0]
        self.cluster.pause_node(victim)
        self.cluster.stop_node(victim, timeout=5)
        self.assertFalse(self.cluster.nodes[victim].running())
        self.cluster.start_node(victim)
        self.cluster.wait_healthy()

    def test_a_new_node_joins_as_the_learner_added_for_it(self):
        ip = self.slot.ips[3]
        learner = self.cluster.add_member(f"http://{ip}:2380", learner=True)
        initial = ",".join(
            f"{m.name or 'g4'}={m.peer_urls[0]}" for m in self.cluster.members()
        )
        self.cluster.add_node("g4", ip, initial)
        self.cluster.wait_until(
            lambda: any(m.name == "g4" for m in self.cluster.members()), timeout=20, what="g4 started"
        )
        [joined] = [m for m in self.cluster.members() if m.name == "g4"]
        self.assertEqual(joined.id, learner.id)
        self.assertTrue(joined.is_learner)
        self.cluster.forget_node("g4")
        self.assertNotIn("g4", self.cluster.nodes)


class TlsEtcdTest(unittest.TestCase):
    def test_clients_need_the_client_certificate(self):
        import ssl

        with Stack(nodes=1, etcd_tls=True) as stack:
            [member] = stack.etcd.members()
            ip = stack.ip_of(stack.instance_ids[0])
            self.assertEqual(member.client_urls, [f"https://{ip}:2379"])
            env = stack.env()
            self.assertEqual(env["ETCD_ENDPOINTS"], f"https://{ip}:2379")
            self.assertEqual(env["ETCD_CLIENT_SCHEME"], "https")
            self.assertEqual(env["ETCD_KEY_FILE"], stack.tls.client_key)
            self.assertIn("BEGIN PRIVATE KEY", stack.tls.client_key_pem())
            without_cert = ssl.create_default_context(cafile=stack.tls.ca_cert)
            with self.assertRaises(EtcdError):
                gateway(member.client_urls[0], "/v3/maintenance/status", context=without_cert)


class StackGateTest(unittest.TestCase):
    def test_aws_gate_is_in_the_function_environment(self):
        with Stack(nodes=1) as stack:
            gate = stack.aws_gate("autoscaling")
            env = stack.env()
            self.assertEqual(env["AWS_ENDPOINT_URL_AUTO_SCALING"], gate.url)
            self.assertNotIn("AWS_ENDPOINT_URL_EC2", env)
            import boto3

            # A client through the gate gets moto's answers.
            through = boto3.client(
                "autoscaling",
                region_name="us-east-1",
                endpoint_url=gate.url,
                aws_access_key_id="test",
                aws_secret_access_key="test",
            )
            groups = through.describe_auto_scaling_groups()["AutoScalingGroups"]
            self.assertEqual([g["AutoScalingGroupName"] for g in groups], [stack.group])

    def test_control_requests_bypass_faults_and_the_log(self):
        with Stack(nodes=1) as stack:
            stack.aws.inject("ec2", "throttle", 5)
            before = stack.aws.count()
            stack.aws.client("ec2", control=True).describe_instances()
            new, _ = stack.start_launch(control=True)
            self.assertIn(new, stack.instance_ids)
            self.assertEqual(stack.aws.count(), before, "control requests are not the function's")
            self.assertEqual(sum(f.times for f in stack.aws.pending_faults()), 5)

    def test_on_request_fires_once_before_faults(self):
        with Stack(nodes=1) as stack:
            seen = []
            stack.aws.on_request("ec2", "DescribeInstances", lambda e: seen.append(e["action"]))
            stack.aws.inject("ec2", "503", 1, action="DescribeInstances")
            ec2 = stack.aws.client("ec2")
            with self.assertRaises(Exception):
                ec2.describe_instances()
            ec2.describe_instances()
            self.assertEqual(seen, ["DescribeInstances"])


if __name__ == "__main__":
    unittest.main()
