"""The listener: one scale set's session, long poll and message handling, for as long as we run.

    ensure scale set -> open session -> initial statistics -> poll ─┬─ 202 / blank: re-assert demand
                            ^                                       └─ message: handle it (one unit)
                            └──── recoverable failure: back off (capped, cancellable), new session

Handling one message is one unit: record the statistics, hand JobStarted and JobCompleted to
the scaler, hand on the desired count, then acknowledge (DELETE) and acquire the JobAvailable
requests. actions/scaleset's listener acknowledges and acquires first; here the scaler gets the
message before those two round trips to GitHub (its handlers only record, so a message handed
over twice after a failed ack changes nothing), which takes them out of every scaling
decision's latency (`message_handled`: `decision_ms`, `handled_ms`). A shutdown request never
splits the unit: the handler is shielded and the stop flag is only checked between messages.

A message is acknowledged even when parts of it cannot be read (a schema change on GitHub's
side): unacknowledged, it would come back to every new session and block the queue. Each
unreadable part is logged once (`message_unparseable`, `job_message_unparseable`) and treated as
absent: unreadable statistics leave the demand at its last known value until the next good ones,
and the jobs an unreadable part may have been about are found by the acquirable-jobs look-up
that follows (as at session start). The good parts are handled as usual.

The recovery backoff is reset after every successful poll cycle (retrying.py explains why).

Before the first session is open, errors that retrying cannot fix (bad credentials, unknown runner
group, a 4xx on the scale set) end the process with a clear message: a misconfigured service
should fail at start. After that every failure is logged and recovered from, because the
service must outlive GitHub incidents (502 storms, evicted sessions, empty answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.config import ScaleSetSpec
from scaleset_listener.demand import desired_runner_count, runner_ceiling
from scaleset_listener.errors import (
    ListenerError,
    ProtocolError,
    QueueTokenExpired,
    ScaleSetNotFound,
    SessionConflict,
    SessionNotFound,
)
from scaleset_listener.http import HttpChannel
from scaleset_listener.metrics import JobFacts, Metrics, ScaleSetMetrics
from scaleset_listener.retrying import RetryPolicy, is_transient
from scaleset_listener.scaler_port import Scaler
from scaleset_listener.session import MessageSession
from scaleset_listener.wire import (
    JOB_MESSAGES_TYPE,
    JobAssigned,
    JobAvailable,
    JobCompleted,
    JobMessage,
    JobStarted,
    MessageEnvelope,
    ScaleSet,
    Statistics,
    UnknownJobMessage,
    UnparseableBody,
    UnparseableJobMessage,
    parse_job_messages,
)

T = TypeVar("T")


class ShutdownRequested(Exception):
    """Raised inside retry loops to leave them once the stop flag is set."""


@dataclass(frozen=True)
class ListenerOptions:
    spec: ScaleSetSpec
    manage_scale_set: bool
    owner_name: str
    session_conflict_retry_interval: float = 30.0
    shutdown_timeout: float = 30.0


def log_statistics(logger: structlog.typing.FilteringBoundLogger, stats: Statistics) -> None:
    logger.info(
        "runner_statistics",
        available=stats.total_available_jobs,
        acquired=stats.total_acquired_jobs,
        assigned=stats.total_assigned_jobs,
        running=stats.total_running_jobs,
        registered=stats.total_registered_runners,
        busy=stats.total_busy_runners,
        idle=stats.total_idle_runners,
    )
    problems = stats.inconsistencies()
    if problems:
        logger.warning(
            "statistics_inconsistent",
            problems=problems,
            registered=stats.total_registered_runners,
            busy=stats.total_busy_runners,
            idle=stats.total_idle_runners,
            assigned=stats.total_assigned_jobs,
            running=stats.total_running_jobs,
        )


def job_facts(job: JobStarted | JobCompleted) -> JobFacts:
    return JobFacts(
        owner_name=job.owner_name,
        repository_name=job.repository_name,
        job_display_name=job.job_display_name,
        event_name=job.event_name,
        scale_set_assign_time=job.scale_set_assign_time,
        runner_assign_time=job.runner_assign_time,
        finish_time=job.finish_time,
        result=job.result if isinstance(job, JobCompleted) else "",
    )


def _recoverable_at_start(exc: BaseException) -> bool:
    return is_transient(exc) or isinstance(
        exc, ProtocolError | SessionNotFound | QueueTokenExpired | ScaleSetNotFound
    )


class Listener:
    """Serves one scale set until the stop event is set."""

    def __init__(
        self,
        client: ActionsClient,
        http: HttpChannel,
        scaler: Scaler,
        options: ListenerOptions,
        policy: RetryPolicy,
        metrics: ScaleSetMetrics | None = None,
    ) -> None:
        self._client = client
        self._http = http
        self._scaler = scaler
        self._options = options
        self._policy = policy
        self._spec = options.spec
        spec = options.spec
        self._metrics = metrics or Metrics().scale_set(
            spec.name, spec.min_runners, spec.max_runners
        )
        self._log = structlog.get_logger(__name__).bind(scale_set=self._spec.name)
        self._stop = asyncio.Event()
        self._established = False
        self._last_message_id = 0
        self._latest_statistics: Statistics | None = None
        self._recovery_backoff = policy.recovery_backoff()
        self.scale_set: ScaleSet | None = None
        self.messages_handled = 0
        # Monotonic time of the last poll that got an answer (message or not): readiness.
        self.last_poll_at: float | None = None

    # Public ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._spec.name

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set; then close the session (`release` deletes a managed
        scale set)."""
        self._stop = stop
        try:
            async for attempt in self._policy.recovery(
                f"listen on {self._spec.name}",
                self._recoverable,
                sleep=self._sleep,
                backoff=self._recovery_backoff,
            ):
                with attempt:
                    await self._listen_once()
        except ShutdownRequested:
            pass
        except ListenerError as exc:
            if not self._stop.is_set():
                raise
            # Shutting down anyway: a failure now is worth a line, not a failed exit.
            self._log.warning("error_during_shutdown", error=str(exc))

    async def release(self) -> None:
        """The scale set is served no more (shutdown, or a failure that ends it): delete it
        when we manage it. Not part of `run`, so the supervisor can restart a set without
        deleting it."""
        if self._options.manage_scale_set and self.scale_set is not None:
            await self._delete_managed_scale_set()

    # Scale set -----------------------------------------------------------------------------

    async def _ensure_scale_set(self, *, fresh: bool) -> ScaleSet:
        spec = self._spec
        group_id = spec.runner_group_id
        if group_id is None:
            group_id = (await self._client.get_runner_group_by_name(spec.runner_group)).id
        existing = await self._client.find_scale_set(spec.name, group_id)
        if existing is not None and fresh and self._options.manage_scale_set:
            self._log.info("scale_set_deleting_stale", scale_set_id=existing.id)
            await self._client.delete_scale_set(existing.id)
            existing = None
        if existing is not None:
            self._log.info(
                "scale_set_reused",
                scale_set_id=existing.id,
                labels=[label.name for label in existing.labels],
            )
            configured = set(spec.effective_labels)
            actual = {label.name for label in existing.labels}
            if actual and actual != configured:
                self._log.warning(
                    "scale_set_labels_differ",
                    configured=sorted(configured),
                    actual=sorted(actual),
                    hint="labels are fixed at creation; set MANAGE_RUNNER_SCALE_SETS=true or "
                    "delete the scale set to apply new labels",
                )
            return existing
        created = await self._client.create_scale_set(spec.name, group_id, spec.effective_labels)
        self._log.info(
            "scale_set_created",
            scale_set_id=created.id,
            runner_group_id=group_id,
            labels=list(spec.effective_labels),
        )
        return created

    async def _delete_managed_scale_set(self) -> None:
        assert self.scale_set is not None
        try:
            async with asyncio.timeout(self._options.shutdown_timeout):
                await self._client.delete_scale_set(self.scale_set.id)
        except (ListenerError, TimeoutError) as exc:
            self._log.error(
                "scale_set_delete_failed", scale_set_id=self.scale_set.id, error=str(exc)
            )
            return
        self._log.info("scale_set_deleted", scale_set_id=self.scale_set.id)

    # Sessions ------------------------------------------------------------------------------

    def _recoverable(self, exc: BaseException) -> bool:
        if isinstance(exc, ShutdownRequested) or self._stop.is_set():
            return False
        if self._established:
            return isinstance(exc, ListenerError)
        return _recoverable_at_start(exc)

    async def _sleep(self, seconds: float) -> None:
        """A backoff that ends early, and ends the retry loop, when shutdown is requested."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        if self._stop.is_set():
            raise ShutdownRequested

    def _log_conflict(self, attempt: int, wait: float, exc: BaseException | None) -> None:
        self._log.warning(
            "session_conflict",
            attempt=attempt,
            retry_in_seconds=round(wait, 3),
            detail=str(exc),
            hint="another session is live on this scale set (a crashed listener's, or a second "
            "deployment); waiting for it to expire",
        )

    async def _open_session(self) -> MessageSession:
        async for attempt in self._policy.until_no_conflict(
            lambda exc: isinstance(exc, SessionConflict),
            self._options.session_conflict_retry_interval,
            self._sleep,
            self._log_conflict,
        ):
            with attempt:
                if self._stop.is_set():
                    raise ShutdownRequested
                return await self._create_session()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """`work`, abandoned when shutdown is requested meanwhile.

        Only for steps before a session exists: nothing is in hand to finish there, and their
        request retries (up to RETRY_MAX_ATTEMPTS waits) would otherwise hold a stop for many
        seconds. The steps are idempotent, so the next start simply does them again.
        """
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(self._stop.wait(), name="stop-wait")
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            raise ShutdownRequested
        return task.result()

    async def _bind_scale_set(self, *, fresh: bool) -> ScaleSet:
        scale_set = await self._ensure_scale_set(fresh=fresh)
        self._scaler.bind_scale_set(scale_set.id)
        await self._scaler.prepare(scale_set.id)
        return scale_set

    async def _create_session(self) -> MessageSession:
        if self.scale_set is None:
            self.scale_set = await self._unless_stopped(self._bind_scale_set(fresh=True))
        try:
            created = await self._client.create_session(self.scale_set.id, self._options.owner_name)
        except ScaleSetNotFound:
            self._log.warning("scale_set_gone", scale_set_id=self.scale_set.id)
            self.scale_set = await self._unless_stopped(self._bind_scale_set(fresh=False))
            created = await self._client.create_session(self.scale_set.id, self._options.owner_name)
        try:
            session = MessageSession(self._client, self._http, self.scale_set.id, created)
        except ProtocolError:
            # Delete the unusable session, or the next create would meet our own 409.
            with contextlib.suppress(ListenerError):
                await self._client.delete_session(self.scale_set.id, created.session_id)
            raise
        self._log.info(
            "session_created", session_id=session.session_id, scale_set_id=self.scale_set.id
        )
        return session

    async def _close_session(self, session: MessageSession) -> None:
        try:
            async with asyncio.timeout(self._options.shutdown_timeout):
                await session.close()
        except (ListenerError, TimeoutError) as exc:
            self._log.warning(
                "session_delete_failed", session_id=session.session_id, error=str(exc)
            )

    # The loop ------------------------------------------------------------------------------

    async def _listen_once(self) -> None:
        session = await self._open_session()
        self._established = True
        try:
            for problem in session.unparseable:
                self._log.warning(
                    "session_unparseable", session_id=session.session_id, **problem.log_fields()
                )
            initial = session.initial_statistics
            if initial is None:
                if not session.unparseable:
                    self._log.warning("session_statistics_missing", session_id=session.session_id)
                else:
                    # Unreadable statistics may have counted available jobs: look them up.
                    await self._acquire_leftover_jobs(session, why="unparseable_session")
            else:
                self._latest_statistics = initial
                log_statistics(self._log.bind(message_id=0), initial)
                self._record(initial)
                if initial.total_available_jobs > 0:
                    await self._acquire_leftover_jobs(session, why="session_start")
                await self._hand_on_demand(initial)
            while not self._stop.is_set():
                envelope = await self._poll(session)
                if envelope is None:
                    if self._latest_statistics is not None and not self._stop.is_set():
                        await self._hand_on_demand(self._latest_statistics)
                else:
                    received_at = time.monotonic()
                    # The message in hand is finished even if shutdown arrives meanwhile.
                    await asyncio.shield(self._handle(session, envelope, received_at))
                # A full cycle worked: the next failure is a new incident, backed off afresh.
                self._recovery_backoff.reset()
        finally:
            await asyncio.shield(self._close_session(session))

    async def _acquire_leftover_jobs(self, session: MessageSession, *, why: str) -> None:
        """Acquire the jobs the service offers but nobody acquired: offered before this session
        existed (their JobAvailable went to a session that is gone), or announced in a message
        part we could not read. Without this, GHES jobs stay "available" forever."""
        jobs = await self._client.get_acquirable_jobs(session.scale_set_id)
        requested = [job.runner_request_id for job in jobs if job.runner_request_id > 0]
        self._log.debug("acquirable_jobs_looked_up", why=why, found=len(requested))
        if requested:
            acquired = await session.acquire_jobs(requested)
            self._log.info(
                "jobs_acquired",
                requested=len(requested),
                acquired=len(acquired),
                leftover=True,
                why=why,
            )

    def _record(self, stats: Statistics) -> None:
        self._metrics.statistics(
            assigned=stats.total_assigned_jobs,
            running=stats.total_running_jobs,
            registered=stats.total_registered_runners,
            busy=stats.total_busy_runners,
            idle=stats.total_idle_runners,
        )

    def announced_capacity(self) -> int:
        """The X-ScaleSetMaxCapacity this listener announces (also the /metrics gauge)."""
        return runner_ceiling(self._spec.max_runners, self._scaler.cloud_capacity())

    async def _poll(self, session: MessageSession) -> MessageEnvelope | None:
        """The next message, or None on an empty poll or when shutdown interrupts the poll."""
        poll = asyncio.create_task(
            session.get_message(self._last_message_id, self.announced_capacity()), name="long-poll"
        )
        stopper = asyncio.create_task(self._stop.wait(), name="stop-wait")
        try:
            await asyncio.wait({poll, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
        if poll.cancelled():
            return None
        envelope = poll.result()
        self.last_poll_at = time.monotonic()
        self._metrics.polled()
        return envelope

    async def _hand_on_demand(self, stats: Statistics) -> None:
        desired = desired_runner_count(
            stats.total_assigned_jobs, self._spec.min_runners, self.announced_capacity()
        )
        self._metrics.desired(desired)
        await self._scaler.handle_desired_runner_count(desired, stats)

    def _read(
        self, log: structlog.typing.FilteringBoundLogger, envelope: MessageEnvelope
    ) -> tuple[list[JobMessage], bool]:
        """The envelope's job messages, and whether any part of it could not be read.

        Each unreadable part is logged here, before the ack, so once: after the ack the
        message is not delivered again.
        """
        for problem in envelope.unparseable:
            log.warning(
                "message_unparseable", message_type=envelope.message_type, **problem.log_fields()
            )
        unreadable = bool(envelope.unparseable)
        jobs: list[JobMessage] = []
        if envelope.unreadable("messageType") or envelope.unreadable("body"):
            pass  # logged above; the jobs it held are looked up after the ack
        elif envelope.message_type != JOB_MESSAGES_TYPE:
            log.warning("unknown_message_type", message_type=envelope.message_type)
        else:
            try:
                jobs = parse_job_messages(envelope.body)
            except UnparseableBody as exc:
                unreadable = True
                log.warning(
                    "message_unparseable",
                    message_type=envelope.message_type,
                    **exc.problem.log_fields(),
                )
        for job in jobs:
            if isinstance(job, UnparseableJobMessage):
                unreadable = True
                log.warning(
                    "job_message_unparseable",
                    index=job.index,
                    message_type=job.message_type,
                    **job.problem.log_fields(),
                )
        return jobs, unreadable

    def _log_and_count(
        self, log: structlog.typing.FilteringBoundLogger, jobs: list[JobMessage]
    ) -> None:
        """After the ack: the job messages' log lines and metrics, so that one coming again
        after a failed ack (the scaler took it already, harmlessly) is not counted twice."""
        for job in jobs:
            if isinstance(job, JobAssigned):
                log.info("job_assigned", job_id=job.job_id, runner_request_id=job.runner_request_id)
            elif isinstance(job, UnknownJobMessage):
                log.warning("unknown_job_message", message_type=job.message_type)
            elif isinstance(job, JobStarted):
                self._metrics.job_started(job_facts(job))
            elif isinstance(job, JobCompleted):
                self._metrics.job_completed(job_facts(job))

    async def _handle(
        self, session: MessageSession, envelope: MessageEnvelope, received_at: float
    ) -> None:
        """One message, `received_at` (monotonic) when the poll answered: the line
        `message_handled` says how long until the scaler had all of it (`decision_ms`)."""
        log = self._log.bind(message_id=envelope.message_id)
        self._last_message_id = max(self._last_message_id, envelope.message_id)
        stats = envelope.statistics
        if stats is not None:
            self._latest_statistics = stats
            log_statistics(log, stats)
            self._record(stats)
        elif not envelope.unreadable("statistics"):
            log.warning("message_without_statistics")
        jobs, unreadable = self._read(log, envelope)
        # The scaler first: its handlers only record and wake its loop, so it decides without
        # waiting for the round trips below. Handing a message over twice (its ack failed, so
        # it comes again) is harmless: phases only move forward and the demand is a level.
        for job in jobs:
            if isinstance(job, JobStarted):
                await self._scaler.handle_job_started(job)
        for job in jobs:
            if isinstance(job, JobCompleted):
                await self._scaler.handle_job_completed(job)
        # Unreadable statistics hand on nothing: the demand stays at its last known value
        # (re-asserted on empty polls) until the next good statistics.
        if stats is not None:
            await self._hand_on_demand(stats)
        decided_at = time.monotonic()

        await session.ack(envelope.message_id)
        self.messages_handled += 1
        requested = [
            job.runner_request_id
            for job in jobs
            if isinstance(job, JobAvailable) and job.runner_request_id > 0
        ]
        if requested:
            acquired = await session.acquire_jobs(requested)
            log.info("jobs_acquired", requested=len(requested), acquired=len(acquired))
        self._log_and_count(log, jobs)
        if unreadable:
            # An unreadable part may have offered a job (JobAvailable): find it the other way.
            await self._acquire_leftover_jobs(session, why="unparseable_message")
        # decision_ms: from the poll's answer to the scaler holding everything the message
        # said; handled_ms: to the ack and acquisitions done, when the next poll may go out.
        log.info(
            "message_handled",
            jobs=len(jobs),
            decision_ms=round((decided_at - received_at) * 1000, 2),
            handled_ms=round((time.monotonic() - received_at) * 1000, 2),
        )
