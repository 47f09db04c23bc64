"""The simulated cloud's faults, on the shared book (simulator.faults).

Request faults (`status`, `delay`, `drop`) apply to requests whose endpoint name matches the
fault's `endpoint`, an fnmatch pattern such as ``compute.servers.create`` or ``network.*``
(`GET /_sim/endpoints` lists the names); a `status` answer has the body shape of that service's
errors.

Semantic faults change what the cloud does rather than how the API answers; their endpoint is
implied:

* ``server_error`` (server creates): the server is accepted (202) and then goes to ERROR with a
  fault `{"code": code, "message": message}`, e.g. "No valid host was found.".
* ``quota_exceeded`` (server creates): 403 forbidden with Nova's quota message for `resource`.
* ``never_active`` (server creates): the server stays in BUILD (spawning) forever.
* ``delete_error`` (server deletes): the delete is accepted (204) but the server then goes to
  ERROR with `message` as its fault instead of disappearing.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass
from typing import Any

from simulator import faults
from simulator.faults import REQUEST_KINDS, FaultSpecError

SEMANTIC_KINDS = {
    "server_error": "compute.servers.create",
    "quota_exceeded": "compute.servers.create",
    "never_active": "compute.servers.create",
    "delete_error": "compute.servers.delete",
}
QUOTA_RESOURCES = ("instances", "cores", "ram")


@dataclass
class Fault(faults.Fault):
    # server_error: the fault code shown on the server (Nova uses 500 for NoValidHost).
    code: int = 500
    # quota_exceeded: which quota the message names.
    resource: str = "instances"


class FaultBook(faults.FaultBook[Fault]):
    def __init__(self, rng: random.Random, endpoints: tuple[str, ...]) -> None:
        super().__init__(rng, Fault)
        self._endpoints = endpoints

    def _normalise(self, spec: dict[str, Any]) -> dict[str, Any]:
        kind = spec.get("kind", "status")
        if kind not in REQUEST_KINDS and kind not in SEMANTIC_KINDS:
            known_kinds = ", ".join((*REQUEST_KINDS, *SEMANTIC_KINDS))
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
        return spec

    def _check(self, fault: Fault) -> None:
        if fault.kind == "status" and not 400 <= fault.status <= 599:
            raise FaultSpecError("status must be an HTTP error status (400-599)")
        if fault.kind == "delay" and fault.delay < 0:
            raise FaultSpecError("delay must be >= 0")
        if fault.kind == "quota_exceeded" and fault.resource not in QUOTA_RESOURCES:
            raise FaultSpecError(f"resource must be one of {', '.join(QUOTA_RESOURCES)}")
