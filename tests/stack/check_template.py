#!/usr/bin/env python3
"""Fails when template.yaml's IAM drifts from what the code does.

Why: least privilege is part of the product contract, and it decays silently. A grant that the code
no longer uses stays forever; a lifecycle action granted on "*" lets the function release any
group's instances; a call added to the code but not to the template works locally (moto checks no
IAM) and fails only in production. This check reads both sides and compares them:

* the Auto Scaling and EC2 operations the code calls: every `.operation_name()` in non-test Rust
  code under src/ of a file that uses `aws_sdk_autoscaling` / `aws_sdk_ec2`, matched against the
  services' operation lists from botocore's models (so any operation counts, not a fixed list);
* every IAM statement of the template (roles, and SAM `Policies` of functions), through cfn-lint's
  YAML decoder, which understands CloudFormation's short tags.

It fails if:
1. a lifecycle action (CompleteLifecycleAction, RecordLifecycleActionHeartbeat) is granted on "*",
   on anything but a group ARN naming its group, or through a wildcard action;
2. any `autoscaling:` or `ec2:` action is granted that the code does not call (the network-interface
   actions Lambda itself needs for VPC access excepted), or any action at all that is neither that
   nor one of the few Lambda needs to run (logs, the on-failure queue, the event-source queue);
3. an action is granted with a wildcard (`*`, `autoscaling:*`, `ec2:Describe*`, ...);
4. the code calls an Auto Scaling or EC2 operation the template does not grant.

    .venv/bin/python tests/stack/check_template.py [template.yaml] [--src src]

Exit status 0 when the template matches the code, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LIFECYCLE_ACTIONS = {"autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"}
# What the Lambda service needs in order to run the function, not what the code calls.
VPC_ENI_ACTIONS = {  # AWS's managed AWSLambdaVPCAccessExecutionRole, without its logs part
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
PLATFORM_ACTIONS = VPC_ENI_ACTIONS | {
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "sqs:SendMessage",  # the on-failure destination
    "sqs:ReceiveMessage",  # the optional SQS event source
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ChangeMessageVisibility",
}
SERVICES = {"autoscaling": "aws_sdk_autoscaling", "ec2": "aws_sdk_ec2"}


# -- the code side ---------------------------------------------------------------------------------


def operations(service: str) -> dict[str, str]:
    """snake_case method name -> IAM action, for every operation of `service`."""
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): f"{service}:{op}" for op in model.operation_names}


def _non_test_code(text: str) -> str:
    """The file without its `#[cfg(test)]` items (by convention the tests module at the end)."""
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def called_actions(src: str) -> dict[str, set[str]]:
    """IAM action -> files that call it."""
    ops = {service: operations(service) for service in SERVICES}
    found: dict[str, set[str]] = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                code = _strip_comments(_non_test_code(f.read()))
            for service, crate in SERVICES.items():
                if crate not in code:
                    continue
                for method in re.findall(r"\.\s*([a-z][a-z0-9_]*)\s*\(\s*\)", code):
                    action = ops[service].get(method)
                    if action:
                        found.setdefault(action, set()).add(os.path.relpath(path, REPO))
    return found


# -- the template side ------------------------------------------------------------------------------


def load_template(path: str) -> dict:
    from cfnlint.decode import decode

    template, problems = decode(path)
    if problems or template is None:
        raise SystemExit(f"{path}: cannot parse: {problems}")
    return template


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _statements(document: Any) -> Iterator[dict]:
    if not isinstance(document, dict):
        return
    for statement in _as_list(document.get("Statement", [])):
        yield from _resolve_if(statement)


def _resolve_if(node: Any) -> Iterator[dict]:
    """A statement may be wrapped in Fn::If: both branches can be deployed, so check both."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, yes, no = node["Fn::If"]
        yield from _resolve_if(yes)
        yield from _resolve_if(no)
    elif isinstance(node, dict) and set(node) == {"Ref"} and node["Ref"] == "AWS::NoValue":
        return
    elif isinstance(node, dict):
        yield node


def grants(template: dict) -> Iterator[tuple[str, dict]]:
    """(where, statement) for every IAM statement the template can deploy."""
    for name, resource in (template.get("Resources") or {}).items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        if kind == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for s in _statements(policy.get("PolicyDocument")):
                    yield f"{name}/{policy.get('PolicyName')}", s
            if props.get("ManagedPolicyArns"):
                yield f"{name}/ManagedPolicyArns", {"Effect": "Allow", "Action": "<managed policy>", "Resource": props["ManagedPolicyArns"]}
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for s in _statements(props.get("PolicyDocument")):
                yield name, s
        elif kind == "AWS::Serverless::Function":
            for policy in _as_list(props.get("Policies", [])):
                if isinstance(policy, dict) and "Statement" in policy:
                    for s in _statements(policy):
                        yield f"{name}/Policies", s
                elif policy:
                    # A SAM policy template or managed policy: its actions cannot be checked here.
                    yield f"{name}/Policies", {"Effect": "Allow", "Action": f"<{policy}>", "Resource": "*"}


def _text(value: Any) -> str:
    """A resource as text: Fn::Sub's string, Ref/GetAtt named, joins flattened."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "Fn::Sub" in value:
            sub = value["Fn::Sub"]
            return sub if isinstance(sub, str) else _text(sub[0])
        if "Ref" in value:
            return f"<Ref {value['Ref']}>"
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return f"<GetAtt {'.'.join(att) if isinstance(att, list) else att}>"
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(_text(p) for p in parts)
    return repr(value)


GROUP_ARN = re.compile(
    r"^arn:[\w-]+:autoscaling:[^:]+:[^:]+:autoScalingGroup:\*:autoScalingGroupName/(?P<group>[^*]+)$"
)


def is_group_arn(resource: str) -> bool:
    """Whether `resource` names one group (`${...}` substitutions allowed, no wildcard name)."""
    return bool(GROUP_ARN.match(re.sub(r"\$\{[^}]*\}", "SUB", resource)))


def check(template: dict, called: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    granted: set[str] = set()
    for where, statement in grants(template):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{where}: NotAction/NotResource grants more than it says")
        actions = [a for a in _as_list(statement.get("Action", [])) if isinstance(a, str)]
        resources = [_text(r) for r in _as_list(statement.get("Resource", []))]
        for action in actions:
            if action.startswith("<"):
                problems.append(f"{where}: {action} grants actions this check cannot see; use inline statements")
                continue
            if "*" in action:
                problems.append(f"{where}: wildcard action {action!r}")
                continue
            granted.add(action)
            if action in LIFECYCLE_ACTIONS:
                for resource in resources:
                    if resource == "*":
                        problems.append(f"{where}: {action} granted on \"*\": scope it to the group's ARN")
                    elif not is_group_arn(resource):
                        problems.append(
                            f"{where}: {action} granted on {resource!r}, which is not a group ARN "
                            "(arn:...:autoscaling:<region>:<account>:autoScalingGroup:*:autoScalingGroupName/<group>)"
                        )
            service = action.split(":", 1)[0]
            if service in SERVICES and action not in VPC_ENI_ACTIONS:
                if action not in called:
                    problems.append(f"{where}: grants {action}, which the code does not call")
            elif action not in PLATFORM_ACTIONS:
                problems.append(f"{where}: grants {action}, which neither the code nor Lambda needs")
    for action, files in sorted(called.items()):
        if action not in granted:
            problems.append(
                f"the code calls {action} ({', '.join(sorted(files))}) but the template does not grant it"
            )
    if not any(True for _ in grants(template)):
        problems.append("the template grants nothing: no IAM statements found")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compare template.yaml's IAM with the code's calls.")
    p.add_argument("template", nargs="?", default=os.path.join(REPO, "template.yaml"))
    p.add_argument("--src", default=os.path.join(REPO, "src"))
    args = p.parse_args(argv)
    called = called_actions(args.src)
    problems = check(load_template(args.template), called)
    if problems:
        for problem in problems:
            print(f"check_template: {problem}", file=sys.stderr)
        return 1
    print(f"check_template: ok ({len(called)} AWS actions called, each granted and nothing more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
