"""The periodic pass (every VM_TRACKER_INTERVAL while the service runs): the cloud, GitHub and
what the scaler tracks, no SSH. `decide_sweep()` (reconciler/policy.py) decides each owned VM,
`decide_registration()` each registration without a VM; this module gathers the facts, removes
what the tables remove, and reports the rest (adoptions, corrections) for the scaler to apply;
the scaler logs the pass (`sweep`) once it has applied it.

The one piece of memory between passes: which runners were missing from GitHub on the previous
sweep. A runner missing twice in a row (outside its boot window) has its VM deleted; once is a
registration GitHub has not shown yet, or a list answered mid-change.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from provisioners.base import RunnerVM
from provisioners.naming import FAILED_TAG, Ownership, parse_ownership
from reconciler.policy import Action, Decision, Known, SweepFacts, decide_sweep
from reconciler.ports import Cloud, RunnerRegistration, RunnerRegistrations
from reconciler.reconcile import (
    OrphanRow,
    orphan_rows,
    remove_orphan,
    remove_vm,
    runner_facts,
    runner_name_of,
)

log = structlog.get_logger(__name__)


@dataclass
class SweepRow:
    """One owned VM on one sweep: what was found and decided, and whether acting worked."""

    vm: RunnerVM
    runner_name: str
    age_seconds: float | None
    registration: RunnerRegistration | None
    decision: Decision
    error: str | None = None

    @property
    def server_id(self) -> str:
        return self.vm.id


@dataclass
class SweepReport:
    rows: list[SweepRow] = field(default_factory=list)
    orphans: list[OrphanRow] = field(default_factory=list)
    vms: int = 0  # owned VMs listed
    registrations: int = 0  # registrations listed

    @property
    def kept_failed(self) -> int:
        """Failed VMs kept for debugging that stay kept (KEEP_FAILED_VMS counts these)."""
        return sum(
            1
            for row in self.rows
            if FAILED_TAG in row.vm.tags and row.decision.action is Action.SKIP
        )

    def with_action(self, *actions: Action) -> list[SweepRow]:
        return [row for row in self.rows if row.decision.action in actions]

    @property
    def removed(self) -> list[SweepRow]:
        """Rows whose VM was removed (registration first, unless GitHub said busy)."""
        return [row for row in self.rows if row.decision.action.removes_vm and row.error is None]

    def findings(self) -> dict[str, int]:
        """How many VMs and registrations each action was decided for (KEEP left out)."""
        counts = Counter(
            row.decision.action.value for row in self.rows if row.decision.action is not Action.KEEP
        )
        counts.update(
            orphan.decision.action.value
            for orphan in self.orphans
            if orphan.decision.action is not Action.KEEP
        )
        return dict(counts)


class Sweeper:
    """The periodic pass for one scale set; it remembers the runners missing last time."""

    def __init__(
        self,
        cloud: Cloud,
        registry: RunnerRegistrations,
        boot_timeout: timedelta,
        *,
        max_lifetime: timedelta | None = None,
        failed_retention: timedelta | None = None,
        concurrency: int = 20,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cloud = cloud
        self._registry = registry
        self._boot_timeout = boot_timeout
        self._max_lifetime = max_lifetime
        self._failed_retention = failed_retention
        self._concurrency = max(1, concurrency)
        self._now = now
        self._missing: set[str] = set()

    def forget_missing(self) -> None:
        """The scale set was re-created: its runner names start over."""
        self._missing.clear()

    async def sweep(self, ownership: Ownership, known: Mapping[str, Known]) -> SweepReport:
        """Gather, decide and remove for every VM and registration of `ownership`'s set."""
        vms = await self._cloud.list_owned(ownership.tags())
        registrations = list(await self._registry.list_runners(ownership.scale_set_id))
        by_name = {registration.name: registration for registration in registrations}
        now = self._now()
        report = SweepReport()
        for vm in vms:
            name = runner_name_of(vm)
            registration = by_name.get(name)
            info = parse_ownership(vm.tags, vm.metadata)
            created_at = (info.created_at if info else None) or vm.created_at
            facts = SweepFacts(
                status=vm.status,
                created_at=created_at,
                runner=runner_facts(registration),
                known=known.get(name),
                missing_before=name in self._missing,
                kept_failed=FAILED_TAG in vm.tags,
                failed_at=info.failed_at if info else None,
            )
            report.rows.append(
                SweepRow(
                    vm=vm,
                    runner_name=name,
                    age_seconds=None if created_at is None else (now - created_at).total_seconds(),
                    registration=registration,
                    decision=decide_sweep(
                        facts, now, self._boot_timeout, self._max_lifetime, self._failed_retention
                    ),
                )
            )
        report.orphans = orphan_rows(registrations, {row.runner_name for row in report.rows}, known)
        self._missing = {row.runner_name for row in report.with_action(Action.WATCH)}
        report.vms, report.registrations = len(vms), len(registrations)
        await self._act(report)
        return report

    async def _act(self, report: SweepReport) -> None:
        gate = asyncio.Semaphore(self._concurrency)

        async def remove(row: SweepRow) -> None:
            if row.vm.status == "ERROR":
                # The cloud's fault is the operator's lead (quota, host, image): an error.
                log.error("sweep_vm_error", runner_name=row.runner_name, fault=row.vm.fault)
            async with gate:
                row.error = await remove_vm(
                    row.vm,
                    row.runner_name,
                    row.registration,
                    row.decision,
                    self._cloud,
                    self._registry,
                )

        async def deregister(orphan: OrphanRow) -> None:
            async with gate:
                await remove_orphan(orphan, self._registry)

        async with asyncio.TaskGroup() as group:
            for row in report.rows:
                if row.decision.action.removes_vm:
                    group.create_task(remove(row))
            for orphan in report.orphans:
                group.create_task(deregister(orphan))
