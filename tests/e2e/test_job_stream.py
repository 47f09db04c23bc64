import random

import pytest

from simulator.e2e_world import E2EWorld


@pytest.mark.timeout(90)
def test_a_job_stream_is_served_within_max_runners_and_leaves_nothing(world: E2EWorld) -> None:
    listener = world.start_listener()
    listener.log.wait_event("session_created", timeout=30)
    world.queue_stream(20, random.Random(6), durations=(0.5, 2.0))

    world.wait_served(timeout=60)
    world.wait_clean(timeout=20)

    assert world.violations(sessions_closed=False) == []
    # The VM count follows demand up to the cap: 20 jobs on at most 5 VMs reach the cap.
    assert world.peak_servers() == world.max_runners
    desired = [event["desired"] for event in listener.log.named("desired_runners")]
    assert max(desired) == world.max_runners
    assert all(0 <= value <= world.max_runners for value in desired)

    # One runner_statistics line per message the simulated GitHub delivered (plus the
    # session's initial statistics, message_id 0).
    delivered = [
        event["message_id"] for event in world.github.control.events(type="message_delivered")
    ]
    assert delivered
    listener.log.wait_for(
        lambda: len(listener.log.named("runner_statistics")) >= len(delivered) + 1,
        timeout=10,
        what="a statistics line per message",
    )
    logged = [event["message_id"] for event in listener.log.named("runner_statistics")]
    assert logged == [0, *delivered]

    assert listener.stop(timeout=15) == 0
    assert world.violations() == []
