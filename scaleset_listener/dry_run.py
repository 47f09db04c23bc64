"""DRY_RUN: a provisioner and a runner registry that read the real cloud and GitHub but only log
what they would change, built at the composition root (wiring.py) around the real ones.

The scaler and the reconciler run unchanged on top of them. So that their next decisions are the
ones they would make, what they "create" is remembered: a would-be runner is registered online
and idle and its would-be VM is ACTIVE, until they "delete" it. No call that changes anything
reaches GitHub or the cloud; every such call is logged as `dry_run_would_...`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from provisioners.base import Provisioner, RunnerVM, ServerSpec
from scaleset_listener.vm_scaler.execute import RunnerRegistry
from scaleset_listener.wire import JitConfig, RunnerReference

log = structlog.get_logger(__name__)


class DryRunProvisioner:
    """`Provisioner` that reads through and remembers the servers it would have created."""

    def __init__(self, cloud: Provisioner) -> None:
        self._cloud = cloud
        self._would_exist: dict[str, RunnerVM] = {}

    async def submit(self, spec: ServerSpec) -> str:
        server_id = f"dry-run-{spec.name}"
        log.info(
            "dry_run_would_create",
            runner_name=spec.name,
            image=spec.image,
            flavor=spec.flavor,
            tags=list(spec.tags),
        )
        self._would_exist[server_id] = RunnerVM(
            id=server_id,
            name=spec.name,
            status="ACTIVE",
            created_at=datetime.now(UTC),
            tags=spec.tags,
            metadata=dict(spec.metadata),
        )
        return server_id

    async def finish_create(
        self, server_id: str, name: str, tags: tuple[str, ...] = ()
    ) -> RunnerVM:
        return self._would_exist[server_id]

    async def delete(self, server_id: str) -> None:
        vm = self._would_exist.pop(server_id, None)
        log.info(
            "dry_run_would_delete",
            server_id=server_id,
            runner_name=None if vm is None else vm.name,
        )

    async def get(self, server_id: str) -> RunnerVM | None:
        if server_id in self._would_exist:
            return self._would_exist[server_id]
        return await self._cloud.get(server_id)

    async def list_owned(self, tags: tuple[str, ...]) -> list[RunnerVM]:
        would = [vm for vm in self._would_exist.values() if set(tags) <= set(vm.tags)]
        return [*await self._cloud.list_owned(tags), *would]

    async def console_output(self, server_id: str, lines: int = 200) -> str:
        if server_id in self._would_exist:
            return ""
        return await self._cloud.console_output(server_id, lines)

    async def add_tag(self, server_id: str, tag: str) -> None:
        log.info("dry_run_would_tag", server_id=server_id, tag=tag)

    async def set_metadata(self, server_id: str, metadata: Mapping[str, str]) -> None:
        log.info("dry_run_would_set_metadata", server_id=server_id, keys=sorted(metadata))

    async def release_floating_ips(self, server_id: str) -> None:
        log.info("dry_run_would_release_floating_ips", server_id=server_id)

    async def capacity(self, flavor: str | None = None, owner: tuple[str, ...] = ()) -> int | None:
        free = await self._cloud.capacity(flavor, owner)
        return None if free is None else max(0, free - len(self._would_exist))

    async def close(self) -> None:
        await self._cloud.close()


@dataclass(frozen=True)
class _WouldBeRunner:
    scale_set_id: int
    reference: RunnerReference


class DryRunRegistry:
    """`RunnerRegistry` that reads through and remembers the runners it would have registered
    (negative ids, which GitHub never gives)."""

    def __init__(self, github: RunnerRegistry) -> None:
        self._github = github
        self._ids = itertools.count(-1, -1)
        self._would_exist: dict[int, _WouldBeRunner] = {}

    async def generate_jit_config(
        self, scale_set_id: int, runner_name: str, work_folder: str = ""
    ) -> JitConfig:
        reference = RunnerReference(
            id=next(self._ids),
            name=runner_name,
            runner_scale_set_id=scale_set_id,
            status="online",
        )
        self._would_exist[reference.id] = _WouldBeRunner(scale_set_id, reference)
        log.info("dry_run_would_register", runner_name=runner_name, scale_set_id=scale_set_id)
        return JitConfig.model_validate(
            {"runner": reference.model_dump(by_alias=True), "encodedJITConfig": "dry-run"}
        )

    async def list_runners(self, scale_set_id: int) -> list[RunnerReference]:
        would = [r.reference for r in self._would_exist.values() if r.scale_set_id == scale_set_id]
        return [*await self._github.list_runners(scale_set_id), *would]

    async def get_runner(self, runner_id: int) -> RunnerReference | None:
        if runner_id in self._would_exist:
            return self._would_exist[runner_id].reference
        return await self._github.get_runner(runner_id)

    async def remove_runner(self, runner_id: int) -> None:
        runner = self._would_exist.pop(runner_id, None)
        log.info(
            "dry_run_would_remove_registration",
            runner_id=runner_id,
            runner_name=None if runner is None else runner.reference.name,
        )
