"""The scaler end to end: simulated GitHub, simulated cloud, a fleet playing the VMs, real sockets.

Every test runs the real service (listener, VMScaler, OpenStack provisioner, Actions client) and
checks the outcome in the two simulators: which VMs existed, which jobs ran, what is left over.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from simulator.fleet import FleetConfig
from tests.testsupport.world import World, serving, simulated_world

pytestmark = pytest.mark.timeout(90)

JSON = dict[str, Any]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with simulated_world(tmp_path, monkeypatch) as running:
        yield running


def all_done(state: JSON, count: int) -> bool:
    jobs = state["jobs"]
    return len(jobs) == count and all(job["state"] == "completed" for job in jobs)


async def test_a_burst_gets_exactly_the_needed_vms_never_above_max_and_all_go_away(
    world: World,
) -> None:
    async with serving(world, world.settings()):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=5, duration=0.3)
        state = await world.wait_github(lambda s: all_done(s, 5), timeout=40)
        await world.wait_no_servers()
    assert {job["result"] for job in state["jobs"]} == {"succeeded"}
    assert all(job["runner_name"].startswith("linux-") for job in state["jobs"])
    assert world.max_concurrent_servers() <= 3
    # One VM per job: five jobs, five servers, none left over, no registration left.
    assert world.fleet.counters.seen == 5
    assert world.github.control.state()["runners"] == []


async def test_min_runners_keeps_a_warm_idle_vm(world: World) -> None:
    settings = world.settings(runners=[{"name": "linux", "min_runners": 1, "max_runners": 2}])
    async with serving(world, settings):
        await world.wait_event("connected")
        scaler = world.scalers["linux"]
        # Long past the idle timeout the warm runner is still there: it is demand, not surplus.
        await asyncio.to_thread(world.fleet.wait_idle_ticks, 20)
        assert len(world.servers()) == 1
        assert scaler.counters.retired_idle == 0
        world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
        await world.wait_github(lambda s: all_done(s, 1))
        # The warm runner took the job; a new warm one replaces it.
        await world.wait_fleet(lambda: world.fleet.counters.connected == 2)
    assert world.fleet.counters.seen == 2


async def test_a_job_canceled_before_its_runner_came_up_leaves_an_idle_runner_that_is_retired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulated_world(tmp_path, monkeypatch, fleet=FleetConfig(boot_seconds=0.6)) as world:
        async with serving(world, world.settings()):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            (job_id,) = world.github.control.enqueue_jobs(["linux"], count=1)
            await world.wait_event("seen")
            world.github.control.cancel_job(job_id)
            await world.wait_event("connected")
            await world.wait_no_servers()
            scaler = world.scalers["linux"]
            assert scaler.counters.retired_idle == 1
        assert world.github.control.state()["runners"] == []


async def test_a_hung_boot_is_replaced_after_the_boot_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulated_world(tmp_path, monkeypatch) as world:
        world.fleet.next_boots_fail(1, "hang")
        with capture_logs() as logs:
            async with serving(world, world.settings(boot_timeout=0.8)):
                await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
                world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
                await world.wait_github(lambda s: all_done(s, 1), timeout=30)
                await world.wait_no_servers()
        assert any(entry["event"] == "runner_boot_timeout" for entry in logs)
        assert world.fleet.counters.seen == 2
        assert world.github.control.state()["runners"] == []


async def test_a_server_in_error_is_logged_deleted_and_replaced(world: World) -> None:
    world.control.fail_server_creates("No valid host was found.")
    with capture_logs() as logs:
        async with serving(world, world.settings()):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
            await world.wait_github(lambda s: all_done(s, 1), timeout=30)
            await world.wait_no_servers()
    failures = [entry for entry in logs if entry["event"] == "runner_create_failed"]
    assert failures
    assert failures[0]["fault"] == "No valid host was found."
    assert world.github.control.state()["runners"] == []


@pytest.mark.parametrize("fault", ["quota", "api_500"])
async def test_create_failures_are_retried_until_the_job_is_served(
    world: World, fault: str
) -> None:
    if fault == "quota":
        world.control.exceed_quota("instances", times=2)
    else:
        world.control.fail_requests("compute.servers.create", status=500, times=2)
    async with serving(world, world.settings()):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
        await world.wait_github(lambda s: all_done(s, 1), timeout=40)
        await world.wait_no_servers()
        scaler = world.scalers["linux"]
        assert scaler.counters.create_failures == 2
    # Failed creates left no registration behind.
    assert world.github.control.state()["runners"] == []


async def test_dry_run_creates_nothing_but_says_what_it_would_do(world: World) -> None:
    with capture_logs() as logs:
        async with serving(world, world.settings(dry_run=True)):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=2)
            await world.wait_github(
                lambda s: len([j for j in s["jobs"] if j["state"] == "assigned"]) == 2
            )
            await asyncio.to_thread(world.fleet.wait_idle_ticks, 10)
    assert world.servers() == []
    assert world.github.control.state()["runners"] == []
    assert world.github.control.requests(endpoint="generate_jit_config") == []
    would = [entry for entry in logs if entry["event"] == "dry_run_would_create"]
    assert would
    assert would[-1]["count"] == 2
