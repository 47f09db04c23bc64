"""A scale set's listener and scaler run under one supervisor: a scaler step that raises is
logged with its traceback, `/readyz` says the set is down and why, and the set is restarted."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from provisioners.base import Provisioner
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.runner_versions import RunnerVersions
from scaleset_listener.service import run_service
from scaleset_listener.wiring import ScalerFactory, vm_scalers
from tests.testsupport.world import World, simulated_world

JSON = dict[str, Any]


class CrashingProvisioner:
    """The real provisioner, except that once armed its `capacity` raises an exception nobody
    expects: the stand-in for a bug in one step of the scaler's loop."""

    def __init__(self, inner: Provisioner) -> None:
        self._inner = inner
        self.armed = False
        self.crashed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def capacity(self) -> int | None:
        if self.armed:
            self.armed = False
            self.crashed.set()
            raise RuntimeError("injected: the capacity lookup exploded")
        return await self._inner.capacity()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with simulated_world(tmp_path, monkeypatch) as running:
        yield running


def free_addr() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_a_scaler_step_that_raises_is_reported_and_the_set_restarted(world: World) -> None:
    addr = free_addr()
    settings = world.settings(
        enable_metrics=True, metrics_addr=addr, retry_max_wait=1.0, recovery_backoff_max=2.0
    )
    crashing: list[CrashingProvisioner] = []

    def builder(
        client: ActionsClient, provisioner: Provisioner, versions: RunnerVersions
    ) -> ScalerFactory:
        crashing.append(CrashingProvisioner(provisioner))
        return vm_scalers(settings, client, crashing[0], versions)

    stop = asyncio.Event()
    with capture_logs() as logs:
        service = asyncio.create_task(
            run_service(settings, stop, handle_signals=False, scaler_factory_builder=builder)
        )
        try:
            state = await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            before = int(world.github.control.requests()[-1]["seq"])
            crashing[0].armed = True
            async with asyncio.timeout(10):
                await crashing[0].crashed.wait()
            # The listener half winds down the graceful way: it deletes its session.
            await asyncio.to_thread(
                world.github.control.wait_for_request,
                lambda entry: entry["endpoint"] == "delete_session",
                10.0,
                before,
            )
            async with httpx.AsyncClient(base_url=f"http://{addr}") as http:
                ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert (
                "linux: down after RuntimeError: injected: the capacity lookup exploded "
                "(restarting in 1 s)"
            ) in ready.json()["reasons"]

            # Restarted: a job queued now is served.
            world.github.control.enqueue_jobs(["linux"], count=1, duration=0.2)
            await world.wait_github(
                lambda s: bool(s["jobs"]) and all(j["state"] == "completed" for j in s["jobs"]),
                timeout=30,
            )
        finally:
            stop.set()
            async with asyncio.timeout(30):
                code = await service

    assert code == 0
    assert state["sessions"]
    (crash,) = [entry for entry in logs if entry["event"] == "scale_set_crashed"]
    assert crash["scale_set"] == "linux"
    assert crash["error_type"] == "RuntimeError"
    assert isinstance(crash["exc_info"], RuntimeError)  # rendered as a traceback by the logger
    assert crash["restart_in_seconds"] == 1.0
    sessions = world.github.control.state()["counters"]["sessions_created"]
    assert sessions == 2
