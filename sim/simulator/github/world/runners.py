"""Runners: registered with a JIT config, connected (or refused for their version), idle or
busy, dead, removed. Scale-set runners are ephemeral: one job, then the service forgets them."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import TYPE_CHECKING

from simulator.github.model import ControlError, Runner, ServiceError, parse_version

if TYPE_CHECKING:
    from simulator.github.world import World


class Runners:
    def __init__(self, world: World) -> None:
        self._world = world
        self._ledger = world.ledger
        self.by_id: dict[int, Runner] = {}
        self._next_runner_id = 1

    def get(self, runner_id: int) -> Runner:
        runner = self.by_id.get(runner_id)
        if runner is None:
            raise ControlError(404, f"no runner {runner_id}")
        return runner

    def find(self, name: str | None) -> list[Runner]:
        return [r for r in self.by_id.values() if name is None or r.name.lower() == name.lower()]

    def busy_in(self, ss_id: int) -> bool:
        return any(r.scale_set_id == ss_id and r.state == "busy" for r in self.by_id.values())

    def generate_jit_config(self, ss_id: int, name: str, work_folder: str) -> tuple[Runner, str]:
        """Register a runner; its JIT config (base64 JSON) lets it connect once."""
        world = self._world
        world.scale_sets.get(ss_id)
        if not name:
            raise ServiceError(400, "ArgumentException", "The runner name is required.")
        if any(r.name.lower() == name.lower() for r in self.by_id.values()):
            raise ServiceError(
                409, "AgentExistsException", f"A runner with name {name} already exists."
            )
        runner = Runner(
            id=self._next_runner_id,
            name=name,
            scale_set_id=ss_id,
            secret=secrets.token_urlsafe(24),
            work_folder=work_folder,
            created=time.time(),
        )
        self._next_runner_id += 1
        self.by_id[runner.id] = runner
        self._ledger.count("jit_configs")
        self._ledger.event("runner_registered", runner_id=runner.id, name=name, scale_set_id=ss_id)
        document = {
            "runnerId": runner.id,
            "runnerName": name,
            "runnerScaleSetId": ss_id,
            "secret": runner.secret,
            "serverUrl": world.base_url,
            "tenantUrl": world.tenant_url,
            "connectUrl": f"{world.base_url}/_sim/runners/connect",
            "workFolder": work_folder,
        }
        encoded = base64.b64encode(json.dumps(document).encode()).decode()
        return runner, encoded

    def connect(self, jit_config: str, version: str | None = None) -> Runner:
        """The runner started with this JIT config comes online (idle), unless its version is
        refused (ControlError 400/403; it stays registered and offline). `version` None stands
        for the newest release, for tests that drive runners through the control API."""
        releases = self._world.releases
        try:
            document = json.loads(base64.b64decode(jit_config, validate=True))
            runner_id, secret = int(document["runnerId"]), str(document["secret"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlError(400, f"malformed JIT config: {exc}") from exc
        runner = self.by_id.get(runner_id)
        if runner is None or runner.secret != secret:
            raise ControlError(404, f"runner {runner_id} is not registered")
        if runner.jit_used:
            raise ControlError(409, f"the JIT config of runner {runner.name} was already used")
        try:
            key = parse_version(releases.newest().version if version is None else version)
        except ValueError as exc:
            raise ControlError(400, f"malformed runner version: {exc}") from exc
        runner.version = ".".join(map(str, key))
        refusal = releases.refusal(runner.version)
        if refusal is not None:
            status, reason, message = refusal
            runner.refused = message
            self._ledger.count("runners_refused")
            self._ledger.event(
                "runner_refused",
                runner_id=runner.id,
                name=runner.name,
                version=runner.version,
                reason=reason,
                message=message,
            )
            raise ControlError(status, message)
        runner.refused = None
        runner.jit_used = True
        runner.state = "idle"
        self._ledger.event(
            "runner_state",
            runner_id=runner.id,
            name=runner.name,
            state="idle",
            version=runner.version,
        )
        self._world.jobs.schedule()
        return runner

    def dies(self, runner_id: int) -> Runner:
        """The runner's process is gone: it stays registered (offline); a job it ran fails."""
        jobs = self._world.jobs
        runner = self.get(runner_id)
        job = jobs.by_id.get(runner.job) if runner.job is not None else None
        runner.state, runner.job = "offline", None
        if job is not None and job.state == "running":
            jobs.runner_died(job, runner)
        self._ledger.event("runner_state", runner_id=runner.id, name=runner.name, state="offline")
        jobs.schedule()
        return runner

    def remove(self, runner_id: int) -> None:
        """The REST API's remove: unknown ids are fine, a busy runner is refused."""
        self._ledger.count("runner_removal_calls")
        runner = self.by_id.get(runner_id)
        if runner is None:
            self._ledger.event("runner_remove_unknown", runner_id=runner_id)
            return
        if runner.state == "busy":
            raise ServiceError(
                400,
                "JobStillRunningException",
                f"Runner {runner.name} is currently running a job and cannot be deleted.",
            )
        del self.by_id[runner_id]
        self._ledger.count("runner_removals")
        self._ledger.event("runner_removed", runner_id=runner_id, name=runner.name, reason="api")

    def forget(self, runner: Runner, reason: str) -> None:
        """The service drops the registration (its job is over, or its set was deleted)."""
        del self.by_id[runner.id]
        self._ledger.event("runner_removed", runner_id=runner.id, name=runner.name, reason=reason)

    def drop_scale_set(self, ss_id: int) -> None:
        for runner in [r for r in self.by_id.values() if r.scale_set_id == ss_id]:
            self.forget(runner, reason="set")
