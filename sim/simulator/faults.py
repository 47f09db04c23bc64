"""Per-endpoint fault injection, the part both simulators share (sim/README.md, Faults).

A fault names the endpoints it applies to with `endpoint` (an fnmatch pattern; a plain name
matches only itself), fires `times` times (None: every time) and, with `probability`, only on
that fraction of the requests it matches. Three kinds act on a request before it is handled:

* ``status``: answer with `status` instead of handling the request (each simulator shapes the
  body as its service would).
* ``delay``: wait `delay` seconds, then handle the request normally (combines with others).
* ``drop``: reset the TCP connection so the client sees a transport error
  (`simulator.serving.drop_connection`). With `after_processing` the request is handled first
  (its state changes happen) and then the answer is lost.

Every other kind is a simulator's own (a BOM on a good answer, a server that goes to ERROR...):
its book validates it, and the simulator uses it up with `take` where it applies.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Generic, TypeVar

REQUEST_KINDS = ("status", "delay", "drop")


class FaultSpecError(ValueError):
    """A fault the control API cannot add; the message says why."""


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
    fired: int = 0

    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FaultT = TypeVar("FaultT", bound=Fault)


@dataclass
class Decision(Generic[FaultT]):
    """What to do with a request: wait `delay` seconds, then `terminal` (status or drop) or
    handle it normally."""

    delay: float
    terminal: FaultT | None


class FaultBook(Generic[FaultT]):
    """The faults in force, in the order they were added. A simulator subclasses it with its
    `Fault` type (extra fields) and its rules for endpoints and kinds (`_normalise`, `_check`)."""

    def __init__(self, rng: random.Random, fault_type: type[FaultT]) -> None:
        self._rng = rng
        self._fault_type = fault_type
        self._next_id = 1
        self.faults: list[FaultT] = []

    def add(self, spec: dict[str, Any]) -> FaultT:
        spec = self._normalise(spec)
        known = {f.name for f in fields(self._fault_type)} - {"id", "fired"}
        unknown = set(spec) - known
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {sorted(unknown)}")
        fault = self._fault_type(id=self._next_id, **{k: v for k, v in spec.items() if k in known})
        if fault.probability is not None and not 0 <= fault.probability <= 1:
            raise FaultSpecError("probability must be within [0, 1]")
        if fault.times is not None and fault.times < 0:
            raise FaultSpecError("times must be >= 0 or null")
        self._check(fault)
        self._next_id += 1
        self.faults.append(fault)
        return fault

    def _normalise(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec as the fault is built from it (defaults filled in); FaultSpecError when its
        endpoint or kind is not one of this simulator's."""
        return spec

    def _check(self, fault: FaultT) -> None:
        """FaultSpecError when a field's value makes no sense for this simulator."""

    def remove(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def clear(self) -> None:
        self.faults.clear()

    def decide(self, endpoint: str) -> Decision[FaultT]:
        """The request faults that apply to a request to `endpoint`, used up: every delay that
        fires adds up, the first status or drop that fires ends the request."""
        delay = 0.0
        terminal: FaultT | None = None
        for fault in self.faults:
            if fault.kind not in REQUEST_KINDS or not fnmatch.fnmatchcase(endpoint, fault.endpoint):
                continue
            if fault.kind == "delay":
                if self._fires(fault):
                    fault.fired += 1
                    delay += fault.delay
            elif terminal is None and self._fires(fault):
                fault.fired += 1
                terminal = fault
        return Decision(delay=delay, terminal=terminal)

    def take(self, kind: str, endpoint: str | None = None) -> FaultT | None:
        """Use up one fault of a simulator's own `kind` (for `endpoint`, when given), if one
        fires."""
        for fault in self.faults:
            if fault.kind != kind:
                continue
            if endpoint is not None and not fnmatch.fnmatchcase(endpoint, fault.endpoint):
                continue
            if self._fires(fault):
                fault.fired += 1
                return fault
        return None

    def _fires(self, fault: FaultT) -> bool:
        if fault.exhausted():
            return False
        return fault.probability is None or self._rng.random() < fault.probability
