"""A scale set's statistics: counted from its jobs and runners, as sent after any statistics
fault (docs/architecture.md#statistics), and their recent history (for the `lag` fault)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.github.model import JSON, ControlError, statistics_json

if TYPE_CHECKING:
    from simulator.github.world import World

HISTORY = 200


@dataclass
class StatisticsFault:
    """Distortions of the statistics object (docs/architecture.md#statistics)."""

    scale_set_id: int | None = None
    # Send the statistics as they were this many changes ago.
    lag: int = 0
    # Phantom assigned jobs added to totalAssignedJobs.
    inflate_assigned: int = 0
    # Report totalRegisteredRunners 0 (and idle 0) while runners are busy.
    registered_zero: bool = False
    # Leave `statistics` out entirely.
    missing: bool = False
    # "session" (create/refresh answers), "message" (envelopes) or "all".
    applies_to: str = "all"
    times: int | None = None
    fired: int = 0

    def to_json(self) -> JSON:
        return dict(self.__dict__)


class Statistics:
    def __init__(self, world: World) -> None:
        self._world = world
        self.faults: list[StatisticsFault] = []
        self.history: dict[int, deque[dict[str, int]]] = {}
        # Every event may change the counts: each scale set's history records the new ones.
        world.ledger.on_event = self._remember

    def raw(self, ss_id: int) -> dict[str, int]:
        return self._raw_by_set([ss_id])[ss_id]

    def _raw_by_set(self, ss_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """The counts of every set in `ss_ids`, in one pass over the jobs and runners (after
        every event, with thousands of each: one pass per set made every change slow)."""
        by_set = {
            ss_id: dict.fromkeys(
                ("available", "acquired", "assigned", "running", "registered", "busy", "idle"), 0
            )
            for ss_id in ss_ids
        }
        for job in self._world.jobs.by_id.values():
            if job.state == "completed" or job.scale_set_id not in by_set:
                continue
            stats = by_set[job.scale_set_id]
            if job.state in ("available", "acquired"):
                stats[job.state] += 1
            elif job.state in ("assigned", "running"):
                stats["assigned"] += 1
                if job.state == "running":
                    stats["running"] += 1
        for runner in self._world.runners.by_id.values():
            if runner.scale_set_id not in by_set:
                continue
            stats = by_set[runner.scale_set_id]
            stats["registered"] += 1
            if runner.state == "busy":
                stats["busy"] += 1
            elif runner.state == "idle":
                stats["idle"] += 1
        return by_set

    def as_sent(self, ss_id: int, where: str) -> JSON | None:
        """Statistics as sent at this moment, after any statistics fault; None = left out."""
        stats = self.raw(ss_id)
        for fault in self.faults:
            if fault.scale_set_id not in (None, ss_id) or fault.applies_to not in ("all", where):
                continue
            if fault.times is not None and fault.fired >= fault.times:
                continue
            fault.fired += 1
            if fault.missing:
                return None
            if fault.lag:
                history = self.history.get(ss_id) or deque([stats])
                index = max(0, len(history) - 1 - fault.lag)
                stats = dict(history[index])
            stats["assigned"] += fault.inflate_assigned
            if fault.registered_zero:
                stats["registered"] = 0
                stats["idle"] = 0
        return statistics_json(stats)

    def add_fault(self, spec: JSON) -> StatisticsFault:
        known = set(StatisticsFault.__dataclass_fields__) - {"fired"}
        unknown = set(spec) - known
        if unknown:
            raise ControlError(400, f"unknown statistics fault fields: {sorted(unknown)}")
        fault = StatisticsFault(**spec)
        if fault.applies_to not in ("all", "session", "message"):
            raise ControlError(400, "applies_to must be all, session or message")
        self.faults.append(fault)
        self._world.ledger.event("statistics_fault_added")
        return fault

    def forget(self, ss_id: int) -> None:
        self.history.pop(ss_id, None)

    def _remember(self) -> None:
        for ss_id, snapshot in self._raw_by_set(self._world.scale_sets.by_id).items():
            history = self.history.setdefault(ss_id, deque(maxlen=HISTORY))
            if not history or history[-1] != snapshot:
                history.append(snapshot)
