"""The control API's observation side (request log, events, state), reset, and the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from simulator.github.control import SimulatorControl
from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_request_log_names_endpoints_and_token_kinds_but_never_tokens(
    github_sim: GitHubSim, actions: Actions
) -> None:
    session = actions.create_session(actions.create_scale_set("linux"))
    actions.poll(session, capacity=4)
    log = github_sim.control.requests()
    kinds = [(entry["endpoint"], entry["token_kind"], entry["status"]) for entry in log]
    assert kinds == [
        ("registration_token", "pat", 201),
        ("runner_registration", "registration", 200),
        ("create_scale_set", "admin", 200),
        ("create_session", "admin", 200),
        ("get_message", "queue", 202),
    ]
    poll = log[-1]
    assert poll["headers"]["x-scalesetmaxcapacity"] == "4"
    assert poll["headers"]["accept"] == "application/json; api-version=6.0-preview"
    assert "sessionId=" in poll["query"]
    assert log[2]["body"]["RunnerSetting"] == {"disableUpdate": True}
    assert [entry["seq"] for entry in log] == sorted(entry["seq"] for entry in log)
    dumped = repr(log)
    for secret in (actions.admin_token, session.token, github_sim.pat):
        assert secret not in dumped


def test_request_log_wait_returns_as_soon_as_a_request_arrives(
    github_sim: GitHubSim, actions: Actions
) -> None:
    last = github_sim.control.requests()[-1]["seq"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(github_sim.control.requests, last, 20.0)
        actions.call("GET", "_apis/runtime/runnergroups/")
        entries = waiting.result(timeout=5)
    assert [e["endpoint"] for e in entries] == ["runner_groups"]


def test_wait_for_request_raises_timeout_with_what_it_saw(github_sim: GitHubSim) -> None:
    with pytest.raises(TimeoutError, match="no matching request"):
        github_sim.control.wait_for_request(lambda r: r["endpoint"] == "get_message", timeout=0.2)


def test_wait_for_state_raises_timeout(github_sim: GitHubSim) -> None:
    with pytest.raises(TimeoutError, match="state predicate not met"):
        github_sim.control.wait_for_state(lambda s: bool(s["jobs"]), timeout=0.2)


def test_events_record_job_state_changes(github_sim: GitHubSim, actions: Actions) -> None:
    actions.create_session(actions.create_scale_set("linux"))
    [job] = github_sim.control.enqueue_jobs(["linux"])
    states = [e["state"] for e in github_sim.control.events(type="job_state") if e["job"] == job]
    assert states == ["queued", "assigned"]


def test_reset_forgets_everything_and_applies_config_changes(
    github_sim: GitHubSim, actions: Actions
) -> None:
    actions.create_session(actions.create_scale_set("linux"))
    config = github_sim.control.reset(mode="ghes")
    assert config["mode"] == "ghes"
    state = github_sim.control.state()
    assert (state["scale_sets"], state["sessions"], state["counters"]["sessions_created"]) == (
        [],
        [],
        0,
    )
    assert github_sim.control.patch_config(mode="github.com")["mode"] == "github.com"


def test_unknown_control_route_and_bad_config_are_errors(github_sim: GitHubSim) -> None:
    assert httpx.get(github_sim.base_url + "/_sim/nothing").status_code == 404
    response = httpx.patch(github_sim.base_url + "/_sim/config", json={"mode": "gitlab"})
    assert response.status_code == 400


def test_cli_prints_its_address_serves_and_exits_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator.github", "--port", "0", "--long-poll-timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.fullmatch(r"simulator\.github listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert found, line
        assert int(found.group(2)) > 0
        with SimulatorControl(found.group(1)) as control:
            assert control.config()["long_poll_timeout"] == 30
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
