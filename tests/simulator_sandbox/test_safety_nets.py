"""The bootstrap's safety nets in sandbox VMs and light VMs: the real rendered script, the stub
runner running its job hooks from the runner's .env as the real one does, short timers."""

from __future__ import annotations

from tests.simulator_sandbox.conftest import LABEL, World, leftovers


def _job(world: World, job_id: int) -> dict[str, object]:
    return next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)


def test_an_idle_runner_powers_its_vm_off_after_the_idle_timer(world: World) -> None:
    world.boot("runner-1", vm_idle_shutdown=2, vm_lifetime_shutdown=3600)
    world.fleet.wait_for_event("connected", "runner-1", timeout=30)

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

    assert world.markers("runner-1") == [
        "SCALESET-RUNNER setup-complete runner=runner-1",
        "SCALESET-RUNNER safety-poweroff runner=runner-1 reason=idle",
    ]
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
    assert world.fleet.counters.jobs_started == 0
    # Its runner went down with the VM; the registration stays until the listener's sweep
    # removes it with the SHUTOFF server.
    world.fleet.wait_for_event("runner-offline", "runner-1", timeout=10)
    assert world.runner("runner-1") is not None
    assert leftovers(world.fleet, "runner-1") == {}


def test_a_busy_vm_is_left_alone_by_the_idle_net_and_powered_off_past_its_lifetime(
    world: World,
) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])  # no duration: it runs until ended
    world.boot("runner-1", vm_idle_shutdown=3, vm_lifetime_shutdown=10)
    world.fleet.wait_for_event("job-started", "runner-1", timeout=30)

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

    # The idle net had several chances while the job ran; only the lifetime net fired.
    assert world.markers("runner-1") == [
        "SCALESET-RUNNER setup-complete runner=runner-1",
        "SCALESET-RUNNER safety-poweroff runner=runner-1 reason=lifetime",
    ]
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
    # The runner learnt of its job through the hook the bootstrap named in its .env.
    assert "Set up runner: running " in world.fleet.output_log("runner-1")
    assert "job-started.sh" in world.fleet.output_log("runner-1")
    # The VM went down under the running job: its runner dies, the job fails.
    world.fleet.wait_for_event("runner-offline", "runner-1", timeout=10)
    assert _job(world, job_id)["state"] == "completed"
    assert leftovers(world.fleet, "runner-1") == {}


def test_a_job_that_ends_normally_leaves_the_nets_silent(world: World) -> None:
    world.github.control.enqueue_jobs([LABEL], duration=0.2)
    world.boot("runner-1", vm_idle_shutdown=60, vm_lifetime_shutdown=3600)

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

    assert world.markers("runner-1") == [
        "SCALESET-RUNNER setup-complete runner=runner-1",
        "SCALESET-RUNNER run-complete runner=runner-1 exit=0",
    ]
    output = world.fleet.output_log("runner-1")
    assert "Set up runner: running " in output
    assert "Complete runner: running " in output
    assert leftovers(world.fleet, "runner-1") == {}
