"""The listener survives every fault the simulator injects (sim/README.md, Faults).

"Recovers" is shown the same way everywhere: after the fault, a job queued on the scale set
still reaches the scaler as demand, and every message the service created was acknowledged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import GitHubSim, GitHubSimFactory
from tests.scaleset_listener.test_listener import live_sessions, settings_for, wait_state
from tests.testsupport.listener_harness import RunningService, running_service

JSON = dict[str, Any]


async def session_is_open(sim: GitHubSim) -> JSON:
    return await wait_state(sim, lambda s: len(live_sessions(s)) == 1)


async def demand_still_flows(sim: GitHubSim, service: RunningService) -> None:
    """A job queued now reaches the scaler, and nothing the service sent stays unacknowledged."""
    before = len(service.scaler.desired)
    sim.control.enqueue_jobs(["linux"], count=1)
    expected = [job for job in sim.control.state()["jobs"] if job["state"] != "completed"]
    await service.scaler.wait_until(
        lambda: len(service.scaler.desired) > before and service.scaler.desired[-1] == len(expected)
    )
    await wait_state(
        sim,
        lambda s: (
            all(not ss["unacked_message_ids"] for ss in s["scale_sets"])
            and s["counters"].get("messages_acked", 0) == s["counters"].get("messages_created", 0)
        ),
    )


@pytest.mark.parametrize(
    ("endpoint", "status", "retry_after"),
    [
        ("registration_token", 502, None),
        ("runner_registration", 503, None),
        ("find_scale_set", 500, None),
        ("create_scale_set", 503, "0"),
        ("create_session", 500, None),
        ("get_message", 502, None),
        ("get_message", 429, "0"),
        ("delete_message", 503, None),
    ],
)
async def test_transient_statuses_are_retried_within_the_request(
    github_sim_factory: GitHubSimFactory, endpoint: str, status: int, retry_after: str | None
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault(endpoint, status=status, times=2, retry_after=retry_after)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)
        assert await service.shutdown() == 0
    counters = sim.control.state()["counters"]
    # Retried inside the request: no second session was needed.
    assert counters["sessions_created"] == 1
    failed = [r for r in sim.control.requests(endpoint=endpoint) if r["status"] == status]
    assert len(failed) == 2


async def test_a_poll_that_keeps_failing_ends_in_a_backoff_and_a_new_session(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            await session_is_open(sim)
            # More failures than one request's attempts (3 in these settings).
            sim.control.add_fault("get_message", status=500, times=4)
            await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 2)
            await demand_still_flows(sim, service)
    assert any(entry["event"] == "recovering" for entry in logs)
    # The abandoned session was deleted, not left to block the next one.
    assert sim.control.state()["counters"]["sessions_deleted"] == 2


async def test_501_is_not_retried_but_the_listener_recovers(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        sim.control.add_fault("get_message", status=501, times=1)
        await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 2)
        await demand_still_flows(sim, service)
    answered_501 = [r for r in sim.control.requests(endpoint="get_message") if r["status"] == 501]
    assert len(answered_501) == 1


@pytest.mark.parametrize("endpoint", ["get_message", "delete_message", "create_session"])
async def test_dropped_connections_are_survived(
    github_sim_factory: GitHubSimFactory, endpoint: str
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault(endpoint, kind="drop", times=1)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)


async def test_an_ack_whose_answer_is_lost_is_not_a_duplicate_problem(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("delete_message", kind="drop", times=1, after_processing=True)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)
    # The retry acknowledged an already acknowledged message; the service must accept that.
    assert sim.control.state()["counters"]["sessions_created"] == 1


async def test_an_empty_200_poll_is_no_message(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        sim.control.add_fault("get_message", status=200, body="empty", times=3)
        await asyncio.to_thread(
            sim.control.wait_for_request,
            lambda r: r["endpoint"] == "get_message" and r["status"] == 200,
        )
        await demand_still_flows(sim, service)
    assert sim.control.state()["counters"]["sessions_created"] == 1


async def test_a_session_without_a_queue_url_is_discarded_and_replaced(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("create_session", kind="empty_queue_url", times=1)
    async with running_service(settings_for(sim)) as service:
        state = await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 2)
        assert len(live_sessions(state)) == 1
        await demand_still_flows(sim, service)


async def test_an_unknown_message_type_is_acked_and_skipped(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            state = await session_is_open(sim)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            odd = sim.control.inject_message(scale_set_id, message_type="SomethingNew", body="{}")
            await wait_state(sim, lambda s: odd in s["scale_sets"][0]["acked_message_ids"])
            await demand_still_flows(sim, service)
    assert any(
        entry["event"] == "unknown_message_type" and entry["message_type"] == "SomethingNew"
        for entry in logs
    )


async def test_unknown_and_malformed_job_messages_do_not_lose_the_batch(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            state = await session_is_open(sim)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            sim.control.inject_message(
                scale_set_id,
                job_messages=[
                    {"messageType": "JobTeleported", "runnerRequestId": 5},
                    {"messageType": "JobCompleted", "runnerName": "linux-x", "result": "failed"},
                ],
            )
            await service.scaler.wait_until(lambda: bool(service.scaler.completed))
            await demand_still_flows(sim, service)
    assert service.scaler.completed[0].runner_name == "linux-x"
    assert any(entry["event"] == "unknown_job_message" for entry in logs)


async def test_a_body_that_is_not_json_is_logged_and_acked(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            state = await session_is_open(sim)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            bad = sim.control.inject_message(
                scale_set_id, message_type="RunnerScaleSetJobMessages", body="[{not json"
            )
            await wait_state(sim, lambda s: bad in s["scale_sets"][0]["acked_message_ids"])
            await demand_still_flows(sim, service)
    (unparseable,) = [entry for entry in logs if entry["event"] == "message_unparseable"]
    assert (unparseable["message_id"], unparseable["field"]) == (bad, "body")
    assert unparseable["excerpt"] == '"[{not json"'


async def test_a_stale_session_conflict_is_waited_out(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    existing = sim.control.create_scale_set("linux", ["linux", "gpu"])
    sim.control.ghost_session(existing["id"], expires_after=0.3)
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            await session_is_open(sim)
            await demand_still_flows(sim, service)
    conflicts = [entry for entry in logs if entry["event"] == "session_conflict"]
    assert conflicts
    # Each attempt is logged with its number, so an operator sees the wait progress.
    assert [entry["attempt"] for entry in conflicts] == list(range(1, len(conflicts) + 1))
    create_answers = [r["status"] for r in sim.control.requests(endpoint="create_session")]
    assert create_answers[:-1] == [409] * (len(create_answers) - 1)
    assert create_answers[-1] == 200


async def test_an_expired_queue_token_refreshes_the_session_once(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        state = await session_is_open(sim)
        sim.control.expire_queue_token(live_sessions(state)[0]["id"])
        await wait_state(sim, lambda s: s["counters"].get("sessions_refreshed", 0) == 1)
        await demand_still_flows(sim, service)
    counters = sim.control.state()["counters"]
    assert counters["sessions_created"] == 1
    assert counters["sessions_refreshed"] == 1


async def test_an_evicted_session_is_replaced(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        state = await session_is_open(sim)
        sim.control.evict_session(live_sessions(state)[0]["id"])
        await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 2)
        await demand_still_flows(sim, service)


async def test_expired_admin_tokens_are_replaced_through_the_github_exchange(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with running_service(settings_for(sim)) as service:
        state = await session_is_open(sim)
        exchanges_before = len(sim.control.requests(endpoint="runner_registration"))
        sim.control.expire_admin_tokens()
        # Refreshing the session needs the admin token: make the listener do it.
        sim.control.expire_queue_token(live_sessions(state)[0]["id"])
        await wait_state(sim, lambda s: s["counters"].get("sessions_refreshed", 0) == 1)
        await demand_still_flows(sim, service)
    exchanges = sim.control.requests(endpoint="runner_registration")
    assert len(exchanges) == exchanges_before + 1
    assert len(sim.control.requests(endpoint="registration_token")) == len(exchanges)


async def test_a_short_lived_admin_token_is_refreshed_before_it_expires(
    github_sim_factory: GitHubSimFactory,
) -> None:
    # Lifetimes under the 60 s margin: every admin call must fetch a fresh token first.
    sim = github_sim_factory(admin_token_ttl=59)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)
    admin_calls = [r for r in sim.control.requests() if r["token_kind"] == "admin"]
    rejected = [r for r in admin_calls if r["status"] == 401]
    assert rejected == []
    assert len(sim.control.requests(endpoint="runner_registration")) >= len(admin_calls)


async def test_runner_registration_401_and_403_are_retried(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("runner_registration", status=401, times=1)
    sim.control.add_fault("runner_registration", status=403, times=1)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)
    statuses = [r["status"] for r in sim.control.requests(endpoint="runner_registration")]
    assert sorted(statuses[:2]) == [401, 403]


async def test_a_scale_set_deleted_by_the_service_is_recreated_by_name(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            state = await session_is_open(sim)
            first_id = state["scale_sets"][0]["id"]
            sim.control.delete_scale_set(first_id)
            state = await wait_state(
                sim,
                lambda s: (
                    len(live_sessions(s)) == 1 and live_sessions(s)[0]["scale_set_id"] != first_id
                ),
            )
            await demand_still_flows(sim, service)
    assert [ss["name"] for ss in state["scale_sets"]] == ["linux"]
    assert any(entry["event"] in ("scale_set_gone", "scale_set_created") for entry in logs)


async def test_missing_session_statistics_wait_for_the_first_message(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_statistics_fault(missing=True, applies_to="session")
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            await session_is_open(sim)
            await demand_still_flows(sim, service)
    assert any(entry["event"] == "session_statistics_missing" for entry in logs)


async def test_a_message_without_statistics_is_acked_and_demand_waits(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            await session_is_open(sim)
            sim.control.add_statistics_fault(missing=True, applies_to="message", times=1)
            sim.control.enqueue_jobs(["linux"], count=1)
            await asyncio.to_thread(
                sim.control.wait_for_request, lambda r: r["endpoint"] == "delete_message"
            )
            await demand_still_flows(sim, service)
    assert any(entry["event"] == "message_without_statistics" for entry in logs)


async def test_reassigned_jobs_reach_the_scaler_as_canceled_then_as_demand_again(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(assign_timeout=0.2, max_reassignments=1)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        sim.control.enqueue_jobs(["linux"], count=1)
        await service.scaler.wait_until(lambda: bool(service.scaler.completed))
        await service.scaler.wait_until(lambda: service.scaler.desired[-1] == 1, timeout=5)
    canceled = service.scaler.completed[0]
    assert (canceled.result, canceled.runner_name) == ("canceled", "")


async def test_a_bom_prefixed_answer_parses(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("create_session", kind="bom", times=1)
    sim.control.add_fault("get_message", kind="bom", times=1)
    async with running_service(settings_for(sim)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)
    assert sim.control.state()["counters"]["sessions_created"] == 1


async def test_a_stop_during_startup_retries_ends_them_at_once(
    github_sim_factory: GitHubSimFactory,
) -> None:
    """Before a session exists nothing is in hand: a stop must not wait out the request's
    retries (here 20 attempts with waits of up to 30 s, far beyond the bound below)."""
    sim = github_sim_factory()
    sim.control.add_fault("find_scale_set", status=503, times=1000)
    settings = settings_for(sim, retry_max_attempts=20, retry_max_wait=30.0)
    async with running_service(settings) as service:
        await asyncio.to_thread(
            sim.control.wait_for_request, lambda r: r["endpoint"] == "find_scale_set"
        )
        assert await service.shutdown(timeout=5.0) == 0
    state = sim.control.state()
    assert state["scale_sets"] == []
    assert state["counters"].get("sessions_created", 0) == 0


async def test_the_recovery_backoff_starts_over_after_a_successful_poll(
    github_sim_factory: GitHubSimFactory,
) -> None:
    """A long outage pushes the backoff to its cap; once a poll succeeded, the next short blip
    waits the first step again, not the cap."""
    sim = github_sim_factory(long_poll_timeout=0.05)
    # One attempt per request: each failed poll is one recovery. First wait 0.02 s, cap 0.25 s.
    settings = settings_for(
        sim, retry_max_attempts=1, retry_max_wait=0.02, recovery_backoff_max=0.25
    )
    with capture_logs() as logs:
        async with running_service(settings) as service:
            await session_is_open(sim)
            sim.control.add_fault("get_message", status=503, times=6)
            # Each failed poll ends its session; the seventh session's polls succeed.
            await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 7)
            last_failure = max(
                r["seq"] for r in sim.control.requests(endpoint="get_message") if r["status"] == 503
            )
            await asyncio.to_thread(
                sim.control.wait_for_request,
                lambda r: r["endpoint"] == "get_message" and r["status"] == 202,
                after=last_failure,
            )
            sim.control.add_fault("get_message", status=503, times=1)
            await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 8)
            await demand_still_flows(sim, service)
    recovering = [entry for entry in logs if entry["event"] == "recovering"]
    assert [entry["attempt"] for entry in recovering] == [1, 2, 3, 4, 5, 6, 1]
    outage, blip = recovering[:6], recovering[6]
    assert outage[-1]["wait_seconds"] >= 0.25
    # The first step (0.02 s plus at most a quarter of it as jitter), not the cap.
    assert blip["wait_seconds"] <= 0.025
