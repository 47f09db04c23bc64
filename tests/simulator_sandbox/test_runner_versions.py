"""The runner version through the real bootstrap: the newest release downloaded from the GitHub
simulator (what a listener on GITHUB_RUNNER_VERSION=latest hands its VMs), and a pinned runner
that GitHub has deprecated, refused when it connects."""

from __future__ import annotations

from typing import Any

import pytest

from tests.simulator_sandbox.conftest import LABEL, PINNED_RUNNER, World


def test_the_newest_release_comes_from_the_github_simulator_and_serves_a_job(
    world: World,
) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])  # no duration: the test ends it
    world.boot_latest("runner-1")

    world.fleet.wait_for_event("job-started", "runner-1", timeout=30)
    runner = world.runner("runner-1")
    assert runner is not None
    assert (runner["state"], runner["version"]) == ("busy", "2.331.0")
    world.github.control.finish_job(job_id)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)

    [download] = world.github.control.requests(endpoint="runner_release_download")
    assert download["path"] == (
        "/actions/runner/releases/download/v2.331.0/actions-runner-linux-x64-2.331.0.tar.gz"
    )
    assert download["status"] == 200
    assert world.fleet.downloads == []  # the mirror was not used
    assert world.fleet.vm("runner-1").exit_code == 0


class TestADeprecatedRunner:
    @pytest.fixture
    def github_overrides(self) -> dict[str, Any]:
        # 2.331.0 came out 31 days ago: the pinned 2.330.0 gets no messages any more.
        return {"runner_version_age_days": 31}

    def test_is_refused_logs_why_and_the_vm_powers_off(self, world: World) -> None:
        world.github.control.enqueue_jobs([LABEL])
        world.boot("runner-1")

        event = world.fleet.wait_for_event("run-complete", "runner-1", timeout=30)
        world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)

        assert event.detail == "exit=1"
        assert world.fleet.counters.connected == 0
        message = f"Runner version v{PINNED_RUNNER} is deprecated and cannot receive messages."
        assert f"Runner.Listener: An error occurred: {message}" in world.fleet.output_log(
            "runner-1"
        )
        runner = world.runner("runner-1")
        assert runner is not None
        assert (runner["state"], runner["version"], runner["refused"]) == (
            "offline",
            PINNED_RUNNER,
            message,
        )
        [refused] = world.github.control.events(type="runner_refused")
        assert (refused["name"], refused["reason"]) == ("runner-1", "deprecated")
        [job] = world.github.control.state()["jobs"]
        assert (job["state"], job["runner_id"]) == ("assigned", None)

        # The release the downloads endpoint offers is accepted and takes the job.
        world.boot_latest("runner-2")
        world.fleet.wait_for_event("job-started", "runner-2", timeout=30)
        [job] = world.github.control.state()["jobs"]
        assert (job["state"], job["runner_name"]) == ("running", "runner-2")
