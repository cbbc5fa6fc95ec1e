"""The deadline proxy replaces a deadline already past (cargo lambda watch's 600000, 1970) with one
ahead, leaves a real one alone, and forwards requests and answers otherwise unchanged."""

from __future__ import annotations

import http.server
import json
import threading
import time
import unittest
import urllib.request

from tests.deploy.deadline_proxy import DeadlineProxy, fixed_deadline


class FixedDeadlineTest(unittest.TestCase):
    def test_a_deadline_in_the_past_becomes_now_plus_the_timeout(self):
        self.assertEqual(fixed_deadline("600000", 60_000, now_ms=1_796_000_000_000), "1796000060000")

    def test_a_deadline_ahead_passes_through(self):
        self.assertEqual(fixed_deadline("1796000030000", 60_000, now_ms=1_796_000_000_000), "1796000030000")

    def test_garbage_becomes_a_real_deadline(self):
        self.assertEqual(fixed_deadline("soon", 1_000, now_ms=5), "1005")


class ProxyTest(unittest.TestCase):
    def test_forwards_under_the_prefix_and_rewrites_only_the_deadline(self):
        seen = []

        class Upstream(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append(("GET", self.path, None))
                body = b'{"event": 1}'
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
                self.send_header("Lambda-Runtime-Deadline-Ms", "600000")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                seen.append(("POST", self.path, body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        self.addCleanup(upstream.server_close)
        self.addCleanup(upstream.shutdown)
        proxy = DeadlineProxy(f"127.0.0.1:{upstream.server_address[1]}/.rt/fn").start()
        self.addCleanup(proxy.stop)

        before = int(time.time() * 1000)
        with urllib.request.urlopen(f"http://{proxy.address}/2018-06-01/runtime/invocation/next") as r:
            self.assertEqual(json.loads(r.read()), {"event": 1})
            self.assertEqual(r.headers["Lambda-Runtime-Aws-Request-Id"], "req-1")
            deadline = int(r.headers["Lambda-Runtime-Deadline-Ms"])
        self.assertGreaterEqual(deadline, before + 60_000)
        self.assertLess(deadline, before + 70_000)
        request = urllib.request.Request(
            f"http://{proxy.address}/2018-06-01/runtime/invocation/req-1/response", data=b'{"ok": true}'
        )
        with urllib.request.urlopen(request) as r:
            self.assertEqual(r.status, 202)
        self.assertEqual(
            seen,
            [
                ("GET", "/.rt/fn/2018-06-01/runtime/invocation/next", None),
                ("POST", "/.rt/fn/2018-06-01/runtime/invocation/req-1/response", b'{"ok": true}'),
            ],
        )
        self.assertEqual(proxy.rewritten, 1)


if __name__ == "__main__":
    unittest.main()
