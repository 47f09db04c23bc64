"""The scaler end to end: simulated GitHub, simulated cloud, a fleet playing the VMs, real sockets.

Every test runs the real service (listener, VMScaler, OpenStack provisioner, Actions client) and
checks the outcome in the two simulators: which VMs existed, which jobs ran, what is left over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from provisioners.base import ServerSpec
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, PersonalAccessToken
from scaleset_listener.github_urls import parse_github_url
from scaleset_listener.health import POLL_STALE_AFTER, ScaleSetHealth, readiness
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.service import run_service
from scaleset_listener.usage import read_records
from scaleset_listener.vm_scaler.ledger import Phase
from scaleset_listener.vm_scaler.loop import VMScaler
from scaleset_listener.wiring import openstack_config
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


async def test_each_job_leaves_one_usage_record_in_order_once_its_vm_is_gone(
    world: World, tmp_path: Path
) -> None:
    usage = tmp_path / "usage.jsonl"
    with capture_logs() as logs:
        async with serving(world, world.settings(usage_log_path=usage)):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=3, duration=0.3)
            state = await world.wait_github(lambda s: all_done(s, 3), timeout=40)
            await world.wait_no_servers()
    records, unreadable = read_records(usage)
    assert unreadable == []
    assert sorted(r.runner for r in records) == sorted(j["runner_name"] for j in state["jobs"])
    deleted = {
        request.path.rstrip("/").rsplit("/", 1)[-1]
        for request in world.control.requests(endpoint="compute.servers.delete")
    }
    assert len({record.server_id for record in records}) == len(records)
    for record in records:
        assert (record.repository, record.scale_set, record.result) == (
            "acme/app",
            "linux",
            "succeeded",
        )
        assert record.flavor == world.cloud.flavor
        assert record.server_id in deleted
        requested, active = record.vm_requested_at, record.vm_active_at
        online, deleted_at = record.runner_online_at, record.vm_deleted_at
        assigned, started = record.assigned_at, record.job_started_at
        finished = record.job_finished_at
        assert requested is not None
        assert active is not None
        assert online is not None
        assert assigned is not None
        assert started is not None
        assert finished is not None
        # Our clock's steps (the runner may be seen online before the VM is seen ACTIVE)...
        assert requested <= active <= deleted_at
        assert requested <= online <= deleted_at
        # ...and GitHub's, before the VM went.
        assert assigned <= started <= finished <= deleted_at
        lived = (deleted_at - requested).total_seconds()
        assert abs(record.vm_seconds - lived) < 1.0
    # The same records as log events (the job's event name under `event_name`).
    logged = [entry for entry in logs if entry["event"] == "job_usage"]
    assert sorted(e["runner"] for e in logged) == sorted(r.runner for r in records)


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
            scaler = await wait_scaler(world)
            await world.wait_fleet(lambda: len(scaler.owned()) == 2)
            await asyncio.to_thread(world.fleet.wait_idle_ticks, 10)
            # The would-be runners count as come up: the decisions go on as they would.
            assert {runner.phase for runner in scaler.owned()} == {Phase.IDLE}
    assert world.servers() == []
    assert world.github.control.state()["runners"] == []
    assert world.github.control.requests(endpoint="generate_jit_config") == []
    would = [entry for entry in logs if entry["event"] == "dry_run_would_create"]
    # One line per VM it would create, and no churn after them.
    assert len({entry["runner_name"] for entry in would}) == len(would) == 2
    assert len([e for e in logs if e["event"] == "dry_run_would_register"]) == 2


async def test_a_busy_runner_survives_scale_down_and_sweeps(world: World) -> None:
    async with serving(world, world.settings(vm_tracker_interval=0.2)):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        (job_id,) = world.github.control.enqueue_jobs(["linux"], count=1)
        await world.wait_event("job-started")
        scaler = world.scalers["linux"]
        # Statistics from before the job existed: demand 0 while the runner is busy.
        world.github.control.add_statistics_fault(lag=50)
        world.github.control.enqueue_jobs(["other-label"], count=1)
        await scaler_passes(world, 20)
        (server,) = world.servers()
        assert server["status"] == "ACTIVE"
        assert scaler.counters.retired_idle == 0
        assert scaler.counters.sweep_deleted == 0
        world.github.control.clear_statistics_faults()
        world.github.control.finish_job(job_id)
        await world.wait_no_servers()


async def scaler_passes(world: World, ticks: int) -> None:
    """Let the world go on for a while without sleeping: the fleet's ticks are the clock."""
    await asyncio.to_thread(world.fleet.wait_idle_ticks, ticks)


async def test_a_runner_whose_vm_stays_up_is_deleted_after_the_deregistration_timeout(
    world: World,
) -> None:
    # "wedge": the runner dies once its job runs and the VM stays up without a word.
    world.fleet.next_boots_fail(1, "wedge")
    async with serving(world, world.settings()):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=1)
        await world.wait_github(lambda s: all_done(s, 1))
        await world.wait_no_servers()
    assert world.github.control.state()["runners"] == []


async def test_jobs_are_matched_to_runners_by_name_not_by_the_job_that_spawned_them(
    world: World,
) -> None:
    async with serving(world, world.settings()):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=3, duration=0.2)
        state = await world.wait_github(lambda s: all_done(s, 3), timeout=30)
        await world.wait_no_servers()
        scaler = world.scalers["linux"]
    # Whichever runner took whichever job, each VM was deleted after its own runner's job.
    assert len({job["runner_name"] for job in state["jobs"]}) == 3
    assert scaler.counters.deleted == 3
    assert scaler.runners == {}


async def test_reassigned_jobs_do_not_leak_or_double_provision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    github = {"assign_timeout": 0.3, "max_reassignments": 3, "reassign_base_delay": 0.05}
    with simulated_world(tmp_path, monkeypatch, github, FleetConfig(boot_seconds=0.4)) as world:
        async with serving(world, world.settings()):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
            state = await world.wait_github(
                lambda s: all_done(s, 1) and s["jobs"][0]["result"] == "succeeded", timeout=40
            )
            await world.wait_no_servers()
        assert state["jobs"][0]["withdrawals"] >= 1
        assert world.max_concurrent_servers() <= 2
        assert world.github.control.state()["runners"] == []


async def test_two_scale_sets_are_served_independently(world: World) -> None:
    runners = [{"name": "linux", "max_runners": 2}, {"name": "gpu", "max_runners": 1}]
    async with serving(world, world.settings(runners=runners)):
        await world.wait_github(lambda s: len([x for x in s["sessions"] if not x["ghost"]]) == 2)
        world.github.control.enqueue_jobs(["linux"], count=2, duration=0.1)
        world.github.control.enqueue_jobs(["gpu"], count=1, duration=0.1)
        state = await world.wait_github(lambda s: all_done(s, 3), timeout=30)
        await world.wait_no_servers()
    by_set = {job["runner_name"].split("-")[0] for job in state["jobs"]}
    assert by_set == {"linux", "gpu"}


async def test_one_failing_scale_set_does_not_stop_the_others(world: World) -> None:
    runners = [{"name": "linux"}, {"name": "broken", "runner_group": "no-such-group"}]
    with capture_logs() as logs:
        async with serving(world, world.settings(runners=runners)) as service:
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
            await world.wait_github(lambda s: all_done(s, 1), timeout=30)
            assert not service.done()
    assert service.result() == 1
    failed = [entry for entry in logs if entry["event"] == "scale_set_failed"]
    assert [entry["scale_set"] for entry in failed] == ["broken"]


async def test_a_misconfigured_image_is_logged_once_without_a_hot_loop(world: World) -> None:
    with capture_logs() as logs:
        async with serving(world, world.settings(openstack_image="no-such-image")):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=2)
            scaler = await wait_scaler(world)
            await world.wait_fleet(lambda: scaler.permanent_error is not None)
            await scaler_passes(world, 20)
            assert not scaler.ready
    misconfigured = [entry for entry in logs if entry["event"] == "provisioning_misconfigured"]
    assert len(misconfigured) == 1
    assert "no-such-image" in misconfigured[0]["error"]
    # Two runners wanted, one attempt each at most: the backoff holds off the rest.
    assert len(world.github.control.requests(endpoint="generate_jit_config")) <= 2
    assert world.github.control.state()["runners"] == []


async def wait_scaler(world: World) -> VMScaler:
    await world.wait_fleet(lambda: "linux" in world.scalers)
    return world.scalers["linux"]


async def test_the_sweep_deletes_an_orphan_vm_and_removes_a_registration_without_vm(
    world: World,
) -> None:
    async with serving(world, world.settings(vm_tracker_interval=0.2, boot_timeout=0.3)):
        state = await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        scaler = await wait_scaler(world)
        scale_set_id = state["scale_sets"][0]["id"]
        # A registration nobody has a VM for (a crashed listener's).
        async with admin_client_for(world) as client:
            await client.generate_jit_config(scale_set_id, "linux-orphanreg")
        # A VM of ours whose runner GitHub never heard of (its registration was lost).
        await create_orphan_vm(world, scale_set_id, "linux-orphanvm")
        await world.wait_fleet(lambda: not world.servers(), timeout=20)
        await world.wait_github(lambda s: s["runners"] == [], timeout=20)
        # The scaler counts the sweep's removal once the pass is applied.
        await world.wait_fleet(lambda: scaler.counters.sweep_deleted == 1, timeout=20)


@contextlib.asynccontextmanager
async def admin_client_for(world: World) -> AsyncIterator[ActionsClient]:
    http = HttpChannel(RetryPolicy(max_attempts=2, max_wait=0.01))
    target = parse_github_url(f"{world.github.base_url}/acme")
    auth = ActionsAdminAuth(target, PersonalAccessToken(world.github.config.pats[0]), http)
    try:
        yield ActionsClient(auth, http)
    finally:
        await http.aclose()


async def create_orphan_vm(world: World, scale_set_id: int, name: str) -> None:
    settings = world.settings()
    ownership = Ownership(settings.effective_listener_instance_id, scale_set_id)
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(settings), poll_interval=0.05)
    )
    try:
        await provisioner.create(
            ServerSpec(
                name=name,
                user_data=b"#!/bin/bash\necho not our bootstrap\n",
                tags=ownership.tags(),
                metadata=ownership_metadata(name, "linux", datetime.now(UTC) - timedelta(hours=1)),
            )
        )
    finally:
        await provisioner.close()


async def test_failed_vms_up_to_keep_failed_vms_are_kept_tagged_and_not_counted(
    world: World,
) -> None:
    world.fleet.next_boots_fail(2, "hang")
    settings = world.settings(boot_timeout=0.5, keep_failed_vms=1)
    async with serving(world, settings):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=1, duration=0.1)
        await world.wait_github(lambda s: all_done(s, 1), timeout=30)
        await world.wait_fleet(lambda: len(world.servers()) == 1, timeout=20)
        scaler = world.scalers["linux"]
        # The two hung boots, and on a loaded machine perhaps a slow one past 0.5 s: only one
        # of them is kept whatever their number.
        assert scaler.counters.boot_timeouts >= 2
    (kept,) = world.servers()
    assert "scaleset-failed" in kept["tags"]
    assert world.github.control.state()["runners"] == []


async def test_a_kept_failed_vm_is_dated_and_gives_its_floating_ip_back(world: World) -> None:
    # Two pool addresses: a kept VM holding one would leave one VM for the two jobs.
    pool = ",".join(world.cloud.floating_ip_pool[:2])
    world.fleet.next_boots_fail(1, "hang")
    settings = world.settings(
        boot_timeout=0.5,
        keep_failed_vms=1,
        openstack_floating_ips=pool,
        runners=[{"name": "linux", "max_runners": 2}],
    )
    async with serving(world, settings):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=2, duration=0.1)
        await world.wait_github(lambda s: all_done(s, 2), timeout=40)
        await world.wait_fleet(lambda: len(world.servers()) == 1, timeout=20)
    (kept,) = world.servers()
    assert "scaleset-failed" in kept["tags"]
    assert kept["floating_ips"] == []
    assert "scaleset-failed-at" in kept["metadata"]


async def test_past_max_runner_lifetime_even_a_busy_runner_is_deleted_with_a_warning(
    world: World,
) -> None:
    # The scaler's own deadline, not the sweep's: the sweep also deletes a VM past its lifetime,
    # judged by the creation time in its metadata (whole seconds, so up to a second early).
    settings = world.settings(max_runner_lifetime=1.5, vm_tracker_interval=3600)
    with capture_logs() as logs:
        async with serving(world, settings):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=1)
            await world.wait_event("job-started")
            await world.wait_event("runner-killed", timeout=20)
            scaler = world.scalers["linux"]
            assert scaler.counters.lifetime_exceeded >= 1
    assert any(entry["event"] == "runner_lifetime_exceeded" for entry in logs)


async def test_the_capacity_header_is_the_free_floating_ips_when_a_pool_is_set(
    world: World,
) -> None:
    pool = ",".join(world.cloud.floating_ip_pool[:2])
    settings = world.settings(
        openstack_floating_ips=pool, runners=[{"name": "linux", "max_runners": 5}]
    )
    async with serving(world, settings):
        await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
        world.github.control.enqueue_jobs(["linux"], count=3, duration=0.2)
        state = await world.wait_github(lambda s: all_done(s, 3), timeout=40)
        await world.wait_no_servers()
    assert {job["result"] for job in state["jobs"]} == {"succeeded"}
    # Two addresses: never more than two VMs, and GitHub was told so.
    assert world.max_concurrent_servers() <= 2
    history = world.github.control.state()["scale_sets"][0]["max_capacity_history"]
    assert 2 in history
    assert max(value for value in history if value is not None) <= 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_readiness_reports_a_misconfigured_scale_set_and_health_stays_up(
    world: World,
) -> None:
    addr = f"127.0.0.1:{free_port()}"
    settings = world.settings(
        enable_metrics=True,
        metrics_addr=addr,
        runners=[{"name": "linux"}, {"name": "gpu", "image": "no-such-image"}],
    )
    async with serving(world, settings), httpx.AsyncClient(base_url=f"http://{addr}") as http:
        await world.wait_github(lambda s: len([x for x in s["sessions"] if not x["ghost"]]) == 2)
        world.github.control.enqueue_jobs(["gpu"], count=1)
        await world.wait_fleet(lambda: "gpu" in world.scalers)
        await world.wait_fleet(lambda: world.scalers["gpu"].permanent_error is not None)
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        (reason,) = ready.json()["reasons"]
        assert reason.startswith("gpu: ")
        assert "no-such-image" in reason


async def test_readiness_reports_a_pinned_runner_github_will_soon_refuse_once(
    world: World,
) -> None:
    world.github.control.announce_runner_release("2.332.0", age_days=27)
    addr = f"127.0.0.1:{free_port()}"
    settings = world.settings(
        enable_metrics=True,
        metrics_addr=addr,
        github_runner_version="2.331.0",
        runners=[{"name": "linux"}, {"name": "gpu"}],
    )
    async with serving(world, settings), httpx.AsyncClient(base_url=f"http://{addr}") as http:
        await world.wait_github(lambda s: len([x for x in s["sessions"] if not x["ghost"]]) == 2)
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    stale = (
        "runner 2.331.0 (GITHUB_RUNNER_VERSION) was superseded 27 days ago (newest 2.332.0); "
        "GitHub refuses runners 30 days after a newer release"
    )
    reasons = ready.json()["reasons"]
    # Said once for the service, not per scale set; the rest can only be polls not answered yet.
    assert reasons[0] == stale
    assert all(reason.startswith(("linux: no ", "gpu: no ")) for reason in reasons[1:])


async def test_latest_runner_that_cannot_be_resolved_stops_the_start_with_exit_1(
    world: World,
) -> None:
    world.github.control.add_fault("runner_downloads", status=403, times=None, type_name="")
    with capture_logs() as logs:
        async with asyncio.timeout(30):
            code = await run_service(world.settings(), asyncio.Event(), handle_signals=False)
    assert code == 1
    (failed,) = [entry for entry in logs if entry["event"] == "service_failed"]
    assert failed["error_type"] == "RunnerVersionUnavailable"
    assert "GITHUB_RUNNER_VERSION=latest" in failed["error"]
    # Nothing was started: no session, no server.
    assert world.github.control.requests(endpoint="create_session") == []
    assert world.servers() == []


def test_readiness_needs_a_recent_poll_from_every_scale_set() -> None:
    fresh = ScaleSetHealth("a", lambda: 100.0, lambda: None)
    never = ScaleSetHealth("b", lambda: None, lambda: None)
    stale = ScaleSetHealth("c", lambda: 100.0 - POLL_STALE_AFTER - 1, lambda: None)
    assert readiness([fresh], now=130.0) == []
    assert readiness([never], now=130.0) == ["b: no message-queue poll answered yet"]
    assert readiness([stale], now=100.0) == ["c: last poll answered 121 s ago"]


async def test_a_refused_retirement_keeps_the_runner_until_github_says_it_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with simulated_world(tmp_path, monkeypatch, fleet=FleetConfig(boot_seconds=0.6)) as world:
        # The first removal is refused as if the runner had just taken a job.
        world.github.control.add_fault(
            "remove_runner",
            status=400,
            times=1,
            type_name="GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub",
            message="job still running",
        )
        with capture_logs() as logs:
            async with serving(world, world.settings(vm_tracker_interval=0.3)):
                await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
                (job_id,) = world.github.control.enqueue_jobs(["linux"], count=1)
                await world.wait_event("seen")
                world.github.control.cancel_job(job_id)
                await world.wait_event("connected")
                await world.wait_no_servers(timeout=20)
                scaler = world.scalers["linux"]
                assert scaler.counters.retired_idle == 1
        events = [entry["event"] for entry in logs]
        assert "retire_skipped_runner_took_a_job" in events
        assert world.github.control.state()["runners"] == []


async def test_the_instance_quota_caps_the_runners_and_the_header_without_a_quota_error(
    world: World,
) -> None:
    """Quota 2, max_runners 4, 4 jobs: two VMs at a time, GitHub told 2, Nova never refuses,
    and each VM that goes makes room for the next job (docs/architecture.md#capacity)."""
    world.control.set_quotas(instances=2)
    # No timed read during the test: the capacity between reads is the listener's own count.
    settings = world.settings(
        runners=[{"name": "linux", "max_runners": 4}], capacity_refresh_interval=3600.0
    )
    with capture_logs() as logs:
        async with serving(world, settings):
            await world.wait_github(lambda s: any(not x["ghost"] for x in s["sessions"]))
            world.github.control.enqueue_jobs(["linux"], count=4, duration=0.5)
            state = await world.wait_github(lambda s: all_done(s, 4), timeout=60)
            await world.wait_no_servers()
    assert {job["result"] for job in state["jobs"]} == {"succeeded"}
    assert world.fleet.counters.seen == 4
    assert world.max_concurrent_servers() == 2
    history = world.github.control.state()["scale_sets"][0]["max_capacity_history"]
    # 2 from the first poll on, never more; less while finished VMs still hold the quota.
    assert history[0] == 2
    assert max(history) == 2
    creates = world.control.requests("compute.servers.create")
    assert [request.status for request in creates] == [202] * 4
    # One look at Nova's limits (before the first poll) for the whole run.
    assert len(world.control.requests("compute.limits")) == 1
    assert not [entry for entry in logs if entry["event"] == "runner_create_failed"]


async def test_two_scale_sets_share_the_projects_headroom_and_nova_never_refuses(
    world: World,
) -> None:
    """Quota 3 for two sets of max_runners 3: never more than 3 VMs in all, every job served,
    and every create Nova saw accepted (a set that lost the last slot to the other was refused
    before sending; docs/architecture.md#capacity)."""
    world.control.set_quotas(instances=3)
    settings = world.settings(
        runners=[
            {"name": "linux", "max_runners": 3},
            {"name": "gpu", "max_runners": 3, "flavor": "m1.large"},
        ],
        capacity_refresh_interval=3600.0,
    )
    with capture_logs() as logs:
        async with serving(world, settings):
            await world.wait_github(
                lambda s: sum(not x["ghost"] for x in s["sessions"]) == 2, timeout=20
            )
            world.github.control.enqueue_jobs(["linux"], count=3, duration=0.4)
            world.github.control.enqueue_jobs(["gpu"], count=3, duration=0.4)
            state = await world.wait_github(lambda s: all_done(s, 6), timeout=60)
            await world.wait_no_servers()
    assert {job["result"] for job in state["jobs"]} == {"succeeded"}
    assert world.max_concurrent_servers() <= 3
    creates = world.control.requests("compute.servers.create")
    assert [request.status for request in creates] == [202] * 6
    for scale_set in world.github.control.state()["scale_sets"]:
        assert max(scale_set["max_capacity_history"]) <= 3
    # Creates that lost the race for the last slot were refused here, never sent.
    failures = [entry for entry in logs if entry["event"] == "runner_create_failed"]
    assert all("not sent" in entry["error"] for entry in failures)
