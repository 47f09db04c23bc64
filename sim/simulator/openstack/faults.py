"""Fault injection: per-endpoint transport/HTTP faults and semantic cloud faults.

Transport/HTTP faults apply to requests whose endpoint name matches the fault's `endpoint`
(an fnmatch pattern such as ``compute.servers.create`` or ``network.*``):

* ``status``: answer with `status` (a body shaped like that service's errors) instead of
  handling the request.
* ``delay``: wait `delay` seconds, then handle the request normally (combines with others).
* ``drop``: reset the TCP connection so the client sees a transport error. With
  `after_processing` the request is handled first (its state change happens) and then the
  answer is lost.

Semantic faults change what the cloud does rather than how the API answers; their endpoint is
implied:

* ``server_error`` (server creates): the server is accepted (202) and then goes to ERROR with a
  fault `{"code": code, "message": message}`, e.g. "No valid host was found.".
* ``quota_exceeded`` (server creates): 403 forbidden with Nova's quota message for `resource`.
* ``never_active`` (server creates): the server stays in BUILD (spawning) forever.
* ``delete_error`` (server deletes): the delete is accepted (204) but the server then goes to
  ERROR with `message` as its fault instead of disappearing.

A fault fires `times` times (null: every time) and, with `probability`, only on that fraction
of the requests it matches.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

HTTP_KINDS = ("status", "delay", "drop")
SEMANTIC_KINDS = {
    "server_error": "compute.servers.create",
    "quota_exceeded": "compute.servers.create",
    "never_active": "compute.servers.create",
    "delete_error": "compute.servers.delete",
}
QUOTA_RESOURCES = ("instances", "cores", "ram")


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    id: int
    endpoint: str
    kind: str = "status"
    times: int | None = 1
    probability: float | None = None
    status: int = 500
    message: str | None = None
    delay: float = 0.0
    after_processing: bool = False
    # server_error: the fault code shown on the server (Nova uses 500 for NoValidHost).
    code: int = 500
    # quota_exceeded: which quota the message names.
    resource: str = "instances"
    fired: int = 0

    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    delay: float
    terminal: Fault | None


class FaultBook:
    def __init__(self, rng: random.Random, endpoints: tuple[str, ...]) -> None:
        self._rng = rng
        self._endpoints = endpoints
        self._next_id = 1
        self.faults: list[Fault] = []

    def add(self, spec: dict[str, Any]) -> Fault:
        kind = spec.get("kind", "status")
        if kind not in HTTP_KINDS and kind not in SEMANTIC_KINDS:
            known_kinds = ", ".join((*HTTP_KINDS, *SEMANTIC_KINDS))
            raise FaultSpecError(f"unknown fault kind {kind!r}; one of {known_kinds}")
        spec = dict(spec)
        if kind in SEMANTIC_KINDS:
            spec.setdefault("endpoint", SEMANTIC_KINDS[kind])
            if spec["endpoint"] != SEMANTIC_KINDS[kind]:
                raise FaultSpecError(f"{kind} applies to {SEMANTIC_KINDS[kind]} only")
        endpoint = spec.get("endpoint")
        if not isinstance(endpoint, str) or not any(
            fnmatch.fnmatchcase(name, endpoint) for name in self._endpoints
        ):
            raise FaultSpecError(
                f"endpoint {endpoint!r} matches no endpoint; see GET /_sim/endpoints"
            )
        known = {f.name for f in fields(Fault)} - {"id", "fired"}
        unknown = set(spec) - known
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {sorted(unknown)}")
        fault = Fault(id=self._next_id, **{k: v for k, v in spec.items() if k in known})
        if fault.probability is not None and not 0 <= fault.probability <= 1:
            raise FaultSpecError("probability must be within [0, 1]")
        if fault.times is not None and fault.times < 0:
            raise FaultSpecError("times must be >= 0 or null")
        if kind == "status" and not 400 <= fault.status <= 599:
            raise FaultSpecError("status must be an HTTP error status (400-599)")
        if kind == "delay" and fault.delay < 0:
            raise FaultSpecError("delay must be >= 0")
        if kind == "quota_exceeded" and fault.resource not in QUOTA_RESOURCES:
            raise FaultSpecError(f"resource must be one of {', '.join(QUOTA_RESOURCES)}")
        self._next_id += 1
        self.faults.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def clear(self) -> None:
        self.faults.clear()

    def _fires(self, fault: Fault) -> bool:
        if fault.exhausted():
            return False
        return fault.probability is None or self._rng.random() < fault.probability

    def decide(self, endpoint: str) -> Decision:
        """Pick the HTTP faults that apply before handling a request, and use them up."""
        delay = 0.0
        terminal: Fault | None = None
        for fault in self.faults:
            if fault.kind not in HTTP_KINDS or not fnmatch.fnmatchcase(endpoint, fault.endpoint):
                continue
            if fault.kind == "delay":
                if self._fires(fault):
                    fault.fired += 1
                    delay += fault.delay
            elif terminal is None and self._fires(fault):
                fault.fired += 1
                terminal = fault
        return Decision(delay=delay, terminal=terminal)

    def take(self, kind: str) -> Fault | None:
        """Use up one semantic fault of this kind, if one fires."""
        for fault in self.faults:
            if fault.kind == kind and self._fires(fault):
                fault.fired += 1
                return fault
        return None
