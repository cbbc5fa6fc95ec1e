"""Events as AWS delivers them to the function, built for the actions of a local stack.

Why builders and not only the samples in `events/`: the tests need the exact token, group, hook and
instance of an action the stack just started, in every delivery shape the product accepts
(EventBridge, SNS, SQS, SNS fanned out to SQS, the scheduled sweep). The shapes follow AWS's
documentation of Auto Scaling lifecycle notifications; `from_sample` substitutes the same values
into a sample file, so the samples in `events/` are exercised too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import uuid
from typing import Any

from .aws import LAUNCHING, TERMINATING, LifecycleAction

ACCOUNT = "123456789012"
REGION = "us-east-1"
DETAIL_TYPES = {
    LAUNCHING: "EC2 Instance-launch Lifecycle Action",
    TERMINATING: "EC2 Instance-terminate Lifecycle Action",
}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _origin(action: LifecycleAction) -> tuple[str, str]:
    """Origin and Destination as AWS sends them: a warm-pool action ends in the pool."""
    if action.transition == LAUNCHING:
        return ("EC2", "WarmPool" if action.warm else "AutoScalingGroup")
    return ("AutoScalingGroup", "WarmPool" if action.warm else "EC2")


def detail(action: LifecycleAction, metadata: str | None = None) -> dict[str, Any]:
    """The `detail` of an EventBridge lifecycle action event."""
    origin, destination = _origin(action)
    d = {
        "LifecycleActionToken": action.token,
        "AutoScalingGroupName": action.group,
        "LifecycleHookName": action.hook,
        "EC2InstanceId": action.instance_id,
        "LifecycleTransition": action.transition,
        "Origin": origin,
        "Destination": destination,
    }
    if metadata is not None:
        d["NotificationMetadata"] = metadata
    return d


def eventbridge(
    action: LifecycleAction, account: str = ACCOUNT, group_arn: str | None = None, **detail_overrides
) -> dict[str, Any]:
    """What an EventBridge rule on `aws.autoscaling` delivers for a paused instance."""
    d = detail(action)
    d.update(detail_overrides)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPES[action.transition],
        "source": "aws.autoscaling",
        "account": account,
        "time": _now(),
        "region": REGION,
        "resources": [group_arn or _group_arn(account, action.group)],
        "detail": d,
    }


def notification(action: LifecycleAction, account: str = ACCOUNT) -> dict[str, Any]:
    """The message Auto Scaling sends to an SNS topic or SQS queue for a paused instance."""
    origin, destination = _origin(action)
    return {
        "Origin": origin,
        "LifecycleHookName": action.hook,
        "Destination": destination,
        "AccountId": account,
        "RequestId": str(uuid.uuid4()),
        "LifecycleTransition": action.transition,
        "AutoScalingGroupName": action.group,
        "Service": "AWS Auto Scaling",
        "Time": _now(),
        "EC2InstanceId": action.instance_id,
        "LifecycleActionToken": action.token,
    }


def test_notification(group: str, account: str = ACCOUNT) -> dict[str, Any]:
    """The message Auto Scaling sends when a notification target is first configured."""
    return {
        "AccountId": account,
        "RequestId": str(uuid.uuid4()),
        "AutoScalingGroupARN": _group_arn(account, group),
        "AutoScalingGroupName": group,
        "Service": "AWS Auto Scaling",
        "Event": "autoscaling:TEST_NOTIFICATION",
        "Time": _now(),
    }


def sns(*messages: dict[str, Any] | str, topic: str = "etcd-lifecycle") -> dict[str, Any]:
    """An SNS-to-Lambda event with one record per message (a dict is sent as its JSON text)."""
    arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:{topic}"
    return {"Records": [_sns_record(m, arn) for m in messages]}


def _sns_record(message: dict[str, Any] | str, topic_arn: str) -> dict[str, Any]:
    return {
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": f"{topic_arn}:{uuid.uuid4()}",
        "Sns": _sns_envelope(message, topic_arn),
    }


def _sns_envelope(message: dict[str, Any] | str, topic_arn: str) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Subject": "Auto Scaling:  Lifecycle action",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem",
        "UnsubscribeUrl": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}",
        "MessageAttributes": {},
    }


def sqs(*bodies: dict[str, Any] | str, queue: str = "etcd-lifecycle") -> dict[str, Any]:
    """An SQS-to-Lambda batch with one record per body; message IDs are `msg-0`, `msg-1`, ..."""
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"
    records = []
    for i, body in enumerate(bodies):
        text = body if isinstance(body, str) else json.dumps(body)
        now_ms = str(int(time.time() * 1000))
        records.append(
            {
                "messageId": f"msg-{i}",
                "receiptHandle": f"handle-{uuid.uuid4()}",
                "body": text,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": now_ms,
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": now_ms,
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


def sns_in_sqs(message: dict[str, Any], topic: str = "etcd-lifecycle") -> dict[str, Any]:
    """The SQS body of an SNS message fanned out to a queue (raw delivery off)."""
    return _sns_envelope(message, f"arn:aws:sns:{REGION}:{ACCOUNT}:{topic}")


def scheduled(account: str = ACCOUNT, rule: str = "etcd-lifecycle-sweep") -> dict[str, Any]:
    """What an EventBridge schedule delivers: the reconcile sweep's trigger."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": _now(),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{account}:rule/{rule}"],
        "detail": {},
    }


def _group_arn(account: str, group: str) -> str:
    return (
        f"arn:aws:autoscaling:{REGION}:{account}:autoScalingGroup:"
        f"{uuid.uuid5(uuid.NAMESPACE_DNS, group)}:autoScalingGroupName/{group}"
    )


# -- samples in events/ ------------------------------------------------------------------------------

_FIELDS = {
    "LifecycleActionToken": "token",
    "AutoScalingGroupName": "group",
    "LifecycleHookName": "hook",
    "EC2InstanceId": "instance_id",
    "LifecycleTransition": "transition",
}


def sample_path(name: str) -> str:
    return os.path.join(REPO, "events", name)


def has_sample(name: str) -> bool:
    return os.path.isfile(sample_path(name))


def from_sample(name: str, action: LifecycleAction | None = None, group: str | None = None) -> Any:
    """Loads `events/<name>` and puts the action's token, group, hook, instance and transition in
    place of the sample's, wherever they occur (also inside SNS messages and SQS bodies, which hold
    JSON text). With only `group`, replaces the group name (e.g. a test notification)."""
    with open(sample_path(name)) as f:
        event = json.load(f)
    values = {}
    if action is not None:
        values = {key: getattr(action, attr) for key, attr in _FIELDS.items()}
    elif group is not None:
        values = {"AutoScalingGroupName": group}
    return _substitute(event, values)


def _substitute(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in values and isinstance(v, str):
                out[k] = values[k]
            elif k in ("Message", "body") and isinstance(v, str):
                out[k] = _substitute_text(v, values)
            else:
                out[k] = _substitute(v, values)
        return out
    if isinstance(node, list):
        return [_substitute(v, values) for v in node]
    return copy.deepcopy(node)


def _substitute_text(text: str, values: dict[str, str]) -> str:
    try:
        inner = json.loads(text)
    except ValueError:
        return text
    if not isinstance(inner, dict):
        return text
    return json.dumps(_substitute(inner, values))
