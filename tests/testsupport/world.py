"""The whole simulated world for scaler tests: GitHub, a cloud, and a fleet playing the VMs.

The service under test runs in-process with its real VMScaler, real OpenStackProvisioner
(openstacksdk against the simulated cloud) and real Actions client (against the simulated
GitHub); only sockets connect them. The fleet boots each server the listener creates, connects
its runner with the JIT config from the server's user_data, takes a job, and powers off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.runner_versions import RunnerVersions
from scaleset_listener.service import run_service
from scaleset_listener.vm_scaler.loop import VMScaler
from scaleset_listener.wiring import CloudProvisioners, ScalerFactory, vm_scalers
from simulator.fleet import Fleet, FleetConfig, FleetEvent
from simulator.github.config import SimulatorConfig
from simulator.github.server import RunningSimulator
from simulator.github.server import run_in_thread as run_github
from simulator.openstack.control import CloudControl
from simulator.openstack.server import RunningCloud
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.listener_harness import FAST_SETTINGS
from tests.testsupport.sim_cloud import simulated_cloud

JSON = dict[str, Any]

LIFECYCLE = {
    "boot_timeout": 5.0,
    "idle_runner_timeout": 0.3,
    "runner_deregistration_timeout": 0.5,
    "vm_tracker_interval": 0.5,
    "provision_concurrency": 4,
}


@dataclass
class World:
    github: RunningSimulator
    cloud: CloudTarget
    cloud_server: RunningCloud
    control: CloudControl
    fleet: Fleet
    scalers: dict[str, VMScaler] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "github_url": f"{self.github.base_url}/acme",
            "github_token": self.github.config.pats[0],
            "runners": [{"name": "linux", "max_runners": 3}],
            "openstack_image": self.cloud.image,
            "openstack_flavor": self.cloud.flavor,
            "openstack_network": self.cloud.network,
            **FAST_SETTINGS,
            **LIFECYCLE,
            **overrides,
        }
        return Settings(**values)

    def servers(self) -> list[JSON]:
        servers: list[JSON] = self.control.state()["servers"]
        return servers

    def jobs(self) -> list[JSON]:
        jobs: list[JSON] = self.github.control.state()["jobs"]
        return jobs

    def max_concurrent_servers(self) -> int:
        """The most servers that existed at once, from the fleet's record of births and deaths."""
        live = peak = 0
        for event in self.fleet.events:
            if event.what == "seen":
                live += 1
            elif event.what == "deleted":
                live -= 1
            peak = max(peak, live)
        return peak

    async def wait_github(self, predicate: Callable[[JSON], bool], timeout: float = 15.0) -> JSON:
        state: JSON = await asyncio.to_thread(
            self.github.control.wait_for_state, predicate, timeout
        )
        return state

    async def wait_fleet(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        await asyncio.to_thread(self.fleet.wait_for, predicate, timeout)

    async def wait_event(self, what: str, timeout: float = 15.0, **match: str) -> FleetEvent:
        def found() -> FleetEvent | None:
            for event in self.fleet.events:
                if event.what == what and all(getattr(event, k) == v for k, v in match.items()):
                    return event
            return None

        await self.wait_fleet(lambda: found() is not None, timeout)
        event = found()
        assert event is not None
        return event

    async def wait_no_servers(self, timeout: float = 15.0) -> None:
        await self.wait_fleet(lambda: not self.servers(), timeout)


@contextlib.contextmanager
def simulated_world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    github: dict[str, Any] | None = None,
    fleet: FleetConfig | None = None,
) -> Iterator[World]:
    config = SimulatorConfig(**{"long_poll_timeout": 0.2, **(github or {})})
    with (
        run_github(config) as github_sim,
        simulated_cloud(tmp_path) as (target, cloud_server),
        CloudControl(cloud_server.base_url) as control,
        Fleet(github_sim.base_url, cloud_server.base_url, fleet or FleetConfig()) as running_fleet,
    ):
        for name, value in target.env.items():
            monkeypatch.setenv(name, value)
        yield World(github_sim, target, cloud_server, control, running_fleet)


@contextlib.asynccontextmanager
async def serving(world: World, settings: Settings) -> AsyncIterator[asyncio.Task[int]]:
    """The service with real VM scalers (recorded in `world.scalers`) until the block ends."""
    stop = asyncio.Event()
    # The scalers of this run only: a test serving twice must not see the first run's.
    world.scalers.clear()

    def factory_for(
        client: ActionsClient, provisioner: CloudProvisioners, runner_versions: RunnerVersions
    ) -> ScalerFactory:
        make = vm_scalers(settings, client, provisioner, runner_versions)

        def record(spec: ScaleSetSpec) -> VMScaler:
            scaler = make(spec)
            world.scalers[spec.name] = scaler
            return scaler

        return record

    task = asyncio.create_task(
        run_service(settings, stop, handle_signals=False, scaler_factory_builder=factory_for)
    )
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
