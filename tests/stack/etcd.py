"""A real etcd 3.4 cluster on loopback addresses, for end-to-end tests of membership changes.

Why real etcd and not a fake: the function's whole point is to change etcd membership without
breaking quorum, and etcd's own answers (strict reconfig check, "unhealthy cluster" right after an
election, "not leader" for MoveLeader, a removed member shutting itself down) are what it must cope
with. Each node listens on its own 127.0.0.x address with the standard ports 2379/2380, so the
function can build endpoints from instance private IPs exactly as it does in a VPC.

Readiness has two steps, because a healthy cluster is not yet a cluster that accepts membership
changes (etcd refuses them until its peers have been connected for about five seconds):

1. every running node reports the same leader on the v3 HTTP gateway (`/v3/maintenance/status`);
2. every running node accepts a membership change: through each in turn, a learner with an
   unreachable peer URL is added and at once removed (adding even a learner goes through the same
   "connected long enough" check that a removal does, and each node answers it from its own view
   of its peers; removing a learner skips it). Refused with "unhealthy cluster" means "not yet":
   poll again. Each try uses a new peer URL (etcd refuses a peer URL a member already has, and
   derives member IDs from peer URLs and the time). The Rust harness (tests/common) probes the
   same way.

Everything talks plain JSON to the v3 HTTP gateway, so no gRPC library is needed. Only processes
this module started are ever signalled.

Faults for resilience tests (all opt-in; a cluster without them behaves exactly as before):

* `stop_node` / `start_node`: a node down (its address refuses connections) and back;
* `pause_node` / `resume_node`: SIGSTOP / SIGCONT, a hung node: connections are accepted by the
  kernel but nothing answers (timeouts, not refusals); the others elect a new leader if it led;
* `gated=True`: each node listens for clients on port 2381 and advertises port 2379, where a
  `TcpGate` (gate.py) forwards to it. Everything the function does goes through the gates (it only
  knows advertised URLs), so they can refuse, reset, stall, delay or answer gRPC errors
  (`Unavailable`, `ResourceExhausted`), while this module's own checks go straight to the node;
* `add_node`: a new member joining an existing cluster (a node's bootstrap script), for the
  seeded chaos runs that grow the cluster again after scale-in;
* `hold_lock`: another holder of an etcd lock (etcd's v3lock API, under a lease), so a test can
  show what the function does when it cannot take its membership lock.

Nodes are keyed by their machine (in the stack, the instance ID); the name a node gives etcd
(`--name`) is the node's `member_name`, which may differ (an EC2 host name under a custom DNS
domain, say). `node_of(member)` finds a member's node by its peer URL.

`tls=` (a `tls.TlsFiles`) serves clients over HTTPS and requires client certificates
(`--client-cert-auth`); peers keep plain HTTP. This module's checks then present the client
certificate too.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

ETCD = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
CLIENT_PORT = 2379
PEER_PORT = 2380
# Where a gated node really listens for clients (its advertised port 2379 is the gate's).
GATED_CLIENT_PORT = 2381


class EtcdError(RuntimeError):
    """A gateway call failed; `status` is the HTTP status (0 when nothing answered)."""

    def __init__(self, message: str, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Returns once every thread of `pid` is stopped (state `T` in /proc): `kill` only sends the
    signal, and a test that goes on while the node still runs checks nothing. Fails loudly when
    the stop does not take effect."""
    end = time.monotonic() + timeout
    task_dir = f"/proc/{pid}/task"
    while time.monotonic() < end:
        try:
            threads = os.listdir(task_dir)
        except OSError:
            return  # gone: nothing left to answer
        states = []
        for tid in threads:
            try:
                with open(f"{task_dir}/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue  # that thread ended meanwhile
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} did not stop within {timeout}s of SIGSTOP")


def gateway(
    url: str, path: str, body: dict | None = None, timeout: float = 2.0, context: Any = None
) -> dict:
    """POSTs JSON to etcd's v3 HTTP gateway at `url` (a client URL) and returns the answer
    (`context`: an `ssl.SSLContext` for an HTTPS URL)."""
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(
        url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        message = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        raise EtcdError(f"{url}{path}: HTTP {e.code}: {message}", e.code, parsed) from None
    except (urllib.error.URLError, OSError) as e:
        raise EtcdError(f"{url}{path}: {e}") from None


@dataclass
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool

    @staticmethod
    def from_json(m: dict) -> "Member":
        return Member(
            id=int(m["ID"]),
            name=m.get("name", ""),
            peer_urls=list(m.get("peerURLs", [])),
            client_urls=list(m.get("clientURLs", [])),
            is_learner=bool(m.get("isLearner", False)),
        )


@dataclass
class Node:
    name: str
    ip: str
    data_dir: str
    log_path: str
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)
    gate: Any = None  # a gate.TcpGate on the advertised client URL, when the cluster is gated
    paused: bool = False
    # A joining node's `--initial-cluster` (the membership it joins); None: the cluster's own.
    initial_cluster: str | None = None
    scheme: str = "http"  # of the client URLs ("https" in a TLS cluster)
    # The name the node gives etcd (`--name`); None: the node's own name.
    etcd_name: str | None = None

    @property
    def member_name(self) -> str:
        return self.etcd_name or self.name

    @property
    def client_url(self) -> str:
        """Where the node itself listens for clients: this module's checks use it."""
        port = GATED_CLIENT_PORT if self.gate is not None else CLIENT_PORT
        return f"{self.scheme}://{self.ip}:{port}"

    @property
    def advertised_url(self) -> str:
        """The client URL the node advertises (the gate's, when gated): what the function uses."""
        return f"{self.scheme}://{self.ip}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{PEER_PORT}"

    def running(self) -> bool:
        """The process is alive (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    def answering(self) -> bool:
        """Alive and not paused: it can answer."""
        return self.running() and not self.paused


class EtcdCluster:
    """N etcd nodes named `names`, node i listening on `ips[i]`:2379 (client) and :2380 (peer)."""

    def __init__(
        self,
        names: list[str],
        ips: list[str],
        root: str | None = None,
        gated: bool = False,
        tls: Any = None,
        member_names: list[str] | None = None,
        extra_args: list[str] | None = None,
    ):
        """`names` key the nodes; `member_names` (default: `names`) are what they call themselves
        in etcd."""
        if len(names) != len(ips) or not names:
            raise ValueError("give one IP per member name")
        if member_names is not None and len(member_names) != len(names):
            raise ValueError("give one member name per node")
        self.gated = gated
        self.tls = tls
        self.extra_args = list(extra_args or [])  # extra flags for every node, joiners too
        self.ssl_context = None
        if tls is not None:
            from .tls import client_ssl_context

            self.ssl_context = client_ssl_context(tls)
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="etcd-e2e-")
        os.makedirs(self.root, exist_ok=True)
        self.token = f"e2e-{os.getpid()}-{int(time.time() * 1000)}"
        self._probes = 0  # readiness probes made: each gets its own peer URL
        self.nodes: dict[str, Node] = {}
        for name, ip, etcd_name in zip(names, ips, member_names or names):
            self.nodes[name] = Node(
                name=name,
                ip=ip,
                data_dir=os.path.join(self.root, name),
                log_path=os.path.join(self.root, f"{name}.log"),
                scheme="https" if tls is not None else "http",
                etcd_name=etcd_name if etcd_name != name else None,
                extra_args=list(self.extra_args),
            )
            if gated:
                self._gate(self.nodes[name])

    def _gate(self, node: Node) -> None:
        from .gate import TcpGate

        node.gate = TcpGate((node.ip, GATED_CLIENT_PORT), host=node.ip, port=CLIENT_PORT)

    # -- lifecycle ----------------------------------------------------------------------------------
    def _initial_cluster(self) -> str:
        return ",".join(
            f"{n.member_name}={n.peer_url}"
            for n in self.nodes.values()
            if n.initial_cluster is None
        )

    def _spawn(self, node: Node, state: str) -> None:
        args = [
            ETCD,
            "--name", node.member_name,
            "--data-dir", node.data_dir,
            "--listen-client-urls", node.client_url,
            "--advertise-client-urls", node.advertised_url,
            "--listen-peer-urls", node.peer_url,
            "--initial-advertise-peer-urls", node.peer_url,
            "--initial-cluster", node.initial_cluster or self._initial_cluster(),
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self._tls_args(),
            *node.extra_args,
        ]  # fmt: skip
        log = open(node.log_path, "ab")
        try:
            node.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--cert-file", self.tls.server_cert,
            "--key-file", self.tls.server_key,
            "--trusted-ca-file", self.tls.ca_cert,
            "--client-cert-auth",
        ]  # fmt: skip

    def _gateway(self, url: str, path: str, body: dict | None = None, timeout: float = 2.0) -> dict:
        return gateway(url, path, body, timeout=timeout, context=self.ssl_context)

    def start(self, timeout: float = 60.0) -> "EtcdCluster":
        """Starts every node and waits until the cluster accepts membership changes."""
        try:
            for node in self.nodes.values():
                self._spawn(node, "new")
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_node(self, name: str, kill: bool = False, timeout: float = 15.0) -> None:
        """Stops one node (SIGTERM, or SIGKILL when `kill`): its data stays for `start_node`."""
        node = self.nodes[name]
        if node.running():
            node.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            if node.paused:  # a stopped process acts on SIGTERM only once continued
                node.proc.send_signal(signal.SIGCONT)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
        node.paused = False

    def start_node(self, name: str) -> None:
        """Restarts a stopped node from its data directory (it rejoins as the member it was)."""
        node = self.nodes[name]
        if node.running():
            return
        node.paused = False
        self._spawn(node, "existing")

    def pause_node(self, name: str) -> None:
        """SIGSTOPs a node: it hangs (connections accepted by the kernel, never answered)."""
        node = self.nodes[name]
        if node.running() and not node.paused:
            node.proc.send_signal(signal.SIGSTOP)
            node.paused = True
            wait_stopped(node.proc.pid)

    def resume_node(self, name: str) -> None:
        """SIGCONTs a paused node."""
        node = self.nodes[name]
        if node.running() and node.paused:
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def add_node(
        self, name: str, ip: str, initial_cluster: str, member_name: str | None = None
    ) -> Node:
        """Starts a new node that joins the running cluster as the member already added for its
        peer URL (`initial_cluster` must list every current member, as `name=peerURL` pairs, this
        node under `member_name`, default `name`)."""
        if name in self.nodes:
            raise ValueError(f"node {name} exists")
        node = Node(
            name=name,
            ip=ip,
            data_dir=os.path.join(self.root, name),
            log_path=os.path.join(self.root, f"{name}.log"),
            initial_cluster=initial_cluster,
            scheme="https" if self.tls is not None else "http",
            etcd_name=member_name if member_name not in (None, name) else None,
            extra_args=list(self.extra_args),
        )
        if self.gated:
            self._gate(node)
        self.nodes[name] = node
        self._spawn(node, "existing")
        return node

    def forget_node(self, name: str) -> None:
        """Kills a node (if alive), closes its gate and drops it with its data: the machine is
        gone. Its address may then be used by a new node."""
        node = self.nodes.pop(name)
        if node.running():
            node.proc.kill()
            node.proc.wait(10)
        if node.gate is not None:
            node.gate.close()
        shutil.rmtree(node.data_dir, ignore_errors=True)

    def gates(self) -> list[Any]:
        return [n.gate for n in self.nodes.values() if n.gate is not None]

    def stop(self) -> None:
        """Kills every node this cluster started and removes its data (teardown: a graceful stop
        would first hand leadership over, which takes seconds and proves nothing here)."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
            node.paused = False
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)
            if node.gate is not None:
                node.gate.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reading the cluster ------------------------------------------------------------------------
    def running_nodes(self) -> list[Node]:
        """Nodes that can answer: alive and not paused."""
        return [n for n in self.nodes.values() if n.answering()]

    def endpoints(self) -> list[str]:
        """The client URLs the nodes advertise (through their gates when gated)."""
        return [n.advertised_url for n in self.nodes.values()]

    def _ask(self, path: str, body: dict | None = None, prefer: str | None = None) -> dict:
        """Asks running nodes in turn (`prefer` first) until one answers."""
        nodes = self.running_nodes()
        if prefer:
            nodes.sort(key=lambda n: n.name != prefer)
        errors = []
        for node in nodes:
            try:
                return self._gateway(node.client_url, path, body)
            except EtcdError as e:
                errors.append(str(e))
        raise EtcdError("no etcd node answered: " + "; ".join(errors or ["none is running"]))

    def members(self) -> list[Member]:
        """The member list, asked of the leader when there is one (a just-removed node may still
        answer with its old view)."""
        answer = self._ask("/v3/cluster/member/list", prefer=self.leader())
        return [Member.from_json(m) for m in answer.get("members", [])]

    def member_names(self) -> list[str]:
        return sorted(m.name for m in self.members())

    def node_of(self, member: Member) -> Node | None:
        """The node a member runs on (by its peer URL), if this cluster started it."""
        for node in self.nodes.values():
            if node.peer_url in member.peer_urls:
                return node
        return None

    def voters(self) -> list[Member]:
        return [m for m in self.members() if not m.is_learner]

    def healthy_voters(self) -> list[Member]:
        """Voting members whose own node answers Status as that member (asked directly)."""
        healthy = []
        for member in self.voters():
            node = self.node_of(member)
            if node is None or not node.answering():
                continue
            try:
                status = self._gateway(node.client_url, "/v3/maintenance/status", timeout=1.0)
            except EtcdError:
                continue
            if int(status["header"]["member_id"]) == member.id:
                healthy.append(member)
        return healthy

    def in_sync(self, name: str) -> bool:
        """Whether node `name` answers and has the leader's raft index (a learner that etcd will
        promote)."""
        leader = self.leader()
        if leader is None or not self.nodes[name].answering():
            return False
        mine = int(self.status(name).get("raftIndex", 0))
        return mine > 0 and mine >= int(self.status(leader).get("raftIndex", 0))

    def status(self, name: str) -> dict:
        return self._gateway(self.nodes[name].client_url, "/v3/maintenance/status")

    def leader(self) -> str | None:
        """The name of the running node that is the leader by its own status, or None."""
        for node in self.running_nodes():
            try:
                status = self.status(node.name)
            except EtcdError:
                continue
            if int(status.get("leader", 0) or 0) == int(status["header"]["member_id"]):
                return node.name
        return None

    def leader_id(self) -> int | None:
        name = self.leader()
        return int(self.status(name)["header"]["member_id"]) if name else None

    def followers(self) -> list[str]:
        leader = self.leader()
        return [n.name for n in self.running_nodes() if n.name != leader]

    # -- changing the cluster (for test set-ups) ---------------------------------------------------
    def add_member(self, peer_url: str, learner: bool = False, via: str | None = None) -> Member:
        answer = self._ask(
            "/v3/cluster/member/add",
            {"peerURLs": [peer_url], "isLearner": learner},
            prefer=via or self.leader(),
        )
        return Member.from_json(answer["member"])

    def remove_member(self, member_id: int, via: str | None = None) -> None:
        self._ask(
            "/v3/cluster/member/remove",
            {"ID": str(member_id)},
            prefer=via or self.leader(),
        )

    def hold_lock(self, name: str, ttl: int = 60) -> "HeldLock":
        """Takes etcd's lock `name` (v3lock API) under a lease of `ttl` seconds, as another
        invocation would; `release()` the answer to give it back (revoking the lease)."""
        lease = self._ask("/v3/lease/grant", {"TTL": ttl})
        lease_id = lease["ID"]
        try:
            answer = self._ask(
                "/v3/lock/lock", {"name": _b64(name), "lease": lease_id}, prefer=self.leader()
            )
        except BaseException:
            self._ask("/v3/lease/revoke", {"ID": lease_id})
            raise
        return HeldLock(self, name, lease_id, answer["key"])

    def lock_holders(self, name: str) -> list[str]:
        """Keys of everyone holding or waiting for lock `name` (v3lock keys are `name/<lease>`)."""
        prefix = f"{name}/".encode()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        answer = self._ask(
            "/v3/kv/range",
            {"key": _b64(prefix), "range_end": _b64(end), "keys_only": True},
        )
        return [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", [])]

    # -- readiness -------------------------------------------------------------------------------
    def wait_healthy(self, timeout: float = 30.0) -> str:
        """Waits until every running node reports the same leader; returns the leader's name."""
        deadline = time.monotonic() + timeout
        last = "nothing asked yet"
        while True:
            try:
                leaders = {int(self.status(n.name).get("leader", 0)) for n in self.running_nodes()}
                if len(leaders) == 1 and 0 not in leaders:
                    name = self.leader()
                    if name:
                        return name
                    last = "the reported leader is not one of the running nodes"
                last = f"leaders reported: {sorted(leaders)}"
            except EtcdError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd did not elect a leader in {timeout}s: {last}; logs in {self.root}")
            time.sleep(0.1)

    def wait_reconfig_ready(self, timeout: float = 30.0) -> None:
        """Waits until every running node accepts a membership change (see the module docstring)."""
        deadline = time.monotonic() + timeout
        self.wait_healthy(timeout)
        for node in self.running_nodes():
            self._probe_through(node, deadline, timeout)

    def _probe_through(self, node: Node, deadline: float, timeout: float) -> None:
        """Adds a learner through `node` itself (no other node may answer for it) until it is
        accepted, then removes it."""
        last = ""
        while True:
            self._probes += 1
            # A peer URL nothing listens on: the learner never starts.
            probe = f"http://127.0.0.1:{30000 + self._probes}"
            body = {"peerURLs": [probe], "isLearner": True}
            try:
                answer = self._gateway(node.client_url, "/v3/cluster/member/add", body)
            except EtcdError as e:
                last = str(e)
            else:
                self._remove_probe(Member.from_json(answer["member"]).id, deadline)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{node.name} refused membership changes for {timeout}s: {last}; "
                    f"logs in {self.root}"
                )
            time.sleep(0.2)

    def _remove_probe(self, member_id: int, deadline: float) -> None:
        while True:
            try:
                self.remove_member(member_id)
                return
            except EtcdError as e:
                if "member not found" in str(e):
                    return
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_reconfig_ready(timeout)

    def wait_until(self, predicate, timeout: float = 15.0, what: str = "condition") -> None:
        """Polls `predicate()` (gateway errors count as "not yet") until true."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except EtcdError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd: {what} not reached in {timeout}s")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        with open(self.nodes[name].log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


@dataclass
class HeldLock:
    """A lock taken by `EtcdCluster.hold_lock`."""

    cluster: EtcdCluster
    name: str
    lease: str
    key: str

    def release(self) -> None:
        self.cluster._ask("/v3/lease/revoke", {"ID": self.lease})
