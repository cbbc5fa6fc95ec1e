"""A TCP gate: a forwarder on its own address in front of one upstream service, with transport
faults that a WSGI layer cannot produce.

Why: the fault layer in `aws.py` answers requests (503, throttling, a stalled answer), but some
faults happen before any answer exists: the port is closed (connection refused), the connection is
reset, or the peer accepts and then says nothing. etcd speaks gRPC over HTTP/2, so its "try again"
answers (`Unavailable`, `ResourceExhausted` "etcdserver: too many requests") cannot come from an
HTTP/1 layer either. The gate sits on the address the function is given (an `AWS_ENDPOINT_URL_*`,
or an etcd member's advertised client URL) and forwards byte for byte to the real service until a
fault is armed:

    refuse()/refuse_for(s)   the listening socket is closed, so connects are refused (ECONNREFUSED),
                             and connections already open are cut, so pooled ones cannot dodge it
    reset(n)                 the next n connections are accepted and reset at once (RST)
    stall(n, s)              the next n connections are accepted and get no answer for s seconds,
                             then are closed (a timeout, as from a hung peer)
    delay(n, s)              the next n connections are forwarded, but nothing comes back for the
                             first s seconds (a slow answer)
    grpc_error(n, code, msg) the next n connections are answered by a minimal HTTP/2 server that
                             ends every gRPC call with status `code` and message `msg`
                             (Trailers-Only), the way etcd answers when it cannot serve
    clear()                  back to plain forwarding (and open)

Connection-count faults are deterministic for the function's etcd client: it opens one connection
per member per invocation and dials again after a call through it gets no usable answer (silence,
a reset, "try again"), so a connection that failed a call is never used again; `faulted` counts
what the gate did, so a test can prove a fault was met. The HTTP/2 answer needs no HPACK decoder:
the gate never reads the request headers, it only answers each new stream, and its own header
block uses literal fields only, so no compression state is shared.

Only sockets and threads this object created are ever closed.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

# gRPC status codes used by the tests (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAVAILABLE = 14

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4


@dataclass
class _Armed:
    kind: str  # "reset" | "stall" | "delay" | "grpc"
    times: int
    seconds: float = 0.0
    code: int = 0
    message: str = ""


class TcpGate:
    """Forwards `host:port` -> `upstream`, with the faults described in the module docstring."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self.host = host
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self._conns: set[socket.socket] = set()
        self._closing = False
        self._refusing = False
        self._reopen_timer: threading.Timer | None = None
        self.connections = 0
        self.faulted: dict[str, int] = {}
        self._listener: socket.socket | None = None
        self.port = port
        self._open_listener()
        self._thread = threading.Thread(
            target=self._accept_loop, daemon=True, name=f"gate-{self.host}:{self.port}"
        )
        self._thread.start()

    # -- addresses -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ------------------------------------------------------------------------------------
    def refuse(self) -> None:
        """Closes the port (connects are refused) and cuts every open connection."""
        with self._lock:
            self._refusing = True
            listener, self._listener = self._listener, None
            conns = list(self._conns)
        if listener is not None:
            _close_listener(listener)
        for c in conns:
            _hard_close(c)

    def open(self) -> None:
        """Opens the port again (after `refuse`)."""
        with self._lock:
            if self._reopen_timer is not None:
                self._reopen_timer.cancel()
                self._reopen_timer = None
            self._refusing = False
            if self._listener is None and not self._closing:
                self._open_listener_locked()

    def refuse_for(self, seconds: float) -> None:
        """Refuses for `seconds`, then opens again by itself."""
        self.refuse()
        timer = threading.Timer(seconds, self.open)
        timer.daemon = True
        with self._lock:
            if self._reopen_timer is not None:
                self._reopen_timer.cancel()
            self._reopen_timer = timer
        timer.start()

    @property
    def refusing(self) -> bool:
        with self._lock:
            return self._refusing

    def reset(self, times: int) -> None:
        self._arm(_Armed("reset", times))

    def stall(self, times: int, seconds: float) -> None:
        self._arm(_Armed("stall", times, seconds=seconds))

    def delay(self, times: int, seconds: float) -> None:
        self._arm(_Armed("delay", times, seconds=seconds))

    def grpc_error(self, times: int, code: int, message: str) -> None:
        self._arm(_Armed("grpc", times, code=code, message=message))

    def clear(self) -> None:
        """No armed fault left, and the port open."""
        with self._lock:
            self._armed.clear()
        self.open()

    def pending(self) -> int:
        with self._lock:
            return sum(a.times for a in self._armed)

    def _arm(self, armed: _Armed) -> None:
        if armed.times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._armed.append(armed)

    def _take(self) -> _Armed | None:
        with self._lock:
            if not self._armed:
                return None
            armed = self._armed[0]
            armed.times -= 1
            if armed.times == 0:
                self._armed.pop(0)
            self.faulted[armed.kind] = self.faulted.get(armed.kind, 0) + 1
            return armed

    # -- life --------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._reopen_timer is not None:
                self._reopen_timer.cancel()
            listener, self._listener = self._listener, None
            conns = list(self._conns)
        if listener is not None:
            _close_listener(listener)
        for c in conns:
            _hard_close(c)
        self._thread.join(timeout=2)

    def __enter__(self) -> "TcpGate":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_listener(self) -> None:
        with self._lock:
            self._open_listener_locked()

    def _open_listener_locked(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"gate cannot listen on {self.host}:{self.port}: {e}") from None
        s.listen(128)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        self._listener = s

    def _accept_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                continue  # closed by refuse() or close()
            conn.settimeout(None)
            with self._lock:
                self.connections += 1
                if self._refusing or self._closing:
                    _hard_close(conn)
                    continue
                self._conns.add(conn)
            armed = self._take()
            threading.Thread(target=self._serve, args=(conn, armed), daemon=True).start()

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._conns.discard(s)

    # -- one connection ----------------------------------------------------------------------------
    def _serve(self, conn: socket.socket, armed: _Armed | None) -> None:
        try:
            if armed is None or armed.kind == "delay":
                self._forward(conn, armed.seconds if armed else 0.0)
            elif armed.kind == "reset":
                _hard_close(conn)
            elif armed.kind == "stall":
                end = time.monotonic() + armed.seconds
                while time.monotonic() < end and not self._closing:
                    r, _, _ = select.select([conn], [], [], 0.05)
                    if r and not _drain(conn):
                        break
                conn.close()
            elif armed.kind == "grpc":
                _grpc_answer(conn, armed.code, armed.message)
        except (OSError, ValueError):
            # The gate closed this connection from another thread (`close`, `reset_all`): a
            # socket closed under select() raises ValueError (its descriptor is -1), not OSError.
            pass
        finally:
            self._forget(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _forward(self, conn: socket.socket, delay: float) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            _hard_close(conn)  # the upstream is down: the client sees its connection reset
            return
        up.settimeout(None)
        with self._lock:
            self._conns.add(up)
        answer_after = time.monotonic() + delay
        held = b""
        pairs = {conn: up, up: conn}
        try:
            while True:
                now = time.monotonic()
                if held and now >= answer_after:
                    conn.sendall(held)
                    held = b""
                timeout = min(0.5, max(0.0, answer_after - now)) if held else 0.5
                r, _, _ = select.select(list(pairs), [], [], timeout)
                if self._closing:
                    return
                for src in r:
                    data = src.recv(65536)
                    if not data:
                        if held and src is up:
                            _sleep_until(answer_after)
                            conn.sendall(held)
                        return
                    if src is up and (held or time.monotonic() < answer_after):
                        held += data  # the answer waits until the delay is over
                    else:
                        pairs[src].sendall(data)
        finally:
            self._forget(up)
            up.close()


def _sleep_until(t: float) -> None:
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def _drain(conn: socket.socket) -> bool:
    try:
        return bool(conn.recv(65536))
    except OSError:
        return False


def _close_listener(listener: socket.socket) -> None:
    """Stops listening at once: shutdown wakes a thread waiting in accept, so the kernel forgets
    the listening socket now rather than when that wait ends (until then connects would still
    complete)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def _hard_close(conn: socket.socket) -> None:
    """Closes with linger 0: the peer gets a reset, as from a host whose service is gone."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------
# A minimal HTTP/2 server that fails every gRPC call
# ------------------------------------------------------------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value % 128) + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _hpack_str(text: str) -> bytes:
    raw = text.encode()
    return _hpack_int(len(raw), 7, 0x00) + raw


def _literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name: no dynamic table is touched."""
    return b"\x00" + _hpack_str(name) + _hpack_str(value)


def grpc_trailers_only(code: int, message: str) -> bytes:
    """The HPACK header block of a Trailers-Only gRPC response."""
    return (
        b"\x88"  # :status 200 (static table index 8)
        + _literal("content-type", "application/grpc")
        + _literal("grpc-status", str(code))
        + _literal("grpc-message", message)
    )


def _read_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def _grpc_answer(conn: socket.socket, code: int, message: str, idle_s: float = 10.0) -> None:
    """Speaks just enough HTTP/2 (prior knowledge, no TLS) to end each new stream with `code`."""
    conn.settimeout(idle_s)
    if _read_exact(conn, len(H2_PREFACE)) != H2_PREFACE:
        return
    conn.sendall(_frame(_SETTINGS, 0, 0))
    block = grpc_trailers_only(code, message)
    answered: set[int] = set()
    open_headers: int | None = None
    while True:
        try:
            header = _read_exact(conn, 9)
        except (ConnectionError, socket.timeout):
            return
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        payload = _read_exact(conn, length) if length else b""
        if kind == _SETTINGS and not flags & _ACK:
            conn.sendall(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING and not flags & _ACK:
            conn.sendall(_frame(_PING, _ACK, 0, payload))
        elif kind == _GOAWAY:
            return
        elif kind in (_HEADERS, _CONTINUATION) and stream:
            if kind == _HEADERS:
                open_headers = stream
            if flags & _END_HEADERS and open_headers == stream and stream not in answered:
                answered.add(stream)
                open_headers = None
                conn.sendall(_frame(_HEADERS, _END_STREAM | _END_HEADERS, stream, block))
        # DATA, WINDOW_UPDATE, RST_STREAM, PRIORITY: nothing to do for a server that only fails.


def port_is_refused(host: str, port: int) -> bool:
    """Whether a connect to host:port is refused right now (for self-tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return True
        except OSError as e:
            return e.errno == errno.ECONNREFUSED
        return False
