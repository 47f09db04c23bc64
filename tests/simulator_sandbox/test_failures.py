"""Failure behaviours of sandbox VMs and light VMs, each through the real bootstrap's own
paths."""

from __future__ import annotations

from pathlib import Path

from tests.simulator_sandbox.conftest import LABEL, World, leftovers


def test_setup_fail_takes_the_bootstraps_failure_path_and_powers_off(world: World) -> None:
    world.fleet.behave("runner-1", "setup_fail")
    world.boot("runner-1")

    event = world.fleet.wait_for_event("setup-failed", "runner-1", timeout=30)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)

    assert event.detail.startswith("the download of http://127.0.0.1:")
    assert event.detail.endswith(" failed")
    [marker] = world.markers("runner-1")
    assert marker.startswith("SCALESET-RUNNER setup-failed runner=runner-1 reason=the download of")
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
    assert world.fleet.counters.connected == 0
    assert world.runner("runner-1")["jit_used"] is False  # type: ignore[index]


def test_a_crashing_runner_fails_its_job_and_the_vm_powers_off_with_exit_1(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])
    world.fleet.next_boots_fail(1, "crash")
    world.boot("runner-1")

    world.fleet.wait_for_event("runner-offline", "runner-1", timeout=30)
    event = world.fleet.wait_for_event("run-complete", "runner-1", timeout=10)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)

    assert event.detail == "exit=1"
    job = next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)
    assert (job["state"], job["result"]) == ("completed", "failed")
    assert world.fleet.counters.died == 1


def test_a_wedged_runner_goes_offline_and_the_vm_stays_up_silent(world: World) -> None:
    world.github.control.enqueue_jobs([LABEL])
    world.fleet.behave("runner-1", "wedge")
    world.boot("runner-1")

    world.fleet.wait_for_event("runner-offline", "runner-1", timeout=30)
    world.fleet.wait_idle_ticks(5)

    assert world.fleet.vm("runner-1").phase == "dead"
    assert world.markers("runner-1") == ["SCALESET-RUNNER setup-complete runner=runner-1"]
    names = {
        Path(f"/proc/{pid}/comm").read_text().strip()
        for pid in world.fleet.vm_processes("runner-1")
    }
    assert "Runner.Listener" in names
    assert world.cloud_control.server("runner-1").status == "ACTIVE"
    assert world.fleet.vm_processes("runner-1")


def test_a_hung_boot_has_sshd_but_no_setup_and_no_runner(world: World) -> None:
    world.fleet.behave("runner-1", "hang")
    world.boot("runner-1")

    world.fleet.wait_for_event("sshd-started", "runner-1", timeout=30)
    world.fleet.wait_idle_ticks(5)

    assert world.fleet.vm("runner-1").phase == "hung"
    assert world.markers("runner-1") == []
    assert world.fleet.counters.hung == 1
    assert world.runner("runner-1")["jit_used"] is False  # type: ignore[index]


def test_crash_runner_kills_the_listener_in_the_vm(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1", timeout=30)

    world.fleet.crash_runner("runner-1")

    event = world.fleet.wait_for_event("run-complete", "runner-1", timeout=10)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)
    assert event.detail == "exit=137"  # run.sh reports its killed child
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]
    assert leftovers(world.fleet, "runner-1") == {}


def test_a_slow_boot_starts_the_vm_later(world: World) -> None:
    world.fleet.next_boots_slow(1, 0.5)
    world.boot("runner-1")
    booting = world.fleet.wait_for_event("booting", "runner-1", timeout=30)
    started = world.fleet.wait_for_event("vm-started", "runner-1", timeout=10)
    assert started.time - booting.time >= 0.5


def test_a_job_that_asks_its_runner_to_crash_fails_and_the_vm_powers_off(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=5, runner_behaviour="crash")
    world.boot("runner-1")

    event = world.fleet.wait_for_event("run-complete", "runner-1", timeout=30)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)

    assert event.detail == "exit=1"
    job = next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)
    assert (job["state"], job["result"]) == ("completed", "failed")
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]


def test_a_job_that_asks_its_runner_to_hang_stays_running_on_a_live_vm(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.05, runner_behaviour="hang")
    world.boot("runner-1")

    world.fleet.wait_for_event("job-started", "runner-1", timeout=30)
    world.fleet.wait_idle_ticks(10)  # well past the job's 0.05 s duration

    job = next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)
    assert job["state"] == "running"  # auto_finish leaves a hanging job alone
    assert world.runner("runner-1")["state"] == "busy"  # type: ignore[index]
    assert world.cloud_control.server("runner-1").status == "ACTIVE"
    assert world.markers("runner-1") == ["SCALESET-RUNNER setup-complete runner=runner-1"]
    names = {
        Path(f"/proc/{pid}/comm").read_text().strip()
        for pid in world.fleet.vm_processes("runner-1")
    }
    assert "Runner.Listener" in names
