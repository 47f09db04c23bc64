"""The job policy end to end: the listener (a subprocess) serves a scale set whose RUNNERS entry
carries a job_policy; the simulated VMs run the real bootstrap, whose job-started hook refuses a
fork's pull request before any step, while a push on the same set is served. The refused job
fails, its VM powers off like any other and is deleted, and nothing leaks."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.e2e_world import SCALE_SET, E2EWorld
from simulator.github.config import SimulatorConfig
from tests.e2e.guests import GUESTS

POLICY = {
    "events": ["push", "workflow_dispatch", "pull_request"],
    "fork_pull_requests": False,
    "repositories": ["acme/*"],
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[E2EWorld]:
    # The runners report each job's result, as on GitHub (no auto_finish): a refused job's
    # result is the policy's doing.
    github = SimulatorConfig(long_poll_timeout=1.0, session_abandon_timeout=2.0, auto_finish=False)
    with E2EWorld(tmp_path, guest_kind=GUESTS, github_config=github) as running:
        yield running


@pytest.mark.timeout(120)
def test_a_forks_pull_request_is_refused_on_the_vm_and_a_push_is_served(world: E2EWorld) -> None:
    runners = [
        {"name": SCALE_SET, "labels": ["e2e"], "max_runners": 2, "job_policy": POLICY},
    ]
    listener = world.start_listener(RUNNERS=json.dumps(runners))
    listener.log.wait_event("session_created", timeout=30)
    control = world.github.control

    [push] = control.enqueue_jobs([SCALE_SET], duration=0.5)
    [fork] = control.enqueue_jobs(
        [SCALE_SET], event_name="pull_request", head_repository="mallory/app", duration=0.5
    )
    world.queued.update({push: "succeeded", fork: "failed"})

    world.wait_served(timeout=60)
    world.wait_clean(timeout=30)

    jobs = {job["id"]: job for job in world.jobs()}
    assert (jobs[push]["result"], jobs[fork]["result"]) == ("succeeded", "failed")
    logs = "".join(
        path.read_text()
        for path in world.guests.root.glob("vms/*/cloud-init-output.log")  # type: ignore[attr-defined]
    )
    assert (
        "scaleset-listener job policy: a pull request from the fork mallory/app is not allowed "
        f"on scale set {SCALE_SET}"
    ) in logs
    assert "scaleset-listener job policy: push on acme/app refs/heads/main is allowed" in logs
    # Both VMs went the ordinary way: the runner's exit, power-off, deletion.
    assert len(world.cloud_control.requests(endpoint="compute.servers.delete")) == 2
    assert listener.stop(timeout=15) == 0
    assert world.violations() == []
