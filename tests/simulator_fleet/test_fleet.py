"""The fleet plays the VMs: boot, connect, one job, run-complete, power-off, and failures."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.fleet import FleetConfig
from tests.simulator_fleet.conftest import FAST_FLEET, LABEL, World, bootstrap

JSON = dict[str, Any]


def _job(state: JSON, job_id: int) -> JSON:
    return next(j for j in state["jobs"] if j["id"] == job_id)


def _job_done(job_id: int) -> Any:
    return lambda state: _job(state, job_id)["state"] == "completed"


def test_a_vm_boots_runs_one_job_reports_and_powers_off(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.05)
    world.boot("runner-1")

    connected = world.fleet.wait_for_event("connected", "runner-1")
    world.fleet.wait_for_event("powered-off", "runner-1")

    job = _job(world.github.control.state(), job_id)
    assert (job["state"], job["result"], job["runner_name"]) == (
        "completed",
        "succeeded",
        "runner-1",
    )
    assert world.runner("runner-1") is None  # ephemeral: removed with its job
    assert world.markers("runner-1") == [
        "SCALESET-RUNNER setup-complete runner=runner-1",
        "SCALESET-RUNNER run-complete runner=runner-1 exit=0",
    ]
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
    whats = [e.what for e in world.fleet.events if e.server == "runner-1"]
    assert whats == [
        "seen",
        "booting",
        "setup-complete",
        "connected",
        "job-started",
        "run-complete",
        "powered-off",
    ]
    assert connected.detail.startswith("runner=")
    view = world.fleet.vm("runner-1")
    assert (view.phase, view.job_id, view.exit_code) == ("off", job_id, 0)
    counters = world.fleet.counters
    assert (counters.booted, counters.connected, counters.powered_off, counters.died) == (
        1,
        1,
        1,
        0,
    )


def test_a_failed_job_gives_exit_1(world: World) -> None:
    world.github.control.enqueue_jobs([LABEL], duration=0.05, result="failed")
    world.boot("runner-1")
    event = world.fleet.wait_for_event("run-complete", "runner-1")
    assert event.detail == "exit=1"
    assert "SCALESET-RUNNER run-complete runner=runner-1 exit=1" in world.markers("runner-1")


def test_a_busy_vm_stays_up_until_its_job_ends(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])  # no duration: the test ends it
    world.boot("runner-1")
    world.fleet.wait_for_event("job-started", "runner-1")
    world.fleet.wait_idle_ticks(3)
    assert world.fleet.vm("runner-1").phase == "busy"
    assert world.runner("runner-1")["state"] == "busy"  # type: ignore[index]
    assert world.cloud_control.server("runner-1").status == "ACTIVE"

    world.github.control.finish_job(job_id)
    world.fleet.wait_for_event("powered-off", "runner-1")
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"


def test_an_idle_runner_waits_for_a_job_then_takes_it(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1")
    world.fleet.wait_idle_ticks(2)
    assert world.runner("runner-1")["state"] == "idle"  # type: ignore[index]

    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.05)
    world.github.control.wait_for_state(_job_done(job_id))
    world.fleet.wait_for_event("powered-off", "runner-1")


@pytest.mark.parametrize("github_overrides", [{"auto_take": True}])
@pytest.mark.parametrize(
    "fleet_config", [FleetConfig(**{**FAST_FLEET.__dict__, "take_jobs": False})]
)
def test_with_take_jobs_off_the_github_simulators_auto_take_runs_the_job(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.05)
    world.boot("runner-1")
    world.github.control.wait_for_state(_job_done(job_id))
    world.fleet.wait_for_event("powered-off", "runner-1")
    assert world.fleet.wait_for_event("job-started", "runner-1").detail == f"job={job_id}"


@pytest.mark.parametrize(
    "fleet_config", [FleetConfig(**{**FAST_FLEET.__dict__, "take_jobs": False})]
)
def test_with_take_jobs_off_and_no_auto_take_nobody_takes_the_job(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1")
    world.fleet.wait_idle_ticks(3)
    assert _job(world.github.control.state(), job_id)["state"] == "assigned"


def test_two_vms_two_jobs(world: World) -> None:
    ids = world.github.control.enqueue_jobs([LABEL], count=2, duration=0.05)
    world.boot("runner-1")
    world.boot("runner-2")
    world.fleet.wait_for(lambda: world.fleet.powered_off == 2)
    state = world.github.control.state()
    assert {_job(state, i)["runner_name"] for i in ids} == {"runner-1", "runner-2"}


def test_deleting_a_server_kills_its_idle_runner(world: World) -> None:
    server_id = world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1")
    world.nova.delete(server_id)
    world.fleet.wait_for_event("runner-killed", "runner-1")
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]
    assert world.fleet.died == 1
    assert world.fleet.vm("runner-1").phase == "gone"


def test_deleting_a_server_kills_its_busy_runner_and_fails_the_job(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])
    server_id = world.boot("runner-1")
    world.fleet.wait_for_event("job-started", "runner-1")
    world.nova.delete(server_id)
    state = world.github.control.wait_for_state(_job_done(job_id))
    assert _job(state, job_id)["result"] == "failed"
    world.fleet.wait_for_event("runner-killed", "runner-1")
    assert world.fleet.powered_off == 0


def test_a_server_deleted_while_booting_never_connects(world: World) -> None:
    world.fleet.behave("runner-1", boot_seconds=0.5)
    server_id = world.boot("runner-1")
    world.fleet.wait_for_event("booting", "runner-1")
    world.nova.delete(server_id)
    world.fleet.wait_for_event("deleted", "runner-1")
    world.fleet.wait_for(lambda: world.fleet.pending == 0)  # the boot came due, did nothing
    assert world.fleet.connected == 0
    assert world.runner("runner-1")["jit_used"] is False  # type: ignore[index]


def test_a_server_shut_off_from_outside_kills_its_runner(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1")
    world.cloud_control.set_server_status("runner-1", "SHUTOFF")
    world.fleet.wait_for_event("runner-killed", "runner-1")
    assert world.fleet.vm("runner-1").phase == "down"
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]


def test_a_runner_removed_while_idle_exits_and_the_vm_powers_off(world: World) -> None:
    world.boot("runner-1")
    event = world.fleet.wait_for_event("connected", "runner-1")
    runner_id = int(event.detail.removeprefix("runner="))
    response = world.actions.call("DELETE", f"_apis/distributedtask/pools/1/agents/{runner_id}")
    assert response.status_code == 204, response.text
    world.fleet.wait_for_event("powered-off", "runner-1")
    assert world.fleet.wait_for_event("run-complete", "runner-1").detail == "exit=1"


def test_a_used_jit_config_fails_the_runner_and_the_vm_powers_off(world: World) -> None:
    jit = world.jit("runner-1")
    world.github.control.connect_runner(jit)  # someone else used it first
    world.nova.create("runner-1", bootstrap("runner-1", jit))
    world.fleet.wait_for_event("connect-failed", "runner-1")
    world.fleet.wait_for_event("powered-off", "runner-1")
    assert world.markers("runner-1")[-1] == "SCALESET-RUNNER run-complete runner=runner-1 exit=1"
