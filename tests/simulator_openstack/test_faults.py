"""Fault injection and the control API, seen through openstacksdk."""

from __future__ import annotations

import time

import httpx
import pytest
from keystoneauth1 import exceptions as ksa_exceptions
from openstack import connection, exceptions

from simulator.openstack.control import CloudControl, ControlApiError
from simulator.openstack.server import RunningCloud
from tests.simulator_openstack.helpers import Ids, create, raw, server_body, wait_active, wait_error

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*")


def test_a_scheduling_failure_puts_the_next_server_in_error_with_its_fault(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.fail_server_creates("No valid host was found. There are not enough hosts available.")
    failed = wait_error(conn, create(conn, ids, "unlucky"))
    assert failed.fault["code"] == 500
    assert failed.fault["message"] == (
        "No valid host was found. There are not enough hosts available."
    )
    assert "details" not in failed.fault  # a 500 fault's details are for admins only
    assert "created" in failed.fault
    # No port was made for a server that was never scheduled.
    assert list(conn.network.ports(device_id=failed.id)) == []
    # The fault fired once: the next server is fine, and the ERROR server can be deleted.
    wait_active(conn, create(conn, ids, "lucky"))
    conn.compute.delete_server(failed)
    conn.compute.wait_for_delete(failed, interval=0.05, wait=5)


def test_the_instance_quota_gives_novas_403_message(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.set_quotas(instances=1)
    wait_active(conn, create(conn, ids, "only-one"))
    assert raw(conn, "POST", "/servers", json=server_body(ids, "two")) == (
        403,
        {
            "forbidden": {
                "code": 403,
                "message": "Quota exceeded for instances: Requested 1, but already used 1 of 1 "
                "instances",
            }
        },
    )
    with pytest.raises(exceptions.ForbiddenException, match="Quota exceeded for instances"):
        create(conn, ids, "two")


def test_a_quota_fault_refuses_one_create_as_if_the_quota_were_used_up(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.exceed_quota("cores")
    status, body = raw(conn, "POST", "/servers", json=server_body(ids, "q"))
    assert status == 403
    assert body["forbidden"]["message"] == (
        "Quota exceeded for cores: Requested 1, but already used 0 of 0 cores"
    )
    assert raw(conn, "POST", "/servers", json=server_body(ids, "q"))[0] == 202


def test_an_injected_500_reaches_openstacksdk_as_a_server_error_once(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    fault = control.fail_requests("compute.servers.create", status=500)
    with pytest.raises(exceptions.HttpException) as raised:
        create(conn, ids, "boom")
    assert raised.value.status_code == 500
    status, _ = raw(conn, "POST", "/servers", json=server_body(ids, "fine"))
    assert status == 202
    (logged,) = [r for r in control.requests("compute.servers.create") if r.fault_id]
    assert (logged.fault_id, logged.status) == (fault["id"], 500)
    assert control.faults()[0]["fired"] == 1


def test_a_503_on_neutron_has_neutrons_error_shape(
    conn: connection.Connection, control: CloudControl
) -> None:
    control.fail_requests("network.floatingips.*", status=503, times=None)
    response = conn.network.get("/floatingips", raise_exc=False)
    assert response.status_code == 503
    assert set(response.json()["NeutronError"]) == {"type", "message", "detail"}


def test_a_dropped_connection_is_a_transport_error_for_the_client(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    conn.authorize()
    control.drop_connections("compute.servers.list")
    with pytest.raises((ksa_exceptions.ConnectionError, exceptions.SDKException)):
        list(conn.compute.servers())
    assert list(conn.compute.servers()) == []
    (logged, _) = control.requests("compute.servers.list")
    assert (logged.dropped, logged.status) == (True, None)


def test_a_delay_fault_slows_one_request(
    conn: connection.Connection, control: CloudControl
) -> None:
    conn.authorize()
    control.delay_requests("compute.flavors", 0.3)
    started = time.monotonic()
    list(conn.compute.flavors())
    assert time.monotonic() - started >= 0.3


def test_a_server_that_never_becomes_active_stays_in_build(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.never_active()
    stuck = create(conn, ids, "stuck")
    with pytest.raises(exceptions.ResourceTimeout):
        conn.compute.wait_for_server(stuck, interval=0.05, wait=0.6)
    assert control.server(stuck.id).task_state == "spawning"


def test_a_failing_delete_leaves_the_server_in_error(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    server = wait_active(conn, create(conn, ids, "sticky"))
    control.fail_server_deletes("Failed to terminate instance: disk busy")
    conn.compute.delete_server(server)
    # While the delete runs the server is still ACTIVE (task_state deleting), as in Nova.
    failed = conn.compute.wait_for_server(
        server, status="ERROR", failures=[], interval=0.05, wait=5
    )
    assert failed.fault["message"] == "Failed to terminate instance: disk busy"
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.05, wait=5)


def test_a_vm_that_powers_itself_off_is_shutoff(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    server = wait_active(conn, create(conn, ids, "done"))
    control.set_server_status(server.id, "SHUTOFF")
    off = conn.compute.get_server(server.id)
    assert (off.status, off.vm_state, off.power_state) == ("SHUTOFF", "stopped", 4)


def test_the_request_log_records_every_api_call_with_its_microversion(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.clear_requests()
    server = wait_active(conn, create(conn, ids, "logged", user_data="aGk="))
    (post,) = control.requests("compute.servers.create")
    assert (post.method, post.status, post.microversion) == ("POST", 202, "2.100")
    assert post.body["server"]["user_data"] == "aGk="
    gets = control.requests("compute.servers.get")
    assert gets
    assert all(r.path.endswith(server.id) for r in gets)
    later = control.requests(since=gets[-1].id)
    assert all(r.id > gets[-1].id for r in later)


def test_config_reset_and_bad_control_requests(
    running: RunningCloud, conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.update_config(build_delay=0.05, quotas={"instances": 3})
    assert control.config()["quotas"]["instances"] == 3
    wait_active(conn, create(conn, ids, "before-reset"))
    control.fail_requests("compute.*", times=None)
    control.reset()
    assert control.state()["servers"] == []
    assert control.faults() == []
    assert control.config()["quotas"]["instances"] == 10
    # Tokens survive a reset: the same connection goes on working.
    assert list(conn.compute.servers()) == []
    with pytest.raises(ControlApiError, match="unknown config fields"):
        control.update_config(nonsense=1)
    with pytest.raises(ControlApiError, match="matches no endpoint"):
        control.fail_requests("compute.nothing")
    assert "compute.servers.create" in control.endpoints()
    assert httpx.get(f"{running.base_url}/_sim/clouds.yaml").text == running.clouds_yaml()
