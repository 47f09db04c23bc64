"""Messages the listener cannot fully read (a schema change upstream) do not block the queue.

Over real sockets against the simulator: the unreadable part is logged once, the message is
acknowledged, the readable parts are handled, and what the unreadable part was about is found
again (the acquirable-jobs look-up, the next good statistics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from structlog.testing import capture_logs

from tests.conftest import GitHubSim, GitHubSimFactory
from tests.scaleset_listener.test_faults import session_is_open
from tests.scaleset_listener.test_listener import live_sessions, query, settings_for, wait_state
from tests.testsupport.listener_harness import RunningService, running_service

JSON = dict[str, Any]

GOOD_STATISTICS: JSON = {
    "totalAvailableJobs": 0,
    "totalAcquiredJobs": 0,
    "totalAssignedJobs": 2,
    "totalRunningJobs": 0,
    "totalRegisteredRunners": 0,
    "totalBusyRunners": 0,
    "totalIdleRunners": 0,
}
LOTS: JSON = {**GOOD_STATISTICS, "totalAssignedJobs": "lots"}


def named(logs: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def acked(sim: GitHubSim, message_id: int) -> JSON:
    return await wait_state(
        sim, lambda s: any(message_id in ss["acked_message_ids"] for ss in s["scale_sets"])
    )


async def pause_the_queue(sim: GitHubSim) -> None:
    """Every poll from now on answers "no message" (after a short delay, so the listener does
    not spin) until the faults are cleared; returns once the poll that was already waiting is
    over, so nothing queued meanwhile reaches the listener early."""
    sim.control.add_fault("get_message", kind="delay", delay=0.02, times=None)
    sim.control.add_fault("get_message", status=202, body="empty", times=None)
    await asyncio.to_thread(
        sim.control.wait_for_request,
        lambda r: r["endpoint"] == "get_message" and r["fault"] == "status",
    )


async def test_unreadable_statistics_are_logged_once_acked_and_the_next_message_handled_at_once(
    github_sim_factory: GitHubSimFactory,
) -> None:
    # A long poll that outlasts the test: the listener's next poll waits for the next message
    # instead of answering empty, so "one poll" below does not depend on timing.
    sim = github_sim_factory(long_poll_timeout=10)
    with capture_logs() as logs:
        async with running(sim) as service:
            state = await session_is_open(sim)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            bad = sim.control.inject_message(scale_set_id, statistics=LOTS)
            assert bad is not None
            await acked(sim, bad)
            sim.control.enqueue_jobs(["linux"], count=3)
            await service.scaler.wait_until(lambda: 3 in service.scaler.desired)
            assert await service.shutdown() == 0

    (unparseable,) = named(logs, "message_unparseable")
    assert unparseable["message_id"] == bad
    assert unparseable["message_type"] == "RunnerScaleSetJobMessages"
    assert unparseable["field"] == "statistics.totalAssignedJobs"
    assert unparseable["excerpt"] == '"lots"'
    # The next message came with the very next poll: no new session, no backoff, no redelivery.
    after_bad = [
        r
        for r in sim.control.requests(endpoint="get_message")
        if query(r).get("lastMessageId") == str(bad)
    ]
    assert [r["status"] for r in after_bad] == [200]
    counters = sim.control.state()["counters"]
    assert counters["sessions_created"] == 1
    assert counters.get("messages_redelivered", 0) == 0
    assert named(logs, "recovering") == []
    # Nothing the bad statistics might have said is lost: the acquirable jobs were looked up
    # between the ack and the next poll (which is logged when it ends).
    (ack,) = [
        r for r in sim.control.requests(endpoint="delete_message") if r["path"].endswith(f"/{bad}")
    ]
    lookups = sim.control.requests(endpoint="acquirable_jobs")
    assert any(ack["seq"] < r["seq"] < after_bad[0]["seq"] for r in lookups)


async def test_unreadable_statistics_leave_the_demand_at_its_last_value(
    github_sim_factory: GitHubSimFactory,
) -> None:
    # Short long polls: empty polls re-assert the latest good statistics often.
    sim = github_sim_factory(long_poll_timeout=0.05)
    async with running(sim) as service:
        state = await session_is_open(sim)
        scale_set_id = live_sessions(state)[0]["scale_set_id"]
        sim.control.enqueue_jobs(["linux"], count=2)
        await service.scaler.wait_until(lambda: service.scaler.desired[-1:] == [2])
        mark = len(service.scaler.desired)
        bad = sim.control.inject_message(scale_set_id, statistics=LOTS)
        assert bad is not None
        await acked(sim, bad)
        # Several empty polls after the bad message: each hands on the last known demand.
        await service.scaler.wait_until(lambda: len(service.scaler.desired) >= mark + 3)
        assert set(service.scaler.desired[mark:]) == {2}
        # The next good statistics carry the demand again.
        sim.control.enqueue_jobs(["linux"], count=1)
        await service.scaler.wait_until(lambda: service.scaler.desired[-1] == 3)
    assert set(service.scaler.desired[mark:]) == {2, 3}
    assert sim.control.state()["counters"]["sessions_created"] == 1


async def test_a_batch_with_an_unreadable_job_hands_on_the_good_ones_and_looks_the_bad_one_up(
    github_sim_factory: GitHubSimFactory,
) -> None:
    # GHES offers jobs as JobAvailable: a job whose JobAvailable cannot be read is acquired
    # only if the listener looks it up.
    sim = github_sim_factory(mode="ghes")
    with capture_logs() as logs:
        async with running(sim) as service:
            state = await session_is_open(sim)
            scale_set_id = live_sessions(state)[0]["scale_set_id"]
            await pause_the_queue(sim)
            # The job's own JobAvailable waits behind the injected message, which carries a
            # JobAvailable for the same job in a shape this version cannot read.
            (job_id,) = sim.control.enqueue_jobs(["linux"], count=1)
            batch = [
                {"messageType": "JobAvailable", "runnerRequestId": {"value": job_id}},
                {"messageType": "JobStarted", "runnerId": 7, "runnerName": "linux-s", "jobId": "a"},
                {"messageType": "JobCompleted", "runnerName": "linux-c", "result": "succeeded"},
            ]
            bad = sim.control.inject_message(
                scale_set_id, message_type="RunnerScaleSetJobMessages", body=json.dumps(batch)
            )
            assert bad is not None
            sim.control.clear_faults()
            await service.scaler.wait_until(
                lambda: bool(service.scaler.started and service.scaler.completed)
            )
            acquired = await asyncio.to_thread(
                sim.control.wait_for_event,
                lambda e: e["type"] == "acquire" and job_id in e["acquired"],
            )
            genuine = await asyncio.to_thread(
                sim.control.wait_for_event,
                lambda e: e["type"] == "message_delivered" and e["message_id"] > bad,
            )
            await wait_state(
                sim,
                lambda s: any(j["id"] == job_id and j["state"] == "assigned" for j in s["jobs"]),
            )

    assert [job.runner_name for job in service.scaler.started] == ["linux-s"]
    assert [job.runner_name for job in service.scaler.completed] == ["linux-c"]
    # Acquired by the look-up that followed the unreadable message, before its own
    # JobAvailable was even delivered.
    assert acquired["seq"] < genuine["seq"]
    (unparseable,) = named(logs, "job_message_unparseable")
    assert unparseable["message_id"] == bad
    assert unparseable["index"] == 0
    assert unparseable["message_type"] == "JobAvailable"
    assert unparseable["field"] == "body[0].runnerRequestId"
    assert unparseable["excerpt"] == json.dumps({"value": job_id}, separators=(",", ":"))
    looked_up = [e for e in named(logs, "jobs_acquired") if e.get("why") == "unparseable_message"]
    assert [(e["requested"], e["acquired"]) for e in looked_up] == [(1, 1)]
    assert named(logs, "message_unparseable") == []
    assert sim.control.state()["counters"]["sessions_created"] == 1


async def test_a_message_whose_id_cannot_be_read_is_refused_clearly(
    github_sim_factory: GitHubSimFactory,
) -> None:
    """The one unusable case: without an id the message cannot be acknowledged."""
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running(sim):
            await session_is_open(sim)
            sim.control.add_fault(
                "get_message", status=200, message="ignored", type_name="", times=1
            )
            await wait_state(sim, lambda s: s["counters"]["sessions_created"] == 2)
    (recovering, *_) = named(logs, "recovering")
    assert recovering["error_type"] == "ProtocolError"
    assert "no messageId" in recovering["error"]
    assert "cannot be acknowledged" in recovering["error"]


def running(sim: GitHubSim) -> contextlib.AbstractAsyncContextManager[RunningService]:
    return running_service(settings_for(sim))
