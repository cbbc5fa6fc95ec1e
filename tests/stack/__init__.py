"""The local end-to-end stack: Auto Scaling + EC2 (moto, extended), a real etcd cluster, a Lambda
Runtime API emulator, and the function's release binary running under it.

Why one object: every end-to-end test needs the same arrangement, in the same order: an address
slot of its own (so tests never collide), a group of instances whose private IPs are loopback
addresses, an etcd cluster whose member names are those instance IDs (so it can only start once
the instances exist), and a function process pointed at all of it. `Stack` does that, hands out
lifecycle actions and events for them, and tears down only what it started.

    with Stack() as stack:
        fn = stack.spawn()                          # the bootstrap binary, under the emulator
        victim = stack.followers()[0]
        action = stack.start_terminate(victim)      # instance now in Terminating:Wait
        ok, answer = fn.invoke(events.eventbridge(action))
        assert victim not in stack.etcd.member_names()
        assert stack.aws.completions()[0]["result"] == "CONTINUE"

Addresses: slot N owns 127.0.N.11-127.0.N.18 (ports 2379/2380 on each), claimed with a lock file
under the system temp directory, so parallel test processes pick different slots.

`Stack(etcd_tls=True)` serves etcd's clients over TLS with client certificates (tls.py makes a
throwaway CA and keys per stack) and gives the function its `ETCD_*_FILE` variables.

Layouts operators run (all opt-in; the default is one group whose members are named by instance
ID):

* `groups={"etcd-a": 2, "etcd-b": 1}`: one cluster over several Auto Scaling groups (one per
  zone), all in one VPC; `ASG_NAMES` lists them all. `stack.group` is the first.
* `naming="hostname"`: members named by EC2 host name under a custom DHCP domain
  (`ip-127-0-12-11.corp.example`, see `dns_domain`) instead of by instance ID.
* `outside_nodes=1`: extra voting members with no EC2 instance at all (`etcd-outside-1`, ...).
* `foreign_hooks={"node-drain": TERMINATING}`: another tool's hooks on every group, listed before
  the etcd hooks; each paused instance waits on all of them (see aws.py).
* `stack.make_spot(id)` / `stack.interrupt_spot(id)`: a Spot instance and its interruption notice;
  `stack.stop_instance(id)`: stopped in EC2 (its etcd node with it), still in its group.
* `stack.join(id)`: the new instance's etcd node starts as its bootstrap script would, joining
  as the member (a learner) already added for its peer URL.
* `stack.start_warm_scale_in(id)` / `stack.start_warm_launch()`: warm pools (given to the group
  on first use): an instance going back to the pool on scale-in (a terminate action), or a new
  one launched into it (a launch action), waits in `Warmed:Pending:Wait`, listed by
  DescribeWarmPool and no longer by the group; `stack.warm_state(id)` reads its pool state.

Nodes of `stack.etcd` are keyed by instance ID (outside nodes by their name), whatever the members
are called; `stack.member_ids()` names each member by its node, so assertions read the same in
every naming mode.

Transport faults (see gate.py): `Stack(etcd_gates=True)` puts a `TcpGate` on every etcd member's
advertised client URL; `stack.aws_gate("autoscaling" | "ec2")` puts one in front of that service,
and functions spawned afterwards reach the service through it. The AWS fault layer (aws.py) and
`stack.etcd.stop_node` / `pause_node` cover the rest.

Environment knobs: `BOOTSTRAP` (path of the binary; default `target/release/etcd-lifecycle-hook`,
under `CARGO_TARGET_DIR` when set), `STACK_KEEP=1` keeps the work directory (logs, etcd data) under
`.stack/` after teardown.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any

from . import events
from .aws import (
    LAUNCHING,
    TERMINATING,
    AwsServer,
    LifecycleAction,
    SeededGroup,
    free_port,
    launch_instance,
    launch_into_group,
    seed_group,
    seed_network,
)
from .etcd import CLIENT_PORT, GATED_CLIENT_PORT, PEER_PORT, EtcdCluster, Member
from .gate import TcpGate
from .runtime_api import FunctionDied, InvocationTimeout, RuntimeApi

__all__ = [
    "Stack",
    "FunctionProcess",
    "AddressSlot",
    "DeadEndpoint",
    "TcpGate",
    "bootstrap_path",
    "events",
    "LAUNCHING",
    "TERMINATING",
    "FunctionDied",
    "InvocationTimeout",
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUNCTION_NAME = "etcd-lifecycle-hook"
# The SDK's service-specific endpoint variables (service ID, upper case, spaces as underscores).
AWS_ENDPOINT_VARIABLES = {"autoscaling": "AWS_ENDPOINT_URL_AUTO_SCALING", "ec2": "AWS_ENDPOINT_URL_EC2"}
IPS_PER_SLOT = 8
# How members are named: by instance ID, or by EC2 host name (`ip-a-b-c-d`) under a DNS domain.
NAMINGS = ("instance-id", "hostname")
OUTSIDE_PREFIX = "etcd-outside-"


def bootstrap_path() -> str:
    """The function binary: `$BOOTSTRAP`, else the release build under the cargo target dir."""
    if os.environ.get("BOOTSTRAP"):
        return os.path.abspath(os.environ["BOOTSTRAP"])
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "release", FUNCTION_NAME)


# ------------------------------------------------------------------------------------------------
# Address slots
# ------------------------------------------------------------------------------------------------


class AddressSlot:
    """A /24 of loopback addresses (127.0.N.11-18) this process alone uses, ports 2379-2381 free
    (client, peer, and a gated node's own client port)."""

    LOCK_DIR = os.path.join(tempfile.gettempdir(), "etcd-lifecycle-hook-slots")

    def __init__(self, n: int, lock_fd: int):
        self.n = n
        self._fd = lock_fd

    @property
    def ips(self) -> list[str]:
        return [f"127.0.{self.n}.{11 + i}" for i in range(IPS_PER_SLOT)]

    @property
    def subnet(self) -> str:
        return f"127.0.{self.n}.0/24"

    @classmethod
    def acquire(cls, first: int = 10, last: int = 250) -> "AddressSlot":
        os.makedirs(cls.LOCK_DIR, exist_ok=True)
        for n in range(first, last):
            fd = os.open(os.path.join(cls.LOCK_DIR, f"slot-{n}.lock"), os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            slot = cls(n, fd)
            if slot._ports_free():
                return slot
            slot.release()
        raise RuntimeError("no free loopback address slot (127.0.10-249.x)")

    def _ports_free(self) -> bool:
        for ip in self.ips:
            for port in (CLIENT_PORT, PEER_PORT, GATED_CLIENT_PORT):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((ip, port))
                    except OSError as e:
                        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                            return False
                        raise
        return True

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


# ------------------------------------------------------------------------------------------------
# A "dead" endpoint that still counts who knocked
# ------------------------------------------------------------------------------------------------


class DeadEndpoint:
    """A loopback port that accepts connections and closes them at once without answering.

    To the SDK this is a dead service (a connection error on every attempt), like a closed port;
    unlike a closed port it counts the attempts, so a test can prove that an open circuit made no
    call at all."""

    def __init__(self, host: str = "127.0.0.1"):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self.host, self.port = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"dead-{self.port}")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._connections += 1
            # Linger 0: the close is a reset, as from a host whose service is gone.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)


# ------------------------------------------------------------------------------------------------
# The function process
# ------------------------------------------------------------------------------------------------


class FunctionProcess:
    """The bootstrap binary under its own Runtime API emulator, output captured line by line."""

    def __init__(self, binary: str, env: dict[str, str], log_dir: str, label: str = "function"):
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError(
                f"function binary {binary} is missing or not executable: build it with "
                "`cargo build --release` or set BOOTSTRAP"
            )
        self.binary = binary
        self.api = RuntimeApi().start()
        self.env = dict(env)
        self.env["AWS_LAMBDA_RUNTIME_API"] = self.api.address
        self._lock = threading.Lock()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"{label}-{self.api.address.replace(':', '-')}.log")
        self.spawned_at = time.time()
        self.proc = subprocess.Popen(
            [binary],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, sink: list[str]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._lock:
                    sink.append(line)
                log.write(line + "\n")
                log.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def invoke(
        self, event: Any, timeout_ms: int = 30_000, wait_s: float | None = None
    ) -> tuple[bool, Any]:
        """One invocation: `(True, payload)` or `(False, {"errorType", "errorMessage"})`."""
        try:
            return self.api.invoke(event, timeout_ms, wait_s, alive=self.alive)
        except (FunctionDied, InvocationTimeout) as e:
            status = self.proc.poll()
            state = "running" if status is None else f"exit status {status}"
            raise type(e)(
                f"{e} (process {state})\n--- function output ---\n{self.output()}"
            ) from None

    def output(self, last: int = 60) -> str:
        with self._lock:
            lines = self.stdout + self.stderr
        return "\n".join(lines[-last:])

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.stdout) + list(self.stderr)

    def json_logs(self) -> list[dict[str, Any]]:
        """Log lines that are JSON objects (the function logs JSON under Lambda's JSON format)."""
        out = []
        for line in self.lines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out.append(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for t in self._readers:
            t.join(timeout=2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.api.stop()


# ------------------------------------------------------------------------------------------------
# The stack
# ------------------------------------------------------------------------------------------------


class Stack:
    """Auto Scaling groups + instances (moto) + etcd cluster + function processes."""

    def __init__(
        self,
        nodes: int = 3,
        group: str = "etcd-e2e",
        heartbeat_timeout: int = 300,
        workdir: str | None = None,
        keep: bool | None = None,
        etcd_gates: bool = False,
        etcd_tls: bool = False,
        etcd_args: list[str] | None = None,
        groups: dict[str, int] | None = None,
        naming: str = "instance-id",
        dns_domain: str = "corp.example",
        outside_nodes: int = 0,
        foreign_hooks: dict[str, str] | None = None,
    ):
        if naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, not {naming!r}")
        self.group_sizes = dict(groups) if groups else {group: nodes}
        if not self.group_sizes or any(n < 0 for n in self.group_sizes.values()):
            raise ValueError("give at least one group, none of negative size")
        self.group = next(iter(self.group_sizes))
        self.nodes = sum(self.group_sizes.values())
        self.naming = naming
        self.dns_domain = dns_domain
        self.outside_count = outside_nodes
        self.foreign_hooks = dict(foreign_hooks or {})
        if self.nodes + outside_nodes > IPS_PER_SLOT:
            raise ValueError(f"at most {IPS_PER_SLOT} etcd nodes fit in an address slot")
        self.etcd_gates = etcd_gates
        self.etcd_tls = etcd_tls
        self.etcd_args = list(etcd_args or [])  # extra flags for every etcd node
        self.tls = None  # tls.TlsFiles when etcd_tls
        self._aws_gates: dict[str, TcpGate] = {}
        self.heartbeat_timeout = heartbeat_timeout
        self.keep = keep if keep is not None else os.environ.get("STACK_KEEP") == "1"
        self._workdir = workdir
        self.workdir = ""
        self.slot: AddressSlot | None = None
        self.aws: AwsServer | None = None
        self.groups: dict[str, SeededGroup] = {}
        self.seeded: SeededGroup | None = None  # the first group's
        self.outside: dict[str, str] = {}  # outside node name -> IP
        self.etcd: EtcdCluster | None = None
        self.functions: list[FunctionProcess] = []
        self._dead: list[DeadEndpoint] = []
        self._spare_ips: list[str] = []

    # -- up / down ---------------------------------------------------------------------------------
    def up(self) -> "Stack":
        try:
            self.slot = AddressSlot.acquire()
            base = self._workdir or os.path.join(REPO, ".stack")
            os.makedirs(base, exist_ok=True)
            self.workdir = tempfile.mkdtemp(prefix=f"slot{self.slot.n}-", dir=base)
            free = list(self.slot.ips)
            self.aws = AwsServer().start()
            network = seed_network(self.aws, self.slot.subnet)
            for name, size in self.group_sizes.items():
                ips, free = free[:size], free[size:]
                self.groups[name] = seed_group(
                    self.aws,
                    name,
                    ips,
                    heartbeat_timeout=self.heartbeat_timeout,
                    network=network,
                    foreign_hooks=self.foreign_hooks,
                )
            self.seeded = self.groups[self.group]
            for i in range(self.outside_count):
                self.outside[f"{OUTSIDE_PREFIX}{i + 1}"] = free.pop(0)
            self._spare_ips = free
            names = self.instance_ids + list(self.outside)
            if self.etcd_tls:
                from .tls import make_tls

                self.tls = make_tls(os.path.join(self.workdir, "tls"), self.slot.ips)
            self.etcd = EtcdCluster(
                names,
                [self.ip_of(n) for n in names],
                root=os.path.join(self.workdir, "etcd"),
                gated=self.etcd_gates,
                tls=self.tls,
                member_names=[self.member_name(n) for n in names],
                extra_args=self.etcd_args,
            )
            self.etcd.start()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for fn in self.functions:
            try:
                fn.stop()
            except Exception:  # teardown goes on
                pass
        self.functions.clear()
        for dead in self._dead:
            dead.close()
        self._dead.clear()
        for gate in self._aws_gates.values():
            gate.close()
        self._aws_gates.clear()
        if self.etcd is not None:
            self.etcd.stop()
        if self.aws is not None:
            self.aws.stop()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        if self.workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Stack":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- the function ------------------------------------------------------------------------------
    def env(self, **overrides: str) -> dict[str, str]:
        """The function's environment: Lambda's variables, the SDK's, and the product's."""
        assert self.aws is not None and self.etcd is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"2026/01/01/[$LATEST]{os.getpid():x}",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_ENDPOINT_URL": self.aws.endpoint,
            # Keep the developer's own AWS set-up out of it.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "ASG_NAMES": ",".join(self.groups),
            "ETCD_ENDPOINTS": ",".join(self.etcd.endpoints()),
            "ETCD_CLIENT_SCHEME": "http",
            # Fast retries: the tests inject faults and must not wait seconds between attempts.
            "RETRY_BASE_DELAY_MS": "20",
            "RETRY_MAX_DELAY_MS": "200",
            "RUST_BACKTRACE": "1",
        }
        if self.tls is not None:
            env.update(
                ETCD_CLIENT_SCHEME="https",
                ETCD_CA_FILE=self.tls.ca_cert,
                ETCD_CERT_FILE=self.tls.client_cert,
                ETCD_KEY_FILE=self.tls.client_key,
            )
        for service, gate in self._aws_gates.items():
            env[AWS_ENDPOINT_VARIABLES[service]] = gate.url
        # A None override removes the variable (e.g. ETCD_CA_FILE, to use the trust store).
        env.update({k: None if v is None else str(v) for k, v in overrides.items()})
        return {k: v for k, v in env.items() if v is not None}

    def spawn(self, binary: str | None = None, **env_overrides: str) -> FunctionProcess:
        """Starts the function binary under a fresh Runtime API emulator."""
        fn = FunctionProcess(
            binary or bootstrap_path(),
            self.env(**env_overrides),
            os.path.join(self.workdir, "logs"),
            label=f"function{len(self.functions)}",
        )
        self.functions.append(fn)
        return fn

    # -- the groups and their instances ---------------------------------------------------------
    @property
    def instance_ids(self) -> list[str]:
        """Every instance of every group, in creation order (outside nodes are no instances)."""
        return [i for seeded in self.groups.values() for i in seeded.instances]

    def instances_of(self, group: str) -> list[str]:
        return list(self.groups[group].instances)

    def group_of(self, instance_id: str) -> str:
        for name, seeded in self.groups.items():
            if instance_id in seeded.instances:
                return name
        raise KeyError(f"{instance_id} is in no group of this stack")

    def ip_of(self, instance_id: str) -> str:
        """The private IP of an instance (or the address of an outside node)."""
        if instance_id in self.outside:
            return self.outside[instance_id]
        return self.groups[self.group_of(instance_id)].instances[instance_id]

    def member_name(self, instance_id: str) -> str:
        """The etcd member name of an instance's node under this stack's naming."""
        if instance_id in self.outside or self.naming == "instance-id":
            return instance_id
        return f"ip-{self.ip_of(instance_id).replace('.', '-')}.{self.dns_domain}"

    def machine_of(self, member: Member) -> str:
        """The machine a member runs on: its node's instance ID (or outside node name), else the
        latest instance whose address its peer URL carries (a learner whose node has not
        started); a member on no known address by its etcd name."""
        assert self.etcd is not None
        node = self.etcd.node_of(member)
        if node is not None:
            return node.name
        hosts = {u.split("://", 1)[-1].rsplit(":", 1)[0] for u in member.peer_urls}
        for iid in reversed(self.instance_ids):
            if self.ip_of(iid) in hosts:
                return iid
        return member.name

    def member_ids(self) -> list[str]:
        """The cluster's members, each named by its machine (see `machine_of`)."""
        assert self.etcd is not None
        return sorted(self.machine_of(m) for m in self.etcd.members())

    def leader(self) -> str:
        """The instance ID (or outside node name) of the etcd leader."""
        assert self.etcd is not None
        name = self.etcd.leader()
        if name is None:
            raise RuntimeError("etcd has no leader")
        return name

    def followers(self, group: str | None = None) -> list[str]:
        """Running nodes that do not lead (of one group's instances, with `group`)."""
        assert self.etcd is not None
        followers = self.etcd.followers()
        if group is not None:
            followers = [f for f in followers if f in self.groups[group].instances]
        return followers

    def start_terminate(self, instance_id: str, hook: str | None = None) -> LifecycleAction:
        """Scale-in of `instance_id`: it pauses in `Terminating:Wait` on its group's terminate
        hooks; the action returned is the etcd hook's (or `hook`'s)."""
        assert self.aws is not None
        return self.aws.start_lifecycle_action(
            self.group_of(instance_id), instance_id, TERMINATING, hook
        )

    def start_launch(
        self, control: bool = False, group: str | None = None, spot: bool = False
    ) -> tuple[str, LifecycleAction]:
        """Scale-out: a new instance on the next spare address pauses in `Pending:Wait`, in the
        first group or `group` (`control`: the harness's requests bypass the fault layer, see
        `AwsServer.client`; `spot`: a Spot instance)."""
        assert self.aws is not None
        if not self._spare_ips:
            raise RuntimeError("no spare address left in this slot")
        seeded = self.groups[group or self.group]
        return launch_into_group(self.aws, seeded, self._spare_ips.pop(0), control, spot)

    def start_warm_scale_in(self, instance_id: str, hook: str | None = None) -> LifecycleAction:
        """Scale-in back to the warm pool (`ReuseOnScaleIn`): `instance_id` leaves its group's
        listing and pauses in the pool in `Warmed:Pending:Wait` on its group's terminate hooks
        (AWS's naming: it leaves the group, and the cluster); the action returned is the etcd
        hook's (or `hook`'s). Its etcd node runs on until the action is done."""
        assert self.aws is not None
        group = self.group_of(instance_id)
        self.aws.ensure_warm_pool(group)
        return self.aws.start_warm_action(group, instance_id, TERMINATING, hook)

    def start_warm_launch(
        self, group: str | None = None, control: bool = False
    ) -> tuple[str, LifecycleAction]:
        """A new instance on the next spare address launched into the warm pool of the first
        group (or `group`): it pauses in `Warmed:Pending:Wait` on the launch hooks; no etcd node
        runs on it."""
        assert self.aws is not None
        if not self._spare_ips:
            raise RuntimeError("no spare address left in this slot")
        seeded = self.groups[group or self.group]
        self.aws.ensure_warm_pool(seeded.group)
        ip = self._spare_ips.pop(0)
        instance_id = launch_instance(self.aws, seeded.subnet_id, None, ip, control)
        # Attached (so EC2 tags it with its group), then moved out of the group into the pool.
        self.aws.client("autoscaling", control).attach_instances(
            AutoScalingGroupName=seeded.group, InstanceIds=[instance_id]
        )
        seeded.instances[instance_id] = ip
        return instance_id, self.aws.start_warm_action(seeded.group, instance_id, LAUNCHING)

    def warm_state(self, instance_id: str) -> str | None:
        """The instance's lifecycle state in its group's warm pool, or None when in none."""
        assert self.aws is not None
        return self.aws.warm_state(instance_id)

    def stop_instance(self, instance_id: str) -> None:
        """The instance is stopped in EC2 (its etcd node stops with it); it keeps its address
        and stays in its group."""
        assert self.aws is not None and self.etcd is not None
        if instance_id in self.etcd.nodes:
            self.etcd.stop_node(instance_id)
        self.aws.stop_instance(instance_id)

    def make_spot(self, instance_id: str) -> str:
        """Makes an instance a Spot instance (the function reads this only at event time, so a
        seeded instance made Spot looks to it like one launched so); returns its request ID."""
        assert self.aws is not None
        return self.aws.make_spot(instance_id)

    def interrupt_spot(
        self, instance_id: str, mark_request: bool = True, shutting_down: bool = False
    ) -> None:
        """AWS's two-minute notice: the Spot request is `marked-for-termination` (unless not
        `mark_request`); with `shutting_down`, the instance is already `shutting-down`."""
        assert self.aws is not None
        self.aws.interrupt_spot(instance_id, mark_request, shutting_down)

    def join(self, instance_id: str, timeout: float = 30.0) -> None:
        """Starts the etcd node of a new instance as its bootstrap script would: it joins as the
        member already added for its peer URL (a learner, when the function added it), with
        `--initial-cluster-state existing` and its `--initial-cluster` read from the member list.
        Returns once the node answers."""
        assert self.etcd is not None
        ip = self.ip_of(instance_id)
        peer = f"http://{ip}:2380"
        members = self.etcd.members()
        if not any(peer in m.peer_urls for m in members):
            raise RuntimeError(f"no etcd member has peer URL {peer}: nothing to join as")
        name = self.member_name(instance_id)
        initial = ",".join(
            f"{name if peer in m.peer_urls else m.name or f'unstarted-{m.id:x}'}={m.peer_urls[0]}"
            for m in members
            if m.peer_urls
        )
        self.etcd.add_node(instance_id, ip, initial, member_name=name)
        self.etcd.wait_until(
            lambda: bool(self.etcd.status(instance_id)), timeout, f"{instance_id} answering"
        )

    def account(self) -> str:
        assert self.aws is not None
        return self.aws.account_id

    def eventbridge(self, action: LifecycleAction, **detail_overrides) -> dict[str, Any]:
        seeded = self.groups.get(action.group, self.seeded)
        assert seeded is not None
        return events.eventbridge(action, self.account(), seeded.group_arn, **detail_overrides)

    def notification(self, action: LifecycleAction) -> dict[str, Any]:
        return events.notification(action, self.account())

    def scheduled(self) -> dict[str, Any]:
        return events.scheduled(self.account())

    def dead_endpoint(self) -> DeadEndpoint:
        dead = DeadEndpoint()
        self._dead.append(dead)
        return dead

    def aws_gate(self, service: str) -> TcpGate:
        """A gate in front of `service` ("autoscaling" or "ec2"); functions spawned from now on
        reach that service through it (`AWS_ENDPOINT_URL_AUTO_SCALING` / `_EC2`)."""
        assert self.aws is not None
        if service not in AWS_ENDPOINT_VARIABLES:
            raise ValueError(f"no endpoint variable for {service!r}")
        if service not in self._aws_gates:
            self._aws_gates[service] = TcpGate((self.aws.host, self.aws.port))
        return self._aws_gates[service]

    @staticmethod
    def closed_port_url() -> str:
        return f"http://127.0.0.1:{free_port()}"
