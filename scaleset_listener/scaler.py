"""The scaler: turns one scale set's demand into runner VMs and takes them away again.

    creating ──> booting ──> idle ──> busy ──> finished ──> deleted
        └──────────┴──────────┴─────────┴──────────┴──> failed (deleted, or kept for debugging)

* Level-triggered: the listener hands on `desired` (from the statistics); the scaler's own loop
  converges `owned` (creating + booting + idle + busy) to it. Handlers only record and wake the
  loop, so the listener never waits for a VM.
* Provisioning: JIT config for `<scale-set>-<8 hex>`, then a server with the rendered bootstrap;
  bounded by a process-wide semaphore (PROVISION_CONCURRENCY). Failures back off (doubling,
  capped); a permanent error (unknown image...) is logged once and reported as not ready.
* Retiring: only idle runners past IDLE_RUNNER_TIMEOUT, oldest first, and only after GitHub
  accepted the removal of the registration (400 JobStillRunning: it just took a job, keep it).
* Deletion after a job: JobCompleted plus a second signal (the runner is gone from GitHub, or
  the VM powered itself off), or RUNNER_DEREGISTRATION_TIMEOUT after JobCompleted; never while
  GitHub reports the runner busy, except past MAX_RUNNER_LIFETIME (a warning and a counter).
* The sweep (every VM_TRACKER_INTERVAL; without startup reconciliation also once at start,
  before demand is counted) reads the cloud and GitHub: a VM whose runner is missing
  from GitHub on two sweeps in a row (outside its boot window) is deleted, an ERROR or powered-off
  VM is cleaned up, and a registration with no VM is removed.
* A scale set re-created by the listener (GitHub answered 404 for it, so it got a new id): the
  old set's runners went with it at GitHub and can never take a job of the new set. They are
  abandoned at once (no longer owned, so the new set's demand gets fresh runners) and their
  VMs deleted, each only once GitHub does not report its runner busy.
* DRY_RUN: every decision is logged as what would be done; nothing is created, deleted or removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from provisioners.base import (
    PermanentProvisionerError,
    Provisioner,
    ProvisionerError,
    RunnerVM,
    ServerFailed,
    ServerSpec,
)
from provisioners.bootstrap import HostKey, generate_host_key
from provisioners.naming import FAILED_TAG, Ownership, parse_ownership, runner_name
from scaleset_listener.config import ScaleSetSpec
from scaleset_listener.errors import JobStillRunning, ListenerError
from scaleset_listener.scaling import UNLIMITED
from scaleset_listener.wire import JitConfig, JobCompleted, JobStarted, RunnerReference, Statistics

Clock = Callable[[], float]


class RunnerRegistry(Protocol):
    """What the scaler needs from the Actions service."""

    async def generate_jit_config(
        self, scale_set_id: int, runner_name: str, work_folder: str = ""
    ) -> JitConfig: ...

    async def list_runners(self, scale_set_id: int) -> list[RunnerReference]: ...

    async def get_runner(self, runner_id: int) -> RunnerReference | None: ...

    async def remove_runner(self, runner_id: int) -> None: ...


ServerSpecFactory = Callable[[Ownership, str, str, HostKey, datetime], ServerSpec]


class Phase(enum.StrEnum):
    CREATING = "creating"
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    FINISHED = "finished"
    DELETED = "deleted"
    FAILED = "failed"


OWNED_PHASES = frozenset({Phase.CREATING, Phase.BOOTING, Phase.IDLE, Phase.BUSY})


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle settings, in seconds."""

    boot_timeout: float = 600.0
    idle_runner_timeout: float = 300.0
    max_runner_lifetime: float = 86400.0
    deregistration_timeout: float = 30.0
    sweep_interval: float = 300.0
    keep_failed_vms: int = 0
    create_backoff_max: float = 300.0

    @property
    def tick(self) -> float:
        """How often timers are checked: fine enough for the shortest timer, at most 2 s."""
        shortest = min(self.boot_timeout, self.idle_runner_timeout, self.deregistration_timeout)
        return max(0.02, min(2.0, shortest / 10))


@dataclass
class TrackedRunner:
    name: str
    phase: Phase
    created_at: float
    phase_since: float
    runner_id: int | None = None
    server_id: str | None = None
    job_completed_at: float | None = None
    busy_warned: bool = False
    durations: dict[str, float] = field(default_factory=dict)
    # Its scale set was deleted at GitHub and re-created: its VM is to be deleted.
    abandoned: bool = False


@dataclass(frozen=True)
class Adoption:
    """A VM found at startup that the scaler takes over (from the reconciler's report)."""

    name: str
    server_id: str
    phase: Phase  # BOOTING, IDLE or BUSY
    runner_id: int | None = None
    age_seconds: float | None = None  # a booting VM's deadline counts from its creation


# Startup reconciliation of one scale set: acts on the cloud and GitHub, returns what to adopt.
Reconcile = Callable[[int], Awaitable[Sequence[Adoption]]]


@dataclass
class ScalerCounters:
    created: int = 0
    create_failures: int = 0
    deleted: int = 0
    retired_idle: int = 0
    boot_timeouts: int = 0
    lifetime_exceeded: int = 0
    registrations_removed: int = 0
    sweep_deleted: int = 0


class VMScaler:
    """One scale set's runners: the Scaler the listener talks to, plus a loop that converges."""

    def __init__(
        self,
        spec: ScaleSetSpec,
        registry: RunnerRegistry,
        provisioner: Provisioner,
        make_server_spec: ServerSpecFactory,
        listener_instance: str,
        lifecycle: Lifecycle,
        provision_slots: asyncio.Semaphore,
        *,
        dry_run: bool = False,
        clock: Clock = time.monotonic,
        reconcile: Reconcile | None = None,
    ) -> None:
        self.spec = spec
        self._registry = registry
        self._provisioner = provisioner
        self._make_server_spec = make_server_spec
        self._listener_instance = listener_instance
        self._lifecycle = lifecycle
        self._slots = provision_slots
        self._dry_run = dry_run
        self._clock = clock
        self._log = structlog.get_logger(__name__).bind(scale_set=spec.name)
        self._wake = asyncio.Event()
        self._scale_set_bound = asyncio.Event()
        self._scale_set_id = 0
        self._desired = 0
        self._capacity = UNLIMITED
        self.runners: dict[str, TrackedRunner] = {}
        # Runners of a scale set that GitHub deleted (the listener re-created it): VMs to delete.
        self.abandoned: dict[str, TrackedRunner] = {}
        self._creations: set[asyncio.Task[None]] = set()
        self._next_create_at = 0.0
        self._create_backoff = 0.0
        self.permanent_error: str | None = None
        self._missing_strikes: dict[str, int] = {}
        self._kept_failed = 0
        self._last_dry_run_decision: tuple[int, int] | None = None
        self.counters = ScalerCounters()
        self._reconcile = reconcile
        self._prepared_ids: set[int] = set()
        self._prepared = asyncio.Event()
        if reconcile is None:
            self._prepared.set()

    # The listener's side (Scaler protocol) ------------------------------------------------

    def bind_scale_set(self, scale_set_id: int) -> None:
        if self._scale_set_id and self._scale_set_id != scale_set_id:
            self._log.warning(
                "scale_set_replaced",
                old_id=self._scale_set_id,
                new_id=scale_set_id,
                abandoned_runners=len(self.runners),
            )
            self._abandon_all(self._scale_set_id)
        self._scale_set_id = scale_set_id
        self._scale_set_bound.set()
        self._wake.set()

    async def prepare(self, scale_set_id: int) -> None:
        """Startup reconciliation (once per scale set id), before any demand is counted; its
        adoptions join the owned set. A failure is logged: the sweep remains the safety net."""
        # Before the session's first poll announces the capacity to GitHub.
        try:
            await self.refresh_capacity()
        except ProvisionerError as exc:
            self._log.warning("cloud_capacity_unknown", error=str(exc))
        try:
            if self._reconcile is None or scale_set_id in self._prepared_ids:
                return
            self._prepared_ids.add(scale_set_id)
            try:
                adoptions = await self._reconcile(scale_set_id)
            except Exception as exc:  # noqa: BLE001 - the service must start anyway
                self._log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")
                return
            for adoption in adoptions:
                self.adopt(adoption)
        finally:
            self._prepared.set()
            self._wake.set()

    def adopt(self, adoption: Adoption) -> None:
        """Own a VM found in the cloud (idle, busy or booting; a booting one keeps its deadline)."""
        if adoption.name in self.runners:
            return
        now = self._clock()
        since = now - max(0.0, adoption.age_seconds or 0.0)
        if adoption.phase is not Phase.BOOTING:
            since = now
        self.runners[adoption.name] = TrackedRunner(
            name=adoption.name,
            phase=adoption.phase,
            created_at=since,
            phase_since=since,
            runner_id=adoption.runner_id,
            server_id=adoption.server_id,
        )
        self._log.info(
            "runner_adopted",
            runner_name=adoption.name,
            state=adoption.phase.value,
            server_id=adoption.server_id,
            source="reconcile",
        )

    def _abandon_all(self, old_scale_set_id: int) -> None:
        """The listener re-creates a scale set only after GitHub answered 404 for it: its
        runners were deleted with it (GitHub refuses to delete a set with busy runners unless
        forced, and forcing cancels their jobs). None of them can serve the new set."""
        for runner in self.runners.values():
            runner.abandoned = True
            self.abandoned[runner.name] = runner
            self._log.warning(
                "runner_abandoned",
                runner_name=runner.name,
                state=runner.phase.value,
                server_id=runner.server_id,
                reason=f"scale set {old_scale_set_id} was deleted at GitHub",
            )
        self.runners.clear()
        self._missing_strikes.clear()

    def cloud_capacity(self) -> int:
        return self._capacity

    async def handle_desired_runner_count(self, desired: int, statistics: Statistics) -> None:
        if desired != self._desired:
            self._log.info("desired_runners", desired=desired, owned=len(self.owned()))
        self._desired = desired
        self._wake.set()

    async def handle_job_started(self, job: JobStarted) -> None:
        runner = self.runners.get(job.runner_name)
        if runner is None:
            self._log.info("job_started_on_unknown_runner", runner_name=job.runner_name)
            return
        if runner.phase in (Phase.CREATING, Phase.BOOTING, Phase.IDLE):
            self._transition(runner, Phase.BUSY, job_id=job.job_id)

    async def handle_job_completed(self, job: JobCompleted) -> None:
        if not job.runner_name:
            # A withdrawn assignment: no runner had it, no VM changes.
            self._log.info("job_canceled_before_assignment", job_id=job.job_id)
            return
        runner = self.runners.get(job.runner_name)
        if runner is None:
            self._log.info("job_completed_on_unknown_runner", runner_name=job.runner_name)
            return
        if runner.phase in OWNED_PHASES:
            runner.job_completed_at = self._clock()
            self._transition(runner, Phase.FINISHED, result=job.result)
        self._wake.set()

    # Views ---------------------------------------------------------------------------------

    def owned(self) -> list[TrackedRunner]:
        return [runner for runner in self.runners.values() if runner.phase in OWNED_PHASES]

    @property
    def ready(self) -> bool:
        return self.permanent_error is None

    def problem(self) -> str | None:
        return self.permanent_error

    def _ownership(self) -> Ownership:
        return Ownership(self._listener_instance, self._scale_set_id)

    def _transition(self, runner: TrackedRunner, phase: Phase, **details: Any) -> None:
        now = self._clock()
        spent = now - runner.phase_since
        runner.durations[runner.phase.value] = runner.durations.get(runner.phase.value, 0.0) + spent
        self._log.info(
            "runner_state",
            runner_name=runner.name,
            previous=runner.phase.value,
            state=phase.value,
            seconds_in_previous=round(spent, 3),
            **details,
        )
        runner.phase = phase
        runner.phase_since = now

    # The loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Converge until `stop`; in-flight creations finish (their VMs are then owned)."""
        stopper = asyncio.create_task(stop.wait())
        binder = asyncio.create_task(self._scale_set_bound.wait())
        try:
            await asyncio.wait({stopper, binder}, return_when=asyncio.FIRST_COMPLETED)
            # Nothing is created or swept before startup reconciliation has adopted what exists.
            preparer = asyncio.create_task(self._prepared.wait())
            await asyncio.wait({stopper, preparer}, return_when=asyncio.FIRST_COMPLETED)
            preparer.cancel()
        finally:
            binder.cancel()
        if self._reconcile is None and not stop.is_set():
            # Without startup reconciliation the first sweep runs before demand is counted: it
            # adopts what an earlier process left (as GitHub reports the runners), so those VMs
            # are not counted twice and max_runners holds.
            await self._sweep_safely()
        next_sweep = self._clock() + self._lifecycle.sweep_interval
        try:
            while not stop.is_set():
                await self._converge_safely()
                if self._clock() >= next_sweep:
                    await self._sweep_safely()
                    next_sweep = self._clock() + self._lifecycle.sweep_interval
                self._wake.clear()
                waker = asyncio.create_task(self._wake.wait())
                try:
                    await asyncio.wait(
                        {waker, stopper},
                        timeout=self._lifecycle.tick,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waker.cancel()
        finally:
            stopper.cancel()
            if self._creations:
                # A creation in flight finishes: its VM is tagged, so the next start finds it.
                await asyncio.gather(*self._creations, return_exceptions=True)

    async def _converge_safely(self) -> None:
        try:
            await self.converge()
        except (ListenerError, ProvisionerError) as exc:
            self._log.error("converge_failed", error=str(exc), error_type=type(exc).__name__)

    async def _sweep_safely(self) -> None:
        try:
            await self.sweep()
        except (ListenerError, ProvisionerError) as exc:
            self._log.error("sweep_failed", error=str(exc), error_type=type(exc).__name__)

    async def refresh_capacity(self) -> None:
        """Learn what the cloud can run before the first poll announces it to GitHub."""
        free = await self._provisioner.capacity()
        self._capacity = UNLIMITED if free is None else len(self.owned()) + free

    async def converge(self) -> None:
        """One pass: refresh capacity, advance runners, create or retire toward `desired`."""
        free = await self._provisioner.capacity()
        await self._discard_abandoned()
        await self._advance_runners()
        owned = len(self.owned())
        in_flight = len(self._creations)
        if free is None:
            self._capacity = UNLIMITED
            startable = UNLIMITED
        else:
            # Creates in flight have not taken their floating IP yet: they will, from `free`.
            startable = max(0, free - in_flight)
            self._capacity = owned - in_flight + free
        # max_runners caps VMs, not only runners: a finished VM awaiting deletion still costs.
        with_vm = len(self.abandoned) + sum(
            1 for r in self.runners.values() if r.phase in OWNED_PHASES | {Phase.FINISHED}
        )
        startable = min(startable, self.spec.max_runners - with_vm)
        if owned < self._desired:
            self._provision(min(self._desired - owned, startable))
        elif owned > self._desired:
            await self._retire_idle(owned - self._desired)

    # Provisioning --------------------------------------------------------------------------

    def _provision(self, missing: int) -> None:
        now = self._clock()
        if missing <= 0 or now < self._next_create_at:
            return
        if self._dry_run:
            decision = (self._desired, len(self.owned()))
            if decision != self._last_dry_run_decision:
                self._last_dry_run_decision = decision
                self._log.info("dry_run_would_create", count=missing, desired=self._desired)
            return
        for _ in range(missing):
            runner = TrackedRunner(
                name=runner_name(self.spec.name),
                phase=Phase.CREATING,
                created_at=now,
                phase_since=now,
            )
            self.runners[runner.name] = runner
            self._log.info("runner_state", runner_name=runner.name, state=Phase.CREATING.value)
            task = asyncio.create_task(self._create(runner), name=f"create:{runner.name}")
            self._creations.add(task)
            task.add_done_callback(self._creations.discard)

    async def _create(self, runner: TrackedRunner) -> None:
        try:
            # The slots bound the API work (JIT config, create request), not the boot: a
            # cloud that takes a minute to boot must not cap how many VMs boot at once.
            async with self._slots:
                # One id for the JIT config and the tags, even if the set is re-created meanwhile.
                scale_set_id = self._scale_set_id
                jit = await self._registry.generate_jit_config(scale_set_id, runner.name)
                runner.runner_id = jit.runner.id
                spec = self._make_server_spec(
                    Ownership(self._listener_instance, scale_set_id),
                    runner.name,
                    jit.encoded_jit_config,
                    generate_host_key(comment=runner.name),
                    datetime.now(UTC),
                )
                server_id = await self._provisioner.submit(spec)
            vm = await self._provisioner.finish_create(server_id, runner.name, spec.tags)
        except (ListenerError, ProvisionerError) as exc:
            await self._creation_failed(runner, exc)
            return
        runner.server_id = vm.id
        self.counters.created += 1
        self._create_backoff = 0.0
        self.permanent_error = None
        if runner.abandoned:
            self._wake.set()  # the loop deletes its VM
            return
        if runner.phase is Phase.CREATING:
            self._transition(runner, Phase.BOOTING, server_id=vm.id, address=vm.address)
        self._wake.set()

    async def _creation_failed(self, runner: TrackedRunner, exc: Exception) -> None:
        self.counters.create_failures += 1
        permanent = isinstance(exc, PermanentProvisionerError)
        cap = self._lifecycle.create_backoff_max
        now = self._clock()
        if permanent:
            self._create_backoff = cap
        elif now >= self._next_create_at:
            # Grow once per wave: twenty creates failing together are one incident.
            self._create_backoff = min(cap, max(1.0, self._create_backoff * 2))
        self._next_create_at = max(self._next_create_at, now + self._create_backoff)
        fault = exc.fault if isinstance(exc, ServerFailed) else None
        if permanent:
            if self.permanent_error != str(exc):
                self._log.error("provisioning_misconfigured", error=str(exc))
            self.permanent_error = str(exc)
        else:
            self._log.warning(
                "runner_create_failed",
                runner_name=runner.name,
                error=str(exc),
                error_type=type(exc).__name__,
                fault=fault,
                retry_in_seconds=round(self._create_backoff, 1),
            )
        self._transition(runner, Phase.FAILED, reason=type(exc).__name__)
        if runner.abandoned:
            self.abandoned.pop(runner.name, None)
        else:
            await self._remove_registration(runner)
        self._forget(runner)
        self._wake.set()

    # Advancing runners ---------------------------------------------------------------------

    async def _advance_runners(self) -> None:
        now = self._clock()
        waiting = [r for r in self.runners.values() if r.phase in (Phase.BOOTING, Phase.FINISHED)]
        registrations: dict[str, RunnerReference] = {}
        if waiting:
            registrations = {
                reg.name: reg for reg in await self._registry.list_runners(self._scale_set_id)
            }
        for runner in list(self.runners.values()):
            if runner.server_id is None:
                # Its create call is still in flight: nothing to delete yet; its task finishes
                # first (lifecycle events can outrun the create call's wait for ACTIVE).
                continue
            registration = registrations.get(runner.name)
            if now - runner.created_at >= self._lifecycle.max_runner_lifetime and (
                runner.phase in OWNED_PHASES or runner.phase is Phase.FINISHED
            ):
                await self._lifetime_exceeded(runner)
            elif runner.phase is Phase.BOOTING:
                await self._advance_booting(runner, registration, now)
            elif runner.phase is Phase.FINISHED:
                await self._advance_finished(runner, registration, now)

    async def _advance_booting(
        self, runner: TrackedRunner, registration: RunnerReference | None, now: float
    ) -> None:
        if registration is not None and registration.busy:
            self._transition(runner, Phase.BUSY)
        elif registration is not None and registration.status.lower() == "online":
            self._transition(runner, Phase.IDLE)
        elif now - runner.phase_since >= self._lifecycle.boot_timeout:
            self.counters.boot_timeouts += 1
            self._log.warning(
                "runner_boot_timeout",
                runner_name=runner.name,
                boot_timeout=self._lifecycle.boot_timeout,
                registration=None if registration is None else registration.status,
            )
            await self._fail(runner, "boot_timeout")

    async def _advance_finished(
        self, runner: TrackedRunner, registration: RunnerReference | None, now: float
    ) -> None:
        waited = now - (runner.job_completed_at or now)
        if registration is None:
            await self._delete(runner, reason="job done, runner deregistered")
            return
        vm = await self._get_vm(runner)
        if vm is None or vm.status == "SHUTOFF":
            await self._delete(runner, reason="job done, VM powered off")
            return
        if waited < self._lifecycle.deregistration_timeout:
            return
        if registration.busy:
            # JobCompleted but GitHub says busy: a false completion; never kill a busy runner.
            if not runner.busy_warned:
                runner.busy_warned = True
                self._log.warning("finished_runner_still_busy", runner_name=runner.name)
            return
        await self._delete(runner, reason="deregistration timeout after job")

    async def _discard_abandoned(self) -> None:
        """Delete the VMs of abandoned runners; one GitHub still reports busy is kept."""
        for runner in list(self.abandoned.values()):
            if runner.server_id is None:
                continue  # its create call is in flight; it hands the VM back here
            try:
                if runner.runner_id is not None:
                    registration = await self._registry.get_runner(runner.runner_id)
                    if registration is not None and registration.busy:
                        if not runner.busy_warned:
                            runner.busy_warned = True
                            self._log.warning(
                                "abandoned_runner_still_busy", runner_name=runner.name
                            )
                        continue
                reason = "its scale set was deleted at GitHub"
                if self._dry_run:
                    self._log.info("dry_run_would_delete", runner_name=runner.name, reason=reason)
                else:
                    await self._provisioner.delete(runner.server_id)
                    self.counters.deleted += 1
                    self._log.info("runner_deleted", runner_name=runner.name, reason=reason)
            except (ListenerError, ProvisionerError) as exc:
                # Tried again on the next pass; the new set's work goes on meanwhile.
                self._log.warning(
                    "abandoned_runner_delete_failed", runner_name=runner.name, error=str(exc)
                )
                continue
            self.abandoned.pop(runner.name, None)

    async def _get_vm(self, runner: TrackedRunner) -> RunnerVM | None:
        if runner.server_id is None:
            return None
        return await self._provisioner.get(runner.server_id)

    async def _lifetime_exceeded(self, runner: TrackedRunner) -> None:
        self.counters.lifetime_exceeded += 1
        self._log.warning(
            "runner_lifetime_exceeded",
            runner_name=runner.name,
            max_runner_lifetime=self._lifecycle.max_runner_lifetime,
            phase=runner.phase.value,
        )
        await self._delete(runner, reason="max runner lifetime exceeded", force=True)

    # Retiring and deleting -----------------------------------------------------------------

    async def _retire_idle(self, surplus: int) -> None:
        now = self._clock()
        candidates = sorted(
            (
                runner
                for runner in self.runners.values()
                if runner.phase is Phase.IDLE
                and now - runner.phase_since >= self._lifecycle.idle_runner_timeout
            ),
            key=lambda runner: runner.created_at,
        )
        for runner in candidates[:surplus]:
            if self._dry_run:
                self._log.info("dry_run_would_retire", runner_name=runner.name)
                continue
            if runner.runner_id is not None:
                try:
                    await self._registry.remove_runner(runner.runner_id)
                except JobStillRunning:
                    # It took a job between our look and the removal: keep it.
                    self._log.info("retire_skipped_runner_took_a_job", runner_name=runner.name)
                    self._transition(runner, Phase.BUSY)
                    continue
                self.counters.registrations_removed += 1
            self.counters.retired_idle += 1
            await self._delete(runner, reason="idle beyond demand", registration_removed=True)

    async def _fail(self, runner: TrackedRunner, reason: str) -> None:
        self._transition(runner, Phase.FAILED, reason=reason)
        keep = runner.server_id is not None and self._kept_failed < self._lifecycle.keep_failed_vms
        if keep and not self._dry_run and runner.server_id is not None:
            self._kept_failed += 1
            await self._provisioner.add_tag(runner.server_id, FAILED_TAG)
            await self._remove_registration(runner)
            self._log.warning("failed_vm_kept", runner_name=runner.name, server_id=runner.server_id)
            self._forget(runner)
            return
        await self._delete(runner, reason=reason, from_failed=True)

    async def _delete(
        self,
        runner: TrackedRunner,
        *,
        reason: str,
        force: bool = False,
        registration_removed: bool = False,
        from_failed: bool = False,
    ) -> None:
        """Delete the VM, then make sure the registration is gone too."""
        if self._dry_run:
            self._log.info("dry_run_would_delete", runner_name=runner.name, reason=reason)
            return
        if runner.server_id is not None:
            await self._provisioner.delete(runner.server_id)
        if not registration_removed:
            await self._remove_registration(runner, force=force)
        self.counters.deleted += 1
        if not from_failed:
            self._transition(runner, Phase.DELETED, reason=reason, durations=runner.durations)
        else:
            self._log.info("runner_deleted", runner_name=runner.name, reason=reason)
        self._forget(runner)

    async def _remove_registration(self, runner: TrackedRunner, force: bool = False) -> None:
        if runner.runner_id is None or self._dry_run:
            return
        try:
            await self._registry.remove_runner(runner.runner_id)
            self.counters.registrations_removed += 1
        except JobStillRunning:
            # Only reachable when forced past the lifetime: the VM is gone, GitHub will notice.
            self._log.warning("registration_still_busy", runner_name=runner.name, forced=force)

    def _forget(self, runner: TrackedRunner) -> None:
        self.runners.pop(runner.name, None)
        self._missing_strikes.pop(runner.name, None)

    # The sweep -----------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Compare the cloud with GitHub (not with memory) and clean up what has gone wrong."""
        if not self._scale_set_id:
            return
        vms = await self._provisioner.list_owned(self._ownership().tags())
        registrations = {r.name: r for r in await self._registry.list_runners(self._scale_set_id)}
        now_wall = datetime.now(UTC)
        names_with_vm: set[str] = set()
        findings: Counter[str] = Counter()
        for vm in vms:
            if FAILED_TAG in vm.tags:
                continue
            info = parse_ownership(vm.tags, vm.metadata)
            name = info.runner_name if info and info.runner_name else vm.name
            names_with_vm.add(name)
            finding = await self._sweep_vm(vm, name, registrations.get(name), now_wall)
            if finding:
                findings[finding] += 1
        creating = {r.name for r in self.runners.values() if r.phase is Phase.CREATING}
        for name, registration in registrations.items():
            if name not in names_with_vm and name not in creating and not registration.busy:
                findings["registration_without_vm"] += 1
                await self._sweep_registration(name, registration)
        self._log.info("sweep", vms=len(vms), registrations=len(registrations), **findings)

    async def _sweep_vm(
        self, vm: RunnerVM, name: str, registration: RunnerReference | None, now: datetime
    ) -> str | None:
        """Act on one owned VM; what was found wrong with it, if anything."""
        tracked = self.runners.get(name)
        if tracked is not None and tracked.server_id is None:
            # Its create call is still waiting for this VM: the create path owns it.
            return None
        age = (now - vm.created_at).total_seconds() if vm.created_at else 0.0
        in_boot_window = (
            tracked is not None and tracked.phase in (Phase.CREATING, Phase.BOOTING)
        ) or age < self._lifecycle.boot_timeout
        busy = registration is not None and registration.busy
        if vm.status == "ERROR" and not busy:
            self._log.error("sweep_vm_error", runner_name=name, fault=vm.fault)
            await self._sweep_delete(vm, name, registration, "server ERROR")
            return "error"
        if vm.status == "SHUTOFF" and not busy:
            await self._sweep_delete(vm, name, registration, "VM powered off")
            return "powered_off"
        if registration is None and not in_boot_window:
            strikes = self._missing_strikes.get(name, 0) + 1
            self._missing_strikes[name] = strikes
            if strikes < 2:
                return None
            await self._sweep_delete(vm, name, None, "runner missing from GitHub twice")
            return "runner_missing"
        self._missing_strikes.pop(name, None)
        if tracked is None and registration is not None:
            self._adopt(name, vm, registration)
        elif (
            tracked is not None
            and tracked.phase is Phase.BUSY
            and registration is not None
            and not registration.busy
            and registration.status.lower() == "online"
        ):
            # Thought busy (a refused retirement, a JobStarted we missed) but GitHub says
            # idle: count it as idle again so that it can be retired.
            self._transition(tracked, Phase.IDLE, reason="GitHub reports it idle")
        return None

    async def _sweep_registration(self, name: str, registration: RunnerReference) -> None:
        if self._dry_run:
            self._log.info("dry_run_would_remove_registration", runner_name=name)
            return
        with contextlib.suppress(JobStillRunning):
            await self._registry.remove_runner(registration.id)
            self.counters.registrations_removed += 1
            self._log.info("sweep_registration_removed", runner_name=name)
        tracked = self.runners.get(name)
        if tracked is not None and tracked.server_id is None:
            self._forget(tracked)

    def _adopt(self, name: str, vm: RunnerVM, registration: RunnerReference) -> None:
        now = self._clock()
        phase = Phase.BUSY if registration.busy else Phase.IDLE
        if registration.status.lower() != "online" and not registration.busy:
            phase = Phase.BOOTING
        self.runners[name] = TrackedRunner(
            name=name,
            phase=phase,
            created_at=now,
            phase_since=now,
            runner_id=registration.id,
            server_id=vm.id,
        )
        self._log.info("runner_adopted", runner_name=name, state=phase.value, server_id=vm.id)

    async def _sweep_delete(
        self, vm: RunnerVM, name: str, registration: RunnerReference | None, reason: str
    ) -> None:
        if self._dry_run:
            self._log.info("dry_run_would_delete", runner_name=name, reason=reason)
            return
        self.counters.sweep_deleted += 1
        await self._provisioner.delete(vm.id)
        if registration is not None:
            with contextlib.suppress(JobStillRunning):
                await self._registry.remove_runner(registration.id)
        tracked = self.runners.get(name)
        if tracked is not None:
            self._forget(tracked)
        self._log.info("sweep_vm_deleted", runner_name=name, server_id=vm.id, reason=reason)
