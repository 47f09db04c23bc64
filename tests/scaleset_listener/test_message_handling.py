"""A message reaches the scaler before its acknowledgement's round trip, over real sockets.

The scaler's handlers only record, so the listener hands a message over first and acknowledges
after: a slow ack (GitHub far away, or busy) is no longer part of a scaling decision.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from tests.conftest import GitHubSimFactory
from tests.scaleset_listener.test_listener import live_sessions, settings_for, wait_state
from tests.testsupport.listener_harness import running_service

pytestmark = pytest.mark.timeout(30)


async def test_the_scaler_has_the_demand_while_the_ack_is_still_unanswered(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    with capture_logs() as logs:
        async with running_service(settings_for(sim)) as service:
            await wait_state(sim, lambda s: len(live_sessions(s)) == 1)
            sim.control.add_fault("delete_message", kind="delay", delay=3.0, times=1)
            sim.control.enqueue_jobs(["linux"], count=2)
            await service.scaler.wait_until(lambda: 2 in service.scaler.desired)
            # The simulator logs a request once it has answered it: the ack is still waiting.
            assert sim.control.requests(endpoint="delete_message") == []
            await asyncio.to_thread(
                sim.control.wait_for_request, lambda r: r["endpoint"] == "delete_message", 10
            )
            assert await service.shutdown() == 0
    counters = sim.control.state()["counters"]
    assert counters["messages_acked"] == counters["messages_created"] == 1
    assert counters["messages_redelivered"] == 0
    (handled,) = [entry for entry in logs if entry["event"] == "message_handled"]
    assert handled["jobs"] == 2
    # The decision did not wait for the 3 s ack; the whole message did.
    assert handled["decision_ms"] < 3000 <= handled["handled_ms"]
