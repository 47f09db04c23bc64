"""The end-to-end judge itself: it must see what it is there to see."""

import pytest

from simulator.e2e_world import E2EWorld, count_kinds


@pytest.mark.timeout(60)
def test_the_judge_sees_a_killed_busy_runner_and_what_a_dead_listener_leaves(
    world: E2EWorld,
) -> None:
    listener = world.start_listener()
    listener.log.wait_event("session_created", timeout=30)
    (job_id,) = world.queue_jobs(1, duration=30.0)
    world.wait_github(lambda state: any(j["state"] == "running" for j in state["jobs"]), timeout=30)
    listener.kill()
    (server,) = world.servers()
    # The VM breaks under its busy runner: the runner dies, its job fails.
    world.cloud_control.set_server_status(server["id"], "ERROR")
    world.wait_github(
        lambda state: all(j["state"] == "completed" for j in state["jobs"]), timeout=30
    )

    kinds = count_kinds(world.violations())

    assert kinds["busy_runner_killed"] == 1
    assert kinds["leaked_vm"] == 1
    assert kinds["leaked_registration"] == 1
    assert "unserved_job" not in kinds
    assert world.queued == {job_id: "succeeded"}
