"""A minimal AWS Lambda Runtime API, so the real `bootstrap` binary can be invoked locally.

Why: the function is a custom-runtime Lambda (lambda_runtime 1.5). Its event loop polls
`GET /2018-06-01/runtime/invocation/next`, reads the request ID and deadline from headers, and posts
a response or an error. Running the release binary against this emulator exercises exactly that
loop, including how errors are reported (`errorType`, `errorMessage`: the only text Lambda shows)
and whether the process keeps serving after a bad event, which in-process tests cannot show.

Endpoints (HTTP/1.1 on loopback):

    GET  /2018-06-01/runtime/invocation/next          blocks until an event is queued
    POST /2018-06-01/runtime/invocation/{id}/response the function's answer
    POST /2018-06-01/runtime/invocation/{id}/error    the function's error answer
    POST /2018-06-01/runtime/init/error               the function failed to start

`/next` answers with `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms` (epoch ms, from
the `timeout_ms` given to `invoke`, so tests can hand out short deadlines),
`Lambda-Runtime-Invoked-Function-Arn` and `Lambda-Runtime-Trace-Id`.

The emulator records when each `/next` arrived (the first one marks the end of the cold start, for
benchmarks) and every invocation with its timings.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

PREFIX = "/2018-06-01/runtime"


class InvocationTimeout(TimeoutError):
    pass


class FunctionDied(RuntimeError):
    pass


@dataclass
class Invocation:
    request_id: str
    event: Any
    deadline_ms: int
    queued_at: float = field(default_factory=time.time)
    delivered_at: float | None = None
    answered_at: float | None = None
    ok: bool | None = None
    payload: Any = None
    done: threading.Event = field(default_factory=threading.Event)


class RuntimeApi:
    """The emulator. `invoke` queues an event and waits for the function's answer."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:etcd-lifecycle-hook",
    ):
        self.function_arn = function_arn
        self._queue: "queue.Queue[Invocation | None]" = queue.Queue()
        self._lock = threading.Lock()
        self.invocations: dict[str, Invocation] = {}
        self.next_requests: list[float] = []
        self.init_errors: list[dict[str, Any]] = []
        self.init_error = threading.Event()
        self._stopping = False
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """`host:port`, the value of AWS_LAMBDA_RUNTIME_API."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def first_next_at(self) -> float | None:
        with self._lock:
            return self.next_requests[0] if self.next_requests else None

    def start(self) -> "RuntimeApi":
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"runtime-api-{self.address}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._queue.put(None)  # wakes a waiting /next so its thread ends
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "RuntimeApi":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- Python API ----------------------------------------------------------------------------------
    def submit(self, event: Any, timeout_ms: int = 30_000) -> Invocation:
        """Queues `event`; the function gets `timeout_ms` until its deadline, counted from now."""
        inv = Invocation(
            request_id=str(uuid.uuid4()),
            event=event,
            deadline_ms=int(time.time() * 1000) + timeout_ms,
        )
        with self._lock:
            self.invocations[inv.request_id] = inv
        self._queue.put(inv)
        return inv

    def invoke(
        self,
        event: Any,
        timeout_ms: int = 30_000,
        wait_s: float | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[bool, Any]:
        """Invokes the function once: `(True, payload)` for a response, `(False, error)` for an
        error answer (`{"errorType", "errorMessage"}`).

        Waits up to `wait_s` (default: the deadline plus 10 s) and raises `InvocationTimeout` if no
        answer came; with `alive`, raises `FunctionDied` as soon as it returns False."""
        inv = self.submit(event, timeout_ms)
        limit = time.monotonic() + (wait_s if wait_s is not None else timeout_ms / 1000 + 10)
        while not inv.done.wait(0.05):
            if self.init_error.is_set():
                raise FunctionDied(f"the function reported an init error: {self.init_errors[-1]}")
            if alive is not None and not alive():
                if inv.done.is_set():
                    break
                raise FunctionDied("the function process exited before answering")
            if time.monotonic() > limit:
                raise InvocationTimeout(
                    f"no answer to invocation {inv.request_id} "
                    f"({'delivered' if inv.delivered_at else 'never fetched by the function'})"
                )
        return bool(inv.ok), inv.payload

    # -- HTTP ----------------------------------------------------------------------------------------
    def _handler_class(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output readable
                pass

            def _send(self, status: int, body: Any = None, headers: dict | None = None):
                data = b"" if body is None else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the function went away (stopped or crashed) while it waited

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not raw:
                    return None
                try:
                    return json.loads(raw)
                except ValueError:
                    return raw.decode("utf-8", "replace")

            def do_GET(self):
                if self.path != f"{PREFIX}/invocation/next":
                    return self._send(404, {"errorMessage": f"no GET {self.path}"})
                with api._lock:
                    api.next_requests.append(time.time())
                inv = api._queue.get()
                if inv is None or api._stopping:
                    api._queue.put(None)
                    return self._send(410, {"errorMessage": "runtime API shutting down"})
                inv.delivered_at = time.time()
                self._send(
                    200,
                    inv.event,
                    {
                        "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                        "Lambda-Runtime-Trace-Id": (
                            f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
                            "Parent=0000000000000000;Sampled=0"
                        ),
                    },
                )

            def do_POST(self):
                body = self._body()
                if self.path == f"{PREFIX}/init/error":
                    api.init_errors.append(body)
                    api.init_error.set()
                    return self._send(202, {"status": "OK"})
                parts = self.path[len(PREFIX) :].strip("/").split("/")
                if (
                    len(parts) == 3
                    and parts[0] == "invocation"
                    and parts[2] in ("response", "error")
                ):
                    with api._lock:
                        inv = api.invocations.get(parts[1])
                    if inv is None:
                        return self._send(400, {"errorMessage": f"unknown request ID {parts[1]}"})
                    if inv.done.is_set():
                        return self._send(400, {"errorMessage": "invocation already answered"})
                    inv.ok = parts[2] == "response"
                    inv.payload = body
                    inv.answered_at = time.time()
                    inv.done.set()
                    return self._send(202, {"status": "OK"})
                return self._send(404, {"errorMessage": f"no POST {self.path}"})

        return Handler
