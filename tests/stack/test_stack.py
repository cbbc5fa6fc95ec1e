"""Checks of the local stack itself, independent of the function: if these fail, an end-to-end
failure says nothing about the function.

Run: .venv/bin/python -m unittest discover -s tests/stack -t . -v
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import botocore.exceptions

from tests.stack import AddressSlot, DeadEndpoint, Stack, events
from tests.stack.aws import (
    LAUNCHING,
    TERMINATING,
    AwsServer,
    launch_into_group,
    seed_group,
    seed_network,
)
from tests.stack.etcd import EtcdCluster, EtcdError
from tests.stack.runtime_api import FunctionDied, RuntimeApi

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_function.py")


def _signed_post(endpoint: str, service: str, form: str) -> tuple[int, bytes]:
    """A raw awsQuery POST with a credential scope (moto dispatches on it; no real signature)."""
    req = urllib.request.Request(
        endpoint + "/",
        data=form.encode(),
        headers={
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, "
                "SignedHeaders=host, Signature=0"
            ),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class AwsServerTest(unittest.TestCase):
    def setUp(self):
        self.server = AwsServer().start()
        self.addCleanup(self.server.stop)
        self.seeded = seed_group(
            self.server, "grp", ["127.0.200.11", "127.0.200.12", "127.0.200.13"]
        )
        self.asg = self.server.client("autoscaling")
        self.ec2 = self.server.client("ec2")
        self.ids = list(self.seeded.instances)

    def states(self) -> dict[str, str]:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=["grp"])[
            "AutoScalingGroups"
        ][0]
        return {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]}

    def test_seeded_group_has_tagged_instances_and_both_hooks(self):
        hooks = self.asg.describe_lifecycle_hooks(AutoScalingGroupName="grp")["LifecycleHooks"]
        self.assertEqual(
            {(h["LifecycleHookName"], h["LifecycleTransition"]) for h in hooks},
            {("grp-launch", LAUNCHING), ("grp-terminate", TERMINATING)},
        )
        r = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:aws:autoscaling:groupName", "Values": ["grp"]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        found = {
            i["InstanceId"]: i["PrivateIpAddress"]
            for res in r["Reservations"]
            for i in res["Instances"]
        }
        self.assertEqual(found, self.seeded.instances)
        self.assertEqual(set(self.states().values()), {"InService"})

    def test_complete_by_token_terminates_and_second_completion_is_refused(self):
        victim = self.ids[1]
        action = self.server.start_lifecycle_action("grp", victim, TERMINATING)
        self.assertEqual(self.states()[victim], "Terminating:Wait")
        self.assertEqual(self.server.lifecycle_state(victim), "Terminating:Wait")

        self.asg.record_lifecycle_action_heartbeat(
            AutoScalingGroupName="grp",
            LifecycleHookName=action.hook,
            LifecycleActionToken=action.token,
        )
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp",
            LifecycleHookName=action.hook,
            LifecycleActionToken=action.token,
            LifecycleActionResult="CONTINUE",
        )
        self.assertNotIn(victim, self.states())
        self.assertEqual(self.server.ec2_state(victim), "terminated")
        self.assertEqual(len(self.server.heartbeats()), 1)
        [done] = self.server.completions()
        self.assertEqual(
            (done["instance_id"], done["result"], done["by"], done["token"]),
            (victim, "CONTINUE", "token", action.token),
        )

        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.asg.complete_lifecycle_action(
                AutoScalingGroupName="grp",
                LifecycleHookName=action.hook,
                LifecycleActionToken=action.token,
                LifecycleActionResult="CONTINUE",
            )
        err = ctx.exception.response["Error"]
        self.assertEqual(err["Code"], "ValidationError")
        self.assertEqual(err["Message"], f"No active Lifecycle Action found with token {action.token}")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.asg.record_lifecycle_action_heartbeat(
                AutoScalingGroupName="grp", LifecycleHookName=action.hook, InstanceId=victim
            )
        self.assertEqual(
            ctx.exception.response["Error"]["Message"],
            f"No active Lifecycle Action found with instance ID {victim}",
        )
        self.assertEqual(len(self.server.completions()), 1)
        self.assertEqual(len(self.server.refusals()), 2)

    def test_error_body_is_aws_query_xml(self):
        status, body = _signed_post(
            self.server.endpoint,
            "autoscaling",
            "Action=CompleteLifecycleAction&Version=2011-01-01&AutoScalingGroupName=grp"
            "&LifecycleHookName=grp-terminate&LifecycleActionToken=nope"
            "&LifecycleActionResult=CONTINUE",
        )
        self.assertEqual(status, 400)
        text = body.decode()
        for part in (
            "<ErrorResponse",
            "<Type>Sender</Type>",
            "<Code>ValidationError</Code>",
            "<Message>No active Lifecycle Action found with token nope</Message>",
            "<RequestId>",
        ):
            self.assertIn(part, text)

    def test_complete_by_instance_id_needs_the_right_hook(self):
        victim = self.ids[0]
        self.server.start_lifecycle_action("grp", victim, TERMINATING)
        with self.assertRaises(botocore.exceptions.ClientError):
            self.asg.complete_lifecycle_action(
                AutoScalingGroupName="grp",
                LifecycleHookName="grp-launch",
                InstanceId=victim,
                LifecycleActionResult="CONTINUE",
            )
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp",
            LifecycleHookName="grp-terminate",
            InstanceId=victim,
            LifecycleActionResult="ABANDON",
        )
        [done] = self.server.completions()
        self.assertEqual((done["by"], done["result"]), ("instance_id", "ABANDON"))
        self.assertEqual(self.server.ec2_state(victim), "terminated")

    def test_launch_continue_goes_in_service_and_abandon_terminates(self):
        new, action = launch_into_group(self.server, self.seeded, "127.0.200.14")
        self.assertEqual(self.server.lifecycle_state(new), "Pending:Wait")
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp",
            LifecycleHookName=action.hook,
            LifecycleActionToken=action.token,
            LifecycleActionResult="CONTINUE",
        )
        self.assertEqual(self.server.lifecycle_state(new), "InService")
        other, action = launch_into_group(self.server, self.seeded, "127.0.200.15")
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp",
            LifecycleHookName=action.hook,
            LifecycleActionToken=action.token,
            LifecycleActionResult="ABANDON",
        )
        self.assertIsNone(self.server.lifecycle_state(other))
        self.assertEqual(self.server.ec2_state(other), "terminated")

    def test_terminated_outside_hooks_leaves_group_without_replacement(self):
        gone = self.ids[2]
        self.server.terminate_outside_hooks(gone)
        self.assertEqual(set(self.states()), set(self.ids[:2]))
        self.assertEqual(self.server.ec2_state(gone), "terminated")

    def test_faults_per_service_and_action_then_pass_through(self):
        self.server.inject("autoscaling", "503", 2, action="DescribeAutoScalingGroups")
        self.server.inject("ec2", "throttle", 1)
        codes = []
        for _ in range(3):
            try:
                self.asg.describe_auto_scaling_groups()
                codes.append("ok")
            except botocore.exceptions.ClientError as e:
                codes.append(
                    (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
                )
        self.assertEqual(codes, [("ServiceUnavailable", 503), ("ServiceUnavailable", 503), "ok"])
        # The Auto Scaling fault was limited to its Action.
        self.asg.describe_lifecycle_hooks(AutoScalingGroupName="grp")
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.ec2.describe_instances()
        self.assertEqual(ctx.exception.response["Error"]["Code"], "RequestLimitExceeded")
        self.ec2.describe_instances()
        self.server.inject("autoscaling", "throttle", 1)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.asg.describe_lifecycle_hooks(AutoScalingGroupName="grp")
        self.assertEqual(ctx.exception.response["Error"]["Code"], "Throttling")
        self.assertEqual(self.server.pending_faults(), [])
        faulted = [r["fault"] for r in self.server.requests() if r["fault"]]
        self.assertEqual(faulted, ["503", "503", "throttle", "throttle"])
        self.assertEqual(self.server.count("autoscaling", "DescribeAutoScalingGroups"), 4)

    def test_rendezvous_lets_requests_through_together(self):
        self.server.rendezvous("ec2", "DescribeInstances", parties=2, timeout_s=5)
        passed: list[float] = []

        def describe() -> None:
            self.server.client("ec2").describe_instances()
            passed.append(time.monotonic())

        first = threading.Thread(target=describe)
        first.start()
        time.sleep(0.5)
        self.assertEqual(passed, [], "the first request waits for the second")
        self.asg.describe_auto_scaling_groups()  # another Action is never held
        describe()
        first.join(5)
        self.assertEqual(len(passed), 2)
        self.assertLess(abs(passed[0] - passed[1]), 0.3)
        met = [r["fault"] for r in self.server.requests("ec2", "DescribeInstances")]
        self.assertEqual(met, ["rendezvous", "rendezvous"])
        started = time.monotonic()
        self.ec2.describe_instances()  # the rendezvous is over: no wait
        self.assertLess(time.monotonic() - started, 0.5)

    def test_a_fault_with_a_duration_ends_with_it_whatever_is_left(self):
        self.server.inject("autoscaling", "throttle", 5, lasts_s=0.5)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            self.asg.describe_lifecycle_hooks(AutoScalingGroupName="grp")
        self.assertEqual(ctx.exception.response["Error"]["Code"], "Throttling")
        self.assertEqual([f.times for f in self.server.pending_faults()], [4])
        time.sleep(0.6)
        self.assertEqual(self.server.pending_faults(), [])
        self.asg.describe_lifecycle_hooks(AutoScalingGroupName="grp")
        faulted = [r["fault"] for r in self.server.requests("autoscaling", "DescribeLifecycleHooks")]
        self.assertEqual(faulted, ["throttle", None])
        with self.assertRaises(ValueError):
            self.server.inject("ec2", "503", 1, lasts_s=0)

    def test_stall_delays_then_answers(self):
        self.server.inject("ec2", "stall", 1, stall_s=0.5)
        started = time.monotonic()
        self.ec2.describe_instances()
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(self.server.requests("ec2", "DescribeInstances")[-1]["fault"], "stall")

    def test_http_control_api(self):
        base = self.server.endpoint + "/_stack"

        def call(method, path, body=None):
            req = urllib.request.Request(
                base + path,
                method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.load(r)

        action = call(
            "POST",
            "/lifecycle/start",
            {"group": "grp", "instance_id": self.ids[0], "transition": TERMINATING},
        )
        self.assertEqual(action["hook"], "grp-terminate")
        self.assertEqual(call("GET", "/lifecycle")["active"][0]["token"], action["token"])
        faults = call("POST", "/faults", {"service": "ec2", "kind": "503", "times": 3})
        self.assertEqual(len(faults["faults"]), 1)
        self.assertEqual(call("DELETE", "/faults"), {"faults": []})
        self.assertTrue(any(r["action"] == "RunInstances" for r in call("GET", "/requests")))
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            call("POST", "/faults", {"service": "s3", "kind": "503", "times": 1})
        self.assertEqual(ctx.exception.code, 400)

    def test_each_hook_of_a_transition_gets_its_own_action(self):
        server = self.server
        drain = seed_group(
            server,
            "grp-drain",
            ["127.0.201.21", "127.0.201.22"],
            network=seed_network(server, "127.0.201.0/24"),
            foreign_hooks={"node-drain": TERMINATING},
        )
        hooks = self.asg.describe_lifecycle_hooks(AutoScalingGroupName="grp-drain")
        self.assertEqual(
            [h["LifecycleHookName"] for h in hooks["LifecycleHooks"]],
            ["node-drain", "grp-drain-launch", "grp-drain-terminate"],
            "another tool's hook is listed first",
        )
        first, second = drain.instances
        action = server.start_lifecycle_action("grp-drain", first, TERMINATING)
        self.assertEqual(action.hook, "grp-drain-terminate", "the etcd hook's action is returned")
        both = {a.hook: a for a in server.actions_of(first)}
        self.assertEqual(set(both), {"node-drain", "grp-drain-terminate"})
        self.assertNotEqual(both["node-drain"].token, action.token)

        # Ours completed: the instance still waits on the other hook.
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp-drain",
            LifecycleHookName=action.hook,
            InstanceId=first,
            LifecycleActionResult="CONTINUE",
        )
        self.assertEqual(server.lifecycle_state(first), "Terminating:Wait")
        self.assertEqual(server.ec2_state(first), "running")
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp-drain",
            LifecycleHookName="node-drain",
            LifecycleActionToken=both["node-drain"].token,
            LifecycleActionResult="CONTINUE",
        )
        self.assertIsNone(server.lifecycle_state(first))
        self.assertEqual(server.ec2_state(first), "terminated")

        # An ABANDON on one hook ends the wait at once: the other action is gone too.
        action = server.start_lifecycle_action("grp-drain", second, TERMINATING, hook="node-drain")
        self.assertEqual(action.hook, "node-drain")
        self.asg.complete_lifecycle_action(
            AutoScalingGroupName="grp-drain",
            LifecycleHookName="node-drain",
            LifecycleActionToken=action.token,
            LifecycleActionResult="ABANDON",
        )
        self.assertEqual(server.actions_of(second), [])
        self.assertEqual(server.ec2_state(second), "terminated")
        self.assertEqual(
            {(c["hook"], c["result"]) for c in server.completions()},
            {
                ("grp-drain-terminate", "CONTINUE"),
                ("node-drain", "CONTINUE"),
                ("node-drain", "ABANDON"),
            },
        )

    def test_spot_instance_and_its_interruption(self):
        def described(instance_id: str) -> dict:
            r = self.ec2.describe_instances(InstanceIds=[instance_id])
            return r["Reservations"][0]["Instances"][0]

        spot = self.ids[0]
        request_id = self.server.make_spot(spot)
        self.assertEqual(described(spot).get("InstanceLifecycle"), "spot")
        self.assertEqual(described(spot).get("SpotInstanceRequestId"), request_id)
        self.assertNotIn("SpotInstanceRequestId", described(self.ids[1]))

        def status() -> tuple[str, str, str]:
            [r] = self.ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[request_id])[
                "SpotInstanceRequests"
            ]
            return r["InstanceId"], r["State"], r["Status"]["Code"]

        self.assertEqual(status(), (spot, "active", "fulfilled"))
        self.server.interrupt_spot(spot)
        self.assertEqual(status(), (spot, "active", "marked-for-termination"))
        self.assertEqual(self.server.ec2_state(spot), "running")
        other_spot = self.ids[2]
        self.server.make_spot(other_spot)
        self.server.interrupt_spot(other_spot, mark_request=False, shutting_down=True)
        self.assertEqual(self.server.ec2_state(other_spot), "shutting-down")
        [r] = self.ec2.describe_spot_instance_requests(
            Filters=[{"Name": "instance-id", "Values": [other_spot]}]
        )["SpotInstanceRequests"]
        self.assertEqual(r["Status"]["Code"], "fulfilled")
        with self.assertRaises(ValueError):
            self.server.interrupt_spot(self.ids[1])
        # Launched as Spot: the same.
        new, _ = launch_into_group(self.server, self.seeded, "127.0.200.16", spot=True)
        self.assertEqual(described(new).get("InstanceLifecycle"), "spot")
        self.assertTrue(described(new).get("SpotInstanceRequestId", "").startswith("sir-"))

    def test_stopped_instance_keeps_its_address_and_group(self):
        stopped = self.ids[2]
        self.server.stop_instance(stopped)
        self.assertEqual(self.server.ec2_state(stopped), "stopped")
        self.assertEqual(self.states()[stopped], "InService")
        existing = ["pending", "running", "stopping", "stopped"]

        def found(*filters) -> list[str]:
            r = self.ec2.describe_instances(
                Filters=[{"Name": n, "Values": v} for n, v in filters]
            )
            return [i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]]

        tagged = ("tag:aws:autoscaling:groupName", ["grp"])
        states = ("instance-state-name", existing)
        self.assertNotIn(stopped, found(tagged, ("instance-state-name", ["pending", "running"])))
        self.assertIn(stopped, found(tagged, states))
        self.assertEqual(found(states, ("private-ip-address", ["127.0.200.13"])), [stopped])
        self.assertEqual(found(("instance-id", [stopped])), [stopped])
        self.server.terminate_outside_hooks(stopped)
        self.assertEqual(found(states, ("instance-id", [stopped])), [])
        self.assertEqual(found(("instance-id", [stopped])), [stopped], "still described by ID")

    def test_groups_share_a_network_and_keep_their_instances_apart(self):
        network = seed_network(self.server, "127.0.202.0/24")
        a = seed_group(self.server, "zone-a", ["127.0.202.11", "127.0.202.12"], network=network)
        b = seed_group(self.server, "zone-b", ["127.0.202.13"], network=network)
        self.assertEqual((a.subnet_id, a.vpc_id), (b.subnet_id, b.vpc_id))
        for seeded in (a, b):
            r = self.ec2.describe_instances(
                Filters=[{"Name": "tag:aws:autoscaling:groupName", "Values": [seeded.group]}]
            )
            ids = {i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]}
            self.assertEqual(ids, set(seeded.instances))

    def test_two_servers_do_not_share_state(self):
        with AwsServer() as other:
            groups = other.client("autoscaling").describe_auto_scaling_groups()
            self.assertEqual(groups["AutoScalingGroups"], [])


class EtcdClusterTest(unittest.TestCase):
    def test_cluster_lifecycle(self):
        names = ["n1", "n2", "n3"]
        slot = AddressSlot.acquire()
        self.addCleanup(slot.release)
        with EtcdCluster(names, slot.ips[:3]) as c:
            self.assertEqual(c.member_names(), names)
            leader = c.leader()
            self.assertIn(leader, names)
            followers = c.followers()
            self.assertEqual(sorted(followers + [leader]), names)
            members = {m.name: m for m in c.members()}
            self.assertEqual(members["n2"].client_urls, [f"http://{slot.ips[1]}:2379"])
            self.assertEqual(members["n2"].peer_urls, [f"http://{slot.ips[1]}:2380"])

            # With one follower down, etcd's own check refuses to remove the other follower.
            down, other = followers
            c.stop_node(down)
            with self.assertRaises(EtcdError) as ctx:
                c.remove_member(members[other].id)
            self.assertIn("unhealthy cluster", str(ctx.exception))
            c.start_node(down)
            c.wait_ready()
            c.remove_member(members[other].id)
            c.wait_until(lambda: other not in c.member_names(), what=f"{other} removed")
            self.assertEqual(c.member_names(), sorted([leader, down]))
        self.assertFalse(os.path.exists(c.root))
        self.assertTrue(all(not n.running() for n in c.nodes.values()))


class RuntimeApiTest(unittest.TestCase):
    def spawn(self, **env):
        from tests.stack import FunctionProcess

        logs = tempfile.TemporaryDirectory(prefix="fake-function-")
        self.addCleanup(logs.cleanup)
        fn = FunctionProcess(FAKE, {"PATH": os.environ["PATH"], **env}, logs.name)
        self.addCleanup(fn.stop)
        return fn

    def test_response_error_deadline_and_next_event(self):
        fn = self.spawn(ASG_NAMES="g")
        before = int(time.time() * 1000)
        ok, payload = fn.invoke({"hello": 1}, timeout_ms=1234)
        self.assertTrue(ok)
        self.assertEqual(payload["echo"], {"hello": 1})
        self.assertGreaterEqual(payload["deadline_ms"], before + 1234)
        self.assertLessEqual(payload["deadline_ms"], int(time.time() * 1000) + 1234)
        self.assertTrue(payload["arn"].endswith(":function:etcd-lifecycle-hook"))
        self.assertTrue(payload["trace"].startswith("Root=1-"))
        self.assertEqual(payload["env"]["AWS_LAMBDA_RUNTIME_API"], fn.api.address)

        ok, payload = fn.invoke({"fail": "bad input: no detail"})
        self.assertFalse(ok)
        self.assertEqual(payload, {"errorType": "Failure", "errorMessage": "bad input: no detail"})
        ok, _ = fn.invoke({"again": True})
        self.assertTrue(ok)
        self.assertIsNotNone(fn.api.first_next_at)
        self.assertGreaterEqual(fn.api.first_next_at, fn.spawned_at)
        self.assertEqual(len(fn.json_logs()), 3)

    def test_a_crash_is_reported_not_waited_for(self):
        fn = self.spawn()
        with self.assertRaises(FunctionDied):
            fn.invoke({"exit": 3}, timeout_ms=60_000)

    def test_init_error(self):
        fn = self.spawn(FAKE_INIT_ERROR="invalid configuration: RETRY_MAX_ATTEMPTS")
        with self.assertRaises(FunctionDied) as ctx:
            fn.invoke({}, timeout_ms=60_000)
        self.assertIn("RETRY_MAX_ATTEMPTS", str(ctx.exception))

    def test_emulator_alone(self):
        with RuntimeApi() as api:
            self.assertIsNone(api.first_next_at)
            inv = api.submit({"x": 1}, timeout_ms=500)
            with urllib.request.urlopen(
                f"http://{api.address}/2018-06-01/runtime/invocation/next", timeout=5
            ) as r:
                self.assertEqual(json.load(r), {"x": 1})
                self.assertEqual(r.headers["Lambda-Runtime-Aws-Request-Id"], inv.request_id)
            req = urllib.request.Request(
                f"http://{api.address}/2018-06-01/runtime/invocation/{inv.request_id}/response",
                data=b'{"ok":true}',
            )
            urllib.request.urlopen(req, timeout=5).read()
            self.assertTrue(inv.done.is_set())
            self.assertEqual((inv.ok, inv.payload), (True, {"ok": True}))


class StackTest(unittest.TestCase):
    def test_members_are_named_after_instances_on_their_ips(self):
        with Stack() as stack:
            members = {m.name: m for m in stack.etcd.members()}
            self.assertEqual(set(members), set(stack.instance_ids))
            for instance_id in stack.instance_ids:
                self.assertEqual(
                    members[instance_id].client_urls, [f"http://{stack.ip_of(instance_id)}:2379"]
                )
            env = stack.env(BREAKER_FAILURE_THRESHOLD="2")
            self.assertEqual(env["ASG_NAMES"], stack.group)
            self.assertEqual(env["BREAKER_FAILURE_THRESHOLD"], "2")
            self.assertEqual(len(env["ETCD_ENDPOINTS"].split(",")), 3)

            new, action = stack.start_launch()
            self.assertEqual(stack.aws.lifecycle_state(new), "Pending:Wait")
            event = stack.eventbridge(action)
            self.assertEqual(event["detail-type"], "EC2 Instance-launch Lifecycle Action")
            self.assertEqual(event["detail"]["EC2InstanceId"], new)
            self.assertEqual(event["account"], stack.account())
        self.assertIsNone(stack.slot)

    def test_layouts_groups_host_names_outside_node_lock_and_joining_learner(self):
        with Stack(
            groups={"zone-a": 2, "zone-b": 1},
            naming="hostname",
            outside_nodes=1,
            foreign_hooks={"node-drain": TERMINATING},
        ) as stack:
            a1, a2 = stack.instances_of("zone-a")
            [b1] = stack.instances_of("zone-b")
            self.assertEqual(stack.instance_ids, [a1, a2, b1])
            self.assertEqual(stack.group, "zone-a")
            self.assertEqual(stack.env()["ASG_NAMES"], "zone-a,zone-b")
            # Members are named by host name under the custom domain; the outside node by its
            # own name, with no instance anywhere.
            ip = stack.ip_of(b1)
            self.assertEqual(stack.member_name(b1), f"ip-{ip.replace('.', '-')}.corp.example")
            names = stack.etcd.member_names()
            self.assertIn(f"ip-{ip.replace('.', '-')}.corp.example", names)
            self.assertIn("etcd-outside-1", names)
            self.assertEqual(stack.member_ids(), sorted([a1, a2, b1, "etcd-outside-1"]))
            outside_ip = stack.ip_of("etcd-outside-1")
            r = stack.aws.client("ec2").describe_instances(
                Filters=[{"Name": "private-ip-address", "Values": [outside_ip]}]
            )
            self.assertEqual(r["Reservations"], [])
            self.assertIn(stack.leader(), stack.member_ids())
            self.assertTrue(set(stack.followers("zone-a")) <= {a1, a2})

            # Events carry their own group's ARN; the etcd hook's action comes back.
            action = stack.start_terminate(b1)
            self.assertEqual((action.group, action.hook), ("zone-b", "zone-b-terminate"))
            self.assertEqual(len(stack.aws.actions_of(b1)), 2)
            self.assertIn("zone-b", stack.eventbridge(action)["resources"][0])

            # Someone else holds the membership lock, then gives it back.
            held = stack.etcd.hold_lock("etcd-lifecycle-hook/membership", ttl=30)
            self.assertEqual(len(stack.etcd.lock_holders("etcd-lifecycle-hook/membership")), 1)
            held.release()
            self.assertEqual(stack.etcd.lock_holders("etcd-lifecycle-hook/membership"), [])

            # A new instance: its learner is added (as the function would), its node joins.
            new, _ = stack.start_launch(group="zone-b")
            self.assertEqual(stack.group_of(new), "zone-b")
            stack.etcd.add_member(f"http://{stack.ip_of(new)}:2380", learner=True)
            self.assertIn(new, stack.member_ids(), "an unstarted learner is named by its address")
            stack.join(new)
            stack.etcd.wait_until(lambda: stack.etcd.in_sync(new), what=f"{new} in sync")
            [learner] = [m for m in stack.etcd.members() if m.is_learner]
            self.assertEqual(learner.name, stack.member_name(new))
            self.assertEqual(stack.etcd.node_of(learner).name, new)
            self.assertEqual(len(stack.etcd.healthy_voters()), 4)

            # Stopped in EC2: its node stops with it.
            stack.stop_instance(a2)
            self.assertFalse(stack.etcd.nodes[a2].running())
            self.assertEqual(stack.aws.ec2_state(a2), "stopped")
            self.assertEqual(len(stack.etcd.healthy_voters()), 3)

    def test_dead_endpoint_counts_refused_work(self):
        dead = DeadEndpoint()
        self.addCleanup(dead.close)
        for _ in range(2):
            try:
                with socket.create_connection((dead.host, dead.port), timeout=2) as s:
                    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
                    self.assertEqual(s.recv(10), b"")
            except ConnectionResetError:
                pass  # the expected way to learn that nobody answers
        deadline = time.monotonic() + 2
        while dead.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(dead.connections, 2)


class EventsTest(unittest.TestCase):
    def test_wrappers_carry_the_notification(self):
        from tests.stack.aws import LifecycleAction

        action = LifecycleAction("tok", "grp", "grp-terminate", "i-1", TERMINATING)
        sns = events.sns(events.notification(action))
        self.assertEqual(json.loads(sns["Records"][0]["Sns"]["Message"])["LifecycleActionToken"], "tok")
        sqs = events.sqs(events.notification(action), "not json")
        self.assertEqual([r["messageId"] for r in sqs["Records"]], ["msg-0", "msg-1"])
        fanned = events.sqs(events.sns_in_sqs(events.notification(action)))
        inner = json.loads(json.loads(fanned["Records"][0]["body"])["Message"])
        self.assertEqual(inner["EC2InstanceId"], "i-1")

    def test_samples_take_the_stack_values(self):
        from tests.stack.aws import LifecycleAction

        names = [n for n in ("terminate.json", "launch.json") if events.has_sample(n)]
        if not names:
            self.skipTest("no samples in events/ yet")
        action = LifecycleAction("tok-x", "grp-x", "hook-x", "i-x", TERMINATING)
        for name in names:
            text = json.dumps(events.from_sample(name, action))
            for value in ("tok-x", "grp-x", "hook-x", "i-x"):
                self.assertIn(value, text, name)


if __name__ == "__main__":
    unittest.main()
