"""The Python baseline of the cold-start bench: what a user would otherwise deploy.

The Auto Scaling and EC2 clients are created at import, as a Lambda handler normally does (so that
warm invocations reuse them); the handler acknowledges a test notification like the Rust function
does, without any AWS call. Run by AWS's runtime interface client:

    .venv-bench/bin/python -m awslambdaric handler.handler      (cwd: bench/python_baseline)
"""

import json

import boto3

autoscaling = boto3.client("autoscaling")
ec2 = boto3.client("ec2")


def handler(event, context):
    results = []
    for record in event.get("Records", []):
        message = json.loads(record.get("Sns", {}).get("Message") or "{}")
        if message.get("Event") == "autoscaling:TEST_NOTIFICATION":
            results.append({"action": "ignored", "detail": "test notification"})
    return {"results": results}
