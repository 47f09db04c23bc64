"""Statistics computed at send time and the statistics faults (docs/architecture.md#statistics)."""

from __future__ import annotations

from typing import Any

from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions


def _invariants_hold(stats: dict[str, Any]) -> bool:
    return bool(
        stats["totalAssignedJobs"] >= stats["totalRunningJobs"]
        and stats["totalBusyRunners"] == stats["totalRunningJobs"]
        and stats["totalRegisteredRunners"] >= stats["totalBusyRunners"] + stats["totalIdleRunners"]
    )


def test_statistics_follow_the_world_and_keep_their_invariants(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    jobs = github_sim.control.enqueue_jobs(["linux"], count=3)
    busy = actions.start_runner(set_id, "busy")
    actions.start_runner(set_id, "idle")
    actions.generate_jit(set_id, "offline")
    github_sim.control.runner_take_job(busy, jobs[0])
    response = actions.poll(session)
    stats = response.json()["statistics"]
    assert stats == {
        "totalAvailableJobs": 0,
        "totalAcquiredJobs": 0,
        "totalAssignedJobs": 3,
        "totalRunningJobs": 1,
        "totalRegisteredRunners": 3,
        "totalBusyRunners": 1,
        "totalIdleRunners": 1,
    }
    assert _invariants_hold(stats)
    github_sim.control.finish_job(jobs[0])
    # Statistics are computed when sent, so the redelivered message shows the new numbers.
    again = actions.poll(session).json()["statistics"]
    assert (again["totalAssignedJobs"], again["totalRunningJobs"]) == (2, 0)
    assert _invariants_hold(again)


def test_inflated_and_inconsistent_statistics_can_be_injected(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    [job] = github_sim.control.enqueue_jobs(["linux"])
    github_sim.control.add_statistics_fault(
        inflate_assigned=2, registered_zero=True, applies_to="session"
    )
    session = actions.create_session(set_id)
    runner = actions.start_runner(set_id, "r")
    github_sim.control.runner_take_job(runner, job)
    refreshed = actions.call(
        "PATCH", f"_apis/runtime/runnerscalesets/{set_id}/sessions/{session.id}"
    ).json()["statistics"]
    assert refreshed["totalAssignedJobs"] == 3
    assert refreshed["totalRegisteredRunners"] == 0
    assert refreshed["totalBusyRunners"] == 1
    # Messages are untouched by a session-only fault.
    renewed = actions.session_from(
        actions.call(
            "PATCH", f"_apis/runtime/runnerscalesets/{set_id}/sessions/{session.id}"
        ).json()
    )
    message_stats = actions.poll(renewed).json()["statistics"]
    assert message_stats["totalAssignedJobs"] == 1
    assert message_stats["totalRegisteredRunners"] == 1


def test_missing_statistics_can_be_injected_a_number_of_times(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    github_sim.control.add_statistics_fault(missing=True, times=1)
    first = actions.create_session(set_id)
    assert "statistics" not in first.raw
    actions.call("DELETE", f"_apis/runtime/runnerscalesets/{set_id}/sessions/{first.id}")
    assert "statistics" in actions.create_session(set_id).raw


def test_lagging_statistics_report_an_earlier_state(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    github_sim.control.add_statistics_fault(lag=1, applies_to="message")
    github_sim.control.enqueue_jobs(["linux"])
    response = actions.poll(session).json()
    assert '"JobAssigned"' in response["body"]
    assert response["statistics"]["totalAssignedJobs"] == 0
