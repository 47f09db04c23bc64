"""The scaler's hands: each step `plan` names, taken against GitHub and the cloud, with the
ledger kept in step.

* Creating: JIT config for `<scale-set>-<8 hex>`, then a server with the rendered bootstrap,
  bounded by a process-wide semaphore (PROVISION_CONCURRENCY) around the API work only. Failures
  back off (doubling per wave of failures, capped); a permanent error (an unknown image...) is
  logged once and is the scaler's `/readyz` reason until a create succeeds.
* Deleting: the VM first, then the registration, so that GitHub never assigns a job to a runner
  whose VM is going; a retirement is the other way round (GitHub's refusal keeps a runner that
  just took a job).
* One step's failure is logged and ends only that step: the next pass plans it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import structlog

from provisioners.base import (
    ActiveTimeout,
    PermanentProvisionerError,
    Provisioner,
    ProvisionerError,
    QuotaExceeded,
    ServerFailed,
    ServerSpec,
)
from provisioners.bootstrap import HostKey, generate_host_key
from provisioners.naming import FAILED_TAG, Ownership, failed_metadata, runner_name
from reconciler.ports import RunnerRegistrations
from scaleset_listener.errors import JobStillRunning, ListenerError
from scaleset_listener.metrics import Metrics, ScaleSetMetrics
from scaleset_listener.retrying import RecoveryBackoff
from scaleset_listener.usage import UsageLog, UsageRecord
from scaleset_listener.vm_scaler.ledger import Ledger, Phase, TrackedRunner
from scaleset_listener.vm_scaler.plan import (
    CreateRunners,
    DeleteReason,
    DeleteRunner,
    DiscardAbandoned,
    EndLifetime,
    FailBoot,
    Lifecycle,
    MarkRegistered,
    RetireIdle,
    Step,
    WarnStillBusy,
)
from scaleset_listener.wire import JitConfig, JobCompleted, RunnerReference


class RunnerRegistry(RunnerRegistrations, Protocol):
    """What the scaler needs from the Actions service: the reconciler's two calls, the JIT
    config that registers a runner, and the look-up of one runner."""

    async def generate_jit_config(
        self, scale_set_id: int, runner_name: str, work_folder: str = ""
    ) -> JitConfig: ...

    async def list_runners(self, scale_set_id: int) -> list[RunnerReference]: ...

    async def get_runner(self, runner_id: int) -> RunnerReference | None: ...


ServerSpecFactory = Callable[[Ownership, str, str, HostKey, datetime], ServerSpec]

# `scaleset_listener_vms_deleted_total{reason}`: why the scaler deleted a VM.
_DELETED_BECAUSE = {
    DeleteReason.JOB_DONE_DEREGISTERED: "job_done",
    DeleteReason.JOB_DONE_POWERED_OFF: "job_done",
    DeleteReason.DEREGISTRATION_TIMEOUT: "deregistration_timeout",
}


def error_kind(exc: BaseException) -> str:
    """`scaleset_listener_cloud_errors_total{kind}` of a provisioner error."""
    if isinstance(exc, QuotaExceeded):
        return "quota"
    if isinstance(exc, ActiveTimeout):
        return "timeout"
    if isinstance(exc, ServerFailed):
        return "server_failed"
    if isinstance(exc, PermanentProvisionerError):
        return "permanent"
    return "temporary"


def _utc(moment: datetime | None) -> datetime | None:
    """A wire timestamp without an offset is UTC (the service writes them so)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class Accounting:
    """What the scaler reports of each VM besides its log: metrics, and the job's usage record
    once the VM is gone (a `job_usage` event, and a line in USAGE_LOG_PATH)."""

    def __init__(
        self,
        scale_set_name: str,
        flavor: str,
        metrics: ScaleSetMetrics | None = None,
        usage_log: UsageLog | None = None,
    ) -> None:
        self.scale_set_name = scale_set_name
        self.flavor = flavor
        self.metrics = metrics or Metrics().scale_set(scale_set_name, 0, 0)
        self.usage_log = usage_log
        self._log = structlog.get_logger(__name__).bind(scale_set=scale_set_name)

    def vm_gone(self, runner: TrackedRunner, reason: str, lived: float, deleting: float) -> None:
        self.metrics.vm_deleted(reason, deleting)
        self.metrics.vm_gone(lived)
        job = runner.job
        if job is None:
            return  # no job ran on it (retired idle, failed boot): its cost is in the metrics
        record = UsageRecord(
            repository=f"{job.owner_name}/{job.repository_name}",
            workflow_ref=job.job_workflow_ref,
            job_name=job.job_display_name,
            event=job.event_name,
            result=job.result if isinstance(job, JobCompleted) else "",
            scale_set=self.scale_set_name,
            runner=runner.name,
            server_id=runner.server_id or "",
            flavor=self.flavor,
            assigned_at=_utc(job.scale_set_assign_time),
            vm_requested_at=runner.times.get("vm_requested"),
            vm_active_at=runner.times.get("vm_active"),
            runner_online_at=runner.times.get("runner_online"),
            job_started_at=_utc(job.runner_assign_time),
            job_finished_at=_utc(job.finish_time),
            vm_deleted_at=datetime.now(UTC),
            vm_seconds=round(lived, 3),
        )
        self._log.info("job_usage", **record.log_fields())
        if self.usage_log is not None:
            try:
                self.usage_log.append(record)
            except OSError as exc:
                # The record is in the log line above; the file is for the `usage` report.
                self._log.warning(
                    "usage_log_write_failed", path=str(self.usage_log.path), error=str(exc)
                )


class Executor:
    """Takes one scale set's steps; owns the create tasks and the create backoff."""

    def __init__(
        self,
        scale_set_name: str,
        ledger: Ledger,
        registry: RunnerRegistry,
        provisioner: Provisioner,
        make_server_spec: ServerSpecFactory,
        lifecycle: Lifecycle,
        provision_slots: asyncio.Semaphore,
        clock: Callable[[], float],
        wake: Callable[[], None],
        accounting: Accounting | None = None,
    ) -> None:
        self._scale_set_name = scale_set_name
        self._accounting = accounting or Accounting(scale_set_name, "")
        self._ledger = ledger
        self._registry = registry
        self._provisioner = provisioner
        self._make_server_spec = make_server_spec
        self._lifecycle = lifecycle
        self._slots = provision_slots
        self._clock = clock
        self._wake = wake
        self._log = structlog.get_logger(__name__).bind(scale_set=scale_set_name)
        self._creations: set[asyncio.Task[None]] = set()
        self._next_create_at = 0.0
        # Grows over one incident of failed creates, from 1 s to CREATE_BACKOFF_MAX.
        self._create_backoff = RecoveryBackoff(first=1.0, cap=lifecycle.create_backoff_max)
        self._create_wait = 0.0
        self.kept_failed = 0
        self.permanent_error: str | None = None
        self.ownership = Ownership("", 0)  # set when the scale set is bound

    @property
    def in_flight(self) -> int:
        return len(self._creations)

    def create_allowed(self) -> bool:
        return self._clock() >= self._next_create_at

    async def drain(self) -> None:
        """Let the creates in flight finish: their VMs are tagged, so the next start finds them."""
        if self._creations:
            await asyncio.gather(*self._creations, return_exceptions=True)

    async def execute(self, steps: Sequence[Step]) -> None:
        for step in steps:
            try:
                await self._take(step)
            except (ListenerError, ProvisionerError) as exc:
                if isinstance(exc, ProvisionerError) and not isinstance(step, CreateRunners):
                    self._accounting.metrics.cloud_error("delete", error_kind(exc))
                self._log.error(
                    "step_failed",
                    step=type(step).__name__,
                    runner_name=getattr(step, "name", None),
                    error=str(exc),
                    error_type=type(exc).__name__,
                )

    async def _take(self, step: Step) -> None:
        match step:
            case CreateRunners(count):
                self._create_runners(count)
            case MarkRegistered(name, phase):
                self._ledger.transition(self._ledger.runners[name], phase)
            case RetireIdle(name):
                await self._retire_idle(self._ledger.runners[name])
            case DeleteRunner(name, reason):
                await self._delete_runner(self._ledger.runners[name], reason)
            case EndLifetime(name):
                await self._end_lifetime(self._ledger.runners[name])
            case FailBoot(name, keep_vm):
                await self._fail_boot(self._ledger.runners[name], keep_vm)
            case DiscardAbandoned(name):
                await self._discard_abandoned(self._ledger.abandoned[name])
            case WarnStillBusy(name, event):
                runner = self._ledger.runners.get(name) or self._ledger.abandoned[name]
                runner.busy_warned = True
                self._log.warning(event, runner_name=name)

    # Creating ------------------------------------------------------------------------------

    def _create_runners(self, count: int) -> None:
        for _ in range(count):
            runner = self._ledger.new_runner(runner_name(self._scale_set_name))
            # The set it is created for, even if the listener re-creates the set meanwhile: an
            # abandoned runner must not register in the new set (its JIT config is refused).
            task = asyncio.create_task(
                self._create(runner, self.ownership), name=f"create:{runner.name}"
            )
            self._creations.add(task)
            task.add_done_callback(self._creations.discard)

    async def _create(self, runner: TrackedRunner, ownership: Ownership) -> None:
        try:
            # The slots bound the API work (JIT config, create request), not the boot: a
            # cloud that takes a minute to boot must not cap how many VMs boot at once.
            async with self._slots:
                jit = await self._registry.generate_jit_config(ownership.scale_set_id, runner.name)
                runner.runner_id = jit.runner.id
                spec = self._make_server_spec(
                    ownership,
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
        runner.active_at = self._clock()
        runner.times["vm_active"] = datetime.now(UTC)
        self._accounting.metrics.vm_created(max(0.0, runner.active_at - runner.created_at))
        self._ledger.counters.created += 1
        self._create_backoff.reset()
        self.permanent_error = None
        if not runner.abandoned and runner.phase is Phase.CREATING:
            self._ledger.transition(runner, Phase.BOOTING, server_id=vm.id, address=vm.address)
        self._wake()  # an abandoned one's VM is deleted by the next pass

    async def _creation_failed(self, runner: TrackedRunner, exc: Exception) -> None:
        self._ledger.counters.create_failures += 1
        if isinstance(exc, ProvisionerError):
            self._accounting.metrics.cloud_error("create", error_kind(exc))
        permanent = isinstance(exc, PermanentProvisionerError)
        now = self._clock()
        if permanent:
            # Retrying soon cannot help (an unknown image): only the cap's slow retry.
            self._create_wait = self._create_backoff.cap
        elif now >= self._next_create_at:
            # Grow once per wave: twenty creates failing together are one incident.
            self._create_wait = self._create_backoff.next_wait()
        self._next_create_at = max(self._next_create_at, now + self._create_wait)
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
                retry_in_seconds=round(self._create_wait, 1),
            )
        self._ledger.transition(runner, Phase.FAILED, reason=type(exc).__name__)
        if runner.abandoned:
            self._ledger.abandoned.pop(runner.name, None)
        else:
            try:
                await self._remove_registration(runner)
            except (ListenerError, ProvisionerError) as removal:
                # The sweep removes a registration without a VM; the backoff goes on.
                self._log.warning(
                    "registration_not_removed", runner_name=runner.name, error=str(removal)
                )
        self._ledger.forget(runner.name)
        self._wake()

    # Deleting ------------------------------------------------------------------------------

    async def _retire_idle(self, runner: TrackedRunner) -> None:
        if runner.runner_id is not None:
            try:
                await self._registry.remove_runner(runner.runner_id)
            except JobStillRunning:
                # It took a job between our look and the removal: keep it.
                self._log.info("retire_skipped_runner_took_a_job", runner_name=runner.name)
                self._ledger.transition(runner, Phase.BUSY)
                return
            self._ledger.counters.registrations_removed += 1
        self._ledger.counters.retired_idle += 1
        await self._delete_vm(runner, "idle")
        self._finish(runner, "idle beyond demand")

    async def _delete_runner(self, runner: TrackedRunner, reason: DeleteReason) -> None:
        await self._remove(runner, _DELETED_BECAUSE[reason])
        self._finish(runner, reason.value)

    async def _end_lifetime(self, runner: TrackedRunner) -> None:
        self._ledger.counters.lifetime_exceeded += 1
        self._log.warning(
            "runner_lifetime_exceeded",
            runner_name=runner.name,
            max_runner_lifetime=self._lifecycle.max_runner_lifetime,
            phase=runner.phase.value,
        )
        await self._remove(runner, "lifetime")
        self._finish(runner, "max runner lifetime exceeded")

    async def _fail_boot(self, runner: TrackedRunner, keep_vm: bool) -> None:
        self._ledger.counters.boot_timeouts += 1
        self._log.warning(
            "runner_boot_timeout",
            runner_name=runner.name,
            boot_timeout=self._lifecycle.boot_timeout,
        )
        self._ledger.transition(runner, Phase.FAILED, reason="boot_timeout")
        self._accounting.metrics.cloud_error("boot", "timeout")
        if keep_vm and runner.server_id is not None:
            self.kept_failed += 1
            await self._provisioner.add_tag(runner.server_id, FAILED_TAG)
            # Dated, so FAILED_VM_RETENTION counts from now; no pool address held meanwhile.
            await self._provisioner.set_metadata(
                runner.server_id, failed_metadata(datetime.now(UTC))
            )
            await self._provisioner.release_floating_ips(runner.server_id)
            await self._remove_registration(runner)
            self._log.warning("failed_vm_kept", runner_name=runner.name, server_id=runner.server_id)
        else:
            await self._remove(runner, "boot_failed")
            self._ledger.counters.deleted += 1
            self._log.info("runner_deleted", runner_name=runner.name, reason="boot_timeout")
        self._ledger.forget(runner.name)

    async def _discard_abandoned(self, runner: TrackedRunner) -> None:
        await self._delete_vm(runner, "abandoned")
        self._ledger.counters.deleted += 1
        self._log.info(
            "runner_deleted", runner_name=runner.name, reason="its scale set was deleted at GitHub"
        )
        self._ledger.abandoned.pop(runner.name, None)

    async def _remove(self, runner: TrackedRunner, reason: str) -> None:
        """The VM first, then the registration: GitHub never assigns a job to a runner whose VM
        is going."""
        await self._delete_vm(runner, reason)
        await self._remove_registration(runner)

    async def _delete_vm(self, runner: TrackedRunner, reason: str) -> None:
        if runner.server_id is not None:
            started = self._clock()
            await self._provisioner.delete(runner.server_id)
            now = self._clock()
            self._accounting.vm_gone(runner, reason, now - runner.created_at, now - started)

    async def _remove_registration(self, runner: TrackedRunner) -> None:
        """After its VM is gone (or never came): GitHub refuses while it reports the runner
        busy (past MAX_RUNNER_LIFETIME, or a race), and notices the runner is gone itself."""
        if runner.runner_id is None:
            return
        try:
            await self._registry.remove_runner(runner.runner_id)
        except JobStillRunning:
            self._log.warning("registration_still_busy", runner_name=runner.name)
            return
        self._ledger.counters.registrations_removed += 1

    def _finish(self, runner: TrackedRunner, reason: str) -> None:
        self._ledger.counters.deleted += 1
        self._ledger.transition(runner, Phase.DELETED, reason=reason, durations=runner.durations)
        self._ledger.forget(runner.name)
