"""What a bench at fleet scale reads from the simulated GitHub: request counts beyond the request
log, and a state cut down to what a watcher of thousands of runners needs."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions

pytestmark = pytest.mark.timeout(30)


def test_request_counts_count_every_request_by_endpoint_and_reset_clears_them(
    github_sim: GitHubSim, actions: Actions
) -> None:
    scale_set = actions.create_scale_set("linux")
    for name in ("r1", "r2", "r3"):
        assert actions.generate_jit(scale_set, name).status_code == 200
    counts = github_sim.control.request_counts()
    logged = Counter(str(entry["endpoint"]) for entry in github_sim.control.requests())
    assert counts["by_endpoint"] == dict(logged)
    assert counts["by_endpoint"]["generate_jit_config"] == 3
    assert counts["total"] == sum(logged.values())
    github_sim.control.reset()
    assert github_sim.control.request_counts() == {"total": 0, "by_endpoint": {}}


def test_state_parts_and_completed_within_leave_out_the_rest(github_sim: GitHubSim) -> None:
    control = github_sim.control
    done, waiting = control.enqueue_jobs(["linux"], count=2)
    control.cancel_job(done)

    state = control.state(parts=("runners", "jobs"))
    assert set(state) == {"version", "runners", "jobs"}
    assert {job["id"] for job in state["jobs"]} == {done, waiting}
    recent = control.state(parts=("jobs",), completed_within=60)
    assert {job["id"] for job in recent["jobs"]} == {done, waiting}
    still_open = control.state(parts=("jobs",), completed_within=0)
    assert [job["id"] for job in still_open["jobs"]] == [waiting]
    assert {"jobs", "sessions", "counters"} <= set(control.state())
