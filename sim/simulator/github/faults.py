"""Per-endpoint fault injection (sim/README.md, Faults).

A fault fires on a request to its endpoint `times` times (None: every time) and, when
`probability` is set, only on that fraction of matching requests. Kinds:

* ``status``: answer with `status` instead of handling the request. The body is JSON
  (`type_name` + `message` as an Actions exception, or a GitHub-style `{"message"}` when
  `type_name` is empty), text/plain, or empty; `retry_after` adds a Retry-After header.
* ``delay``: sleep `delay` seconds, then handle the request normally (combines with others).
* ``drop``: abort the TCP connection with a reset, so the client sees a transport error. With
  `after_processing` the request is handled first (state changes happen) and then the answer is
  lost, like an ack whose response never arrived.
* ``bom``: prefix the next successful, non-empty body with a UTF-8 byte-order mark.
* ``empty_queue_url``: the next successful session create/refresh answers `messageQueueUrl: ""`.
* ``duplicate_result``: the next successful name lookup answers count 2 (the match twice).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

ENDPOINTS = (
    "access_tokens",
    "registration_token",
    "runner_registration",
    "runner_groups",
    "find_scale_set",
    "get_scale_set",
    "create_scale_set",
    "update_scale_set",
    "delete_scale_set",
    "create_session",
    "refresh_session",
    "delete_session",
    "get_message",
    "delete_message",
    "acquirable_jobs",
    "acquire_jobs",
    "generate_jit_config",
    "get_runner",
    "find_runner",
    "remove_runner",
    "runner_downloads",
    "runner_release_download",
    "runner_releases",
)

FaultKind = Literal["status", "delay", "drop", "bom", "empty_queue_url", "duplicate_result"]
KINDS: tuple[str, ...] = (
    "status",
    "delay",
    "drop",
    "bom",
    "empty_queue_url",
    "duplicate_result",
)
# Faults that replace handling; the rest are applied around a normal answer.
TERMINAL = frozenset({"status", "drop"})
# Faults that alter a successful answer and are only used up by one.
ON_SUCCESS = frozenset({"bom", "empty_queue_url", "duplicate_result"})
BodyFormat = Literal["json", "text", "empty"]


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    id: int
    endpoint: str
    kind: str
    times: int | None = 1
    probability: float | None = None
    status: int = 500
    retry_after: str | None = None
    type_name: str | None = None
    message: str | None = None
    body: str = "json"
    delay: float = 0.0
    after_processing: bool = False
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
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._next_id = 1
        self.faults: list[Fault] = []

    def add(self, spec: dict[str, Any]) -> Fault:
        endpoint = spec.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise FaultSpecError(f"unknown endpoint {endpoint!r}; one of {', '.join(ENDPOINTS)}")
        kind = spec.get("kind", "status")
        if kind not in KINDS:
            raise FaultSpecError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
        body = spec.get("body", "json")
        if body not in ("json", "text", "empty"):
            raise FaultSpecError("body must be json, text or empty")
        known = set(Fault.__dataclass_fields__) - {"id", "fired"}
        unknown = set(spec) - known
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {sorted(unknown)}")
        fault = Fault(id=self._next_id, **{k: v for k, v in spec.items() if k in known})
        if fault.probability is not None and not 0 <= fault.probability <= 1:
            raise FaultSpecError("probability must be within [0, 1]")
        if fault.times is not None and fault.times < 0:
            raise FaultSpecError("times must be >= 0 or null")
        self._next_id += 1
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def _fires(self, fault: Fault) -> bool:
        if fault.exhausted():
            return False
        return fault.probability is None or self._rng.random() < fault.probability

    def decide(self, endpoint: str) -> Decision:
        """Pick the faults that apply before handling a request, and use them up."""
        delay = 0.0
        terminal: Fault | None = None
        for fault in self.faults:
            if fault.endpoint != endpoint or fault.kind in ON_SUCCESS:
                continue
            if fault.kind == "delay":
                if self._fires(fault):
                    fault.fired += 1
                    delay += fault.delay
            elif terminal is None and self._fires(fault):
                fault.fired += 1
                terminal = fault
        return Decision(delay=delay, terminal=terminal)

    def take_on_success(self, endpoint: str, kind: str) -> bool:
        for fault in self.faults:
            if fault.endpoint == endpoint and fault.kind == kind and self._fires(fault):
                fault.fired += 1
                return True
        return False
