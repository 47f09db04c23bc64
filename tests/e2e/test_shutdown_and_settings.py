"""SIGTERM drain (docs/architecture.md#runtime-model), ENABLE_RECONCILIATION=false and
MANAGE_RUNNER_SCALE_SETS=true, with the listener as a subprocess."""

import time
from pathlib import Path

import pytest

from simulator.e2e_world import E2EWorld
from tests.e2e.guests import GUESTS

SHUTDOWN_TIMEOUT = 5.0  # FAST_LISTENER_SETTINGS


def _running_jobs(world: E2EWorld, count: int, duration: float) -> list[int]:
    ids = world.queue_jobs(count, duration)
    world.wait_github(
        lambda state: sum(j["state"] == "running" for j in state["jobs"]) == count, timeout=30
    )
    return ids


@pytest.mark.timeout(90)
def test_sigterm_drains_leaves_busy_vms_running_and_a_restart_adopts_them(
    world: E2EWorld,
) -> None:
    first = world.start_listener()
    first.log.wait_event("session_created", timeout=30)
    _running_jobs(world, 2, duration=8.0)
    deletes_before = len(world.cloud_control.requests(endpoint="compute.servers.delete"))

    asked = time.monotonic()
    first.terminate()
    assert first.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0
    assert time.monotonic() - asked < SHUTDOWN_TIMEOUT
    assert first.log.named("shutdown_requested")
    assert first.log.named("service_stopped")

    state = world.github.control.state()
    # The session is deleted; the scale set stays (MANAGE_RUNNER_SCALE_SETS=false).
    assert state["sessions"] == []
    assert [s["name"] for s in state["scale_sets"]] == [world.scale_set]
    # Running VMs are left alone: no delete was sent, their jobs still run.
    assert len(world.cloud_control.requests(endpoint="compute.servers.delete")) == deletes_before
    assert len(world.servers()) == 2
    assert sorted(j["state"] for j in state["jobs"]) == ["running", "running"]

    second = world.start_listener()
    summary = second.log.wait_event("reconcile_summary", timeout=30)
    assert summary["counts"]["adopt_busy"] == 2
    assert sum(summary["counts"].values()) == 2
    second.log.wait_for(
        lambda: len(second.log.named("runner_adopted", source="reconcile")) >= 2, timeout=10
    )
    adopted = second.log.named("runner_adopted", source="reconcile")
    assert sorted(e["state"] for e in adopted) == ["busy", "busy"]
    world.wait_served(timeout=30)
    world.wait_clean(timeout=30)
    assert second.stop(timeout=15) == 0
    assert world.violations() == []


@pytest.mark.timeout(60)
def test_sigterm_while_a_message_is_in_hand_finishes_it_before_exiting(world: E2EWorld) -> None:
    listener = world.start_listener()
    listener.log.wait_event("session_created", timeout=30)
    # The acknowledgement takes a second, so the signal arrives while the message is handled.
    world.github.control.add_fault("delete_message", "delay", delay=1.0, times=1)
    world.queue_jobs(1, duration=1.0)
    delivered = world.wait_github_event(lambda e: e["type"] == "message_delivered", timeout=30)

    listener.terminate()
    assert listener.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0

    acked = world.github.control.events(type="message_acked")
    assert [e["message_id"] for e in acked] == [delivered["message_id"]]
    (scale_set,) = world.github.control.state()["scale_sets"]
    assert scale_set["unacked_message_ids"] == []
    assert listener.log.named("runner_statistics", message_id=delivered["message_id"])
    assert world.github.control.state()["sessions"] == []

    # Whatever the drain left (a runner being created for the job) the next start serves and
    # cleans up.
    restarted = world.start_listener()
    world.wait_served(timeout=30)
    world.wait_clean(timeout=30)
    assert restarted.stop(timeout=15) == 0
    assert world.violations() == []


@pytest.mark.timeout(90)
def test_without_reconciliation_leftovers_are_adopted_by_the_sweep_within_max_runners(
    tmp_path: Path,
) -> None:
    with E2EWorld(tmp_path, guest_kind=GUESTS, max_runners=2) as world:
        first = world.start_listener()
        first.log.wait_event("session_created", timeout=30)
        _running_jobs(world, 2, duration=6.0)
        leftovers = {server["name"] for server in world.servers()}
        first.kill()

        # The periodic sweep comes too late to matter here: only the one at start can help.
        second = world.start_listener(ENABLE_RECONCILIATION="false", VM_TRACKER_INTERVAL="60s")
        second.log.wait_event("sweep", timeout=30)
        # Nothing is reconciled (no probe, no console, no deletion by age); the sweep runs
        # first instead and adopts the busy leftovers as GitHub reports them, before demand is
        # counted: their running jobs get no second runner (regression: 4 servers at once).
        assert second.log.named("reconcile_summary") == []
        adopted = second.log.named("runner_adopted")
        assert {e["runner_name"] for e in adopted} == leftovers
        assert all(e["source"] == "sweep" and e["state"] == "busy" for e in adopted)
        world.wait_served(timeout=40)
        world.wait_clean(timeout=30)
        assert second.stop(timeout=15) == 0
        assert second.log.named("runner_state", state="creating") == []
        # The busy leftovers were never killed (their jobs succeeded); never more than 2 VMs.
        assert world.violations() == []
        assert world.peak_servers() == 2


@pytest.mark.timeout(60)
def test_managed_scale_set_is_recreated_at_start_and_deleted_at_exit(world: E2EWorld) -> None:
    stale = world.github.control.create_scale_set(world.scale_set, labels=["old-label"])

    listener = world.start_listener(MANAGE_RUNNER_SCALE_SETS="true")
    listener.log.wait_event("session_created", timeout=30)
    assert listener.log.named("scale_set_deleting_stale", scale_set_id=stale["id"])
    (created,) = listener.log.named("scale_set_created")
    assert created["scale_set_id"] != stale["id"]
    (scale_set,) = world.github.control.state()["scale_sets"]
    assert scale_set["id"] == created["scale_set_id"]
    assert sorted(scale_set["labels"]) == sorted([world.scale_set, "e2e"])

    world.queue_jobs(2, duration=0.5)
    world.wait_served(timeout=30)
    world.wait_clean(timeout=30)
    assert listener.stop(timeout=15) == 0

    state = world.github.control.state()
    assert state["scale_sets"] == []
    assert listener.log.named("scale_set_deleted", scale_set_id=created["scale_set_id"])
    assert world.violations() == []


@pytest.mark.timeout(60)
def test_sigterm_lets_a_server_create_in_flight_finish(world: E2EWorld) -> None:
    listener = world.start_listener()
    listener.log.wait_event("session_created", timeout=30)
    world.cloud_control.delay_requests("compute.servers.create", 1.5, times=1)
    world.queue_jobs(1, duration=5.0)
    creating = listener.log.wait_event("runner_state", timeout=30, state="creating")

    listener.terminate()
    assert listener.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0

    # The drain waited for the creation: the listener saw its server ACTIVE before exiting.
    assert listener.log.named("runner_state", runner_name=creating["runner_name"], state="booting")
    # The create was not abandoned half-way: the server exists, named for its runner (and
    # tagged, so that the next start finds it), and its registration is there.
    creates = world.cloud_control.requests(endpoint="compute.servers.create")
    assert [r.status for r in creates] == [202]
    assert [s["name"] for s in world.servers()] == [creating["runner_name"]]
    assert creating["runner_name"] in {r["name"] for r in world.github.control.state()["runners"]}

    restarted = world.start_listener()
    world.wait_served(timeout=30)
    world.wait_clean(timeout=30)
    assert restarted.stop(timeout=15) == 0
    assert world.violations() == []
