#!/usr/bin/env python3
"""A stand-in Lambda function speaking the Runtime API, to test the emulator and `FunctionProcess`
without the Rust binary.

It answers `{"echo": event, "deadline_ms": ..., "request_id": ..., "env": {...}}`; an event
`{"fail": "text"}` gets an error answer with that message; `{"exit": n}` ends the process with
status n before answering (a crash); `{"init_error": "text"}` in `FAKE_INIT_ERROR` makes it report
an init error instead of serving. It logs one JSON line per invocation on stdout, like the real
function under Lambda's JSON log format. Standard library only.
"""

import json
import os
import sys
import time
import urllib.request

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = f"http://{API}/2018-06-01/runtime"


def post(path, body):
    req = urllib.request.Request(
        BASE + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req).read()


def main():
    if os.environ.get("FAKE_INIT_ERROR"):
        post("/init/error", {"errorType": "Init", "errorMessage": os.environ["FAKE_INIT_ERROR"]})
        return 1
    while True:
        try:
            r = urllib.request.urlopen(BASE + "/invocation/next")
        except OSError:
            return 0  # the emulator went away: shut down
        event = json.loads(r.read())
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        deadline = int(r.headers["Lambda-Runtime-Deadline-Ms"])
        print(json.dumps({"level": "INFO", "requestId": request_id, "event": event}), flush=True)
        if isinstance(event, dict) and "exit" in event:
            sys.exit(int(event["exit"]))
        if isinstance(event, dict) and "fail" in event:
            post(
                f"/invocation/{request_id}/error",
                {"errorType": "Failure", "errorMessage": str(event["fail"])},
            )
            continue
        post(
            f"/invocation/{request_id}/response",
            {
                "echo": event,
                "deadline_ms": deadline,
                "request_id": request_id,
                "arn": r.headers.get("Lambda-Runtime-Invoked-Function-Arn"),
                "trace": r.headers.get("Lambda-Runtime-Trace-Id"),
                "now_ms": int(time.time() * 1000),
                "env": {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "ETCD_", "ASG_"))},
            },
        )


if __name__ == "__main__":
    sys.exit(main())
