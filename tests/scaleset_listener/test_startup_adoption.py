"""VMScaler.prepare: the startup reconciliation's adoptions join the owned set before demand is
counted; a booting VM keeps its deadline; a failed reconciliation does not stop the service."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from provisioners.base import ServerSpec
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.config import ScaleSetSpec
from scaleset_listener.vm_scaler.ledger import Adoption, Ledger, Phase
from scaleset_listener.vm_scaler.loop import VMScaler
from scaleset_listener.vm_scaler.plan import EndLifetime, Lifecycle, Observation, plan
from scaleset_listener.wiring import openstack_config
from tests.scaleset_listener.test_scaler import admin_client_for
from tests.testsupport.world import serving, simulated_world


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class UnlimitedCloud:
    """All `prepare` asks of a provisioner: how many more servers fit (None: no limit)."""

    async def capacity(self, flavor: str | None = None, owner: tuple[str, ...] = ()) -> None:
        return None


def scaler_with(reconcile: Any, clock: Clock) -> VMScaler:
    nothing: Any = None
    cloud: Any = UnlimitedCloud()
    return VMScaler(
        ScaleSetSpec(name="linux"),
        nothing,
        cloud,
        nothing,
        "test",
        Lifecycle(boot_timeout=600.0),
        asyncio.Semaphore(1),
        clock=clock,
        reconcile=reconcile,
    )


async def test_adopted_vms_join_the_owned_set_in_their_phases_once_per_scale_set() -> None:
    calls: list[int] = []

    async def reconcile(scale_set_id: int) -> Sequence[Adoption]:
        calls.append(scale_set_id)
        return [
            Adoption("linux-a", "srv-a", Phase.IDLE, runner_id=1, age_seconds=3600),
            Adoption("linux-b", "srv-b", Phase.BUSY, runner_id=2, age_seconds=3600),
            Adoption("linux-c", "srv-c", Phase.BOOTING, runner_id=3, age_seconds=500),
        ]

    clock = Clock()
    scaler = scaler_with(reconcile, clock)
    scaler.bind_scale_set(7)
    await scaler.prepare(7)
    await scaler.prepare(7)
    assert calls == [7]
    phases = {r.name: r.phase for r in scaler.owned()}
    assert phases == {"linux-a": Phase.IDLE, "linux-b": Phase.BUSY, "linux-c": Phase.BOOTING}
    booting = scaler.runners["linux-c"]
    # 500 s of its 600 s boot deadline are already spent.
    assert clock.now - booting.phase_since == 500
    assert scaler.runners["linux-a"].server_id == "srv-a"
    # Lifetimes count from the servers' creation, not from the adoption; idle time from now.
    idle = scaler.runners["linux-a"]
    assert (clock.now - idle.created_at, clock.now - idle.phase_since) == (3600, 0)


def test_an_adopted_vm_past_its_lifetime_is_ended_by_the_next_plan() -> None:
    clock = Clock()
    ledger = Ledger("linux", clock)
    ledger.adopt(Adoption("linux-a", "srv-a", Phase.BUSY, runner_id=1, age_seconds=7200), "test")
    lifecycle = Lifecycle(max_runner_lifetime=3600.0)
    observation = Observation(now=clock.now, desired=1, runners=list(ledger.runners.values()))
    assert plan(observation, lifecycle, max_runners=5).steps[0] == EndLifetime("linux-a")


async def test_a_failed_reconciliation_is_logged_and_the_scaler_goes_on() -> None:
    async def reconcile(scale_set_id: int) -> Sequence[Adoption]:
        raise RuntimeError("cloud down")

    scaler = scaler_with(reconcile, Clock())
    await scaler.prepare(7)
    assert scaler.owned() == []


async def test_at_start_a_left_over_vm_is_adopted_before_demand_so_no_second_vm_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulated_world(tmp_path, monkeypatch) as world:
        scale_set_id = int(world.github.control.create_scale_set("linux", labels=["linux"])["id"])
        settings = world.settings(
            enable_reconciliation=True,
            runners=[{"name": "linux", "min_runners": 1, "max_runners": 3}],
            boot_timeout=600.0,
        )
        name = "linux-left0001"
        async with admin_client_for(world) as client:
            jit = await client.generate_jit_config(scale_set_id, name)
            await client.generate_jit_config(scale_set_id, "linux-novm0001")
        world.github.control.connect_runner(jit.encoded_jit_config)
        ownership = Ownership(settings.effective_listener_instance_id, scale_set_id)
        provisioner = OpenStackProvisioner(
            dataclasses.replace(openstack_config(settings), poll_interval=0.05)
        )
        try:
            await provisioner.create(
                ServerSpec(
                    name=name,
                    user_data=b"#!/bin/sh\ntrue\n",
                    tags=ownership.tags(),
                    metadata=ownership_metadata(name, "linux", datetime.now(UTC)),
                )
            )
        finally:
            await provisioner.close()
        async with serving(world, settings):
            await world.wait_fleet(lambda: "linux" in world.scalers)
            scaler = world.scalers["linux"]
            await world.wait_fleet(
                lambda: name in scaler.runners and scaler.runners[name].phase is Phase.IDLE
            )
            await world.wait_github(lambda s: [r["name"] for r in s["runners"]] == [name])
            assert scaler.counters.created == 0
            assert [s["name"] for s in world.servers()] == [name]
