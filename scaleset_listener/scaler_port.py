"""What the listener hands its decisions to: the `Scaler` protocol, and `LoggingScaler`, the
scaler of a service without a cloud (and the tests' witness). The VM scaler is
scaleset_listener/vm_scaler/."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import structlog

from scaleset_listener.demand import UNLIMITED
from scaleset_listener.wire import JobCompleted, JobStarted, Statistics

log = structlog.get_logger(__name__)


class Scaler(Protocol):
    """What the listener needs from whoever turns demand into runners."""

    def bind_scale_set(self, scale_set_id: int) -> None:
        """The scale set the listener serves (again: it may be re-created with a new id)."""
        ...

    def cloud_capacity(self) -> int:
        """How many runners the cloud could run now (UNLIMITED when unknown)."""
        ...

    def phase_counts(self) -> Mapping[str, int]:
        """How many runners it tracks, by phase (the `scaleset_listener_runners` metric)."""
        ...

    async def prepare(self, scale_set_id: int) -> None:
        """The scale set is known and no session counts demand yet: the place for startup work
        (the VM scaler's reconciliation). Awaited after `bind_scale_set`, before the session."""
        ...

    async def handle_desired_runner_count(self, desired: int, statistics: Statistics) -> None: ...

    async def handle_job_started(self, job: JobStarted) -> None: ...

    async def handle_job_completed(self, job: JobCompleted) -> None: ...

    async def run(self, stop: asyncio.Event) -> None:
        """The scaler's own loop, beside the listener, until `stop` is set. An exception out of
        it is a bug: the supervisor logs it and restarts the scale set."""
        ...

    def problem(self) -> str | None:
        """Why this scaler cannot do its work (a `/readyz` reason), or None."""
        ...


class LoggingScaler:
    """A scaler that only logs what it is told: `run` without a cloud, and the tests' witness."""

    def __init__(self, scale_set_name: str) -> None:
        self._log = log.bind(scale_set=scale_set_name)
        self.desired_history: list[int] = []

    def bind_scale_set(self, scale_set_id: int) -> None:
        self._log.info("scale_set_bound", scale_set_id=scale_set_id)

    def cloud_capacity(self) -> int:
        return UNLIMITED

    def phase_counts(self) -> Mapping[str, int]:
        return {}

    async def prepare(self, scale_set_id: int) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    def problem(self) -> str | None:
        return None

    async def handle_desired_runner_count(self, desired: int, statistics: Statistics) -> None:
        self.desired_history.append(desired)
        self._log.info(
            "desired_runners",
            desired=desired,
            assigned=statistics.total_assigned_jobs,
            action="none (logging scaler: no provisioner configured)",
        )

    async def handle_job_started(self, job: JobStarted) -> None:
        self._log.info(
            "job_started",
            runner_name=job.runner_name,
            job_id=job.job_id,
            repository=f"{job.owner_name}/{job.repository_name}",
            workflow_ref=job.job_workflow_ref,
        )

    async def handle_job_completed(self, job: JobCompleted) -> None:
        self._log.info(
            "job_completed",
            runner_name=job.runner_name or None,
            job_id=job.job_id,
            result=job.result,
        )
