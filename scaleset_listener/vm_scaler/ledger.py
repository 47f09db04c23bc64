"""One scale set's runner ledger: every runner the scaler tracks, its phase, and the time it
spent in each.

    creating ──> booting ──> idle ──> busy ──> finished ──> deleted
        └──────────┴──────────┴─────────┴──────────┴──> failed (deleted, or kept for debugging)

The ledger changes only through its methods, so every transition is logged once (`runner_state`,
with the seconds spent in the phase left) and the per-phase durations add up.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from reconciler.policy import Action, Decision, Known
from scaleset_listener.metrics import ScaleSetMetrics
from scaleset_listener.wire import JobCompleted, JobStarted

Clock = Callable[[], float]


class Phase(enum.StrEnum):
    CREATING = "creating"
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    FINISHED = "finished"
    DELETED = "deleted"
    FAILED = "failed"


# The runners that count toward demand: they serve, or soon will.
OWNED_PHASES = frozenset({Phase.CREATING, Phase.BOOTING, Phase.IDLE, Phase.BUSY})


@dataclass
class TrackedRunner:
    name: str
    phase: Phase
    created_at: float
    phase_since: float
    runner_id: int | None = None
    server_id: str | None = None  # None while its create call is in flight
    job_completed_at: float | None = None
    busy_warned: bool = False
    durations: dict[str, float] = field(default_factory=dict)
    # Its scale set was deleted at GitHub and re-created: its VM is to be deleted.
    abandoned: bool = False
    # When its VM reached ACTIVE (the clock's time): the boot duration counts from there.
    active_at: float | None = None
    # Wall-clock times of its steps (`vm_requested`, `vm_active`, `runner_online`) and the
    # latest message about its job: its usage record, once its VM is gone.
    times: dict[str, datetime] = field(default_factory=dict)
    job: JobStarted | JobCompleted | None = None


@dataclass(frozen=True)
class Adoption:
    """A VM the scaler takes over: found by the startup pass or by a sweep."""

    name: str
    server_id: str
    phase: Phase  # BOOTING, IDLE or BUSY
    runner_id: int | None = None
    age_seconds: float | None = None  # a booting VM's deadline counts from its creation


class _Registration(Protocol):
    @property
    def id(self) -> int: ...


class _AdoptableRow(Protocol):
    """A row of either reconciler pass (`VMRow`, `SweepRow`)."""

    @property
    def runner_name(self) -> str: ...

    @property
    def server_id(self) -> str: ...

    @property
    def registration(self) -> _Registration | None: ...

    @property
    def decision(self) -> Decision: ...

    @property
    def age_seconds(self) -> float | None: ...


_ADOPTED_AS = {
    Action.ADOPT_IDLE: Phase.IDLE,
    Action.ADOPT_BUSY: Phase.BUSY,
    Action.ADOPT_BOOTING: Phase.BOOTING,
}

_KNOWN_AS = {
    Phase.CREATING: Known.CREATING,
    Phase.BOOTING: Known.BOOTING,
    Phase.IDLE: Known.IDLE,
    Phase.BUSY: Known.BUSY,
    Phase.FINISHED: Known.FINISHED,
}


def adoptions(rows: Iterable[_AdoptableRow]) -> list[Adoption]:
    """The adoptions a reconciler pass decided, in the phases its table gives."""
    return [
        Adoption(
            name=row.runner_name,
            server_id=row.server_id,
            phase=_ADOPTED_AS[row.decision.action],
            runner_id=None if row.registration is None else row.registration.id,
            age_seconds=row.age_seconds,
        )
        for row in rows
        if row.decision.action in _ADOPTED_AS
    ]


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


class Ledger:
    """The runners of one scale set, by name; abandoned ones apart."""

    def __init__(
        self, scale_set_name: str, clock: Clock, metrics: ScaleSetMetrics | None = None
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._log = structlog.get_logger(__name__).bind(scale_set=scale_set_name)
        self.runners: dict[str, TrackedRunner] = {}
        # Runners of a scale set that GitHub deleted (the listener re-created it): VMs to delete.
        self.abandoned: dict[str, TrackedRunner] = {}
        self.counters = ScalerCounters()

    # Views ---------------------------------------------------------------------------------

    def owned(self) -> list[TrackedRunner]:
        return [runner for runner in self.runners.values() if runner.phase in OWNED_PHASES]

    def in_phase(self, *phases: Phase) -> list[TrackedRunner]:
        return [runner for runner in self.runners.values() if runner.phase in phases]

    def known(self) -> dict[str, Known]:
        """What the sweep reads: each tracked runner's phase; in flight reads as creating."""
        return {
            runner.name: Known.CREATING if runner.server_id is None else _KNOWN_AS[runner.phase]
            for runner in self.runners.values()
            if runner.phase in _KNOWN_AS
        }

    # Changes -------------------------------------------------------------------------------

    def new_runner(self, name: str) -> TrackedRunner:
        now = self._clock()
        runner = TrackedRunner(name=name, phase=Phase.CREATING, created_at=now, phase_since=now)
        runner.times["vm_requested"] = datetime.now(UTC)
        self.runners[name] = runner
        self._log.info("runner_state", runner_name=name, state=Phase.CREATING.value)
        return runner

    def adopt(self, adoption: Adoption, source: str) -> bool:
        """Own a VM found in the cloud. Its lifetime counts from the server's creation, and a
        booting one keeps its boot deadline; an idle one's idle time starts now. False if
        already tracked."""
        if adoption.name in self.runners:
            return False
        now = self._clock()
        created = now - max(0.0, adoption.age_seconds or 0.0)
        self.runners[adoption.name] = TrackedRunner(
            name=adoption.name,
            phase=adoption.phase,
            created_at=created,
            phase_since=created if adoption.phase is Phase.BOOTING else now,
            runner_id=adoption.runner_id,
            server_id=adoption.server_id,
        )
        self._log.info(
            "runner_adopted",
            runner_name=adoption.name,
            state=adoption.phase.value,
            server_id=adoption.server_id,
            source=source,
        )
        return True

    def transition(self, runner: TrackedRunner, phase: Phase, **details: Any) -> None:
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
        if phase in (Phase.IDLE, Phase.BUSY) and runner.phase in (Phase.CREATING, Phase.BOOTING):
            # Online on GitHub for the first time: its boot is over.
            runner.times["runner_online"] = datetime.now(UTC)
            if self._metrics is not None and runner.active_at is not None:
                self._metrics.runner_online(max(0.0, now - runner.active_at))
        runner.phase = phase
        runner.phase_since = now

    def forget(self, name: str) -> None:
        self.runners.pop(name, None)

    def abandon_all(self, reason: str) -> None:
        """Every tracked runner becomes abandoned: none of them can serve the new set."""
        for runner in self.runners.values():
            runner.abandoned = True
            self.abandoned[runner.name] = runner
            self._log.warning(
                "runner_abandoned",
                runner_name=runner.name,
                state=runner.phase.value,
                server_id=runner.server_id,
                reason=reason,
            )
        self.runners.clear()
