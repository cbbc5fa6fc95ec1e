"""A local Auto Scaling + EC2 endpoint: moto's server, taught the lifecycle actions it lacks, behind a
fault layer, with a control API for tests.

Why this exists: the function under test talks to Auto Scaling (awsQuery) and EC2 (ec2Query) through
the AWS SDK for Rust. moto 5.2.5 answers both protocols from one port (each request is signed for its
own service, and moto dispatches on the credential scope), but it has no `CompleteLifecycleAction` or
`RecordLifecycleActionHeartbeat` and keeps no lifecycle states. This module adds them the way moto
routes awsQuery actions (to a same-named method on its Auto Scaling response class) and keeps the
paused lifecycle actions itself, so that:

* an action started by a test puts the instance in `Pending:Wait` / `Terminating:Wait`, as
  `DescribeAutoScalingInstances` and `DescribeAutoScalingGroups` then report (the sweep reads it);
* completing it (by token or by instance ID) answers what AWS answers, including the real
  `ValidationError` "No active Lifecycle Action found with token ..." / "... with instance ID ..."
  for an unknown or already completed action, and moves the instance on (a terminating instance
  leaves the group and is terminated in EC2, whatever the result; a launching one goes `InService`
  on CONTINUE and is terminated on ABANDON);
* every completion, heartbeat and refused call is recorded, so tests assert what the function did
  rather than what it said it did;
* a group may have several hooks for one transition (another tool's drain hook next to the etcd
  one): as in AWS, the instance then waits on each of them, each action with its own token, and
  goes on only once all are completed with CONTINUE (an ABANDON ends the wait at once);
* an instance can be made a Spot instance (its `SpotInstanceRequestId` and a Spot request moto can
  describe) and its interruption announced (the request's status `marked-for-termination`), and
  an instance can be stopped in EC2 while it stays in its group;
* a group can have a warm pool (moto keeps its configuration but no instances): an instance going
  back to it on scale-in, or launched into it, waits in `Warmed:Pending:Wait` (a terminate or a
  launch action, the same state for both), out of the group's own listing; `DescribeWarmPool`
  lists the pool's instances, in pages of `warm_pool_page_size`, and once its actions are done
  the instance rests in `Warmed:Stopped` (stopped in EC2).

In front of moto sits a WSGI fault layer: per service (the SigV4 credential scope names it) and
optionally per Action, answer the next N requests with a 503, with the service's real throttling
error (`Throttling` for Auto Scaling, `RequestLimitExceeded` for EC2), or stall them before passing
them on. A rendezvous holds the next N requests of one Action until all N have arrived, then lets
them through together: two function processes then decide from the same moment on. Every request
is logged (service, Action, time, and what the layer did with it) so tests can
count calls, e.g. to prove an open circuit made none.

Each server uses its own AWS account ID (moto honours the `x-moto-account-id` header, which the
layer sets), so several servers in one process never share state: tests can run side by side.

The control API is a Python object (`AwsServer`) for in-process use and the same operations over
HTTP under `/_stack/` for anything else (curl, a Rust test, a second process):

    GET  /_stack/requests                 every request seen: service, action, fault applied
    GET  /_stack/lifecycle                active actions, completions, heartbeats, refusals
    POST /_stack/lifecycle/start          {"group", "instance_id", "transition", "hook"?} -> action
    POST /_stack/faults                   {"service", "kind", "times", "action"?, "stall_s"?}
    DELETE /_stack/faults                 clear all faults

Run it alone with `python -m tests.stack.aws --port 5000` (prints the endpoint).
"""

from __future__ import annotations

import io
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

from moto.autoscaling.exceptions import ValidationError as _MotoValidationError

REGION = "us-east-1"
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
# moto runs instances from any image ID; listing its catalogue of real AMIs costs a second.
IMAGE_ID = "ami-0123456789abcdef0"
WAIT_STATE = {LAUNCHING: "Pending:Wait", TERMINATING: "Terminating:Wait"}
# Going back to the warm pool on scale-in (a terminate action) and launching into it (a launch
# action) wait in the same state.
WARM_WAIT = "Warmed:Pending:Wait"
WARM_STOPPED = "Warmed:Stopped"

_account_ids = itertools.count(100000000001)
_account_lock = threading.Lock()


def _next_account_id() -> str:
    with _account_lock:
        return f"{next(_account_ids):012d}"


# --------------------------------------------------------------------------------------------
# Lifecycle actions
# --------------------------------------------------------------------------------------------


class LifecycleActionNotFound(_MotoValidationError):
    """What AWS answers when no paused action matches: a ValidationError (HTTP 400, Sender).

    A subclass of moto's own Auto Scaling ValidationError, so moto serialises it as AWS does."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class LifecycleAction:
    token: str
    group: str
    hook: str
    instance_id: str
    transition: str
    started: float = field(default_factory=time.time)
    # In a warm pool (going back to it, or launched into it): its events' Destination is
    # `WarmPool`, as AWS sends them.
    warm: bool = False


class LifecycleRegistry:
    """Paused lifecycle actions of one account, and a record of every call made on them."""

    def __init__(self, account_id: str, region: str = REGION):
        self.account_id = account_id
        self.region = region
        self._lock = threading.RLock()
        self._active: dict[str, LifecycleAction] = {}
        # (group, transition) -> the hook `start` answers with when none is named: the etcd
        # hook `seed_group` created (another tool's hooks are listed first on purpose).
        self.primary_hooks: dict[tuple[str, str], str] = {}
        self.completions: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []
        # Warm pools: group -> {instance ID: lifecycle state}, in the order instances entered.
        self.warm_pools: dict[str, dict[str, str]] = {}
        # Instances per DescribeWarmPool page (AWS: at most 50); 1 makes every instance a page.
        self.warm_pool_page_size = 50

    # -- moto's models -------------------------------------------------------------------------
    def _backends(self):
        from moto.autoscaling.models import autoscaling_backends

        asg = autoscaling_backends[self.account_id][self.region]
        return asg, asg.ec2_backend

    def _instance_state(self, group_name: str, instance_id: str):
        asg, _ = self._backends()
        group = asg.autoscaling_groups.get(group_name)
        if group is None:
            raise KeyError(f"no Auto Scaling group {group_name!r}")
        for state in group.instance_states:
            if state.instance.id == instance_id:
                return group, state
        raise KeyError(f"instance {instance_id} is not in group {group_name!r}")

    def _hooks_for(self, group_name: str, transition: str) -> list[str]:
        """The group's hooks for `transition`, in the order DescribeLifecycleHooks lists them."""
        asg, _ = self._backends()
        hooks = [
            h.name
            for h in asg.lifecycle_hooks.values()
            if h.auto_scaling_group_name == group_name and h.lifecycle_transition == transition
        ]
        if not hooks:
            raise KeyError(f"group {group_name!r} has no {transition} lifecycle hook")
        return hooks

    # -- what a test does -------------------------------------------------------------------------
    def start(
        self, group: str, instance_id: str, transition: str, hook: str | None = None
    ) -> LifecycleAction:
        """Pauses `instance_id` on the hooks of `group` for `transition`, as Auto Scaling does at
        scale-in or launch: one action per hook, each with its own token. Returns the action of
        `hook` (default: the group's primary hook for the transition, else the first listed)."""
        if transition not in WAIT_STATE:
            raise ValueError(f"transition must be {LAUNCHING} or {TERMINATING}, not {transition!r}")
        with self._lock:
            _, state = self._instance_state(group, instance_id)
            hooks = self._hooks_for(group, transition)
            hook = hook or self.primary_hooks.get((group, transition)) or hooks[0]
            if hook not in hooks:
                raise KeyError(f"group {group!r} has no {transition} hook {hook!r}")
            for action in self._active.values():
                if action.instance_id == instance_id:
                    raise ValueError(f"{instance_id} already has an active lifecycle action")
            mine = None
            for name in hooks:
                action = LifecycleAction(str(uuid.uuid4()), group, name, instance_id, transition)
                self._active[action.token] = action
                if name == hook:
                    mine = action
            state.lifecycle_state = WAIT_STATE[transition]
            assert mine is not None
            return mine

    def start_warm(
        self, group: str, instance_id: str, transition: str, hook: str | None = None
    ) -> LifecycleAction:
        """Pauses `instance_id` in the warm pool of `group`, in `Warmed:Pending:Wait`: going back
        to the pool on scale-in (TERMINATING) or launched into it (LAUNCHING), one action per hook
        of `group` for `transition`, as `start`. An instance the group lists leaves that listing
        (the pool's instances are not the group's); it keeps its group tag in EC2. The group needs
        a warm pool (`ensure_warm_pool`). Returns the action of `hook` (as `start`)."""
        if transition not in WAIT_STATE:
            raise ValueError(f"transition must be {LAUNCHING} or {TERMINATING}, not {transition!r}")
        with self._lock:
            asg, _ = self._backends()
            seeded = asg.autoscaling_groups.get(group)
            if seeded is None or seeded.get_warm_pool() is None:
                raise KeyError(f"group {group!r} has no warm pool")
            hooks = self._hooks_for(group, transition)
            hook = hook or self.primary_hooks.get((group, transition)) or hooks[0]
            if hook not in hooks:
                raise KeyError(f"group {group!r} has no {transition} hook {hook!r}")
            for action in self._active.values():
                if action.instance_id == instance_id:
                    raise ValueError(f"{instance_id} already has an active lifecycle action")
            before = len(seeded.instance_states)
            seeded.instance_states = [
                s for s in seeded.instance_states if s.instance.id != instance_id
            ]
            if len(seeded.instance_states) != before:
                seeded.desired_capacity = max(0, (seeded.desired_capacity or 0) - 1)
            self.warm_pools.setdefault(group, {})[instance_id] = WARM_WAIT
            mine = None
            for name in hooks:
                action = LifecycleAction(
                    str(uuid.uuid4()), group, name, instance_id, transition, warm=True
                )
                self._active[action.token] = action
                if name == hook:
                    mine = action
            assert mine is not None
            return mine

    def warm_state(self, instance_id: str) -> str | None:
        """The lifecycle state of `instance_id` in a warm pool, or None when in none."""
        with self._lock:
            for pool in self.warm_pools.values():
                if instance_id in pool:
                    return pool[instance_id]
            return None

    def warm_instances(self, group: str) -> list[dict[str, Any]]:
        """The warm pool's instances of `group`, as DescribeWarmPool lists them."""
        with self._lock:
            _, ec2 = self._backends()
            out = []
            for instance_id, state in self.warm_pools.get(group, {}).items():
                instance = ec2.get_instance(instance_id)
                out.append(
                    {
                        "InstanceId": instance_id,
                        "InstanceType": instance.instance_type,
                        "AvailabilityZone": instance.availability_zone,
                        "LifecycleState": state,
                        "HealthStatus": "Healthy",
                        "ProtectedFromScaleIn": False,
                    }
                )
            return out

    def actions_of(self, instance_id: str) -> list[LifecycleAction]:
        """The active actions of one instance (one per hook it waits on)."""
        with self._lock:
            return [a for a in self._active.values() if a.instance_id == instance_id]

    def active(self) -> list[LifecycleAction]:
        with self._lock:
            return list(self._active.values())

    def terminate_outside_hooks(self, instance_id: str) -> None:
        """Terminates an instance through the EC2 API: no hook runs, the group just loses it."""
        with self._lock:
            asg, ec2 = self._backends()
            for group in asg.autoscaling_groups.values():
                before = len(group.instance_states)
                group.instance_states = [
                    s for s in group.instance_states if s.instance.id != instance_id
                ]
                if len(group.instance_states) != before:
                    group.desired_capacity = max(0, (group.desired_capacity or 0) - 1)
            for token, action in list(self._active.items()):
                if action.instance_id == instance_id:
                    del self._active[token]
            ec2.terminate_instances([instance_id])

    def stop_instance(self, instance_id: str) -> None:
        """Stops an instance through the EC2 API: it keeps its private IP and stays in its group
        (Auto Scaling replaces it later, through the terminate hook)."""
        with self._lock:
            _, ec2 = self._backends()
            ec2.stop_instances([instance_id])

    def make_spot(self, instance_id: str) -> str:
        """Makes `instance_id` a Spot instance, as if it had been launched from a Spot request:
        `InstanceLifecycle: spot`, a `SpotInstanceRequestId`, and that request (`active`,
        `fulfilled`) in DescribeSpotInstanceRequests. Returns the request ID."""
        from moto.ec2.models.spot_requests import SpotInstanceRequest
        from moto.ec2.utils import random_spot_request_id

        class _Adopted(SpotInstanceRequest):
            """A Spot request for an instance that already runs (moto's would launch another)."""

            def __init__(self, instance, *args, **kwargs):
                self._adopted = instance
                super().__init__(*args, **kwargs)

            def launch_instance(self):
                return self._adopted

        with self._lock:
            _, ec2 = self._backends()
            instance = ec2.get_instance(instance_id)
            request_id = random_spot_request_id()
            request = _Adopted(
                instance, ec2, request_id, "0.05", instance.image_id, "one-time", None, None,
                None, None, "", [], None, instance.instance_type, None, None, None, False,
                instance.subnet_id, {}, None, "terminate",
            )  # fmt: skip
            ec2.spot_instance_requests[request_id] = request
            instance.lifecycle = "spot"
            # moto serialises `SpotInstanceRequestId` from this attribute.
            instance.spot_instance_request_id = request_id
            return request_id

    def interrupt_spot(
        self, instance_id: str, mark_request: bool = True, shutting_down: bool = False
    ) -> None:
        """Announces the Spot interruption of `instance_id`: its request's status becomes
        `marked-for-termination` (what AWS shows during the two-minute notice; not with
        `mark_request=False`); with `shutting_down`, the instance itself is `shutting-down`."""
        with self._lock:
            _, ec2 = self._backends()
            instance = ec2.get_instance(instance_id)
            request_id = getattr(instance, "spot_instance_request_id", None)
            if request_id is None:
                raise ValueError(f"{instance_id} is not a Spot instance (see make_spot)")
            if mark_request:
                request = ec2.spot_instance_requests[request_id]
                request._status_code = "marked-for-termination"
                request.status_message = "Your Spot Instance has been marked for termination."
            if shutting_down:
                instance._state.name = "shutting-down"
                instance._state.code = 32

    # -- what the function does (called from moto's response class) ------------------------------
    def _find(self, group: str, hook: str, token: str | None, instance_id: str | None):
        if token:
            action = self._active.get(token)
            if action is None or action.group != group or action.hook != hook:
                raise LifecycleActionNotFound(f"No active Lifecycle Action found with token {token}")
            if instance_id and action.instance_id != instance_id:
                raise LifecycleActionNotFound(f"No active Lifecycle Action found with token {token}")
            return action
        if instance_id:
            for action in self._active.values():
                if (
                    action.instance_id == instance_id
                    and action.group == group
                    and action.hook == hook
                ):
                    return action
            raise LifecycleActionNotFound(
                f"No active Lifecycle Action found with instance ID {instance_id}"
            )
        raise LifecycleActionNotFound(
            "Either LifecycleActionToken or InstanceId must be specified"
        )

    def complete(
        self, group: str, hook: str, token: str | None, instance_id: str | None, result: str
    ) -> LifecycleAction:
        with self._lock:
            call = {
                "call": "CompleteLifecycleAction",
                "group": group,
                "hook": hook,
                "token": token,
                "instance_id": instance_id,
                "result": result,
                "time": time.time(),
            }
            if result not in ("CONTINUE", "ABANDON"):
                message = (
                    f"1 validation error detected: Value '{result}' at 'lifecycleActionResult' "
                    "failed to satisfy constraint: Member must satisfy enum value set: "
                    "[CONTINUE, ABANDON]"
                )
                self.refusals.append({**call, "message": message})
                raise LifecycleActionNotFound(message)
            try:
                action = self._find(group, hook, token, instance_id)
            except LifecycleActionNotFound as e:
                self.refusals.append({**call, "message": e.message})
                raise
            del self._active[action.token]
            self.completions.append(
                {
                    **asdict(action),
                    "result": result,
                    "by": "token" if token else "instance_id",
                    "time": call["time"],
                }
            )
            others = [a for a in self._active.values() if a.instance_id == action.instance_id]
            if result == "ABANDON":
                # ABANDON ends the wait at once: the remaining hooks are skipped.
                for other in others:
                    del self._active[other.token]
                others = []
            if not others:
                self._move_on(action, result)
            return action

    def heartbeat(
        self, group: str, hook: str, token: str | None, instance_id: str | None
    ) -> LifecycleAction:
        with self._lock:
            call = {
                "call": "RecordLifecycleActionHeartbeat",
                "group": group,
                "hook": hook,
                "token": token,
                "instance_id": instance_id,
                "time": time.time(),
            }
            try:
                action = self._find(group, hook, token, instance_id)
            except LifecycleActionNotFound as e:
                self.refusals.append({**call, "message": e.message})
                raise
            self.heartbeats.append(
                {**asdict(action), "by": "token" if token else "instance_id", "time": call["time"]}
            )
            return action

    def _move_on(self, action: LifecycleAction, result: str) -> None:
        """What Auto Scaling does once the hook is released."""
        pool = self.warm_pools.get(action.group, {})
        if pool.get(action.instance_id) == WARM_WAIT:
            _, ec2 = self._backends()
            if action.transition == LAUNCHING and result == "ABANDON":
                del pool[action.instance_id]
                ec2.terminate_instances([action.instance_id])
                return
            # Into the pool (back on scale-in, or new): it rests there, stopped.
            pool[action.instance_id] = WARM_STOPPED
            ec2.stop_instances([action.instance_id])
            return
        group, state = self._instance_state(action.group, action.instance_id)
        if action.transition == LAUNCHING and result == "CONTINUE":
            state.lifecycle_state = "InService"
            return
        # Terminating (CONTINUE or ABANDON both terminate), or a launch abandoned.
        _, ec2 = self._backends()
        group.instance_states = [s for s in group.instance_states if s is not state]
        group.desired_capacity = max(0, (group.desired_capacity or 0) - 1)
        ec2.terminate_instances([action.instance_id])

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "active": [asdict(a) for a in self._active.values()],
                "completions": list(self.completions),
                "heartbeats": list(self.heartbeats),
                "refusals": list(self.refusals),
            }


_registries: dict[tuple[str, str], LifecycleRegistry] = {}
_registries_lock = threading.Lock()


def _registry(account_id: str, region: str) -> LifecycleRegistry:
    with _registries_lock:
        key = (account_id, region)
        if key not in _registries:
            _registries[key] = LifecycleRegistry(account_id, region)
        return _registries[key]


_patched = False


def install_lifecycle_actions() -> None:
    """Adds the two lifecycle actions to moto's Auto Scaling response class, and the warm pool's
    instances to its DescribeWarmPool (idempotent)."""
    global _patched
    if _patched:
        return
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import ActionResult, EmptyResult

    def complete_lifecycle_action(self):
        _registry(self.current_account, self.region).complete(
            group=self._get_param("AutoScalingGroupName"),
            hook=self._get_param("LifecycleHookName"),
            token=self._get_param("LifecycleActionToken"),
            instance_id=self._get_param("InstanceId"),
            result=self._get_param("LifecycleActionResult"),
        )
        return EmptyResult()

    def record_lifecycle_action_heartbeat(self):
        _registry(self.current_account, self.region).heartbeat(
            group=self._get_param("AutoScalingGroupName"),
            hook=self._get_param("LifecycleHookName"),
            token=self._get_param("LifecycleActionToken"),
            instance_id=self._get_param("InstanceId"),
        )
        return EmptyResult()

    def describe_warm_pool(self):
        """moto's answer (the pool's configuration, none without a pool) with the pool's
        instances, paged: `NextToken` is the index of the next instance."""
        group = self._get_param("AutoScalingGroupName")
        registry = _registry(self.current_account, self.region)
        configuration = self.autoscaling_backend.describe_warm_pool(group_name=group)
        instances = registry.warm_instances(group)
        first = int(self._get_param("NextToken") or 0)
        size = min(int(self._get_param("MaxRecords") or 50), registry.warm_pool_page_size)
        result: dict[str, Any] = {
            "WarmPoolConfiguration": configuration,
            "Instances": instances[first : first + size],
        }
        if first + size < len(instances):
            result["NextToken"] = str(first + size)
        return ActionResult(result)

    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action
    AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat
    AutoScalingResponse.describe_warm_pool = describe_warm_pool
    _patched = True


# --------------------------------------------------------------------------------------------
# Wire format of errors
# --------------------------------------------------------------------------------------------


def query_error(code: str, message: str, sender: bool = True) -> bytes:
    """An awsQuery error body (Auto Scaling)."""
    kind = "Sender" if sender else "Receiver"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
        f"<Error><Type>{kind}</Type><Code>{code}</Code><Message>{_xml(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()


def ec2_error(code: str, message: str) -> bytes:
    """An ec2Query error body."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{_xml(message)}</Message></Error>"
        f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------
# Fault layer
# --------------------------------------------------------------------------------------------

FAULT_KINDS = ("503", "throttle", "stall")
SERVICES = ("autoscaling", "ec2")


@dataclass
class Fault:
    """Answer the next `times` matching requests this way, then let them through. With
    `lasts_s`, the fault also ends that many seconds after it is injected, whatever is left of
    `times`: a burst of throttling or of 5xx, as AWS gives them, rather than the next N requests
    whenever they come (a function whose breaker spaces its requests would otherwise meet the
    same burst for minutes, which is an outage, not a burst)."""

    service: str
    kind: str
    times: int
    action: str | None = None
    stall_s: float = 0.0
    lasts_s: float | None = None
    until: float | None = None  # epoch seconds, set from `lasts_s` when injected

    def __post_init__(self):
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}, not {self.service!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if self.times < 1:
            raise ValueError("times must be at least 1")
        if self.lasts_s is not None and self.lasts_s <= 0:
            raise ValueError("lasts_s must be positive")

    def over(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def matches(self, service: str, action: str | None) -> bool:
        return self.service == service and (self.action is None or self.action == action)


class _Rendezvous:
    def __init__(self, service: str, action: str, parties: int, timeout_s: float):
        self.service = service
        self.action = action
        self.seats = parties
        self.timeout_s = timeout_s
        self.barrier = threading.Barrier(parties)

    def matches(self, service: str, action: str | None) -> bool:
        return self.service == service and self.action == action


_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


def service_of(environ: dict[str, Any]) -> str:
    """The service a request was signed for: `autoscaling`, `ec2`, or `unknown`."""
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1) if match else "unknown"


class FaultLayer:
    """WSGI middleware: control API, request log, faults, then moto."""

    def __init__(self, app: Callable, account_id: str, registry: LifecycleRegistry):
        self.app = app
        self.account_id = account_id
        self.registry = registry
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._watchers: list[tuple[str, str | None, Callable[[dict[str, Any]], None]]] = []
        self._rendezvous: list[_Rendezvous] = []
        self.requests: list[dict[str, Any]] = []

    # -- Python control API ----------------------------------------------------------------------
    def on_request(
        self, service: str, action: str | None, callback: Callable[[dict[str, Any]], None]
    ) -> None:
        """Calls `callback(entry)` once, when the next matching request arrives (before any fault
        is applied to it): a test can start a fault at an exact point of the function's flow."""
        with self._lock:
            self._watchers.append((service, action, callback))

    def rendezvous(self, service: str, action: str, parties: int, timeout_s: float = 10.0) -> None:
        """Holds each of the next `parties` requests of `service`/`action` until all of them
        have arrived (or `timeout_s` passed), then passes them on together."""
        if parties < 2:
            raise ValueError("a rendezvous needs at least two parties")
        with self._lock:
            self._rendezvous.append(_Rendezvous(service, action, parties, timeout_s))

    def _meet(self, service: str, action: str | None) -> str | None:
        with self._lock:
            meeting = next(
                (r for r in self._rendezvous if r.matches(service, action) and r.seats > 0), None
            )
            if meeting is None:
                return None
            meeting.seats -= 1
            if meeting.seats == 0:
                self._rendezvous.remove(meeting)
        try:
            meeting.barrier.wait(meeting.timeout_s)
            return "rendezvous"
        except threading.BrokenBarrierError:
            return "rendezvous-timeout"

    def inject(self, fault: Fault) -> None:
        if fault.lasts_s is not None:
            fault.until = time.time() + fault.lasts_s
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            for meeting in self._rendezvous:
                meeting.barrier.abort()
            self._rendezvous.clear()

    def pending_faults(self) -> list[Fault]:
        with self._lock:
            self._drop_ended()
            return list(self._faults)

    def _drop_ended(self) -> None:
        now = time.time()
        self._faults = [f for f in self._faults if not f.over(now)]

    def _take_fault(self, service: str, action: str | None) -> Fault | None:
        with self._lock:
            self._drop_ended()
            for fault in self._faults:
                if fault.matches(service, action):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- WSGI --------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable):
        from werkzeug.wsgi import get_input_stream

        path = environ.get("PATH_INFO", "")
        body = get_input_stream(environ).read()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)

        if path.startswith("/_stack/"):
            return self._control(environ, body, start_response)
        if environ.get("HTTP_X_STACK_CONTROL") == "1":  # the harness, not the function
            environ["HTTP_X_MOTO_ACCOUNT_ID"] = self.account_id
            return self.app(environ, start_response)

        service = service_of(environ)
        form = parse_qs(body.decode("utf-8", "replace")) if body else {}
        action = (form.get("Action") or [None])[0]
        entry = {"time": time.time(), "service": service, "action": action, "fault": None}
        for key in (
            "InstanceId",
            "LifecycleActionToken",
            "LifecycleActionResult",
            "LifecycleHookName",
            "AutoScalingGroupName",
        ):
            if key in form:
                entry[key] = form[key][0]
        if environ.get("HTTP_X_AMZ_SECURITY_TOKEN"):
            entry["session_token"] = environ["HTTP_X_AMZ_SECURITY_TOKEN"]
        with self._lock:
            self.requests.append(entry)
            due = [w for w in self._watchers if w[0] == service and w[1] in (None, action)]
            self._watchers = [w for w in self._watchers if w not in due]
        for _, _, callback in due:
            callback(entry)

        met = self._meet(service, action)
        if met is not None:
            entry["fault"] = met
        fault = self._take_fault(service, action)
        if fault is not None:
            entry["fault"] = fault.kind
            if fault.kind == "stall":
                time.sleep(fault.stall_s)
            else:
                return self._fault_answer(service, fault.kind, start_response)

        environ["HTTP_X_MOTO_ACCOUNT_ID"] = self.account_id
        return self.app(environ, start_response)

    @staticmethod
    def _fault_answer(service: str, kind: str, start_response: Callable):
        if service == "ec2":
            if kind == "throttle":
                status, body = "503 Service Unavailable", ec2_error(
                    "RequestLimitExceeded", "Request limit exceeded."
                )
            else:
                status, body = "503 Service Unavailable", ec2_error(
                    "Unavailable", "The service is unavailable. Please try again shortly."
                )
        else:
            if kind == "throttle":
                status, body = "400 Bad Request", query_error("Throttling", "Rate exceeded")
            else:
                status, body = "503 Service Unavailable", query_error(
                    "ServiceUnavailable", "Service is unavailable", sender=False
                )
        start_response(
            status,
            [
                ("Content-Type", "text/xml"),
                ("Content-Length", str(len(body))),
                ("x-amzn-RequestId", str(uuid.uuid4())),
            ],
        )
        return [body]

    def _control(self, environ, body: bytes, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        try:
            data = json.loads(body) if body else {}
            if (method, path) == ("GET", "/_stack/requests"):
                with self._lock:
                    answer: Any = list(self.requests)
            elif (method, path) == ("GET", "/_stack/lifecycle"):
                answer = self.registry.snapshot()
            elif (method, path) == ("POST", "/_stack/lifecycle/start"):
                answer = asdict(
                    self.registry.start(
                        data["group"], data["instance_id"], data["transition"], data.get("hook")
                    )
                )
            elif (method, path) == ("POST", "/_stack/faults"):
                self.inject(Fault(**data))
                answer = {"faults": [asdict(f) for f in self.pending_faults()]}
            elif (method, path) == ("DELETE", "/_stack/faults"):
                self.clear_faults()
                answer = {"faults": []}
            else:
                return _json(start_response, "404 Not Found", {"error": f"no {method} {path}"})
        except (KeyError, ValueError, TypeError) as e:
            return _json(start_response, "400 Bad Request", {"error": str(e)})
        return _json(start_response, "200 OK", answer)


def _json(start_response, status: str, data: Any):
    body = json.dumps(data).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a "dead" endpoint: connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class AwsServer:
    """moto + lifecycle actions + fault layer on a loopback port, in a thread of this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = REGION):
        self.host = host
        self.port = port
        self.region = region
        self.account_id = _next_account_id()
        self.registry = _registry(self.account_id, region)
        self._server = None
        self._thread: threading.Thread | None = None
        self.layer: FaultLayer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "AwsServer":
        install_lifecycle_actions()
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args, **kwargs):  # one line per request drowns test output
                pass

        moto_app = DomainDispatcherApplication(create_backend_app)
        self.layer = FaultLayer(moto_app, self.account_id, self.registry)
        self._server = make_server(
            self.host, self.port, self.layer, threaded=True, request_handler=QuietHandler
        )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"moto-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "AwsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- boto3 clients for seeding and assertions ---------------------------------------------------
    def client(self, service: str, control: bool = False):
        """A boto3 client. With `control`, its requests carry `x-stack-control: 1`: the fault
        layer neither faults nor records them (a harness that changes the world while faults are
        armed for the function, e.g. a chaos run launching an instance)."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        if control:

            def mark(request, **_):
                request.headers["x-stack-control"] = "1"

            client.meta.events.register("before-sign.*.*", mark)
        return client

    # -- control (Python side) ------------------------------------------------------------------------
    def start_lifecycle_action(
        self, group: str, instance_id: str, transition: str, hook: str | None = None
    ) -> LifecycleAction:
        return self.registry.start(group, instance_id, transition, hook)

    def completions(self) -> list[dict[str, Any]]:
        return self.registry.snapshot()["completions"]

    def heartbeats(self) -> list[dict[str, Any]]:
        return self.registry.snapshot()["heartbeats"]

    def refusals(self) -> list[dict[str, Any]]:
        return self.registry.snapshot()["refusals"]

    def active_actions(self) -> list[LifecycleAction]:
        return self.registry.active()

    def inject(
        self,
        service: str,
        kind: str,
        times: int,
        action: str | None = None,
        stall_s: float = 0.0,
        lasts_s: float | None = None,
    ) -> None:
        assert self.layer is not None, "start() the server first"
        self.layer.inject(Fault(service, kind, times, action, stall_s, lasts_s))

    def clear_faults(self) -> None:
        assert self.layer is not None
        self.layer.clear_faults()

    def rendezvous(self, service: str, action: str, parties: int, timeout_s: float = 10.0) -> None:
        """See `FaultLayer.rendezvous`."""
        assert self.layer is not None, "start() the server first"
        self.layer.rendezvous(service, action, parties, timeout_s)

    def on_request(
        self, service: str, action: str | None, callback: Callable[[dict[str, Any]], None]
    ) -> None:
        """See `FaultLayer.on_request`."""
        assert self.layer is not None, "start() the server first"
        self.layer.on_request(service, action, callback)

    def pending_faults(self) -> list[Fault]:
        assert self.layer is not None
        return self.layer.pending_faults()

    def requests(
        self, service: str | None = None, action: str | None = None
    ) -> list[dict[str, Any]]:
        assert self.layer is not None
        with self.layer._lock:
            seen = list(self.layer.requests)
        return [
            r
            for r in seen
            if (service is None or r["service"] == service)
            and (action is None or r["action"] == action)
        ]

    def count(self, service: str | None = None, action: str | None = None) -> int:
        return len(self.requests(service, action))

    def counts(self) -> dict[str, int]:
        """Requests per `service:Action`."""
        out: dict[str, int] = {}
        for r in self.requests():
            key = f"{r['service']}:{r['action']}"
            out[key] = out.get(key, 0) + 1
        return out

    def terminate_outside_hooks(self, instance_id: str) -> None:
        self.registry.terminate_outside_hooks(instance_id)

    def stop_instance(self, instance_id: str) -> None:
        self.registry.stop_instance(instance_id)

    def make_spot(self, instance_id: str) -> str:
        return self.registry.make_spot(instance_id)

    def interrupt_spot(
        self, instance_id: str, mark_request: bool = True, shutting_down: bool = False
    ) -> None:
        self.registry.interrupt_spot(instance_id, mark_request, shutting_down)

    def actions_of(self, instance_id: str) -> list[LifecycleAction]:
        return self.registry.actions_of(instance_id)

    def ensure_warm_pool(self, group: str) -> None:
        """Gives `group` a warm pool (stopped instances, reused on scale-in) unless it has one."""
        asg = self.client("autoscaling", control=True)
        if "WarmPoolConfiguration" not in asg.describe_warm_pool(AutoScalingGroupName=group):
            asg.put_warm_pool(
                AutoScalingGroupName=group,
                MinSize=0,
                PoolState="Stopped",
                InstanceReusePolicy={"ReuseOnScaleIn": True},
            )

    def start_warm_action(
        self, group: str, instance_id: str, transition: str, hook: str | None = None
    ) -> LifecycleAction:
        """See `LifecycleRegistry.start_warm`."""
        return self.registry.start_warm(group, instance_id, transition, hook)

    def warm_state(self, instance_id: str) -> str | None:
        """The instance's lifecycle state in a warm pool, or None when in none."""
        return self.registry.warm_state(instance_id)

    def lifecycle_state(self, instance_id: str) -> str | None:
        """What DescribeAutoScalingInstances reports, or None once the instance left its group."""
        found = self.client("autoscaling").describe_auto_scaling_instances(
            InstanceIds=[instance_id]
        )["AutoScalingInstances"]
        return found[0]["LifecycleState"] if found else None

    def ec2_state(self, instance_id: str) -> str:
        r = self.client("ec2").describe_instances(InstanceIds=[instance_id])
        return r["Reservations"][0]["Instances"][0]["State"]["Name"]


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


@dataclass
class Network:
    """The VPC and subnet every group of a stack launches into."""

    vpc_id: str
    subnet_id: str


@dataclass
class SeededGroup:
    """What `seed_group` created: the names tests need to build events and assertions."""

    group: str
    group_arn: str
    vpc_id: str
    subnet_id: str
    launch_template: str
    launch_hook: str
    terminate_hook: str
    instances: dict[str, str]  # instance ID -> private IP, in creation order
    # Other tools' hooks on the group (name -> transition), listed before the etcd hooks.
    foreign_hooks: dict[str, str] = field(default_factory=dict)


def seed_network(server: AwsServer, subnet_cidr: str, vpc_cidr: str = "127.0.0.0/16") -> Network:
    """A VPC and one subnet (loopback addresses work: see FACTS.md)."""
    ec2 = server.client("ec2")
    vpc_id = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock=subnet_cidr)["Subnet"]
    return Network(vpc_id, subnet["SubnetId"])


def seed_group(
    server: AwsServer,
    group: str,
    ips: list[str],
    vpc_cidr: str = "127.0.0.0/16",
    subnet_cidr: str | None = None,
    heartbeat_timeout: int = 300,
    default_result: str = "ABANDON",
    network: Network | None = None,
    foreign_hooks: dict[str, str] | None = None,
) -> SeededGroup:
    """A group with launch and terminate hooks and one instance per IP, attached; in `network`,
    or in a new VPC and subnet. `foreign_hooks` (name -> transition) are another tool's hooks on
    the same group, created first so DescribeLifecycleHooks lists them before the etcd hooks."""
    asg = server.client("autoscaling")
    if network is None:
        if subnet_cidr is None:
            first = ips[0].split(".")
            subnet_cidr = f"{first[0]}.{first[1]}.{first[2]}.0/24"
        network = seed_network(server, subnet_cidr, vpc_cidr)
    template = f"{group}-lt"
    server.client("ec2").create_launch_template(
        LaunchTemplateName=template,
        LaunchTemplateData={"ImageId": IMAGE_ID, "InstanceType": "t3.small"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group,
        LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
        MinSize=0,
        MaxSize=len(ips) + 3,
        DesiredCapacity=0,
        VPCZoneIdentifier=network.subnet_id,
    )
    foreign_hooks = dict(foreign_hooks or {})
    own = {LAUNCHING: f"{group}-launch", TERMINATING: f"{group}-terminate"}
    for name, transition in [*foreign_hooks.items(), *((n, t) for t, n in own.items())]:
        asg.put_lifecycle_hook(
            AutoScalingGroupName=group,
            LifecycleHookName=name,
            LifecycleTransition=transition,
            HeartbeatTimeout=heartbeat_timeout,
            DefaultResult=default_result,
        )
    for transition, name in own.items():
        server.registry.primary_hooks[(group, transition)] = name
    instances = {}
    for ip in ips:
        instances[launch_instance(server, network.subnet_id, IMAGE_ID, ip)] = ip
    if instances:
        asg.attach_instances(AutoScalingGroupName=group, InstanceIds=list(instances))
    arn = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0][
        "AutoScalingGroupARN"
    ]
    return SeededGroup(
        group=group,
        group_arn=arn,
        vpc_id=network.vpc_id,
        subnet_id=network.subnet_id,
        launch_template=template,
        launch_hook=own[LAUNCHING],
        terminate_hook=own[TERMINATING],
        instances=instances,
        foreign_hooks=foreign_hooks,
    )


def launch_instance(
    server: AwsServer,
    subnet_id: str,
    image_id: str | None,
    ip: str,
    control: bool = False,
    spot: bool = False,
) -> str:
    """An instance on `ip`; with `spot`, a Spot instance with its Spot request (`make_spot`)."""
    r = server.client("ec2", control).run_instances(
        ImageId=image_id or IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        SubnetId=subnet_id,
        PrivateIpAddress=ip,
    )
    instance_id = r["Instances"][0]["InstanceId"]
    if spot:
        server.make_spot(instance_id)
    return instance_id


def launch_into_group(
    server: AwsServer, seeded: SeededGroup, ip: str, control: bool = False, spot: bool = False
) -> tuple[str, LifecycleAction]:
    """A scale-out: a new instance joins the group and pauses on its launch hooks (`control`: see
    `AwsServer.client`); the action returned is the etcd hook's."""
    instance_id = launch_instance(server, seeded.subnet_id, None, ip, control, spot)
    server.client("autoscaling", control).attach_instances(
        AutoScalingGroupName=seeded.group, InstanceIds=[instance_id]
    )
    seeded.instances[instance_id] = ip
    action = server.start_lifecycle_action(seeded.group, instance_id, LAUNCHING)
    return instance_id, action


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args()
    server = AwsServer(args.host, args.port).start()
    print(f"{server.endpoint} (account {server.account_id}, region {server.region})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
