"""Placement per scale set: a RUNNERS entry's OPENSTACK_* overrides and its own cloud.

The settings and the wiring are checked directly; the service is then run against two
simulated clouds (two clouds.yaml entries) serving one scale set each, in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioners.base import ServerSpec
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.cli import effective_settings, reconcile_once
from scaleset_listener.config import Settings, load_settings
from scaleset_listener.errors import ConfigError
from scaleset_listener.preflight import preflight
from scaleset_listener.wiring import placement, placements
from simulator.fleet import Fleet, FleetConfig
from simulator.openstack.cloudsyaml import clouds_yaml_entries
from simulator.openstack.control import CloudControl
from tests.testsupport.sim_cloud import simulated_cloud
from tests.testsupport.world import World, serving, simulated_world

pytestmark = pytest.mark.timeout(90)

JSON = dict[str, Any]

BASE: JSON = {
    "github_url": "https://github.com/acme",
    "github_token": "ghp_test",
    "openstack_image": "ubuntu",
    "openstack_flavor": "m1.small",
    "openstack_network": "runners",
    "openstack_security_groups": "default",
    "openstack_server_metadata": {"team": "ci", "cost": "shared"},
}


def settings_with(*runners: JSON) -> Settings:
    return Settings(**{**BASE, "runners": list(runners)})


def test_an_entry_without_overrides_gets_the_global_placement() -> None:
    settings = settings_with({"name": "linux"})
    config = placement(settings, settings.runners[0])
    assert (config.cloud, config.network, config.security_groups) == (None, "runners", ("default",))
    assert config.server_metadata == {"team": "ci", "cost": "shared"}


def test_an_entrys_overrides_replace_the_globals_and_its_metadata_is_merged() -> None:
    settings = settings_with(
        {
            "name": "gpu",
            "cloud": "west",
            "network": "gpu-net",
            "security_groups": "ssh,runners",
            "availability_zone": "az-2",
            "keypair": "ops",
            "boot_volume_size_gb": 80,
            "floating_ips": ["192.0.2.10"],
            "server_metadata": {"cost": "gpu"},
            "flavor": "g1.large",
        }
    )
    config = placement(settings, settings.runners[0])
    assert config.cloud == "west"
    assert config.network == "gpu-net"
    assert config.security_groups == ("ssh", "runners")
    assert (config.availability_zone, config.keypair) == ("az-2", "ops")
    assert config.boot_volume_size_gb == 80
    assert config.floating_ips == ("192.0.2.10",)
    assert config.server_metadata == {"team": "ci", "cost": "gpu"}
    assert config.flavors == ("g1.large",)


def test_sets_with_equal_placement_share_a_provisioner_and_others_get_their_own() -> None:
    settings = settings_with(
        {"name": "linux", "flavor": "m1.small"},
        {"name": "big", "flavor": "m1.large", "image": "ubuntu-big"},
        {"name": "gpu", "cloud": "west"},
        {"name": "isolated", "network": "quarantine"},
    )
    groups = placements(settings)
    assert groups.scale_sets == (("linux", "big"), ("gpu",), ("isolated",))
    shared = groups.configs[0]
    # The shared provisioner warms up every image and flavor its sets name.
    assert (shared.images, shared.flavors) == (("ubuntu-big",), ("m1.small", "m1.large"))
    assert groups.configs[1].cloud == "west"
    assert groups.index_of("isolated") == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"netwrok": "x"}, "RUNNERS[linux].netwrok: unknown setting"),
        ({"floating_ips": "not-an-ip"}, "RUNNERS[linux].floating_ips: 'not-an-ip' is not an IP"),
        ({"boot_volume_size_gb": -1}, "RUNNERS[linux].boot_volume_size_gb"),
        ({"cloud": " "}, "RUNNERS[linux].cloud: empty"),
    ],
)
def test_a_bad_placement_key_fails_at_start_naming_the_entry_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: JSON, message: str
) -> None:
    monkeypatch.delenv("OS_CLOUD", raising=False)
    env = tmp_path / ".env"
    runners = json.dumps([{"name": "linux", **entry}])
    env.write_text(
        f"GITHUB_URL=https://github.com/acme\nGITHUB_TOKEN=ghp_test\nRUNNERS={runners}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(env)


# Two clouds in one process ---------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with simulated_world(tmp_path, monkeypatch) as running:
        yield running


@contextlib.contextmanager
def second_cloud(world: World, directory: Path, name: str) -> Iterator[tuple[Fleet, CloudControl]]:
    """Another simulated cloud with a fleet of its own, added to the clouds.yaml openstacksdk
    reads as the entry `name` (the first cloud stays OS_CLOUD)."""
    directory.mkdir()
    with (
        simulated_cloud(directory) as (_target, running),
        Fleet(world.github.base_url, running.base_url, FleetConfig()) as fleet,
        CloudControl(running.base_url) as control,
    ):
        # Its entries, named `name`, under the first cloud's.
        ours = world.cloud.clouds_yaml.read_text(encoding="utf-8").rstrip("\n")
        entries = clouds_yaml_entries(running.base_url, name)
        world.cloud.clouds_yaml.write_text(f"{ours}\n{entries}", encoding="utf-8")
        yield fleet, control


def all_done(state: JSON, count: int) -> bool:
    jobs = state["jobs"]
    return len(jobs) == count and all(job["state"] == "completed" for job in jobs)


def seen(fleet: Fleet) -> set[str]:
    return {event.server for event in fleet.events if event.what == "seen"}


def live(fleet: Fleet) -> int:
    events = list(fleet.events)
    return sum(e.what == "seen" for e in events) - sum(e.what == "deleted" for e in events)


async def test_two_scale_sets_on_two_clouds_in_one_process_each_on_its_own(
    world: World, tmp_path: Path
) -> None:
    with second_cloud(world, tmp_path / "west", "west") as (west, _west_control):
        settings = world.settings(
            runners=[
                {"name": "linux", "max_runners": 2},
                {"name": "gpu", "max_runners": 2, "cloud": "west"},
            ]
        )
        async with serving(world, settings):
            await world.wait_github(
                lambda s: len([x for x in s["sessions"] if not x["ghost"]]) == 2
            )
            world.github.control.enqueue_jobs(["linux"], count=2, duration=0.2)
            world.github.control.enqueue_jobs(["gpu"], count=2, duration=0.2)
            await world.wait_github(lambda s: all_done(s, 4), timeout=40)
            # Every VM goes once its job is done, on either cloud: nothing leaks.
            await world.wait_fleet(lambda: live(world.fleet) == 0)
            # In a thread: the service runs on this event loop.
            await asyncio.to_thread(west.wait_for, lambda: live(west) == 0, 15.0)

    east_names, west_names = seen(world.fleet), seen(west)
    assert len(east_names) >= 2
    assert all(name.startswith("linux-") for name in east_names)
    assert len(west_names) >= 2
    assert all(name.startswith("gpu-") for name in west_names)


# check-config ------------------------------------------------------------------------------------


def test_check_config_shows_each_scale_sets_effective_placement() -> None:
    settings = settings_with(
        {"name": "linux"},
        {"name": "gpu", "cloud": "west", "network": "gpu-net", "server_metadata": {"cost": "gpu"}},
    )
    lines = [line for line in effective_settings(settings) if line.startswith("# placement")]
    assert lines == [
        "# placement of linux: cloud=(OS_CLOUD) image=ubuntu flavor=m1.small network=runners "
        "security_groups=default availability_zone= keypair= boot_volume_size_gb=0 "
        "floating_ips= server_metadata=team=ci,cost=shared",
        "# placement of gpu: cloud=west image=ubuntu flavor=m1.small network=gpu-net "
        "security_groups=default availability_zone= keypair= boot_volume_size_gb=0 "
        "floating_ips= server_metadata=team=ci,cost=gpu",
    ]


async def test_online_checks_run_on_each_cloud_naming_the_entrys_override(
    world: World, tmp_path: Path
) -> None:
    with second_cloud(world, tmp_path / "west", "west") as _west:
        settings = world.settings(
            runners=[
                {"name": "linux", "max_runners": 2},
                {"name": "gpu", "max_runners": 2, "cloud": "west", "network": "no-such-net"},
            ]
        )
        checks = await preflight(settings)
    failed = {check.setting: check.detail for check in checks if check.status == "FAIL"}
    assert list(failed) == ["RUNNERS[gpu].network"]
    assert failed["RUNNERS[gpu].network"].startswith("scale sets gpu: ")
    clouds = [check for check in checks if check.setting in {"OS_CLOUD", "RUNNERS[gpu].cloud"}]
    assert {check.setting for check in clouds} == {"OS_CLOUD", "RUNNERS[gpu].cloud"}
    assert all(check.status == "ok" for check in clouds)
    network = [check for check in checks if check.setting == "OPENSTACK_NETWORK"]
    assert [check.status for check in network] == ["ok"]


def test_an_entry_without_a_usable_name_is_named_by_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OS_CLOUD", raising=False)
    env = tmp_path / ".env"
    runners = json.dumps([{"name": "linux"}, {"name": "bad name", "network": ""}])
    env.write_text(
        f"GITHUB_URL=https://github.com/acme\nGITHUB_TOKEN=ghp_test\nRUNNERS={runners}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert "RUNNERS[1].name: scale set name 'bad name'" in str(raised.value)
    assert "RUNNERS[1].network: empty" in str(raised.value)


# Deleted scale sets on every cloud ---------------------------------------------------------------


async def test_a_deleted_scale_sets_vm_on_the_second_cloud_is_removed_at_start(
    world: World, tmp_path: Path
) -> None:
    with second_cloud(world, tmp_path / "west", "west") as (_fleet, west):
        settings = world.settings(
            enable_reconciliation=True,
            runners=[{"name": "linux"}, {"name": "gpu", "cloud": "west"}],
        )
        control = world.github.control
        gone_id = int(control.create_scale_set("gpu-old", labels=["gpu-old"])["id"])
        instance = settings.effective_listener_instance_id
        provisioner = OpenStackProvisioner(
            dataclasses.replace(placement(settings, settings.runners[1]), poll_interval=0.05)
        )
        try:
            vm = await provisioner.create(
                ServerSpec(
                    name="gpu-old-gone0001",
                    user_data=b"#!/bin/sh\ntrue\n",
                    tags=Ownership(instance, gone_id).tags(),
                    metadata=ownership_metadata(
                        "gpu-old-gone0001", "gpu-old", datetime.now(UTC) - timedelta(hours=1)
                    ),
                )
            )
        finally:
            await provisioner.close()
        west.set_server_status(vm.id, "SHUTOFF")
        control.delete_scale_set(gone_id)
        assert world.control.servers() == []
        # `reconcile` looks on every cloud too (a dry run: it only says what it would do).
        lines: list[str] = []
        assert await reconcile_once(settings, dry_run=True, out=lines.append) == 0
        assert "gpu-old-gone0001" in "\n".join(lines)
        assert len(west.servers()) == 1

        async with serving(world, settings):
            await world.wait_github(
                lambda s: len([x for x in s["sessions"] if not x["ghost"]]) == 2
            )
            await asyncio.to_thread(world.fleet.wait_for, lambda: west.servers() == [], 20.0)


# One project, two placements ---------------------------------------------------------------------


async def test_sets_with_different_placements_on_one_cloud_share_its_quota(world: World) -> None:
    """Two provisioners (the sets' server metadata differ) creating in one project: each sees
    what the other has taken, so no create is sent that Nova would refuse for quota."""
    world.control.set_quotas(instances=2)
    settings = world.settings(
        runners=[
            {"name": "linux", "max_runners": 2, "server_metadata": {"cost": "linux"}},
            {"name": "big", "max_runners": 2, "server_metadata": {"cost": "big"}},
        ],
        capacity_refresh_interval=3600.0,
    )
    assert len(placements(settings).configs) == 2
    async with serving(world, settings):
        await world.wait_github(lambda s: len([x for x in s["sessions"] if not x["ghost"]]) == 2)
        world.github.control.enqueue_jobs(["linux"], count=2, duration=0.3)
        world.github.control.enqueue_jobs(["big"], count=2, duration=0.3)
        await world.wait_github(lambda s: all_done(s, 4), timeout=40)
        await world.wait_fleet(lambda: live(world.fleet) == 0)

    creates = world.control.requests(endpoint="compute.servers.create")
    assert [record.status for record in creates if record.status != 202] == []
    assert len(creates) >= 4
    assert world.max_concurrent_servers() <= 2


async def test_online_quota_check_counts_every_set_on_one_cloud_whatever_its_placement(
    world: World,
) -> None:
    """Each placement alone fits the project's quota; together they do not, and it is one
    project: the check says so once, naming both sets."""
    world.control.set_quotas(instances=3)
    settings = world.settings(
        runners=[
            {"name": "linux", "max_runners": 2, "server_metadata": {"cost": "linux"}},
            {"name": "big", "max_runners": 2, "server_metadata": {"cost": "big"}},
        ]
    )
    checks = await preflight(settings)
    quota = [check for check in checks if check.setting == "RUNNERS (max_runners)"]
    assert [(check.status, check.detail.split(": ")[0]) for check in quota] == [
        ("FAIL", "scale sets linux, big")
    ]
    flavors = [check for check in checks if check.setting == "OPENSTACK_FLAVOR"]
    assert len(flavors) == 1
