"""Runner groups, scale sets and runners (agents): success codes, envelopes and error types."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions, type_name_of

SETS = "_apis/runtime/runnerscalesets"
AGENTS = "_apis/distributedtask/pools/0/agents"


@pytest.mark.parametrize("path", ["_apis/runtime/runnergroups/", "_apis/runtime/runnergroups"])
@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
def test_default_runner_group_is_id_1_under_any_casing(
    actions: Actions, path: str, name: str
) -> None:
    response = actions.call("GET", path, params={"groupName": name})
    assert response.status_code == 200
    assert response.json() == {
        "count": 1,
        "value": [{"id": 1, "name": "Default", "size": 0, "isDefaultGroup": True}],
    }


def test_runner_groups_added_by_control_are_found_and_misses_give_count_0(
    github_sim: GitHubSim, actions: Actions
) -> None:
    group_id = github_sim.control.add_runner_group("gpu-pool")
    found = actions.call("GET", "_apis/runtime/runnergroups/", params={"groupName": "gpu-pool"})
    assert found.json()["value"][0]["id"] == group_id
    missing = actions.call("GET", "_apis/runtime/runnergroups/", params={"groupName": "nope"})
    assert missing.json() == {"count": 0, "value": []}


def test_create_scale_set_accepts_go_quirks_and_answers_200_in_camel_case(
    actions: Actions,
) -> None:
    body = {
        "name": "linux-x64",
        "runnerGroupId": 1,
        "labels": [{"type": "System", "name": "linux-x64"}, {"name": "gpu"}],
        "RunnerSetting": {"disableUpdate": True},
        "createdOn": "0001-01-01T00:00:00Z",
    }
    response = actions.call("POST", SETS, json_body=body)
    assert response.status_code == 200
    created = response.json()
    assert created["name"] == "linux-x64"
    assert created["runnerGroupName"] == "Default"
    assert created["labels"] == [
        {"type": "System", "name": "linux-x64"},
        {"type": "System", "name": "gpu"},
    ]
    assert created["runnerSetting"] == {"disableUpdate": True}
    assert created["createdOn"] != "0001-01-01T00:00:00Z"
    assert created["runnerJitConfigUrl"].startswith(actions.tenant_url)
    assert created["statistics"]["totalAssignedJobs"] == 0
    assert response.headers["ActivityId"]


def test_scale_set_without_labels_gets_its_name_as_label(actions: Actions) -> None:
    response = actions.call("POST", SETS, json_body={"name": "bare", "runnerGroupId": 1})
    assert response.json()["labels"] == [{"type": "System", "name": "bare"}]


def test_scale_set_names_are_unique_within_a_group(actions: Actions) -> None:
    actions.create_scale_set("linux")
    again = actions.call("POST", SETS, json_body={"name": "linux", "runnerGroupId": 1})
    assert again.status_code == 409
    assert "RunnerScaleSetExistsException" in type_name_of(again)


def test_find_by_name_answers_a_list_envelope(actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    hit = actions.call("GET", SETS, params={"runnerGroupId": 1, "name": "linux"})
    assert hit.status_code == 200
    assert hit.json()["count"] == 1
    assert hit.json()["value"][0]["id"] == set_id
    miss = actions.call("GET", SETS, params={"runnerGroupId": 1, "name": "windows"})
    assert miss.json() == {"count": 0, "value": []}


def test_get_unknown_scale_set_is_not_found(actions: Actions) -> None:
    response = actions.call("GET", f"{SETS}/999")
    assert response.status_code == 404
    assert type_name_of(response) == (
        "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, "
        "GitHub.Actions.Runtime.WebApi"
    )


def test_patch_renames_and_moves_a_scale_set(github_sim: GitHubSim, actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    group_id = github_sim.control.add_runner_group("other")
    response = actions.call(
        "PATCH",
        f"{SETS}/{set_id}",
        json_body={
            "name": "linux-2",
            "runnerGroupId": group_id,
            "RunnerSetting": {},
            "createdOn": "0001-01-01T00:00:00Z",
        },
    )
    assert response.status_code == 200
    assert response.json()["name"] == "linux-2"
    assert response.json()["runnerGroupName"] == "other"
    assert response.json()["runnerSetting"] == {"disableUpdate": True}


def test_delete_scale_set_answers_204_and_it_is_gone(actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    assert actions.call("DELETE", f"{SETS}/{set_id}").status_code == 204
    assert actions.call("GET", f"{SETS}/{set_id}").status_code == 404


def test_delete_scale_set_is_refused_while_a_runner_is_busy(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    actions.create_session(set_id)
    [job] = github_sim.control.enqueue_jobs(["linux"])
    runner_id = actions.start_runner(set_id, "r1")
    github_sim.control.runner_take_job(runner_id, job)
    response = actions.call("DELETE", f"{SETS}/{set_id}")
    assert response.status_code == 400
    assert "JobStillRunningException" in type_name_of(response)


def test_deleting_a_scale_set_returns_its_assigned_jobs_to_the_queue(
    github_sim: GitHubSim, actions: Actions
) -> None:
    first = actions.create_scale_set("first", labels=("linux",))
    actions.create_session(first)
    [job] = github_sim.control.enqueue_jobs(["linux"])
    assert github_sim.control.state()["jobs"][0]["scale_set_id"] == first
    assert actions.call("DELETE", f"{SETS}/{first}").status_code == 204
    assert github_sim.control.state()["jobs"][0]["state"] == "queued"
    second = actions.create_scale_set("second", labels=("linux",))
    actions.create_session(second)
    state = github_sim.control.state()
    assert state["jobs"][0]["id"] == job
    assert state["jobs"][0]["state"] == "assigned"
    assert state["jobs"][0]["scale_set_id"] == second


def test_generatejitconfig_registers_an_offline_runner(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    response = actions.generate_jit(set_id, "linux-abc")
    assert response.status_code == 200
    runner = response.json()["runner"]
    assert runner["name"] == "linux-abc"
    assert runner["runnerScaleSetId"] == set_id
    document = json.loads(base64.b64decode(response.json()["encodedJITConfig"]))
    assert document["runnerName"] == "linux-abc"
    assert document["secret"]
    assert document["serverUrl"] == github_sim.base_url
    state = github_sim.control.state()
    assert state["runners"] == [
        {
            "id": runner["id"],
            "name": "linux-abc",
            "scale_set_id": set_id,
            "state": "offline",
            "job": None,
            "jit_used": False,
            "version": None,  # not connected yet
            "refused": None,
        }
    ]


def test_generatejitconfig_with_a_taken_name_is_agent_exists(actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    assert actions.generate_jit(set_id, "r1").status_code == 200
    again = actions.generate_jit(set_id, "r1")
    assert again.status_code == 409
    assert "AgentExistsException" in type_name_of(again)


def test_agents_get_by_id_and_by_name(actions: Actions) -> None:
    set_id = actions.create_scale_set("linux")
    runner_id = actions.generate_jit(set_id, "r1").json()["runner"]["id"]
    by_id = actions.call("GET", f"{AGENTS}/{runner_id}")
    assert by_id.status_code == 200
    assert by_id.json()["name"] == "r1"
    by_name = actions.call("GET", AGENTS, params={"agentName": "r1"})
    assert by_name.json()["count"] == 1
    assert by_name.json()["value"][0]["id"] == runner_id
    assert actions.call("GET", AGENTS, params={"agentName": "r2"}).json()["count"] == 0
    unknown = actions.call("GET", f"{AGENTS}/4040")
    assert unknown.status_code == 404
    assert "AgentNotFoundException" in type_name_of(unknown)


def test_remove_runner_is_204_for_idle_and_unknown_and_400_when_busy(
    github_sim: GitHubSim, actions: Actions
) -> None:
    set_id = actions.create_scale_set("linux")
    actions.create_session(set_id)
    idle = actions.start_runner(set_id, "idle-one")
    busy = actions.start_runner(set_id, "busy-one")
    [job] = github_sim.control.enqueue_jobs(["linux"])
    github_sim.control.runner_take_job(busy, job)
    assert actions.call("DELETE", f"{AGENTS}/{idle}").status_code == 204
    assert actions.call("DELETE", f"{AGENTS}/{idle}").status_code == 204
    refused = actions.call("DELETE", f"{AGENTS}/{busy}")
    assert refused.status_code == 400
    assert "JobStillRunningException" in type_name_of(refused)
    assert "is currently running a job and cannot be deleted" in refused.json()["message"]
    counters = github_sim.control.state()["counters"]
    assert counters["runner_removals"] == 1
    assert counters["runner_removal_calls"] == 3
