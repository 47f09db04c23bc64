"""One reconciliation pass: gather (cloud by ownership tags, GitHub runners, SSH probes in
parallel, console markers when SSH cannot answer), decide per VM, act, report.

Acting is idempotent: deleting a server that is already gone, or removing a registration that is
already gone, is success. Adopting needs no cloud or GitHub call; the caller feeds
`ReconcileReport.adopted` to its scaler. A dry run is the caller's choice of cloud and registry:
ones that log what they would change (DRY_RUN, docs/architecture.md#dry-run); the pass acts the
same either way.

Trust on first use (SSH_HOST_KEY_POLICY=accept-new): a server with no recorded host key that
answered a probe has its presented key written to its metadata (`scaleset-host-key`), unless it
is being deleted, so every later probe pins that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from provisioners.base import ProbeResult, ProvisionerError, RunnerVM, ServerNotFound
from provisioners.naming import (
    FAILED_TAG,
    NamingError,
    Ownership,
    host_key_metadata,
    parse_ownership,
)
from reconciler.console import parse_console
from reconciler.policy import (
    Action,
    ConsoleFacts,
    Decision,
    GitHubRunnerFacts,
    Known,
    VMFacts,
    decide,
    decide_registration,
)
from reconciler.ports import (
    Cloud,
    Prober,
    RunnerRegistration,
    RunnerRegistrations,
    ScaleSetDirectory,
)

log = structlog.get_logger(__name__)

# What `decide()` returns (the sweep's actions never appear at startup).
STARTUP_ACTIONS = (
    Action.ADOPT_IDLE,
    Action.ADOPT_BUSY,
    Action.ADOPT_BOOTING,
    Action.CLEAN_UP,
    Action.DELETE,
    Action.SKIP,
)


@dataclass
class VMRow:
    """One owned VM: what was found, what was decided, and whether acting on it worked."""

    vm: RunnerVM
    runner_name: str
    age_seconds: float | None
    registration: RunnerRegistration | None
    probe: ProbeResult | None
    console: ConsoleFacts | None
    decision: Decision
    error: str | None = None
    # A host key the probe learned for a server that had none recorded (accept-new).
    learned_host_key: str | None = None
    host_key_recorded: bool = False

    @property
    def server_id(self) -> str:
        return self.vm.id

    @property
    def probe_text(self) -> str:
        if self.probe is None:
            return "not-probed"
        return str(self.probe.outcome)


@dataclass
class OrphanRow:
    """A registration in the scale set with no VM of ours behind it."""

    registration: RunnerRegistration
    decision: Decision
    removed: bool = False
    error: str | None = None


def orphan_rows(
    registrations: Collection[RunnerRegistration],
    names_with_vm: Collection[str],
    known: Mapping[str, Known],
) -> list[OrphanRow]:
    """The registrations no owned VM carries, each with what to do about it."""
    return [
        OrphanRow(
            registration,
            decide_registration(_facts(registration), known.get(registration.name)),
        )
        for registration in registrations
        if registration.name not in names_with_vm
    ]


async def remove_orphan(orphan: OrphanRow, registry: RunnerRegistrations) -> None:
    """Remove the registration if so decided; a failure is recorded on the row."""
    if orphan.decision.action is not Action.REMOVE_REGISTRATION:
        return
    try:
        await registry.remove_runner(orphan.registration.id)
        orphan.removed = True
        log.info(
            "registration_removed",
            runner_name=orphan.registration.name,
            reason=orphan.decision.reason,
        )
    except Exception as exc:  # noqa: BLE001 - a busy one (JobStillRunning) stays; reported
        orphan.error = f"{type(exc).__name__}: {exc}"


@dataclass
class ReconcileReport:
    rows: list[VMRow] = field(default_factory=list)
    orphans: list[OrphanRow] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def adopted(self) -> list[VMRow]:
        return [row for row in self.rows if row.decision.action.adopts]

    def counts(self) -> dict[str, int]:
        counts = {action.value: 0 for action in STARTUP_ACTIONS}
        for row in self.rows:
            counts[row.decision.action.value] += 1
        counts["orphan_registrations"] = len(self.orphans)
        return counts

    def probe_outcomes(self) -> dict[str, int]:
        """How the SSH probes ended, by outcome (`ok`, `timeout`, `unreachable`...)."""
        outcomes: dict[str, int] = {}
        for row in self.rows:
            if row.probe is not None:
                outcome = row.probe.outcome.value
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcomes

    def slowest_probes(self, n: int = 3) -> list[tuple[str, float]]:
        probed = [row for row in self.rows if row.probe is not None]
        probed.sort(key=lambda row: row.probe.elapsed_seconds if row.probe else 0.0, reverse=True)
        return [
            (row.vm.name, round(row.probe.elapsed_seconds, 3)) for row in probed[:n] if row.probe
        ]

    def table(self) -> str:
        """The decision table: VM, age, status, runner, probe result, action, reason."""
        header = ("VM", "AGE", "STATUS", "RUNNER", "PROBE", "ACTION", "REASON")
        lines: list[tuple[str, ...]] = [header]
        for row in self.rows:
            registration = row.registration
            runner = (
                "absent"
                if registration is None
                else ("busy" if registration.busy else registration.status.lower() or "?")
            )
            age = "?" if row.age_seconds is None else f"{int(row.age_seconds)}s"
            reason = row.decision.reason
            if row.learned_host_key and not row.decision.action.removes_vm:
                reason += (
                    "; host key learned, recorded"
                    if row.host_key_recorded
                    else "; host key learned, not recorded"
                )
            reason += f" [error: {row.error}]" if row.error else ""
            lines.append(
                (
                    row.vm.name,
                    age,
                    row.vm.status,
                    runner,
                    row.probe_text,
                    row.decision.action.value,
                    reason,
                )
            )
        for orphan in self.orphans:
            state = "busy" if orphan.registration.busy else orphan.registration.status.lower()
            lines.append(
                (
                    orphan.registration.name,
                    "-",
                    "no-vm",
                    state,
                    "-",
                    orphan.decision.action.value,
                    orphan.decision.reason + (f" [error: {orphan.error}]" if orphan.error else ""),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
            + "  "
            + line[-1]
            for line in lines
        )


def _facts(registration: RunnerRegistration) -> GitHubRunnerFacts:
    return GitHubRunnerFacts(
        id=registration.id,
        busy=registration.busy,
        online=registration.status.lower() == "online",
    )


def runner_facts(registration: RunnerRegistration | None) -> GitHubRunnerFacts | None:
    """What the decision tables read of a registration (None: GitHub has no such runner)."""
    return None if registration is None else _facts(registration)


async def run_once(
    *,
    provisioner: Cloud,
    registry: RunnerRegistrations,
    prober: Prober | None,
    ownership: Ownership,
    boot_timeout: timedelta,
    max_lifetime: timedelta | None = None,
    failed_retention: timedelta | None = None,
    concurrency: int = 20,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReconcileReport:
    """Gather, decide and act for every VM `ownership` owns."""
    started = time.monotonic()
    report = ReconcileReport()
    vms = await provisioner.list_owned(ownership.tags())
    registrations = list(await registry.list_runners(ownership.scale_set_id))
    by_name = {registration.name: registration for registration in registrations}
    gate = asyncio.Semaphore(max(1, concurrency))
    report.orphans = orphan_rows(registrations, {runner_name_of(vm) for vm in vms}, {})

    # Each VM is acted on as soon as it is decided: the deletes and clean-ups of the quick
    # answers overlap the probes still waiting out their timeouts, so a pass costs about one
    # probe timeout more than the probing itself, not a second full round. The probes are not
    # behind the gate: the prober bounds its own connections and SSH sessions, and a VM that
    # never answers the TCP handshake holds a socket, not a slot, so the hung ones all wait
    # out their timeout at once, from the start, beside the work of the others.
    async def handle(vm: RunnerVM) -> VMRow:
        probe = await _probe(vm, prober)
        async with gate:
            row = await _examine(
                vm,
                by_name,
                provisioner,
                probe,
                (boot_timeout, max_lifetime, failed_retention),
                now(),
            )
        async with gate:
            await _act(row, provisioner, registry)
        return row

    async def remove(orphan: OrphanRow) -> None:
        async with gate:
            await remove_orphan(orphan, registry)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(handle(vm)) for vm in vms]
        for orphan in report.orphans:
            group.create_task(remove(orphan))
    report.rows = [task.result() for task in tasks]

    report.elapsed_seconds = time.monotonic() - started
    log.info(
        "reconcile_summary",
        scale_set_id=ownership.scale_set_id,
        counts=report.counts(),
        probes=report.probe_outcomes(),
        slowest_probes=report.slowest_probes(),
        errors=sum(1 for row in report.rows if row.error)
        + sum(1 for orphan in report.orphans if orphan.error),
        elapsed_seconds=round(report.elapsed_seconds, 3),
    )
    return report


async def deleted_scale_sets(
    *,
    provisioner: Cloud,
    directory: ScaleSetDirectory,
    listener_instance: str,
    skip: Collection[int] = (),
) -> list[int]:
    """The scale set ids that VMs of this listener deployment carry and that GitHub says no
    longer exist: their VMs can be reconciled like any others (their registrations went with
    the set). A set id this process does not serve is not enough: another process of the same
    LISTENER_INSTANCE_ID may serve it."""
    vms = await provisioner.list_owned(Ownership(listener_instance, 0).listener_tags())
    candidates: set[int] = set()
    for vm in vms:
        info = parse_ownership(vm.tags, vm.metadata)
        if info is not None and info.ownership.listener_instance == listener_instance:
            candidates.add(info.ownership.scale_set_id)
    gone = []
    for scale_set_id in sorted(candidates - set(skip)):
        if not await directory.scale_set_exists(scale_set_id):
            gone.append(scale_set_id)
    if gone:
        log.warning("reconcile_deleted_scale_sets", scale_set_ids=gone)
    return gone


def runner_name_of(vm: RunnerVM) -> str:
    """The runner a VM was created for: its ownership metadata, else the server name."""
    info = parse_ownership(vm.tags, vm.metadata)
    return (info.runner_name if info else "") or vm.name


async def _probe(vm: RunnerVM, prober: Prober | None) -> ProbeResult | None:
    """The SSH probe of an ACTIVE VM with an address (None: not probed)."""
    if prober is None or vm.status != "ACTIVE" or not vm.address:
        return None
    info = parse_ownership(vm.tags, vm.metadata)
    return await prober.probe(vm.address, info.host_public_key if info else None)


async def _examine(
    vm: RunnerVM,
    by_name: dict[str, RunnerRegistration],
    provisioner: Cloud,
    probe: ProbeResult | None,
    timers: tuple[timedelta, timedelta | None, timedelta | None],
    now: datetime,
) -> VMRow:
    info = parse_ownership(vm.tags, vm.metadata)
    runner_name = runner_name_of(vm)
    created_at = (info.created_at if info else None) or vm.created_at
    registration = by_name.get(runner_name)
    console: ConsoleFacts | None = None
    if (probe is None or not probe.reachable) and vm.status in ("ACTIVE", "SHUTOFF"):
        try:
            console = parse_console(await provisioner.console_output(vm.id), runner_name)
        except Exception as exc:  # noqa: BLE001 - the fallback channel is best effort
            log.info("reconcile_console_unavailable", server_id=vm.id, error=str(exc))
    facts = VMFacts(
        status=vm.status,
        created_at=created_at,
        runner=runner_facts(registration),
        probe_outcome=None if probe is None else str(probe.outcome),
        setup_complete=probe.setup_complete if probe else None,
        setup_failed=(probe.setup_failed_reason is not None) if probe and probe.reachable else None,
        run_complete_exit_code=probe.run_complete_exit_code if probe else None,
        runner_alive=probe.runner_alive if probe else None,
        console=console,
        kept_failed=FAILED_TAG in vm.tags,
        failed_at=info.failed_at if info else None,
    )
    age = None if created_at is None else (now - created_at).total_seconds()
    learned = None
    if probe is not None and probe.reachable and probe.host_key and info is not None:
        learned = None if info.host_public_key else probe.host_key
    return VMRow(
        vm=vm,
        runner_name=runner_name,
        age_seconds=age,
        registration=registration,
        probe=probe,
        console=console,
        decision=decide(facts, now, *timers),
        learned_host_key=learned,
    )


async def _record_host_key(row: VMRow, provisioner: Cloud) -> None:
    """Pin from now on the key a server presented on first contact (accept-new)."""
    assert row.learned_host_key is not None
    try:
        await provisioner.set_metadata(row.vm.id, host_key_metadata(row.learned_host_key))
    except (NamingError, ProvisionerError) as exc:
        # Not fatal: the VM keeps its decision; the next probe is again a first contact.
        row.error = f"host key not recorded: {type(exc).__name__}: {exc}"
        log.warning("reconcile_host_key_not_recorded", server_id=row.vm.id, error=row.error)
        return
    row.host_key_recorded = True
    log.info("reconcile_host_key_recorded", runner_name=row.runner_name, server_id=row.vm.id)


async def _act(row: VMRow, provisioner: Cloud, registry: RunnerRegistrations) -> None:
    if not row.decision.action.removes_vm:
        if row.learned_host_key is not None:
            await _record_host_key(row, provisioner)
        return
    row.error = await remove_vm(
        row.vm, row.runner_name, row.registration, row.decision, provisioner, registry
    )


async def remove_vm(
    vm: RunnerVM,
    runner_name: str,
    registration: RunnerRegistration | None,
    decision: Decision,
    provisioner: Cloud,
    registry: RunnerRegistrations,
) -> str | None:
    """Remove the runner's registration (unless GitHub says busy), then delete the VM. The
    error, if either failed: one VM's failure is reported, the others go on."""
    if registration is not None and registration.busy:
        # Only MAX_RUNNER_LIFETIME removes a VM GitHub reports busy: its job is cut off.
        log.warning(
            "busy_runner_deleted", runner_name=runner_name, server_id=vm.id, reason=decision.reason
        )
    try:
        if registration is not None and not registration.busy:
            await registry.remove_runner(registration.id)
        with contextlib.suppress(ServerNotFound):  # "not found" is success
            await provisioner.delete(vm.id)
    except Exception as exc:  # noqa: BLE001 - reported on the row, the pass goes on
        error = f"{type(exc).__name__}: {exc}"
        log.warning("reconcile_action_failed", server_id=vm.id, error=error)
        return error
    log.info(
        "reconcile_vm_removed",
        runner_name=runner_name,
        server_id=vm.id,
        action=decision.action.value,
        reason=decision.reason,
    )
    return None
