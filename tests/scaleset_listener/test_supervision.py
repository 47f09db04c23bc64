"""A scale set's listener and scaler run under one supervisor: a scaler step that raises is
logged with its traceback, `/readyz` says the set is down and why, and the set is restarted
after the recovery backoff's wait, which starts over once a pair ran longer than its cap."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from structlog.testing import capture_logs

from provisioners.base import Provisioner
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.listener import Listener
from scaleset_listener.retrying import RecoveryBackoff
from scaleset_listener.runner_versions import RunnerVersions
from scaleset_listener.scaler_port import LoggingScaler
from scaleset_listener.service import run_service
from scaleset_listener.supervisor import ScaleSetSupervisor
from scaleset_listener.wiring import CloudProvisioners, ScalerFactory, provisioner_of, vm_scalers
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

    async def capacity(self, flavor: str | None = None, owner: tuple[str, ...] = ()) -> int | None:
        if self.armed:
            self.armed = False
            self.crashed.set()
            raise RuntimeError("injected: the capacity lookup exploded")
        return await self._inner.capacity(flavor, owner)


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
        client: ActionsClient, provisioners: CloudProvisioners, versions: RunnerVersions
    ) -> ScalerFactory:
        crashing.append(CrashingProvisioner(provisioner_of(provisioners, settings.runners[0].name)))
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
            # The first step (1 s) plus up to a quarter of it of jitter, to a tenth of a second.
            down = re.compile(
                r"linux: down after RuntimeError: injected: the capacity lookup exploded "
                r"\(restarting in 1(\.[12])? s\)"
            )
            assert any(down.fullmatch(reason) for reason in ready.json()["reasons"])

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
    assert 1.0 <= crash["restart_in_seconds"] <= 1.25
    sessions = world.github.control.state()["counters"]["sessions_created"]
    assert sessions == 2


class IdleListener:
    """Stands in for the listener half: serves until its pair is stopped."""

    name = "linux"
    last_poll_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def release(self) -> None:
        return None


class ScriptedScaler(LoggingScaler):
    """Each run lasts the next scripted number of seconds on `clock` and crashes; once the
    script is used up it stops the service and serves until stopped."""

    def __init__(self, runs: list[float], clock: list[float], service_stop: asyncio.Event) -> None:
        super().__init__("linux")
        self._runs = iter(runs)
        self._clock = clock
        self._service_stop = service_stop
        self.crashed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        lasted = next(self._runs, None)
        if lasted is None:
            self._service_stop.set()
            await stop.wait()
            return
        self._clock[0] += lasted
        self.crashed.set()
        raise RuntimeError("injected")


@pytest.mark.parametrize(
    ("runs", "waits"),
    [
        # Crashes in a row double the wait up to the cap (0.04 s).
        ([0, 0, 0, 0], [0.01, 0.02, 0.04, 0.04]),
        # A pair that ran longer than the cap had recovered: its crash waits the first step.
        ([0, 0, 0, 1.0, 0], [0.01, 0.02, 0.04, 0.01, 0.02]),
        # Running exactly as long as the cap is not enough.
        ([0, 0, 0.04], [0.01, 0.02, 0.04]),
    ],
)
async def test_restarts_wait_by_the_recovery_backoff(runs: list[float], waits: list[float]) -> None:
    clock = [0.0]
    stop = asyncio.Event()
    supervisor = ScaleSetSupervisor(
        cast(Listener, IdleListener()),
        ScriptedScaler(runs, clock, stop),
        backoff=RecoveryBackoff(0.01, 0.04),
        clock=lambda: clock[0],
    )
    with capture_logs() as logs:
        async with asyncio.timeout(10):
            assert await supervisor.run(stop) is True
    crashes = [entry for entry in logs if entry["event"] == "scale_set_crashed"]
    assert [entry["restarts"] for entry in crashes] == list(range(1, len(waits) + 1))
    seen = [entry["restart_in_seconds"] for entry in crashes]
    assert len(seen) == len(waits)
    for wait, step in zip(seen, waits, strict=True):
        assert step <= wait <= step + 0.01 / 4 + 0.001  # jitter, and rounding to milliseconds


async def test_a_stop_ends_a_restart_wait_at_once() -> None:
    stop = asyncio.Event()
    scaler = ScriptedScaler([0], [0.0], asyncio.Event())
    supervisor = ScaleSetSupervisor(
        cast(Listener, IdleListener()), scaler, backoff=RecoveryBackoff(60.0, 60.0)
    )
    running = asyncio.create_task(supervisor.run(stop))
    async with asyncio.timeout(5):
        await scaler.crashed.wait()
    stop.set()
    # Far less than the minute the restart would wait.
    async with asyncio.timeout(5):
        assert await running is True
    assert supervisor.restarts == 1
