"""Run the real service in-process against the simulator, and watch what its scaler is told.

The service talks to the simulator only over sockets; the harness only swaps the scaler for a
recorder (the listener's documented seam) and supplies the stop event instead of a signal.
Waiting is event-driven: the recorder wakes waiters on every call, and simulator state is
awaited through the control API's blocking waits (run in a thread, so the event loop that runs
the listener keeps going).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.demand import UNLIMITED
from scaleset_listener.service import run_service
from scaleset_listener.wire import JobCompleted, JobStarted, Statistics

FAST_SETTINGS: dict[str, Any] = {
    "retry_max_attempts": 3,
    "retry_max_wait": 0.02,
    "recovery_backoff_max": 0.05,
    "session_conflict_retry_interval": 0.05,
    "shutdown_timeout": 5.0,
    "enable_reconciliation": False,
}


def make_settings(config_url: str, token: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "github_url": config_url,
        "runners": [{"name": "linux", "labels": ["gpu"], "max_runners": 5}],
        **FAST_SETTINGS,
        **overrides,
    }
    if token is not None:
        values.setdefault("github_token", token)
    return Settings(**values)


@dataclass
class RecordingScaler:
    """A Scaler that records every call and lets tests await a condition on the record."""

    spec: ScaleSetSpec
    capacity: int = UNLIMITED
    desired: list[int] = field(default_factory=list)
    statistics: list[Statistics] = field(default_factory=list)
    started: list[JobStarted] = field(default_factory=list)
    completed: list[JobCompleted] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    scale_set_ids: list[int] = field(default_factory=list)
    prepared: list[int] = field(default_factory=list)

    def bind_scale_set(self, scale_set_id: int) -> None:
        self.scale_set_ids.append(scale_set_id)

    def cloud_capacity(self) -> int:
        return self.capacity

    def phase_counts(self) -> dict[str, int]:
        return {}

    async def prepare(self, scale_set_id: int) -> None:
        self.prepared.append(scale_set_id)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    def problem(self) -> str | None:
        return None

    async def _record(self, update: Callable[[], None]) -> None:
        async with self._changed:
            update()
            self._changed.notify_all()

    async def handle_desired_runner_count(self, desired: int, statistics: Statistics) -> None:
        def update() -> None:
            self.desired.append(desired)
            self.statistics.append(statistics)

        await self._record(update)

    async def handle_job_started(self, job: JobStarted) -> None:
        await self._record(lambda: self.started.append(job))

    async def handle_job_completed(self, job: JobCompleted) -> None:
        await self._record(lambda: self.completed.append(job))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(
                f"scaler condition not met within {timeout} s: desired={self.desired} "
                f"started={[j.runner_name for j in self.started]} "
                f"completed={[j.runner_name for j in self.completed]}"
            ) from None


@dataclass
class RunningService:
    task: asyncio.Task[int]
    stop: asyncio.Event
    scalers: dict[str, RecordingScaler]

    @property
    def scaler(self) -> RecordingScaler:
        (only,) = self.scalers.values()
        return only

    async def shutdown(self, timeout: float = 10.0) -> int:
        self.stop.set()
        async with asyncio.timeout(timeout):
            return await self.task


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, capacity: int = UNLIMITED
) -> AsyncIterator[RunningService]:
    """The service running in this event loop until the block ends (then a clean stop)."""
    stop = asyncio.Event()
    scalers = {spec.name: RecordingScaler(spec, capacity=capacity) for spec in settings.runners}

    def factory(spec: ScaleSetSpec) -> RecordingScaler:
        return scalers[spec.name]

    task = asyncio.create_task(
        run_service(settings, stop, scaler_factory=factory, handle_signals=False)
    )
    service = RunningService(task, stop, scalers)
    try:
        yield service
    finally:
        if not task.done():
            stop.set()
            try:
                async with asyncio.timeout(10):
                    await task
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise
