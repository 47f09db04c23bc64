"""A sandbox VM boots the real bootstrap: runner download, one job, markers, power-off."""

from __future__ import annotations

from tests.simulator_sandbox.conftest import LABEL, World, leftovers


def test_a_vm_runs_the_real_bootstrap_one_job_and_powers_off(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.2)
    world.boot("runner-1")

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

    print(world.fleet.events)
    print(world.fleet.output_log("runner-1"))
    job = next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)
    assert (job["state"], job["result"], job["runner_name"]) == (
        "completed",
        "succeeded",
        "runner-1",
    )
    assert world.markers("runner-1") == [
        "SCALESET-RUNNER setup-complete runner=runner-1",
        "SCALESET-RUNNER run-complete runner=runner-1 exit=0",
    ]
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
