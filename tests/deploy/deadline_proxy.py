"""A Lambda Runtime API proxy that gives each invocation a real deadline.

Why: `cargo lambda watch` (1.9.2) answers every `GET .../invocation/next` with
`Lambda-Runtime-Deadline-Ms: 600000`, a constant that the runtime reads as milliseconds since the
epoch: 1970-01-01 00:10 UTC. A function that honours its deadline, as this one does (it never
starts a membership change it cannot finish, and keeps DEADLINE_RESERVE_MS for the heartbeat or
the completion), sees no time left before it starts, so under `watch` a terminate or a launch is
refused "for the deadline" and nothing changes. Lambda itself sends the invocation's real deadline.

This proxy sits between the function and `cargo lambda watch --only-lambda-apis`: it forwards every
Runtime API request unchanged and, where the deadline it passes back is already in the past,
replaces it with now + `--timeout-ms` (60000, the template's timeout). A deadline that is in the
future (a cargo-lambda that sends real ones) passes through untouched.

    cargo lambda watch --only-lambda-apis --invoke-port 9000 &
    .venv/bin/python -m tests.deploy.deadline_proxy --listen 127.0.0.1:9009 \\
        --upstream 127.0.0.1:9000/.rt/etcd-lifecycle-hook &
    AWS_LAMBDA_RUNTIME_API=127.0.0.1:9009 ... target/release/etcd-lifecycle-hook &
    cargo lambda invoke etcd-lifecycle-hook --data-file events/terminate.json
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import threading
import time

DEADLINE_HEADER = "lambda-runtime-deadline-ms"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}


def fixed_deadline(value: str, timeout_ms: int, now_ms: int | None = None) -> str:
    """`value` if it is a deadline still ahead, else now + `timeout_ms` (all epoch milliseconds)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        if int(value) > now_ms:
            return value
    except ValueError:
        pass
    return str(now_ms + timeout_ms)


class DeadlineProxy:
    """Forwards `http://<listen>/<path>` to `http://<upstream host:port><upstream prefix>/<path>`."""

    def __init__(self, upstream: str, listen: str = "127.0.0.1:0", timeout_ms: int = 60_000):
        hostport, _, prefix = upstream.partition("/")
        self.upstream_host, _, port = hostport.rpartition(":")
        self.upstream_port = int(port)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout_ms = timeout_ms
        self.rewritten = 0
        host, _, port = listen.rpartition(":")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def forward(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port)
                try:
                    conn.request(self.command, proxy.prefix + self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    # The emulator went away (stopped, restarted): tell the function, quietly.
                    self.close_connection = True
                    try:
                        self.send_error(502, f"upstream: {e}")
                    except OSError:
                        pass
                    conn.close()
                    return
                try:
                    out = []
                    for k, v in resp.getheaders():
                        if k.lower() in HOP_BY_HOP:
                            continue
                        if k.lower() == DEADLINE_HEADER:
                            fixed = fixed_deadline(v, proxy.timeout_ms)
                            if fixed != v:
                                proxy.rewritten += 1
                            v = fixed
                        out.append((k, v))
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in out:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = forward

        self._server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="deadline-proxy")

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> "DeadlineProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True,
                   help="host:port/prefix of cargo lambda watch's Runtime API, e.g. 127.0.0.1:9000/.rt/etcd-lifecycle-hook")
    p.add_argument("--listen", default="127.0.0.1:9009")
    p.add_argument("--timeout-ms", type=int, default=60_000)
    args = p.parse_args()
    proxy = DeadlineProxy(args.upstream, args.listen, args.timeout_ms).start()
    print(f"deadline proxy: AWS_LAMBDA_RUNTIME_API={proxy.address} -> {args.upstream}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
