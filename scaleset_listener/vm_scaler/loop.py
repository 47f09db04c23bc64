"""The VM scaler: one scale set's demand turned into runner VMs and taken away again.

* Level-triggered: the listener hands on `desired` (from the statistics); the scaler's own loop
  converges the owned runners (creating + booting + idle + busy) to it. Handlers only record and
  wake the loop, so the listener never waits for a VM.
* Each pass observes (GitHub's registrations, the cloud's capacity and the VMs of finished
  runners, only as far as the plan needs them), plans (plan.py, pure) and executes (execute.py).
* Every VM_TRACKER_INTERVAL the reconciler's periodic pass (reconciler/sweep.py) decides what
  the cloud and GitHub show that the ledger does not: it removes what its table removes and hands
  back adoptions and corrections, which the scaler applies. One sweep runs before demand is
  counted: without startup reconciliation it adopts an earlier process's VMs (not doubled), and
  it counts the failed VMs kept for debugging (KEEP_FAILED_VMS counts what the cloud holds).
* A scale set re-created by the listener (GitHub answered 404 for it, so it got a new id): the
  old set's runners went with it at GitHub and can never take a job of the new set. They are
  abandoned at once (no longer owned, so the new set's demand gets fresh runners) and their VMs
  deleted, each only once GitHub does not report its runner busy.
* DRY_RUN is not the scaler's business: the composition root hands it a provisioner and a
  registry that only log what they would change (scaleset_listener/dry_run.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Protocol

import structlog

from provisioners.base import Provisioner, ProvisionerError, RunnerVM
from provisioners.naming import Ownership
from reconciler.policy import Action, Decision
from reconciler.sweep import Sweeper, SweepReport
from scaleset_listener.config import ScaleSetSpec
from scaleset_listener.demand import UNLIMITED, cloud_capacity
from scaleset_listener.errors import ListenerError
from scaleset_listener.metrics import ScaleSetMetrics
from scaleset_listener.vm_scaler.execute import (
    Accounting,
    Executor,
    RunnerRegistry,
    ServerSpecFactory,
)
from scaleset_listener.vm_scaler.ledger import (
    Adoption,
    Ledger,
    Phase,
    ScalerCounters,
    TrackedRunner,
    adoptions,
)
from scaleset_listener.vm_scaler.plan import Lifecycle, Observation, next_deadline, plan
from scaleset_listener.wire import JobCompleted, JobStarted, RunnerReference, Statistics

Clock = Callable[[], float]

# Startup reconciliation of one scale set: acts on the cloud and GitHub, returns what to adopt.
Reconcile = Callable[[int], Awaitable[Sequence[Adoption]]]


class _Decided(Protocol):
    @property
    def decision(self) -> Decision: ...


def record_decisions(
    metrics: ScaleSetMetrics,
    reconcile_pass: str,
    rows: Iterable[_Decided],
    orphans: Iterable[_Decided] = (),
) -> None:
    """Count a reconciler pass's decisions, by action and rule; `keep` (nothing to change,
    every tracked VM on every sweep) is not counted."""
    for row in [*rows, *orphans]:
        if row.decision.action is not Action.KEEP:
            metrics.reconcile_decision(reconcile_pass, row.decision.action.value, row.decision.rule)


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
        clock: Clock = time.monotonic,
        reconcile: Reconcile | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        self.spec = spec
        self._accounting = accounting or Accounting(spec.name, spec.flavor or "")
        self._registry = registry
        self._provisioner = provisioner
        self._listener_instance = listener_instance
        self._lifecycle = lifecycle
        self._clock = clock
        self._log = structlog.get_logger(__name__).bind(scale_set=spec.name)
        self._wake = asyncio.Event()
        self._scale_set_bound = asyncio.Event()
        self._scale_set_id = 0
        self._desired = 0
        self._capacity = UNLIMITED
        self.ledger = Ledger(spec.name, clock, self._accounting.metrics)
        self._executor = Executor(
            spec.name,
            self.ledger,
            registry,
            provisioner,
            make_server_spec,
            lifecycle,
            provision_slots,
            clock,
            self._wake.set,
            self._accounting,
        )
        self._sweeper = Sweeper(
            provisioner,
            registry,
            timedelta(seconds=lifecycle.boot_timeout),
            max_lifetime=timedelta(seconds=lifecycle.max_runner_lifetime),
            failed_retention=timedelta(seconds=lifecycle.failed_vm_retention),
        )
        self._reconcile = reconcile
        self._prepared_ids: set[int] = set()
        self._prepared = asyncio.Event()
        if reconcile is None:
            self._prepared.set()

    # Views ---------------------------------------------------------------------------------

    @property
    def runners(self) -> dict[str, TrackedRunner]:
        return self.ledger.runners

    @property
    def counters(self) -> ScalerCounters:
        return self.ledger.counters

    @property
    def permanent_error(self) -> str | None:
        return self._executor.permanent_error

    @property
    def ready(self) -> bool:
        return self.permanent_error is None

    def problem(self) -> str | None:
        return self.permanent_error

    def owned(self) -> list[TrackedRunner]:
        return self.ledger.owned()

    def cloud_capacity(self) -> int:
        return self._capacity

    def phase_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((phase.value for phase in Phase if phase is not Phase.DELETED), 0)
        # Read by the metrics endpoint's thread: list() copies in one step under the GIL, where
        # iterating the live dict could meet a runner being added.
        for runner in list(self.ledger.runners.values()):
            if runner.phase is not Phase.DELETED:
                counts[runner.phase.value] += 1
        return counts

    def _ownership(self) -> Ownership:
        return Ownership(self._listener_instance, self._scale_set_id)

    # The listener's side (Scaler protocol) ------------------------------------------------

    def bind_scale_set(self, scale_set_id: int) -> None:
        if self._scale_set_id and self._scale_set_id != scale_set_id:
            self._log.warning(
                "scale_set_replaced",
                old_id=self._scale_set_id,
                new_id=scale_set_id,
                abandoned_runners=len(self.ledger.runners),
            )
            # The listener re-creates a scale set only after GitHub answered 404 for it: its
            # runners were deleted with it (GitHub refuses to delete a set with busy runners
            # unless forced, and forcing cancels their jobs).
            self.ledger.abandon_all(f"scale set {self._scale_set_id} was deleted at GitHub")
            self._sweeper.forget_missing()
            # The old set's demand is not the new set's: nothing is created for it until the new
            # set's own statistics say how many (else a pass in between creates the old count).
            self._desired = 0
        self._scale_set_id = scale_set_id
        self._executor.ownership = self._ownership()
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
                found = await self._reconcile(scale_set_id)
            except Exception as exc:  # noqa: BLE001 - the service must start anyway
                self._log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")
                return
            for adoption in found:
                self.ledger.adopt(adoption, source="reconcile")
        finally:
            self._prepared.set()
            self._wake.set()

    async def handle_desired_runner_count(self, desired: int, statistics: Statistics) -> None:
        if desired != self._desired:
            self._log.info("desired_runners", desired=desired, owned=len(self.owned()))
        self._desired = desired
        self._wake.set()

    async def handle_job_started(self, job: JobStarted) -> None:
        runner = self.ledger.runners.get(job.runner_name)
        if runner is None:
            self._log.info("job_started_on_unknown_runner", runner_name=job.runner_name)
            return
        runner.job = job
        if runner.phase in (Phase.CREATING, Phase.BOOTING, Phase.IDLE):
            self.ledger.transition(runner, Phase.BUSY, job_id=job.job_id)

    async def handle_job_completed(self, job: JobCompleted) -> None:
        if not job.runner_name:
            # A withdrawn assignment: no runner had it, no VM changes.
            self._log.info("job_canceled_before_assignment", job_id=job.job_id)
            return
        runner = self.ledger.runners.get(job.runner_name)
        if runner is None:
            self._log.info("job_completed_on_unknown_runner", runner_name=job.runner_name)
            return
        runner.job = job
        if runner.phase in (Phase.CREATING, Phase.BOOTING, Phase.IDLE, Phase.BUSY):
            runner.job_completed_at = self._clock()
            self.ledger.transition(runner, Phase.FINISHED, result=job.result)
        self._wake.set()

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
        if not stop.is_set():
            # Before demand is counted: without startup reconciliation it adopts what an earlier
            # process left (so max_runners holds); either way it counts the kept failed VMs.
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
                        timeout=self._until_next_pass(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waker.cancel()
        finally:
            stopper.cancel()
            await self._executor.drain()

    def _until_next_pass(self) -> float:
        """The tick, or less when a runner's deadline (a boot timeout...) is due sooner."""
        now = self._clock()
        due = next_deadline(list(self.ledger.runners.values()), self._lifecycle, now)
        if due is None:
            return self._lifecycle.tick
        # A hair past the deadline, so that the pass then sees it run out.
        return min(self._lifecycle.tick, due - now + 0.001)

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
        free = await self._cloud_free()
        self._capacity = cloud_capacity(len(self.owned()), self._executor.in_flight, free)

    async def _cloud_free(self) -> int | None:
        """More servers of this set's flavor the cloud takes (free pool addresses, the project's
        quota headroom), this set's creates in flight not counted as taken."""
        return await self._provisioner.capacity(self.spec.flavor, self._ownership().tags())

    async def converge(self) -> None:
        """One pass: observe, plan, execute."""
        passed = plan(await self._observe(), self._lifecycle, self.spec.max_runners)
        self._capacity = passed.cloud_capacity
        await self._executor.execute(passed.steps)

    async def _observe(self) -> Observation:
        """What this pass's plan reads; GitHub and the cloud are asked only what it needs."""
        free = await self._cloud_free()
        # Counted in the same instant as `free`, which hands back this set's creates in flight:
        # one that finished in between would otherwise be counted as free and as not in flight.
        in_flight = self._executor.in_flight
        runners = list(self.ledger.runners.values())
        waiting = [r for r in runners if r.phase in (Phase.BOOTING, Phase.FINISHED)]
        registrations: dict[str, RunnerReference] = {}
        if waiting:
            listed = await self._registry.list_runners(self._scale_set_id)
            registrations = {registration.name: registration for registration in listed}
        finished_vms: dict[str, RunnerVM | None] = {}
        for runner in runners:
            if (
                runner.phase is Phase.FINISHED
                and runner.server_id is not None
                and runner.name in registrations
            ):
                finished_vms[runner.name] = await self._provisioner.get(runner.server_id)
        abandoned = list(self.ledger.abandoned.values())
        abandoned_registrations: dict[str, RunnerReference | None] = {}
        for runner in abandoned:
            if runner.server_id is not None and runner.runner_id is not None:
                abandoned_registrations[runner.name] = await self._registry.get_runner(
                    runner.runner_id
                )
        return Observation(
            now=self._clock(),
            desired=self._desired,
            runners=runners,
            abandoned=abandoned,
            registrations=registrations,
            abandoned_registrations=abandoned_registrations,
            finished_vms=finished_vms,
            free=free,
            in_flight=in_flight,
            create_allowed=self._executor.create_allowed(),
            kept_failed=self._executor.kept_failed,
        )

    async def sweep(self) -> None:
        """The reconciler's periodic pass over this set; its findings are applied here."""
        if not self._scale_set_id:
            return
        self.apply(await self._sweeper.sweep(self._ownership(), self.ledger.known()))

    def apply(self, report: SweepReport) -> None:
        """Take over what a sweep decided: removed VMs leave the ledger, found ones join it,
        a runner thought busy that GitHub reports idle is idle again (and so retirable)."""
        record_decisions(self._accounting.metrics, "sweep", report.rows, report.orphans)
        for row in report.removed:
            self.ledger.counters.sweep_deleted += 1
            self.ledger.forget(row.runner_name)
        for adoption in adoptions(report.rows):
            self.ledger.adopt(adoption, source="sweep")
        for row in report.with_action(Action.MARK_IDLE):
            runner = self.ledger.runners.get(row.runner_name)
            if runner is not None and runner.phase is Phase.BUSY:
                self.ledger.transition(runner, Phase.IDLE, reason="GitHub reports it idle")
        self.ledger.counters.registrations_removed += sum(o.removed for o in report.orphans)
        # KEEP_FAILED_VMS counts what the cloud holds, not what this process kept.
        self._executor.kept_failed = report.kept_failed
        self._log.info(
            "sweep",
            vms=report.vms,
            registrations=report.registrations,
            **report.findings(),
        )
        self._wake.set()
