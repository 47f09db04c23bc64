"""Message sessions: their state machine (docs/architecture.md#sessions-and-409-conflicts)."""

from __future__ import annotations

from tests.conftest import GitHubSim, GitHubSimFactory
from tests.simulator.helpers import Actions, jwt_claims, type_name_of

SETS = "_apis/runtime/runnerscalesets"


def test_session_carries_the_scale_set_queue_url_token_and_statistics(actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id, owner="host-a")
    assert session.raw["ownerName"] == "host-a"
    assert session.raw["runnerScaleSet"]["id"] == set_id
    assert session.raw["runnerScaleSet"]["name"] == "linux"
    assert "?sessionId=" in session.queue_url
    assert "/broker/" in session.queue_url
    assert jwt_claims(session.token)["exp"] > 0
    assert session.raw["statistics"] == {
        "totalAvailableJobs": 0,
        "totalAcquiredJobs": 0,
        "totalAssignedJobs": 0,
        "totalRunningJobs": 0,
        "totalRegisteredRunners": 0,
        "totalBusyRunners": 0,
        "totalIdleRunners": 0,
    }


def test_second_session_on_a_scale_set_is_a_conflict(actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    actions.create_session(set_id)
    again = actions.call("POST", f"{SETS}/{set_id}/sessions", json_body={"ownerName": "host-b"})
    assert again.status_code == 409
    assert "RunnerScaleSetSessionConflictException" in type_name_of(again)


def test_session_for_an_unknown_scale_set_is_not_found(actions: Actions) -> None:
    response = actions.call("POST", f"{SETS}/404/sessions", json_body={"ownerName": "h"})
    assert response.status_code == 404
    assert "RunnerScaleSetNotFoundException" in type_name_of(response)


def test_deleted_session_frees_the_scale_set_and_a_second_delete_is_expired(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    path = f"{SETS}/{set_id}/sessions/{session.id}"
    assert actions.call("DELETE", path).status_code == 204
    again = actions.call("DELETE", path)
    assert again.status_code == 400
    assert "RunnerScaleSetSessionExpiredException" in type_name_of(again)
    actions.create_session(set_id)
    counters = github_sim.control.state()["counters"]
    assert (counters["sessions_created"], counters["sessions_deleted"]) == (2, 1)


def test_refresh_returns_a_new_queue_token_and_the_old_one_stops_working(
    actions: Actions,
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    refreshed = actions.call("PATCH", f"{SETS}/{set_id}/sessions/{session.id}")
    assert refreshed.status_code == 200
    renewed = actions.session_from(refreshed.json())
    assert renewed.id == session.id
    assert renewed.token != session.token
    assert "statistics" in refreshed.json()
    assert actions.poll(session).status_code == 401
    assert actions.poll(renewed).status_code == 202


def test_expired_queue_token_gives_401_until_the_session_is_refreshed(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    github_sim.control.expire_queue_token(session.id)
    expired = actions.poll(session)
    assert expired.status_code == 401
    assert expired.content == b""
    refreshed = actions.call("PATCH", f"{SETS}/{set_id}/sessions/{session.id}")
    assert actions.poll(actions.session_from(refreshed.json())).status_code == 202


def test_evicted_session_cannot_be_refreshed_but_a_new_one_can_be_created(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    github_sim.control.evict_session(session.id)
    assert actions.poll(session).status_code == 401
    refresh = actions.call("PATCH", f"{SETS}/{set_id}/sessions/{session.id}")
    assert refresh.status_code == 404
    assert "RunnerAdminException" in type_name_of(refresh)
    assert "doesn't exist in redis" in refresh.json()["message"]
    actions.create_session(set_id)


def test_ghost_session_makes_create_a_conflict_until_it_expires(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    github_sim.control.ghost_session(set_id, expires_after=0.3)
    conflict = actions.call("POST", f"{SETS}/{set_id}/sessions", json_body={"ownerName": "me"})
    assert conflict.status_code == 409
    assert "someone-else" in conflict.json()["message"]
    github_sim.control.wait_for_event(lambda e: e["type"] == "ghost_session_expired", timeout=3)
    actions.create_session(set_id)


def test_silent_session_is_dropped_after_the_abandon_timeout(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(session_abandon_timeout=0.2)
    client = Actions(sim)
    set_id = client.create_scale_set("linux")
    session = client.create_session(set_id)
    sim.control.wait_for_state(lambda s: s["counters"]["sessions_abandoned"] == 1, timeout=3)
    assert client.poll(session).status_code == 401
    client.create_session(set_id)
    client.close()


def test_a_polling_session_is_not_abandoned(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory(session_abandon_timeout=0.3, long_poll_timeout=0.5)
    client = Actions(sim)
    session = client.create_session(client.create_scale_set("linux"))
    for _ in range(3):
        assert client.poll(session).status_code == 202
    assert sim.control.state()["counters"]["sessions_abandoned"] == 0
    client.close()
