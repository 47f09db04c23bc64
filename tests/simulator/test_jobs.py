"""The job engine: assignment, runners, completion, the GHES acquire flow, reassignment."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.github.control import ControlAPIError
from tests.conftest import GitHubSim, GitHubSimFactory
from tests.simulator.helpers import Actions, Session

SETS = "_apis/runtime/runnerscalesets"


def _types(items: list[dict[str, Any]]) -> list[str]:
    return [m["messageType"] for m in items]


def _ready(actions: Actions) -> tuple[int, Session]:
    set_id = actions.create_scale_set("linux")
    return set_id, actions.create_session(set_id)


def test_a_job_goes_assigned_started_completed_and_its_runner_is_removed(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id, session = _ready(actions)
    [job] = github_sim.control.enqueue_jobs(
        ["linux"], repository="svc", owner="corp", display_name="unit tests", event_name="push"
    )
    [assigned] = actions.receive(session)
    assert assigned["messageType"] == "JobAssigned"
    assert assigned["runnerRequestId"] == job
    assert assigned["jobId"]
    assert assigned["repositoryName"] == "svc"
    assert assigned["ownerName"] == "corp"
    assert assigned["jobWorkflowRef"] == "corp/svc/.github/workflows/ci.yml@refs/heads/main"
    assert assigned["jobDisplayName"] == "unit tests"
    assert assigned["workflowRunId"] > 0
    assert assigned["requestLabels"] == ["linux"]
    assert assigned["scaleSetAssignTime"] != "0001-01-01T00:00:00Z"
    assert assigned["runnerAssignTime"] == "0001-01-01T00:00:00Z"

    runner_id = actions.start_runner(set_id, "linux-r1")
    github_sim.control.runner_take_job(runner_id)
    [started] = actions.receive(session)
    assert started["messageType"] == "JobStarted"
    assert (started["runnerId"], started["runnerName"]) == (runner_id, "linux-r1")
    assert started["runnerAssignTime"] != "0001-01-01T00:00:00Z"

    github_sim.control.finish_job(job, "failed")
    [completed] = actions.receive(session)
    assert completed["messageType"] == "JobCompleted"
    assert completed["result"] == "failed"
    assert (completed["runnerId"], completed["runnerName"]) == (runner_id, "linux-r1")
    state = github_sim.control.state()
    assert state["runners"] == []
    assert state["jobs"][0]["state"] == "completed"


def test_a_jit_config_connects_a_runner_exactly_once(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id, _ = _ready(actions)
    jit = actions.generate_jit(set_id, "once").json()["encodedJITConfig"]
    assert github_sim.control.connect_runner(jit)["state"] == "idle"
    with pytest.raises(Exception, match="already used"):
        github_sim.control.connect_runner(jit)


def test_cancel_before_any_runner_completes_without_a_runner(
    github_sim: GitHubSim, actions: Actions
) -> None:
    _, session = _ready(actions)
    [job] = github_sim.control.enqueue_jobs(["linux"])
    github_sim.control.cancel_job(job)
    items = actions.receive(session)
    assert _types(items) == ["JobAssigned", "JobCompleted"]
    assert items[1]["result"] == "canceled"
    assert (items[1]["runnerId"], items[1]["runnerName"]) == (0, "")


def test_runner_death_fails_its_job_and_leaves_it_registered_offline(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id, session = _ready(actions)
    [job] = github_sim.control.enqueue_jobs(["linux"])
    runner_id = actions.start_runner(set_id, "fragile")
    github_sim.control.runner_take_job(runner_id, job)
    github_sim.control.runner_dies(runner_id)
    items = actions.receive(session)
    assert _types(items) == ["JobAssigned", "JobStarted", "JobCompleted"]
    assert items[2]["result"] == "failed"
    assert items[2]["runnerName"] == "fragile"
    [runner] = github_sim.control.state()["runners"]
    assert runner["state"] == "offline"


def test_a_job_with_a_duration_finishes_by_itself(github_sim: GitHubSim, actions: Actions) -> None:
    set_id, session = _ready(actions)
    [job] = github_sim.control.enqueue_jobs(["linux"], duration=0.1, result="succeeded")
    runner_id = actions.start_runner(set_id, "quick")
    github_sim.control.runner_take_job(runner_id, job)
    github_sim.control.wait_for_state(lambda s: s["jobs"][0]["state"] == "completed")
    items = actions.receive(session)
    assert _types(items) == ["JobAssigned", "JobStarted", "JobCompleted"]
    assert items[2]["result"] == "succeeded"


def test_a_job_that_asks_its_runner_to_hang_is_not_finished_by_auto_finish(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id, _ = _ready(actions)
    hanging, quick = github_sim.control.enqueue_jobs(
        ["linux"], count=1, duration=0.05, runner_behaviour="hang"
    ) + github_sim.control.enqueue_jobs(["linux"], duration=0.05)
    github_sim.control.runner_take_job(actions.start_runner(set_id, "hangs"), hanging)
    github_sim.control.runner_take_job(actions.start_runner(set_id, "quick"), quick)
    state = github_sim.control.wait_for_state(lambda s: s["jobs"][1]["state"] == "completed")
    assert state["jobs"][0]["state"] == "running"  # finished later than the quick one, if ever
    assert state["jobs"][0]["runner_behaviour"] == "hang"
    assert state["jobs"][1]["runner_behaviour"] is None


def test_an_unknown_runner_behaviour_is_refused_naming_the_field(github_sim: GitHubSim) -> None:
    with pytest.raises(ControlAPIError) as caught:
        github_sim.control.enqueue_jobs(["linux"], runner_behaviour="explode")
    assert caught.value.status == 400
    assert "runner_behaviour" in caught.value.message


@pytest.mark.parametrize("github_sim", [{"auto_take": True}], indirect=True)
def test_auto_take_lets_an_idle_runner_start_the_assigned_job(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id, session = _ready(actions)
    actions.start_runner(set_id, "eager")
    github_sim.control.enqueue_jobs(["linux"])
    assert github_sim.control.state()["jobs"][0]["state"] == "running"
    assert _types(actions.receive(session)) == ["JobAssigned", "JobStarted"]


def test_job_message_fields_can_be_zeroed_per_job(github_sim: GitHubSim, actions: Actions) -> None:
    _, session = _ready(actions)
    github_sim.control.enqueue_jobs(
        ["linux"], zero_fields=["runnerRequestId", "workflowRunId", "jobId"]
    )
    [assigned] = actions.receive(session)
    assert (assigned["runnerRequestId"], assigned["workflowRunId"], assigned["jobId"]) == (0, 0, "")


@pytest.mark.parametrize("github_sim", [{"mode": "ghes"}], indirect=True)
def test_ghes_jobs_are_available_until_acquired_then_assigned(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id, session = _ready(actions)
    [job] = github_sim.control.enqueue_jobs(["linux"])
    [available] = actions.receive(session)
    assert available["messageType"] == "JobAvailable"
    assert available["acquireJobUrl"]
    listed = actions.call("GET", f"{SETS}/{set_id}/acquirablejobs")
    assert listed.status_code == 200
    assert [j["runnerRequestId"] for j in listed.json()["value"]] == [job]
    acquire = actions.call(
        "POST", f"{SETS}/{set_id}/acquirejobs", json_body=[job, 9999], token=session.token
    )
    assert acquire.status_code == 200
    assert acquire.json() == {"count": 1, "value": [job]}
    again = actions.call(
        "POST", f"{SETS}/{set_id}/acquirejobs", json_body=[job], token=session.token
    )
    assert again.json() == {"count": 0, "value": []}
    assert actions.call("GET", f"{SETS}/{set_id}/acquirablejobs").status_code == 204
    assert _types(actions.receive(session)) == ["JobAssigned"]
    assert github_sim.control.state()["counters"]["acquire_calls"] == 2


@pytest.mark.parametrize("github_sim", [{"mode": "ghes"}], indirect=True)
def test_ghes_jobs_never_start_without_acquisition(github_sim: GitHubSim, actions: Actions) -> None:
    set_id, session = _ready(actions)
    github_sim.control.enqueue_jobs(["linux"])
    runner_id = actions.start_runner(set_id, "waiting")
    actions.receive(session)
    assert actions.poll(session).status_code == 202
    assert github_sim.control.state()["jobs"][0]["state"] == "available"
    with pytest.raises(Exception, match="no job assigned"):
        github_sim.control.runner_take_job(runner_id)


def test_acquirable_jobs_is_204_when_none(actions: Actions) -> None:
    set_id, _ = _ready(actions)
    assert actions.call("GET", f"{SETS}/{set_id}/acquirablejobs").status_code == 204


def test_an_assignment_no_runner_takes_is_withdrawn_and_requeued_then_parked(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(assign_timeout=0.05, reassign_base_delay=0.02, max_reassignments=2)
    client = Actions(sim)
    set_id = client.create_scale_set("linux")
    session = client.create_session(set_id)
    [job] = sim.control.enqueue_jobs(["linux"])
    state = sim.control.wait_for_state(lambda s: s["jobs"][0]["parked"], timeout=3)
    assert state["jobs"][0]["withdrawals"] == 3
    assert state["jobs"][0]["state"] == "queued"
    items = client.receive(session)
    assert _types(items) == ["JobAssigned", "JobCompleted"] * 3
    for completed in items[1::2]:
        assert completed["runnerRequestId"] == job
        assert (completed["result"], completed["runnerId"], completed["runnerName"]) == (
            "canceled",
            0,
            "",
        )
    client.close()


def test_a_job_taken_in_time_is_not_withdrawn(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory(assign_timeout=0.2)
    client = Actions(sim)
    set_id = client.create_scale_set("linux")
    session = client.create_session(set_id)
    [job] = sim.control.enqueue_jobs(["linux"])
    sim.control.runner_take_job(client.start_runner(set_id, "fast"), job)
    # One full long poll (0.5 s) covers the assign timeout; nothing is withdrawn meanwhile.
    items = client.receive(session)
    assert client.poll(session, last_message_id=0).status_code == 202
    assert _types(items) == ["JobAssigned", "JobStarted"]
    assert sim.control.state()["counters"]["withdrawals"] == 0
    client.close()
