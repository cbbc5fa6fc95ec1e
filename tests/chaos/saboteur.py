"""A deliberately wrong lifecycle-hook function, to prove the chaos invariants catch what they claim
to catch (tests/chaos/test_checker.py). Never a model of the real one.

Speaks the Lambda Runtime API like the real bootstrap; standard library plus boto3 (in the venv).
`SABOTEUR_MODE`:

* `silent`: answers success and does nothing;
* `keep-member`: completes the instance's action (CONTINUE) and touches no member: the instance
  moves on (terminated, or stopped in a warm pool) with its member left behind;
* `reckless`: removes the instance's member without any quorum check, then completes;
* `wrong-member`: removes some other member than the instance's, then completes;
* `other-group`: removes the (healthy) member of an instance of *another* Auto Scaling group,
  then completes: a multi-zone cluster losing a live member to a stale-member rule that only
  looks at one group;
* `shrink`: removes the instance's member with no `ETCD_MIN_VOTERS` floor (and no quorum
  check), even when that leaves one voter, then completes;
* `foreign-hook`: completes every hook's action of the instance by instance ID, another tool's
  hook included (the first hook the group lists, as a careless sweep would), then its own.

Run through `wrapper(path)`, which writes an executable that starts this file with the venv's
interpreter (the function process is spawned as a plain executable).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import urllib.request


def wrapper(directory: str) -> str:
    """An executable in `directory` that runs this module with this interpreter."""
    path = os.path.join(directory, "saboteur")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({__file__!r}, run_name='__main__')\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def lifecycle_details(event):
    """The lifecycle notifications in any delivery shape (no validation: a saboteur)."""
    if isinstance(event, dict) and isinstance(event.get("detail"), dict):
        return [event["detail"]] if "EC2InstanceId" in event["detail"] else []
    out = []
    for record in (event or {}).get("Records", []) if isinstance(event, dict) else []:
        text = record.get("Sns", {}).get("Message") or record.get("body") or "{}"
        try:
            body = json.loads(text)
        except ValueError:
            continue
        if "Message" in body and "Type" in body:
            try:
                body = json.loads(body["Message"])
            except ValueError:
                continue
        if "EC2InstanceId" in body:
            out.append(body)
    return out


def gateway(url, path, body=None):
    req = urllib.request.Request(
        url + path, data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.loads(r.read() or b"{}")


def members():
    for url in os.environ["ETCD_ENDPOINTS"].split(","):
        try:
            return url, gateway(url, "/v3/cluster/member/list").get("members", [])
        except OSError:
            continue
    return None, []


def other_groups_instances(group):
    """Instance IDs of every other Auto Scaling group (ASG_NAMES)."""
    import boto3

    names = [g.strip() for g in os.environ.get("ASG_NAMES", "").split(",") if g.strip() and g.strip() != group]
    if not names:
        return []
    found = boto3.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=names)
    return [i["InstanceId"] for g in found["AutoScalingGroups"] for i in g.get("Instances", [])]


def complete_every_hook(detail):
    import boto3

    client = boto3.client("autoscaling")
    hooks = client.describe_lifecycle_hooks(AutoScalingGroupName=detail["AutoScalingGroupName"])
    for hook in hooks["LifecycleHooks"]:
        if hook["LifecycleTransition"] != detail["LifecycleTransition"]:
            continue
        try:
            client.complete_lifecycle_action(
                AutoScalingGroupName=detail["AutoScalingGroupName"],
                LifecycleHookName=hook["LifecycleHookName"],
                InstanceId=detail["EC2InstanceId"],
                LifecycleActionResult="CONTINUE",
            )
        except Exception as e:  # already done: a saboteur keeps going
            print(json.dumps({"level": "WARN", "message": repr(e)}), flush=True)


def handle(detail, mode):
    if mode == "silent":
        return
    if mode == "foreign-hook":
        complete_every_hook(detail)
        return
    url, ms = members()
    instance = detail["EC2InstanceId"]
    if mode in ("reckless", "shrink"):
        victims = [m for m in ms if m.get("name") == instance]
    elif mode == "keep-member":
        victims = []
    elif mode == "other-group":
        others = set(other_groups_instances(detail["AutoScalingGroupName"]))
        victims = [m for m in ms if m.get("name") in others][:1]
    else:
        victims = [m for m in ms if m.get("name") and m.get("name") != instance][:1]
    for m in victims:
        for candidate in [url] + os.environ["ETCD_ENDPOINTS"].split(","):
            try:
                gateway(candidate, "/v3/cluster/member/remove", {"ID": m["ID"]})
                break
            except OSError:
                continue
    import boto3

    boto3.client("autoscaling").complete_lifecycle_action(
        AutoScalingGroupName=detail["AutoScalingGroupName"],
        LifecycleHookName=detail["LifecycleHookName"],
        LifecycleActionToken=detail["LifecycleActionToken"],
        LifecycleActionResult="CONTINUE",
    )


def main():
    base = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"
    mode = os.environ.get("SABOTEUR_MODE", "silent")
    while True:
        with urllib.request.urlopen(base + "/invocation/next") as r:
            request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(r.read() or b"null")
        for detail in lifecycle_details(event):
            try:
                handle(detail, mode)
            except Exception as e:  # a saboteur keeps going
                print(json.dumps({"level": "ERROR", "message": repr(e)}), flush=True)
        answer = json.dumps({"results": [], "batchItemFailures": []}).encode()
        urllib.request.urlopen(
            urllib.request.Request(base + f"/invocation/{request_id}/response", data=answer)
        ).read()


if __name__ == "__main__":
    main()
