"""The listener against the simulated Actions service, over real sockets.

Each test runs the real service in-process (scaler swapped for a recorder) against a simulator on
127.0.0.1 and asserts what crossed the wire and what the scaler was told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest
from structlog.testing import capture_logs

from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, PersonalAccessToken
from scaleset_listener.config import Settings
from scaleset_listener.github_urls import parse_github_url
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy
from tests.conftest import GitHubSim, GitHubSimFactory
from tests.testsupport.listener_harness import make_settings, running_service

JSON = dict[str, Any]


def settings_for(sim: GitHubSim, **overrides: Any) -> Settings:
    return make_settings(sim.config_url(), sim.pat, **overrides)


async def wait_state(
    sim: GitHubSim, predicate: Callable[[JSON], bool], timeout: float = 5.0
) -> JSON:
    state: JSON = await asyncio.to_thread(sim.control.wait_for_state, predicate, timeout)
    return state


def query(request: JSON) -> dict[str, str]:
    return dict(parse_qsl(request["query"]))


def live_sessions(state: JSON) -> list[JSON]:
    return [session for session in state["sessions"] if not session["ghost"]]


def scale_set_named(state: JSON, name: str) -> JSON | None:
    return next((ss for ss in state["scale_sets"] if ss["name"] == name), None)


@contextlib.asynccontextmanager
async def admin_client(sim: GitHubSim) -> AsyncIterator[ActionsClient]:
    """Our own client, as a test's stand-in for whatever registers runners."""
    http = HttpChannel(RetryPolicy(max_attempts=2, max_wait=0.01))
    auth = ActionsAdminAuth(parse_github_url(sim.config_url()), PersonalAccessToken(sim.pat), http)
    try:
        yield ActionsClient(auth, http)
    finally:
        await http.aclose()


async def register_runner(sim: GitHubSim, scale_set_id: int, runner_name: str) -> int:
    """Play a runner that starts: JIT config, then connect. Returns the runner id."""
    async with admin_client(sim) as client:
        jit = await client.generate_jit_config(scale_set_id, runner_name)
    runner = await asyncio.to_thread(sim.control.connect_runner, jit.encoded_jit_config)
    return int(runner["id"])


async def run_one_job_on_a_runner(sim: GitHubSim, scale_set_id: int, runner_name: str) -> int:
    """Play a runner: register it (JIT), connect, take the assigned job, finish it."""
    runner_id = await register_runner(sim, scale_set_id, runner_name)
    taken = await asyncio.to_thread(sim.control.runner_take_job, runner_id)
    job_id = int(taken["id"])
    await asyncio.to_thread(sim.control.finish_job, job_id, "succeeded")
    return job_id


# --- Scale set lifecycle -------------------------------------------------------------------


async def test_creates_the_scale_set_when_absent_and_never_deletes_it(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        state = await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        created = scale_set_named(state, "linux")
        assert created is not None
        assert created["labels"] == ["linux", "gpu"]
        assert created["runner_group_id"] == 1
        assert await service.shutdown() == 0
    state = sim.control.state()
    assert scale_set_named(state, "linux") is not None
    assert live_sessions(state) == []
    assert state["counters"]["sessions_deleted"] == 1


async def test_reuses_a_scale_set_of_the_same_name(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    existing = sim.control.create_scale_set("linux", ["linux", "gpu"])
    async with running_service(settings_for(sim)) as service:
        state = await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        assert live_sessions(state)[0]["scale_set_id"] == existing["id"]
        assert await service.shutdown() == 0
    state = sim.control.state()
    assert [ss["id"] for ss in state["scale_sets"]] == [existing["id"]]
    assert sim.control.requests(endpoint="create_scale_set") == []
    assert sim.control.requests(endpoint="delete_scale_set") == []


async def test_managed_mode_replaces_the_scale_set_and_deletes_it_on_exit(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    stale = sim.control.create_scale_set("linux", ["linux"])
    async with running_service(settings_for(sim, manage_runner_scale_sets=True)) as service:
        state = await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        fresh = scale_set_named(state, "linux")
        assert fresh is not None
        assert fresh["id"] != stale["id"]
        assert fresh["labels"] == ["linux", "gpu"]
        assert await service.shutdown() == 0
    assert scale_set_named(sim.control.state(), "linux") is None


async def test_a_named_runner_group_is_looked_up(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    group_id = sim.control.add_runner_group("gpu-runners")
    runners = [{"name": "linux", "runner_group": "gpu-runners"}]
    async with running_service(settings_for(sim, runners=runners)):
        state = await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
    created = scale_set_named(state, "linux")
    assert created is not None
    assert created["runner_group_id"] == group_id


async def test_an_unknown_runner_group_fails_at_start(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    runners = [{"name": "linux", "runner_group": "nope"}]
    with capture_logs() as logs:
        async with running_service(settings_for(sim, runners=runners)) as service:
            async with asyncio.timeout(5):
                exit_code = await service.task
    assert exit_code == 1
    failures = [entry for entry in logs if entry["event"] == "scale_set_failed"]
    assert failures
    assert "nope" in failures[0]["error"]


async def test_bad_credentials_fail_at_start(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(make_settings(sim.config_url(), "ghp_wrong")) as service:
            async with asyncio.timeout(5):
                exit_code = await service.task
    assert exit_code == 1
    (failure,) = [entry for entry in logs if entry["event"] == "scale_set_failed"]
    assert failure["error_type"] == "AuthenticationFailed"
    assert "ghp_wrong" not in str(logs)


# --- Demand and messages -------------------------------------------------------------------


async def test_initial_statistics_are_the_demand_at_start(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as first:
        await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        sim.control.enqueue_jobs(["linux"], count=3)
        await first.scaler.wait_until(lambda: 3 in first.scaler.desired)
    # A new process sees the three jobs still assigned, before any message arrives.
    async with running_service(
        settings_for(sim, runners=[{"name": "linux", "min_runners": 1}])
    ) as second:
        await second.scaler.wait_until(lambda: bool(second.scaler.desired))
        assert second.scaler.desired[0] == 4
        assert second.scaler.statistics[0].total_assigned_jobs == 3


async def test_jobs_flow_to_the_scaler_and_every_message_is_acked_once(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            state = await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            sim.control.enqueue_jobs(["linux"], count=2)
            await service.scaler.wait_until(lambda: 2 in service.scaler.desired)
            await run_one_job_on_a_runner(sim, scale_set_id, "linux-abc123")
            await service.scaler.wait_until(lambda: bool(service.scaler.completed))
            await service.scaler.wait_until(lambda: service.scaler.desired[-1] == 1)
            assert await service.shutdown() == 0
    scaler = service.scaler
    assert [job.runner_name for job in scaler.started] == ["linux-abc123"]
    assert [(job.runner_name, job.result) for job in scaler.completed] == [
        ("linux-abc123", "succeeded")
    ]
    counters = sim.control.state()["counters"]
    assert counters["messages_acked"] == counters["messages_created"]
    assert counters.get("duplicate_acks", 0) == 0
    assert counters.get("messages_redelivered", 0) == 0
    statistics_events = [entry for entry in logs if entry["event"] == "runner_statistics"]
    # One for the session's initial statistics, then one per message.
    assert len(statistics_events) == counters["messages_acked"] + 1


async def test_every_poll_sends_the_capacity_and_the_last_message_id(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim), capacity=3) as service:
        await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        sim.control.enqueue_jobs(["linux"], count=1)
        await service.scaler.wait_until(lambda: 1 in service.scaler.desired)
        await asyncio.to_thread(
            sim.control.wait_for_request,
            lambda r: r["endpoint"] == "get_message" and "lastMessageId" in query(r),
        )
    polls = sim.control.requests(endpoint="get_message")
    assert polls
    for poll in polls:
        assert poll["headers"]["x-scalesetmaxcapacity"] == "3"
        assert poll["headers"]["accept"] == "application/json; api-version=6.0-preview"
        assert poll["token_kind"] == "queue"
    assert "lastMessageId" not in query(polls[0])
    first_ack = sim.control.requests(endpoint="delete_message")[0]
    acked_id = first_ack["path"].rsplit("/", 1)[-1]
    later_polls = [poll for poll in polls if poll["seq"] > first_ack["seq"]]
    assert later_polls
    assert all(query(poll)["lastMessageId"] == acked_id for poll in later_polls)


async def test_empty_polls_reassert_the_last_known_demand(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(long_poll_timeout=0.05)
    async with running_service(settings_for(sim)) as service:
        await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        sim.control.enqueue_jobs(["linux"], count=2)
        await service.scaler.wait_until(lambda: service.scaler.desired.count(2) >= 3)


async def test_ghes_jobs_are_acquired(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory(mode="ghes")
    async with running_service(settings_for(sim)) as service:
        await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        (job_id,) = sim.control.enqueue_jobs(["linux"], count=1)
        state = await wait_state(
            sim, lambda s: any(j["id"] == job_id and j["state"] == "assigned" for j in s["jobs"])
        )
        await service.scaler.wait_until(lambda: 1 in service.scaler.desired)
    assert state["counters"]["acquire_calls"] >= 1
    acquire = sim.control.requests(endpoint="acquire_jobs")[0]
    assert acquire["token_kind"] == "queue"
    assert acquire["body"] == [job_id]


async def test_jobs_offered_before_the_session_existed_are_acquired_at_start(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(mode="ghes")
    async with running_service(settings_for(sim)) as first:
        await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        sim.control.add_fault("acquire_jobs", status=400, times=None)
        (job_id,) = sim.control.enqueue_jobs(["linux"], count=1)
        await asyncio.to_thread(
            sim.control.wait_for_request, lambda r: r["endpoint"] == "acquire_jobs"
        )
        await first.shutdown()
    sim.control.clear_faults()
    async with running_service(settings_for(sim)):
        await wait_state(
            sim, lambda s: any(j["id"] == job_id and j["state"] == "assigned" for j in s["jobs"])
        )


async def test_a_canceled_assignment_without_a_runner_reaches_the_scaler_as_such(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
        (job_id,) = sim.control.enqueue_jobs(["linux"], count=1)
        await service.scaler.wait_until(lambda: 1 in service.scaler.desired)
        sim.control.cancel_job(job_id)
        await service.scaler.wait_until(lambda: bool(service.scaler.completed))
        await service.scaler.wait_until(lambda: service.scaler.desired[-1] == 0)
    (completed,) = service.scaler.completed
    assert completed.result == "canceled"
    assert completed.runner_name == ""


@pytest.mark.parametrize("bad_statistics", ["registered_zero", "inflate_assigned"])
async def test_inconsistent_statistics_are_logged_and_demand_still_follows_assigned(
    github_sim_factory: GitHubSimFactory, bad_statistics: str
) -> None:
    sim = github_sim_factory()
    fault: dict[str, Any] = (
        {"registered_zero": True}
        if bad_statistics == "registered_zero"
        else {"inflate_assigned": 0}
    )
    sim.control.add_statistics_fault(**fault)
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            state = await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            sim.control.enqueue_jobs(["linux"], count=2)
            runner_id = await register_runner(sim, scale_set_id, "linux-r1")
            await asyncio.to_thread(sim.control.runner_take_job, runner_id)
            await service.scaler.wait_until(lambda: bool(service.scaler.started))
            await service.scaler.wait_until(lambda: service.scaler.desired[-1] == 2)
    if bad_statistics == "registered_zero":
        inconsistent = [entry for entry in logs if entry["event"] == "statistics_inconsistent"]
        assert inconsistent
        assert "registered < busy + idle" in inconsistent[-1]["problems"]
