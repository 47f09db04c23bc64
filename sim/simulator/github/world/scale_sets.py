"""Runner groups and runner scale sets: names, labels, settings, and the capacity each set's
listener last announced (X-ScaleSetMaxCapacity)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from simulator.github.model import (
    JSON,
    ControlError,
    RunnerGroup,
    ScaleSet,
    ServiceError,
    statistics_json,
    wire_time,
)

if TYPE_CHECKING:
    from simulator.github.world import World


class ScaleSets:
    def __init__(self, world: World) -> None:
        self._world = world
        self._ledger = world.ledger
        self.groups: dict[int, RunnerGroup] = {1: RunnerGroup(1, "Default")}
        self.by_id: dict[int, ScaleSet] = {}
        self._next_group_id = 2
        self._next_scale_set_id = 1

    # ------------------------------------------------------------------ runner groups

    def add_group(self, name: str) -> RunnerGroup:
        if not name:
            raise ControlError(400, "name is required")
        if self.find_groups(name):
            raise ControlError(409, f"runner group {name} exists")
        group = RunnerGroup(self._next_group_id, name)
        self._next_group_id += 1
        self.groups[group.id] = group
        self._ledger.event("runner_group_created", id=group.id, name=name)
        return group

    def find_groups(self, name: str | None) -> list[RunnerGroup]:
        if name is None:
            return list(self.groups.values())
        return [g for g in self.groups.values() if g.name.lower() == name.lower()]

    def group_json(self, group: RunnerGroup) -> JSON:
        size = sum(1 for s in self.by_id.values() if s.runner_group_id == group.id)
        return {
            "id": group.id,
            "name": group.name,
            "size": size,
            "isDefaultGroup": group.is_default,
        }

    # ------------------------------------------------------------------ scale sets

    def get(self, ss_id: int) -> ScaleSet:
        ss = self.by_id.get(ss_id)
        if ss is None:
            raise ServiceError(
                404,
                "RunnerScaleSetNotFoundException",
                f"The runner scale set with id {ss_id} does not exist.",
            )
        return ss

    def to_json(self, ss: ScaleSet) -> JSON:
        group = self.groups.get(ss.runner_group_id)
        return {
            "id": ss.id,
            "name": ss.name,
            "runnerGroupId": ss.runner_group_id,
            "runnerGroupName": group.name if group else "",
            "labels": [{"type": "System", "name": label} for label in ss.labels],
            "runnerSetting": dict(ss.runner_setting),
            "createdOn": wire_time(ss.created_on),
            "runnerJitConfigUrl": (
                f"{self._world.tenant_url}_apis/runtime/runnerscalesets/{ss.id}/generatejitconfig"
            ),
            "statistics": statistics_json(self._world.statistics.raw(ss.id)),
        }

    def find(self, group_id: int | None, name: str | None) -> list[ScaleSet]:
        return [
            s
            for s in self.by_id.values()
            if (group_id is None or s.runner_group_id == group_id)
            and (name is None or s.name.lower() == name.lower())
        ]

    def create(self, name: str, group_id: int, labels: list[str], runner_setting: JSON) -> ScaleSet:
        if not name:
            raise ServiceError(400, "ArgumentException", "The runner scale set name is required.")
        if group_id not in self.groups:
            raise ServiceError(
                404, "RunnerGroupNotFoundException", f"Runner group {group_id} not found."
            )
        if self.find(group_id, name):
            raise ServiceError(
                409,
                "RunnerScaleSetExistsException",
                f"A runner scale set named {name} already exists in runner group {group_id}.",
            )
        ss = ScaleSet(
            id=self._next_scale_set_id,
            name=name,
            runner_group_id=group_id,
            labels=_dedupe(labels or [name]),
            runner_setting={k: v for k, v in runner_setting.items() if v},
            created_on=time.time(),
        )
        self._next_scale_set_id += 1
        self.by_id[ss.id] = ss
        self._world.messages.open(ss.id)
        self._ledger.event("scale_set_created", scale_set_id=ss.id, name=name)
        return ss

    def update(
        self,
        ss_id: int,
        name: str | None,
        group_id: int | None,
        labels: list[str] | None,
        runner_setting: JSON | None,
    ) -> ScaleSet:
        ss = self.get(ss_id)
        new_group = group_id or ss.runner_group_id
        new_name = name or ss.name
        if new_group not in self.groups:
            raise ServiceError(
                404, "RunnerGroupNotFoundException", f"Runner group {new_group} not found."
            )
        clash = [s for s in self.find(new_group, new_name) if s.id != ss.id]
        if clash:
            raise ServiceError(
                409,
                "RunnerScaleSetExistsException",
                f"A runner scale set named {new_name} already exists in runner group {new_group}.",
            )
        ss.name, ss.runner_group_id = new_name, new_group
        if labels:
            ss.labels = _dedupe(labels)
        if runner_setting:
            ss.runner_setting = {k: v for k, v in runner_setting.items() if v}
        self._ledger.event("scale_set_updated", scale_set_id=ss.id, name=ss.name)
        self._world.jobs.schedule()
        return ss

    def delete(self, ss_id: int, force: bool = False) -> None:
        """The set goes with its sessions, messages and runners; its running jobs are canceled
        and its other jobs go back to the queue for another set."""
        ss = self.get(ss_id)
        world = self._world
        if world.runners.busy_in(ss_id) and not force:
            raise ServiceError(
                400,
                "JobStillRunningException",
                f"The runner scale set {ss.name} has runners running jobs and cannot be deleted.",
            )
        # Sessions go first so that nothing below can hand a job back to this set.
        world.sessions.drop_scale_set(ss_id)
        world.jobs.drop_scale_set(ss_id)
        world.runners.drop_scale_set(ss_id)
        del self.by_id[ss_id]
        world.messages.close(ss_id)
        world.statistics.forget(ss_id)
        self._ledger.event("scale_set_deleted", scale_set_id=ss_id, name=ss.name, forced=force)
        world.jobs.schedule()

    def record_capacity(self, ss_id: int, capacity: int | None) -> None:
        """The X-ScaleSetMaxCapacity of a poll (None: the header was absent, unlimited)."""
        ss = self.by_id.get(ss_id)
        if ss is None:
            return
        if ss.capacity_seen and ss.max_capacity == capacity:
            return
        ss.capacity_seen = True
        ss.max_capacity = capacity
        ss.capacity_history.append(capacity)
        self._ledger.event("max_capacity", scale_set_id=ss_id, value=capacity)
        self._world.jobs.schedule()

    def state(self) -> list[JSON]:
        world = self._world
        return [
            {
                "id": ss.id,
                "name": ss.name,
                "runner_group_id": ss.runner_group_id,
                "labels": ss.labels,
                "runner_setting": ss.runner_setting,
                "max_capacity": ss.max_capacity,
                "max_capacity_history": ss.capacity_history,
                "statistics": world.statistics.raw(ss.id),
                **world.messages.state(ss.id),
            }
            for ss in self.by_id.values()
        ]


def _dedupe(labels: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for label in labels:
        seen.setdefault(label.lower(), label)
    return list(seen.values())
