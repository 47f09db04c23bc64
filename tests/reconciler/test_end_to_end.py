"""The reconciler end to end: the cloud from the simulator (through openstacksdk), the runner
list from the simulator's Actions service (through the Actions client), the console markers as
the fallback channel. No SSH key is configured here, so no VM is probed: GitHub and the console
decide (the probe's own rows are covered in test_policy.py and test_run_once.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioners.base import RunnerVM, ServerSpec
from provisioners.naming import FAILED_TAG, Ownership, failed_metadata, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, PersonalAccessToken
from scaleset_listener.cli import main, reconcile_once
from scaleset_listener.config import Settings
from scaleset_listener.github_urls import parse_github_url
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.session import MessageSession
from scaleset_listener.wiring import openstack_config
from simulator.github.config import SimulatorConfig
from simulator.github.server import RunningSimulator
from simulator.github.server import run_in_thread as run_github
from simulator.openstack.control import CloudControl
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.listener_harness import FAST_SETTINGS
from tests.testsupport.sim_cloud import simulated_cloud

pytestmark = pytest.mark.timeout(60)


@dataclasses.dataclass
class Setup:
    github: RunningSimulator
    cloud: CloudTarget
    control: CloudControl
    settings: Settings
    scale_set_id: int = 0


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    with (
        run_github(SimulatorConfig(long_poll_timeout=0.2)) as github,
        simulated_cloud(tmp_path) as (target, cloud_server),
        CloudControl(cloud_server.base_url) as control,
    ):
        for name, value in target.env.items():
            monkeypatch.setenv(name, value)
        values: dict[str, Any] = {
            "github_url": f"{github.base_url}/acme",
            "github_token": github.config.pats[0],
            "runners": [{"name": "linux", "max_runners": 10}],
            "openstack_image": target.image,
            "openstack_flavor": target.flavor,
            "openstack_network": target.network,
            **FAST_SETTINGS,
            "boot_timeout": 600.0,
        }
        settings = Settings(**values)
        scale_set = github.control.create_scale_set("linux", labels=["linux"])
        yield Setup(github, target, control, settings, int(scale_set["id"]))


@contextlib.asynccontextmanager
async def admin_client(setup: Setup) -> AsyncIterator[ActionsClient]:
    http = HttpChannel(RetryPolicy(max_attempts=2, max_wait=0.01))
    target = parse_github_url(f"{setup.github.base_url}/acme")
    auth = ActionsAdminAuth(target, PersonalAccessToken(setup.github.config.pats[0]), http)
    try:
        yield ActionsClient(auth, http)
    finally:
        await http.aclose()


async def create_vm(
    setup: Setup, name: str, age: timedelta, host_key: str | None = None
) -> RunnerVM:
    ownership = Ownership(setup.settings.effective_listener_instance_id, setup.scale_set_id)
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    try:
        vm = await provisioner.create(
            ServerSpec(
                name=name,
                user_data=b"#!/bin/sh\ntrue\n",
                tags=ownership.tags(),
                metadata=ownership_metadata(name, "linux", datetime.now(UTC) - age, host_key),
            )
        )
    finally:
        await provisioner.close()
    return vm


async def leftovers(setup: Setup) -> dict[str, str]:
    """What an earlier listener process left behind; the name -> the expected action."""
    day, hour, minute = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
    async with admin_client(setup) as client:
        jit = {}
        for name in (
            "linux-idle0001",
            "linux-error001",
            "linux-done0001",
            "linux-young001",
            "linux-sfail001",
            "linux-kept0001",
            "linux-off00001",
        ):
            jit[name] = await client.generate_jit_config(setup.scale_set_id, name)
        await client.generate_jit_config(setup.scale_set_id, "linux-novm0001")
    # An online runner whose VM is young: no probe, not busy, inside BOOT_TIMEOUT.
    setup.github.control.connect_runner(jit["linux-idle0001"].encoded_jit_config)
    await create_vm(setup, "linux-idle0001", minute)
    error_id = (await create_vm(setup, "linux-error001", minute)).id
    setup.control.set_server_status(error_id, "ERROR", "host failure")
    done_id = (await create_vm(setup, "linux-done0001", hour)).id
    setup.control.append_console(
        done_id, "SCALESET-RUNNER run-complete runner=linux-done0001 exit=0"
    )
    await create_vm(setup, "linux-young001", minute)
    await create_vm(setup, "linux-noreg001", hour)
    # Young and registered, but its bootstrap reported failure on the console.
    failed_id = (await create_vm(setup, "linux-sfail001", minute)).id
    setup.control.append_console(
        failed_id, "SCALESET-RUNNER setup-failed runner=linux-sfail001 reason=download"
    )
    # A failed VM kept for debugging (KEEP_FAILED_VMS): not the reconciler's to touch.
    kept_id = (await create_vm(setup, "linux-kept0001", hour)).id
    setup.control.append_console(
        kept_id, "SCALESET-RUNNER run-complete runner=linux-kept0001 exit=1"
    )
    await tag_server(setup, kept_id, FAILED_TAG, failed_metadata(datetime.now(UTC) - hour))
    # Kept as long ago as FAILED_VM_RETENTION (24 h) and more: its time is up.
    expired_id = (await create_vm(setup, "linux-kold001", 2 * day)).id
    await tag_server(setup, expired_id, FAILED_TAG, failed_metadata(datetime.now(UTC) - 25 * hour))
    # Powered itself off after its run; its registration is still there.
    off_id = (await create_vm(setup, "linux-off00001", hour)).id
    setup.control.set_server_status(off_id, "SHUTOFF")
    return {
        "linux-idle0001": "adopt_booting",
        "linux-error001": "delete",
        "linux-done0001": "clean_up",
        "linux-young001": "adopt_booting",
        "linux-noreg001": "delete",
        "linux-sfail001": "delete",
        "linux-kept0001": "skip",
        "linux-kold001": "delete",
        "linux-off00001": "clean_up",
        "linux-novm0001": "remove_registration",
    }


async def tag_server(
    setup: Setup, server_id: str, tag: str, metadata: dict[str, str] | None = None
) -> None:
    provisioner = OpenStackProvisioner(openstack_config(setup.settings))
    try:
        await provisioner.add_tag(server_id, tag)
        if metadata:
            await provisioner.set_metadata(server_id, metadata)
    finally:
        await provisioner.close()


def world_state(setup: Setup) -> tuple[Any, Any]:
    servers = sorted((s.name, s.status) for s in setup.control.servers())
    runners = sorted(
        (r["name"], r["state"], r.get("job")) for r in setup.github.control.state()["runners"]
    )
    return servers, runners


def actions_in(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        cells = line.split()
        if cells and cells[0].startswith("linux-"):
            found[cells[0]] = cells[5]
    return found


async def test_a_dry_run_prints_every_decision_and_leaves_cloud_and_github_untouched(
    setup: Setup,
) -> None:
    expected = await leftovers(setup)
    before = world_state(setup)
    lines: list[str] = []
    assert await reconcile_once(setup.settings, dry_run=True, out=lines.append) == 0
    assert world_state(setup) == before
    assert actions_in("\n".join(lines).splitlines()) == expected
    table = "\n".join(lines)
    assert "younger than BOOT_TIMEOUT" in table
    # Failed VMs kept for debugging are listed with the time they have left.
    (kept,) = [line for line in table.splitlines() if line.startswith("linux-kept0001")]
    assert "deleted in 23.0h (FAILED_VM_RETENTION)" in kept
    (expired,) = [line for line in table.splitlines() if line.startswith("linux-kold001")]
    assert "past FAILED_VM_RETENTION" in expired


async def test_a_pass_deletes_and_cleans_up_per_the_table_and_keeps_the_adopted(
    setup: Setup,
) -> None:
    await leftovers(setup)
    lines: list[str] = []
    assert await reconcile_once(setup.settings, dry_run=False, out=lines.append) == 0
    servers, runners = world_state(setup)
    assert [name for name, _ in servers] == ["linux-idle0001", "linux-kept0001", "linux-young001"]
    assert sorted(name for name, _, _ in runners) == [
        "linux-idle0001",
        "linux-kept0001",
        "linux-young001",
    ]
    # A second pass finds nothing more to change.
    again: list[str] = []
    assert await reconcile_once(setup.settings, dry_run=False, out=again.append) == 0
    assert world_state(setup) == (servers, runners)


def test_the_reconcile_command_with_dry_run_prints_the_table_and_changes_nothing(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(leftovers(setup))
    before = world_state(setup)
    env_file = tmp_path / "reconcile.env"
    env_file.write_text(
        "\n".join(
            [
                f"GITHUB_URL={setup.github.base_url}/acme",
                f"GITHUB_TOKEN={setup.github.config.pats[0]}",
                'RUNNERS=[{"name": "linux"}]',
                f"OPENSTACK_IMAGE={setup.cloud.image}",
                f"OPENSTACK_FLAVOR={setup.cloud.flavor}",
                f"OPENSTACK_NETWORK={setup.cloud.network}",
                "RETRY_MAX_ATTEMPTS=3",
                "RETRY_MAX_WAIT=0.02",
                "",
            ]
        )
    )
    assert main(["reconcile", "--dry-run", "--env-file", str(env_file)]) == 0
    printed = capsys.readouterr().out
    assert "dry run, nothing changed" in printed
    assert "REASON" in printed
    assert "linux-novm0001" in printed
    assert world_state(setup) == before


async def make_busy(setup: Setup, client: ActionsClient, jit_config: str) -> None:
    """The runner takes a job: the job is queued, acquired through a session, assigned, taken."""
    runner = setup.github.control.connect_runner(jit_config)
    setup.github.control.enqueue_jobs(["linux"], count=1, duration=600)
    http = HttpChannel(RetryPolicy(max_attempts=2, max_wait=0.01))
    created = await client.create_session(setup.scale_set_id, "test")
    session = MessageSession(client, http, setup.scale_set_id, created)
    try:
        jobs = await client.get_acquirable_jobs(setup.scale_set_id)
        await session.acquire_jobs([job.runner_request_id for job in jobs])
        await asyncio.to_thread(
            setup.github.control.wait_for_state,
            lambda s: any(j.get("state") == "assigned" for j in s["jobs"]),
            10.0,
        )
        setup.github.control.runner_take_job(int(runner["id"]))
    finally:
        await session.close()
        await http.aclose()


async def test_a_busy_runner_whose_vm_cannot_be_probed_is_adopted_never_deleted(
    setup: Setup,
) -> None:
    name = "linux-busy0001"
    async with admin_client(setup) as client:
        jit = await client.generate_jit_config(setup.scale_set_id, name)
        await make_busy(setup, client, jit.encoded_jit_config)
    # Far past BOOT_TIMEOUT, within MAX_RUNNER_LIFETIME (24h): only the lifetime may end it.
    await create_vm(setup, name, timedelta(hours=20))
    lines: list[str] = []
    assert await reconcile_once(setup.settings, dry_run=False, out=lines.append) == 0
    assert actions_in("\n".join(lines).splitlines()) == {name: "adopt_busy"}
    servers, runners = world_state(setup)
    assert [n for n, _ in servers] == [name]
    assert [(n, state) for n, state, _ in runners] == [(name, "busy")]
