"""The simulated GitHub's faults (sim/README.md, Faults), on the shared book (simulator.faults).

A fault names one endpoint exactly (ENDPOINTS). The request kinds are the shared ones:

* ``status``: answer with `status` instead of handling the request. The body is JSON
  (`type_name` + `message` as an Actions exception, or a GitHub-style `{"message"}` when
  `type_name` is empty), text/plain, or empty; `retry_after` adds a Retry-After header.
* ``delay``: sleep `delay` seconds, then handle the request normally (combines with others).
* ``drop``: abort the TCP connection with a reset, so the client sees a transport error. With
  `after_processing` the request is handled first (state changes happen) and then the answer is
  lost, like an ack whose response never arrived.

and three alter a successful answer, each used up by the first one it alters:

* ``bom``: prefix the next successful, non-empty body with a UTF-8 byte-order mark.
* ``empty_queue_url``: the next successful session create/refresh answers `messageQueueUrl: ""`.
* ``duplicate_result``: the next successful name lookup answers count 2 (the match twice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from simulator import faults
from simulator.faults import FaultSpecError

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
BodyFormat = Literal["json", "text", "empty"]


@dataclass
class Fault(faults.Fault):
    # status: the Retry-After header, the Actions exception, the body's format.
    retry_after: str | None = None
    type_name: str | None = None
    body: str = "json"


class FaultBook(faults.FaultBook[Fault]):
    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng, Fault)

    def _normalise(self, spec: dict[str, Any]) -> dict[str, Any]:
        endpoint = spec.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise FaultSpecError(f"unknown endpoint {endpoint!r}; one of {', '.join(ENDPOINTS)}")
        kind = spec.get("kind", "status")
        if kind not in KINDS:
            raise FaultSpecError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
        body = spec.get("body", "json")
        if body not in ("json", "text", "empty"):
            raise FaultSpecError("body must be json, text or empty")
        return spec
