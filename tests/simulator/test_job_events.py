"""What the simulated GitHub tells a job's runner about its event: the job's ref and head/base
refs in the state, and a webhook payload shaped like GitHub's for GITHUB_EVENT_PATH, consistent
with the job messages the listener reads."""

from __future__ import annotations

import pytest

from simulator.github.control import ControlAPIError
from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions


def _job(github_sim: GitHubSim, job_id: int) -> dict[str, object]:
    return next(j for j in github_sim.control.state()["jobs"] if j["id"] == job_id)


def test_a_push_by_default_on_the_owners_repository(github_sim: GitHubSim) -> None:
    [job_id] = github_sim.control.enqueue_jobs(["linux"], owner="corp", repository="svc")

    job = _job(github_sim, job_id)
    payload = github_sim.control.job_event(job_id)

    assert (job["event_name"], job["ref"], job["head_ref"], job["base_ref"]) == (
        "push",
        "refs/heads/main",
        "",
        "",
    )
    assert payload["ref"] == "refs/heads/main"
    assert payload["repository"]["full_name"] == "corp/svc"
    assert payload["repository"]["owner"]["login"] == "corp"
    assert len(payload["after"]) == 40


def test_a_forks_pull_request_looks_like_githubs(github_sim: GitHubSim, actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    [job_id] = github_sim.control.enqueue_jobs(
        ["linux"], event_name="pull_request", head_repository="mallory/app", head_ref="patch-1"
    )

    job = _job(github_sim, job_id)
    payload = github_sim.control.job_event(job_id)
    [assigned] = actions.receive(session)

    assert job["ref"] == f"refs/pull/{payload['number']}/merge"
    assert (job["head_ref"], job["base_ref"]) == ("patch-1", "main")
    pull = payload["pull_request"]
    assert pull["head"]["repo"]["full_name"] == "mallory/app"
    assert pull["head"]["repo"]["fork"] is True
    assert pull["head"]["ref"] == "patch-1"
    assert pull["base"]["repo"]["full_name"] == "acme/app"
    assert payload["repository"]["full_name"] == "acme/app"
    # The message the listener reads names the same event and repository.
    assert (assigned["eventName"], assigned["ownerName"], assigned["repositoryName"]) == (
        "pull_request",
        "acme",
        "app",
    )


def test_pull_request_target_runs_on_the_base_branch_and_a_payload_may_be_given(
    github_sim: GitHubSim,
) -> None:
    [target] = github_sim.control.enqueue_jobs(["linux"], event_name="pull_request_target")
    [broken] = github_sim.control.enqueue_jobs(
        ["linux"], event_name="pull_request", event_payload={"action": "opened"}
    )

    assert _job(github_sim, target)["ref"] == "refs/heads/main"
    assert github_sim.control.job_event(target)["pull_request"]["head"]["repo"]["fork"] is False
    assert github_sim.control.job_event(broken) == {"action": "opened"}
    with pytest.raises(ControlAPIError):
        github_sim.control.enqueue_jobs(["linux"], event_payload=["not", "an", "object"])  # type: ignore[arg-type]
