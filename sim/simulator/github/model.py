"""Entities of the simulated Actions service and their wire (camelCase) renderings."""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
FIRST_MESSAGE_ID = 100_000_000
EXCEPTION_NAMESPACE = "GitHub.Actions.Runtime.WebApi"

JSON = dict[str, Any]

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
DAY = 86_400.0


def wire_time(ts: float | None) -> str:
    """RFC 3339 with seven fractional digits, as the .NET service writes it; Go zero if unset."""
    if ts is None:
        return ZERO_TIME
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}0Z"


def github_time(ts: float) -> str:
    """ISO 8601 to the second, as the GitHub REST API writes times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_version(text: str) -> tuple[int, int, int]:
    """A runner version (`2.331.0`, also `v2.331.0`) as numbers, so 2.10.0 sorts after 2.9.0;
    ValueError when it is not one."""
    found = _VERSION.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a runner version like 2.331.0")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def type_name(exception: str) -> str:
    return f"{EXCEPTION_NAMESPACE}.{exception}, {EXCEPTION_NAMESPACE}"


class ServiceError(Exception):
    """An error the Actions service (or the GitHub API) answers with."""

    def __init__(self, status: int, exception: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exception = exception
        self.message = message


class ControlError(Exception):
    """A bad request to the control API."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RunnerGroup:
    id: int
    name: str

    @property
    def is_default(self) -> bool:
        return self.id == 1


@dataclass
class ScaleSet:
    id: int
    name: str
    runner_group_id: int
    labels: list[str]
    runner_setting: JSON
    created_on: float
    # Last X-ScaleSetMaxCapacity seen on a poll; None = header absent (unlimited).
    max_capacity: int | None = None
    capacity_seen: bool = False
    capacity_history: list[int | None] = field(default_factory=list)


@dataclass
class Session:
    id: str
    scale_set_id: int
    owner_name: str
    token_jti: str
    created: float
    last_seen: float
    ghost: bool = False
    evicted: bool = False
    token_expired: bool = False
    polls_in_flight: int = 0
    last_message_id_seen: int = 0
    # The message of this session's latest poll answer, until the session polls again (then
    # its client has read that answer): None when the latest answer carried no message.
    last_answer_message_id: int | None = None


@dataclass
class Job:
    runner_request_id: int
    job_id: str
    labels: list[str]
    repository: str
    owner: str
    workflow_ref: str
    event_name: str
    display_name: str
    workflow_run_id: int
    duration: float | None
    result: str
    zero_fields: frozenset[str]
    queue_time: float
    state: str = "queued"
    scale_set_id: int | None = None
    runner_id: int | None = None
    runner_name: str = ""
    scale_set_assign_time: float | None = None
    runner_assign_time: float | None = None
    finish_time: float | None = None
    final_result: str | None = None
    withdrawals: int = 0
    # Loop time before which a re-queued job is not offered again.
    not_before: float = 0.0
    # Withdrawn more than max_reassignments times: stays queued, never offered again.
    parked: bool = False
    # Bumped on each assignment so a stale assign-timeout timer recognises itself.
    assign_generation: int = 0
    # "crash" or "hang": what this job asks of the runner that takes it
    # (world/jobs.py, RUNNER_BEHAVIOURS).
    runner_behaviour: str | None = None
    # What the runner gives the job about its event (simulator.github.events): GITHUB_REF,
    # GITHUB_HEAD_REF, GITHUB_BASE_REF and the webhook payload behind GITHUB_EVENT_PATH.
    ref: str = "refs/heads/main"
    head_ref: str = ""
    base_ref: str = ""
    event_payload: JSON = field(default_factory=dict)

    def to_state(self) -> JSON:
        return {
            "id": self.runner_request_id,
            "job_id": self.job_id,
            "state": self.state,
            "labels": self.labels,
            "scale_set_id": self.scale_set_id,
            "runner_id": self.runner_id,
            "runner_name": self.runner_name,
            "result": self.final_result,
            "configured_result": self.result,
            "duration": self.duration,
            "runner_behaviour": self.runner_behaviour,
            "withdrawals": self.withdrawals,
            "parked": self.parked,
            "repository": self.repository,
            "owner": self.owner,
            "event_name": self.event_name,
            "ref": self.ref,
            "head_ref": self.head_ref,
            "base_ref": self.base_ref,
        }


@dataclass(frozen=True)
class RunnerRelease:
    """A release of actions/runner: its version (no leading "v") and when it was published."""

    version: str
    published_at: float

    @property
    def key(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    def to_control(self, now: float) -> JSON:
        return {
            "version": self.version,
            "published_at": self.published_at,
            "age_days": (now - self.published_at) / DAY,
        }

    def to_github(self) -> JSON:
        """The fields of GitHub's release object that runner-version lookups read."""
        tag = f"v{self.version}"
        return {
            "tag_name": tag,
            "name": tag,
            "published_at": github_time(self.published_at),
            "draft": False,
            "prerelease": False,
        }


@dataclass
class Runner:
    id: int
    name: str
    scale_set_id: int
    secret: str
    work_folder: str
    created: float
    # offline (registered, never connected or died), idle, busy
    state: str = "offline"
    jit_used: bool = False
    job: int | None = None
    # The version the runner last connected (or tried to connect) with, and why the service
    # refused it (None: not refused).
    version: str | None = None
    refused: str | None = None

    def reference(self) -> JSON:
        return {"id": self.id, "name": self.name, "runnerScaleSetId": self.scale_set_id}

    def to_wire(self) -> JSON:
        return {
            **self.reference(),
            "status": "offline" if self.state == "offline" else "online",
            "busy": self.state == "busy",
            "enabled": True,
            "ephemeral": True,
            "labels": [],
            "createdOn": wire_time(self.created),
        }

    def to_state(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "scale_set_id": self.scale_set_id,
            "state": self.state,
            "job": self.job,
            "jit_used": self.jit_used,
            "version": self.version,
            "refused": self.refused,
        }


@dataclass
class Envelope:
    id: int
    scale_set_id: int
    message_type: str
    body: str
    deliveries: int = 0
    # Injected raw statistics, sent verbatim instead of the computed ones (None: computed).
    statistics: JSON | None = None

    def job_message_types(self) -> list[str]:
        try:
            items = json.loads(self.body) if self.body else []
        except ValueError:
            return []
        return [str(i.get("messageType")) for i in items if isinstance(i, dict)]


@dataclass
class MessageQueue:
    """Per scale set: job messages not yet batched, and envelopes sent but not acknowledged."""

    pending: deque[JSON] = field(default_factory=deque)
    unacked: dict[int, Envelope] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    # Messages whose last delivery was the final answer of a session its client then deleted
    # (a poll cut off at a clean stop): the client may never have read them, and the service
    # delivers them again to the next session. Until they are delivered again.
    answered_at_session_end: set[int] = field(default_factory=set)


def statistics_json(stats: dict[str, int]) -> JSON:
    return {
        "totalAvailableJobs": stats["available"],
        "totalAcquiredJobs": stats["acquired"],
        "totalAssignedJobs": stats["assigned"],
        "totalRunningJobs": stats["running"],
        "totalRegisteredRunners": stats["registered"],
        "totalBusyRunners": stats["busy"],
        "totalIdleRunners": stats["idle"],
    }


def ci_get(body: JSON, key: str, default: Any = None) -> Any:
    """Look a request key up case-insensitively: the Go clients send e.g. `RunnerSetting`."""
    if key in body:
        return body[key]
    lowered = key.lower()
    for k, v in body.items():
        if k.lower() == lowered:
            return v
    return default
