"""A scale set deleted at GitHub while its VMs exist: the listener re-creates it by name (a new
id), and the VMs tagged with the old id must not leak, neither in the running process nor after
a restart; VMs of another scale set that still exists are never touched.

The whole simulated world runs: GitHub, the cloud, and the fleet playing the VMs (a runner whose
registration disappears prints run-complete and powers its VM off, as the real bootstrap does).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioners.base import ServerSpec
from provisioners.naming import SCALE_SET_TAG_PREFIX, Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.cli import reconcile_once
from scaleset_listener.config import Settings
from scaleset_listener.wiring import openstack_config
from simulator.fleet import FleetConfig
from tests.testsupport.world import World, serving, simulated_world

JSON = dict[str, Any]


def set_ids(world: World) -> dict[str, int]:
    return {s["name"]: int(s["id"]) for s in world.github.control.state()["scale_sets"]}


def servers_of(world: World, scale_set_id: int) -> list[str]:
    tag = f"{SCALE_SET_TAG_PREFIX}{scale_set_id}"
    return sorted(s.name for s in world.control.servers() if tag in s.tags)


def idle_runners(state: JSON, scale_set_id: int) -> list[str]:
    return sorted(
        r["name"]
        for r in state["runners"]
        if r["scale_set_id"] == scale_set_id and r["state"] == "idle"
    )


def settings_for(world: World) -> Settings:
    return world.settings(
        enable_reconciliation=True,
        runners=[{"name": "linux", "min_runners": 2, "max_runners": 3}],
        boot_timeout=30.0,
        idle_runner_timeout=600.0,
    )


async def test_vms_of_a_scale_set_deleted_while_running_are_removed_and_new_ones_serve_the_new_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulated_world(tmp_path, monkeypatch, fleet=FleetConfig(boot_seconds=0.05)) as world:
        settings = settings_for(world)
        async with serving(world, settings):
            await world.wait_github(lambda s: len(s["scale_sets"]) == 1)
            old_id = set_ids(world)["linux"]
            await world.wait_github(lambda s: len(idle_runners(s, old_id)) == 2)
            assert len(servers_of(world, old_id)) == 2
            # One of them is running a job when the set is deleted (GitHub cancels the job).
            world.github.control.enqueue_jobs(["linux"], count=1, duration=600)
            await world.wait_github(
                lambda s: any(j["state"] == "running" for j in s["jobs"]), timeout=20
            )
            world.github.control.delete_scale_set(old_id)
            await world.wait_github(
                lambda s: (
                    [x["id"] for x in s["scale_sets"] if x["name"] == "linux"] not in ([], [old_id])
                )
            )
            new_id = set_ids(world)["linux"]
            # The new set is served by fresh runners; the old set's VMs go away.
            await world.wait_github(lambda s: len(idle_runners(s, new_id)) == 2, timeout=30)
            await world.wait_fleet(lambda: servers_of(world, old_id) == [], timeout=30)
            assert len(servers_of(world, new_id)) == 2
            assert [(j["state"], j["result"]) for j in world.jobs()] == [("completed", "canceled")]
        # A restart finds the new set's VMs (adopted), and nothing of the old one.
        async with serving(world, settings):
            await world.wait_fleet(
                lambda: "linux" in world.scalers and len(world.scalers["linux"].owned()) == 2
            )
            scaler = world.scalers["linux"]
            assert scaler.counters.created == 0
        assert servers_of(world, old_id) == []
        assert len(servers_of(world, new_id)) == 2


async def create_vm(settings: Settings, ownership: Ownership, name: str) -> str:
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(settings), poll_interval=0.05)
    )
    try:
        vm = await provisioner.create(
            ServerSpec(
                name=name,
                user_data=b"#!/bin/sh\ntrue\n",
                tags=ownership.tags(),
                metadata=ownership_metadata(name, "linux", datetime.now(UTC) - timedelta(hours=1)),
            )
        )
    finally:
        await provisioner.close()
    return vm.id


async def test_at_start_vms_of_a_deleted_scale_set_are_removed_and_another_live_sets_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulated_world(tmp_path, monkeypatch) as world:
        settings = settings_for(world).model_copy(
            update={"runners": settings_for(world).runners[:1]}
        )
        instance = settings.effective_listener_instance_id
        control = world.github.control
        gone_id = int(control.create_scale_set("linux", labels=["linux"])["id"])
        # Served by another listener process of the same LISTENER_INSTANCE_ID.
        other_id = int(control.create_scale_set("windows", labels=["windows"])["id"])
        await create_vm(settings, Ownership(instance, gone_id), "linux-gone0001")
        off_id = await create_vm(settings, Ownership(instance, gone_id), "linux-gone0002")
        world.control.set_server_status(off_id, "SHUTOFF")
        await create_vm(settings, Ownership(instance, other_id), "windows-live001")
        # Another deployment's VM of the gone set is not ours either.
        await create_vm(settings, Ownership("staging", gone_id), "linux-staging01")
        control.delete_scale_set(gone_id)

        lines: list[str] = []
        assert await reconcile_once(settings, dry_run=True, out=lines.append) == 0
        printed = "\n".join(lines)
        assert f"scale set {gone_id}" in printed
        assert "linux-gone0001" in printed
        assert "linux-gone0002" in printed
        assert "windows-live001" not in printed
        assert len(world.control.servers()) == 4

        async with serving(world, settings.model_copy(update={"dry_run": False})):
            await world.wait_fleet(lambda: servers_of(world, gone_id) == ["linux-staging01"])
        assert servers_of(world, other_id) == ["windows-live001"]
