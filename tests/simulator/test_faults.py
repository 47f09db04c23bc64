"""Fault injection through the control API (sim/README.md, Faults)."""

from __future__ import annotations

import httpx
import pytest

from simulator.github.control import ControlAPIError
from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions, type_name_of

GROUPS = "_apis/runtime/runnergroups/"


def test_status_fault_fires_the_given_number_of_times_with_retry_after(
    github_sim: GitHubSim, actions: Actions
) -> None:
    github_sim.control.add_fault("runner_groups", status=503, times=2, retry_after=7)
    for _ in range(2):
        failed = actions.call("GET", GROUPS)
        assert failed.status_code == 503
        assert failed.headers["Retry-After"] == "7"
        assert failed.headers["ActivityId"]
    assert actions.call("GET", GROUPS).status_code == 200
    [fault] = github_sim.control.faults()["faults"]
    assert fault["fired"] == 2


def test_status_fault_can_carry_an_actions_exception(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    github_sim.control.add_fault(
        "create_session",
        status=409,
        type_name="RunnerScaleSetSessionConflictException",
        message="busy",
    )
    response = actions.call(
        "POST", f"_apis/runtime/runnerscalesets/{set_id}/sessions", json_body={"ownerName": "h"}
    )
    assert response.status_code == 409
    assert type_name_of(response) == (
        "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, "
        "GitHub.Actions.Runtime.WebApi"
    )
    actions.create_session(set_id)


@pytest.mark.parametrize(
    ("body", "content_type", "content"),
    [("text", "text/plain; charset=utf-8", b"plain failure"), ("empty", None, b"")],
)
def test_status_fault_can_answer_text_or_nothing(
    github_sim: GitHubSim,
    actions: Actions,
    body: str,
    content_type: str | None,
    content: bytes,
) -> None:
    github_sim.control.add_fault("runner_groups", status=500, body=body, message="plain failure")
    response = actions.call("GET", GROUPS)
    assert response.status_code == 500
    assert response.headers.get("content-type") == content_type
    assert response.content == content


def test_registration_endpoints_take_faults_too(github_sim: GitHubSim) -> None:
    github_sim.control.add_fault("registration_token", status=403)
    github_sim.control.add_fault("runner_registration", status=401, times=2)
    url = f"{github_sim.api_url}/orgs/acme/actions/runners/registration-token"
    auth = {"Authorization": f"Bearer {github_sim.pat}"}
    assert httpx.post(url, headers=auth).status_code == 403
    token = httpx.post(url, headers=auth).json()["token"]
    statuses = [
        httpx.post(
            f"{github_sim.api_url}/actions/runner-registration",
            headers={"Authorization": f"RemoteAuth {token}"},
            json={"url": github_sim.config_url(), "runner_event": "register"},
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 200]


def test_bom_prefixes_the_next_successful_body_only(
    github_sim: GitHubSim, actions: Actions
) -> None:
    github_sim.control.add_fault("runner_groups", kind="bom")
    first = actions.call("GET", GROUPS)
    assert first.content.startswith(b"\xef\xbb\xbf")
    second = actions.call("GET", GROUPS)
    assert not second.content.startswith(b"\xef\xbb\xbf")


def test_dropped_connection_is_a_transport_error_for_the_client(
    github_sim: GitHubSim, actions: Actions
) -> None:
    github_sim.control.add_fault("runner_groups", kind="drop")
    with pytest.raises(httpx.TransportError):
        actions.call("GET", GROUPS)
    assert actions.call("GET", GROUPS).status_code == 200
    dropped = github_sim.control.wait_for_request(lambda r: r["fault"] == "drop")
    assert dropped["status"] is None


def test_drop_after_processing_loses_the_answer_but_keeps_the_effect(
    github_sim: GitHubSim, actions: Actions
) -> None:
    session = actions.create_session(actions.create_scale_set("linux"))
    github_sim.control.enqueue_jobs(["linux"])
    message_id = actions.poll(session).json()["messageId"]
    github_sim.control.add_fault("delete_message", kind="drop", after_processing=True)
    with pytest.raises(httpx.TransportError):
        actions.ack(session, message_id)
    assert github_sim.control.state()["counters"]["messages_acked"] == 1
    assert actions.poll(session).status_code == 202


def test_delay_holds_the_answer_back(github_sim: GitHubSim, actions: Actions) -> None:
    github_sim.control.add_fault("runner_groups", kind="delay", delay=1.0)
    with pytest.raises(httpx.ReadTimeout):
        actions.http.get(
            actions.tenant_url + GROUPS,
            params={"api-version": "6.0-preview"},
            headers={"Authorization": f"Bearer {actions.admin_token}"},
            timeout=0.2,
        )


def test_probability_zero_never_fires(github_sim: GitHubSim, actions: Actions) -> None:
    github_sim.control.add_fault("runner_groups", status=500, times=None, probability=0.0)
    assert all(actions.call("GET", GROUPS).status_code == 200 for _ in range(5))


def test_get_message_can_answer_200_with_an_empty_body(
    github_sim: GitHubSim, actions: Actions
) -> None:
    session = actions.create_session(actions.create_scale_set("linux"))
    github_sim.control.add_fault("get_message", status=200, body="empty")
    response = actions.poll(session)
    assert (response.status_code, response.content) == (200, b"")


def test_session_can_come_back_with_an_empty_queue_url(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    github_sim.control.add_fault("create_session", kind="empty_queue_url")
    assert actions.create_session(set_id).queue_url == ""


def test_name_lookups_can_answer_more_than_one_match(
    github_sim: GitHubSim, actions: Actions
) -> None:
    github_sim.control.add_fault("runner_groups", kind="duplicate_result")
    assert actions.call("GET", GROUPS, params={"groupName": "default"}).json()["count"] == 2


def test_unknown_message_types_can_be_injected(github_sim: GitHubSim, actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    github_sim.control.inject_message(set_id, message_type="SomethingNew", body="{}")
    github_sim.control.inject_message(set_id, job_messages=[{"messageType": "JobTeleported"}])
    first = actions.poll(session).json()
    assert first["messageType"] == "SomethingNew"
    actions.ack(session, first["messageId"])
    second = actions.poll(session, last_message_id=first["messageId"])
    assert actions.job_messages(second) == [{"messageType": "JobTeleported"}]


def test_messages_can_carry_raw_statistics_and_malformed_job_messages(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    session = actions.create_session(set_id)
    odd_statistics = {"totalAssignedJobs": "lots", "totalRunningJobs": 0, "newCounter": [1]}
    bad_job = {"messageType": "JobStarted", "runnerId": "not-a-number"}
    good_job = {"messageType": "JobCompleted", "runnerName": "r-1", "result": "succeeded"}
    injected = github_sim.control.inject_message(
        set_id, job_messages=[bad_job, good_job], statistics=odd_statistics
    )
    assert injected is not None
    first = actions.poll(session)
    # Verbatim, in place of the computed statistics, and the batch as given.
    assert first.json()["messageId"] == injected
    assert first.json()["messageType"] == "RunnerScaleSetJobMessages"
    assert first.json()["statistics"] == odd_statistics
    assert actions.job_messages(first) == [bad_job, good_job]
    # Redelivered unacknowledged, it carries the same statistics again.
    again = actions.poll(session)
    assert again.json()["statistics"] == odd_statistics
    actions.ack(session, injected)
    # Only job messages: queued for the next batch, which has computed statistics.
    assert github_sim.control.inject_message(set_id, job_messages=[bad_job]) is None
    batch = actions.poll(session, last_message_id=injected)
    assert actions.job_messages(batch) == [bad_job]
    assert batch.json()["statistics"]["totalAssignedJobs"] == 0
    created = github_sim.control.events(type="message_created")
    assert [e["raw_statistics"] for e in created] == [True, False]
    refused = httpx.post(
        f"{github_sim.base_url}/_sim/scalesets/{set_id}/messages",
        json={"statistics": "not an object"},
    )
    assert refused.status_code == 400
    assert "statistics must be a JSON object" in refused.json()["error"]


def test_service_side_deletion_makes_session_create_not_found(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    github_sim.control.delete_scale_set(set_id)
    response = actions.call(
        "POST", f"_apis/runtime/runnerscalesets/{set_id}/sessions", json_body={"ownerName": "h"}
    )
    assert response.status_code == 404
    assert "RunnerScaleSetNotFoundException" in type_name_of(response)


def test_bad_fault_specs_are_refused(github_sim: GitHubSim) -> None:
    with pytest.raises(ControlAPIError, match="unknown endpoint"):
        github_sim.control.add_fault("teleport")
    with pytest.raises(ControlAPIError, match="unknown fault kind"):
        github_sim.control.add_fault("get_message", kind="gremlins")
