"""Nova servers through openstacksdk: lifecycle, filters, validation, sub-resources."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import pytest
from openstack import connection, exceptions

from simulator.openstack.control import CloudControl, ControlApiError
from tests.simulator_openstack.helpers import (
    METADATA,
    USER_DATA,
    USER_DATA_TEXT,
    Ids,
    create,
    raw,
    server_body,
    wait_active,
)

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*")

# The keys of an owner's GET /servers/{id} at 2.100, as measured on a real Nova 34.
REAL_NOVA_KEYS_2_100 = {
    "OS-DCF:diskConfig",
    "OS-EXT-AZ:availability_zone",
    "OS-EXT-SRV-ATTR:hostname",
    "OS-EXT-STS:power_state",
    "OS-EXT-STS:task_state",
    "OS-EXT-STS:vm_state",
    "OS-SRV-USG:launched_at",
    "OS-SRV-USG:terminated_at",
    "accessIPv4",
    "accessIPv6",
    "addresses",
    "config_drive",
    "created",
    "description",
    "flavor",
    "hostId",
    "id",
    "image",
    "key_name",
    "links",
    "locked",
    "locked_reason",
    "metadata",
    "name",
    "os-extended-volumes:volumes_attached",
    "pinned_availability_zone",
    "progress",
    "scheduler_hints",
    "security_groups",
    "server_groups",
    "status",
    "tags",
    "tenant_id",
    "trusted_image_certificates",
    "updated",
    "user_id",
}


def test_a_server_is_built_then_active_with_its_metadata_tags_and_address(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    created = create(
        conn,
        ids,
        "vm-1",
        key_name="runner-key",
        security_groups=[{"name": "default"}],
        user_data=USER_DATA,
        metadata=METADATA,
        tags=["ci", "smoke"],
    )
    assert conn.compute.get_server(created.id).status == "BUILD"
    server = conn.compute.get_server(wait_active(conn, created).id)
    assert server.metadata == METADATA
    assert sorted(server.tags) == ["ci", "smoke"]
    assert server.key_name == "runner-key"
    assert server.security_groups == [{"name": "default"}]
    assert server.user_data is None  # admin-only in Nova's default policy
    (address,) = server.addresses["runners-net"]
    assert address["OS-EXT-IPS:type"] == "fixed"
    assert address["addr"].startswith("10.0.0.")
    # The port exists in Neutron, bound to the server.
    (port,) = conn.network.ports(device_id=server.id)
    assert port.fixed_ips[0]["ip_address"] == address["addr"]
    # The state dump shows what the guest would get.
    info = control.server(server.id)
    assert info.user_data == USER_DATA_TEXT
    assert info.status == "ACTIVE"


def test_the_owners_server_view_has_the_same_keys_as_a_real_nova(
    conn: connection.Connection, ids: Ids
) -> None:
    server = wait_active(conn, create(conn, ids, "keys", tags=["x"]))
    status, body = raw(conn, "GET", f"/servers/{server.id}")
    assert status == 200
    assert set(body["server"]) == REAL_NOVA_KEYS_2_100
    status, body = raw(conn, "GET", f"/servers/{server.id}", microversion="2.1")
    assert "tags" not in body["server"]


def test_tag_filters_and_the_name_regex_are_applied_server_side(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    first = create(conn, ids, "osk-vm-1", tags=["ci", "smoke"])
    other = create(conn, ids, "other-vm", tags=["other"])
    for server in (first, other):
        wait_active(conn, server)
    control.clear_requests()

    def names(**query: Any) -> set[str]:
        return {s.name for s in conn.compute.servers(**query)}

    assert names(tags="ci") == {"osk-vm-1"}
    assert names(tags="ci,smoke") == {"osk-vm-1"}
    assert names(any_tags="other,nope") == {"other-vm"}
    assert names(not_tags="ci") == {"other-vm"}
    assert names(name="^osk-") == {"osk-vm-1"}
    assert names(name="vm-[0-9]$") == {"osk-vm-1"}
    # The filters went to Nova, not applied by the client.
    queries = [r.query for r in control.requests(endpoint="compute.servers.list")]
    assert "tags=ci" in queries
    assert "tags-any=other%2Cnope" in queries


def test_the_metadata_filter_is_silently_ignored_like_nova_does(
    conn: connection.Connection, ids: Ids
) -> None:
    server = wait_active(conn, create(conn, ids, "meta", metadata={"owner": "ci"}))
    status, body = raw(conn, "GET", "/servers/detail?metadata=owner%3Dnobody")
    assert status == 200
    assert [s["id"] for s in body["servers"]] == [server.id]


def test_tag_filters_are_ignored_before_microversion_2_26(
    conn: connection.Connection, ids: Ids
) -> None:
    server = create(conn, ids, "old-filter", tags=["ci"])
    status, body = raw(conn, "GET", "/servers?tags=no-such-tag", microversion="2.25")
    assert status == 200
    assert [s["id"] for s in body["servers"]] == [server.id]


def test_user_data_over_64k_is_rejected_with_400(conn: connection.Connection, ids: Ids) -> None:
    too_big = base64.b64encode(os.urandom(49152 + 3)).decode()  # 65540 characters
    status, body = raw(conn, "POST", "/servers", json=server_body(ids, "big", user_data=too_big))
    assert status == 400
    message = body["badRequest"]["message"]
    assert message.startswith("Invalid input for field/attribute user_data.")
    assert message.endswith("is too long")
    with pytest.raises(exceptions.BadRequestException):
        create(conn, ids, "big", user_data=too_big)
    just_fits = base64.b64encode(os.urandom(49149)).decode()  # 65532 characters
    assert raw(conn, "POST", "/servers", json=server_body(ids, "ok", user_data=just_fits))[0] == 202


def test_user_data_that_is_not_base64_is_rejected_with_400(
    conn: connection.Connection, ids: Ids
) -> None:
    body = server_body(ids, "b64", user_data="not base64!")
    assert raw(conn, "POST", "/servers", json=body) == (
        400,
        {
            "badRequest": {
                "code": 400,
                "message": "Invalid input for field/attribute user_data. Value: not base64!. "
                "'not base64!' is not a 'base64'",
            }
        },
    )


def test_unknown_flavor_and_image_are_400_with_novas_messages(
    conn: connection.Connection, ids: Ids
) -> None:
    body = server_body(ids, "fl")
    body["server"]["flavorRef"] = "nope"
    assert raw(conn, "POST", "/servers", json=body) == (
        400,
        {"badRequest": {"code": 400, "message": "Flavor nope could not be found."}},
    )
    body = server_body(ids, "im")
    body["server"]["imageRef"] = str(uuid.uuid4())
    assert raw(conn, "POST", "/servers", json=body) == (
        400,
        {"badRequest": {"code": 400, "message": "Can not find requested image"}},
    )


def test_a_tag_longer_than_60_characters_is_400(conn: connection.Connection, ids: Ids) -> None:
    tag = "a" * 61
    status, body = raw(conn, "POST", "/servers", json=server_body(ids, "t", tags=[tag]))
    assert status == 400
    assert body["badRequest"]["message"] == (
        f"Invalid input for field/attribute 0. Value: {tag}. '{tag}' is too long"
    )


def test_tags_in_the_create_body_need_microversion_2_52(
    conn: connection.Connection, ids: Ids
) -> None:
    with_tags = server_body(ids, "old", tags=["ci"])
    status, body = raw(conn, "POST", "/servers", microversion="2.51", json=with_tags)
    assert status == 400
    assert body == {
        "badRequest": {
            "code": 400,
            "message": "Invalid input for field/attribute server. Value: "
            f"{with_tags['server']}. Additional properties are not allowed "
            "('tags' was unexpected)",
        }
    }


def test_an_old_cloud_without_2_52_makes_openstacksdk_tag_creates_fail(
    control: CloudControl, target_conn_factory: connection.Connection, ids: Ids
) -> None:
    conn = target_conn_factory
    data = conn.compute.get_endpoint_data()
    assert data is not None
    assert data.max_microversion == (2, 51)
    with pytest.raises(exceptions.BadRequestException, match="'tags' was unexpected"):
        create(conn, ids, "tagged", tags=["ci"])
    # Without tags the create works, and tags can be added once the server is ACTIVE.
    server = wait_active(conn, create(conn, ids, "untagged"))
    conn.compute.add_tag_to_server(server, "late")
    assert conn.compute.get_server(server.id).tags == ["late"]


def test_unknown_server_is_404_and_delete_makes_the_server_disappear(
    conn: connection.Connection, ids: Ids
) -> None:
    missing = str(uuid.uuid4())
    assert raw(conn, "GET", f"/servers/{missing}") == (
        404,
        {"itemNotFound": {"code": 404, "message": f"Instance {missing} could not be found."}},
    )
    server = wait_active(conn, create(conn, ids, "doomed"))
    port_ids = [p.id for p in conn.network.ports(device_id=server.id)]
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.05, wait=5)
    assert raw(conn, "DELETE", f"/servers/{server.id}") == (
        404,
        {"itemNotFound": {"code": 404, "message": f"Instance {server.id} could not be found."}},
    )
    with pytest.raises(exceptions.NotFoundException):
        conn.compute.delete_server(server.id, ignore_missing=False)
    conn.compute.delete_server(server.id, ignore_missing=True)
    # The port went with the server.
    assert port_ids
    assert list(conn.network.ports(device_id=server.id)) == []


def test_console_output_starts_with_boot_lines_and_takes_appended_lines(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    server = wait_active(conn, create(conn, ids, "console"))
    output = conn.compute.get_server_console_output(server)["output"]
    assert "Cloud-init v. 24.4 running 'modules:final'" in output
    control.append_console(server.id, "SCALESET setup-complete", "SCALESET run-complete 0")
    assert conn.compute.get_server_console_output(server, length=2) == {
        "output": "SCALESET setup-complete\nSCALESET run-complete 0"
    }
    status, body = raw(
        conn, "POST", f"/servers/{server.id}/action", json={"os-getConsoleOutput": {"length": 1}}
    )
    assert (status, body) == (200, {"output": "SCALESET run-complete 0"})


def test_stop_and_start_move_between_shutoff_and_active(
    conn: connection.Connection, ids: Ids
) -> None:
    server = wait_active(conn, create(conn, ids, "power"))
    conn.compute.stop_server(server)
    stopped = conn.compute.wait_for_server(server, status="SHUTOFF", interval=0.05, wait=5)
    assert stopped.power_state == 4
    status, body = raw(conn, "POST", f"/servers/{server.id}/action", json={"os-stop": None})
    assert status == 409
    assert body["conflictingRequest"]["message"] == (
        f"Cannot 'stop' instance {server.id} while it is in vm_state stopped"
    )
    conn.compute.start_server(server)
    assert wait_active(conn, server).power_state == 1


def test_tags_and_metadata_sub_resources(conn: connection.Connection, ids: Ids) -> None:
    server = wait_active(conn, create(conn, ids, "subres", tags=["a"], metadata={"k": "v"}))
    conn.compute.add_tag_to_server(server, "b")
    assert sorted(conn.compute.get_server(server.id).tags) == ["a", "b"]
    conn.compute.remove_tag_from_server(server, "a")
    assert conn.compute.get_server(server.id).tags == ["b"]
    status, body = raw(conn, "DELETE", f"/servers/{server.id}/tags/nope")
    assert (status, body["itemNotFound"]["message"]) == (
        404,
        f"Instance {server.id} has no tag 'nope'",
    )
    conn.compute.set_server_metadata(server, extra="1")
    assert conn.compute.get_server_metadata(server).metadata == {"k": "v", "extra": "1"}
    conn.compute.delete_server_metadata(server, ["k"])
    assert conn.compute.get_server(server.id).metadata == {"extra": "1"}


def test_limits_and_keypairs(conn: connection.Connection, ids: Ids) -> None:
    wait_active(conn, create(conn, ids, "counted"))
    status, body = raw(conn, "GET", "/limits")
    absolute = body["limits"]["absolute"]
    assert status == 200
    assert (absolute["maxTotalInstances"], absolute["totalInstancesUsed"]) == (10, 1)
    assert (absolute["maxTotalCores"], absolute["totalCoresUsed"]) == (20, 1)
    assert "maxPersonality" not in absolute  # gone since 2.57
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm9ql0h8hZ5Lh1b3sOx2CVa0a1JgD0iKfW7mS9mK6mZ t"
    created = conn.compute.create_keypair(name="extra-key", public_key=key)
    assert created.fingerprint.count(":") == 15
    assert {k.name for k in conn.compute.keypairs()} == {"runner-key", "extra-key"}
    conn.compute.delete_keypair("extra-key")
    with pytest.raises(exceptions.NotFoundException):
        conn.compute.get_keypair("extra-key")


# GET /limits' absolute keys as Nova 34 answers them (tests/real_openstack/README.md).
NOVA_LIMITS_KEYS = {
    "maxServerMeta", "maxServerGroups", "maxServerGroupMembers", "maxTotalCores",
    "maxTotalInstances", "maxTotalKeypairs", "maxTotalRAMSize", "totalCoresUsed",
    "totalInstancesUsed", "totalRAMUsed", "totalServerGroupsUsed",
}  # fmt: skip
NOVA_LIMITS_KEYS_BELOW_2_57 = NOVA_LIMITS_KEYS | {"maxPersonality", "maxPersonalitySize"}
NOVA_LIMITS_KEYS_BELOW_2_39 = NOVA_LIMITS_KEYS_BELOW_2_57 | {"maxImageMeta"}
NOVA_LIMITS_KEYS_BELOW_2_36 = NOVA_LIMITS_KEYS_BELOW_2_39 | {
    "maxSecurityGroupRules", "maxSecurityGroups", "maxTotalFloatingIps",
    "totalFloatingIpsUsed", "totalSecurityGroupsUsed",
}  # fmt: skip


@pytest.mark.parametrize(
    ("microversion", "keys"),
    [
        ("2.100", NOVA_LIMITS_KEYS),
        ("2.57", NOVA_LIMITS_KEYS),
        ("2.39", NOVA_LIMITS_KEYS_BELOW_2_57),
        ("2.36", NOVA_LIMITS_KEYS_BELOW_2_39),
        ("2.1", NOVA_LIMITS_KEYS_BELOW_2_36),
    ],
)
def test_limits_have_novas_keys_and_minus_one_for_unlimited(
    conn: connection.Connection, control: CloudControl, microversion: str, keys: set[str]
) -> None:
    control.set_quotas(instances=-1, ram=-1)
    status, body = raw(conn, "GET", "/limits", microversion=microversion)
    absolute = body["limits"]["absolute"]
    assert status == 200
    assert set(absolute) == keys
    assert (absolute["maxTotalInstances"], absolute["maxTotalRAMSize"]) == (-1, -1)
    assert absolute["maxTotalCores"] == 20
    if "maxTotalFloatingIps" in absolute:
        # nova-network's quotas, unlimited now that Neutron owns them.
        assert absolute["maxTotalFloatingIps"] == absolute["maxSecurityGroups"] == -1


def test_changes_during_build_are_refused_as_measured_on_nova(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    """Measured on Nova 34: tags, metadata and console output wait for the build."""
    control.update_config(build_delay=5.0)  # the test never waits for ACTIVE
    server = create(conn, ids, "young")
    sid = server.id
    # Before the scheduler has picked a host there is no console.
    status, body = raw(
        conn, "POST", f"/servers/{sid}/action", json={"os-getConsoleOutput": {"length": 1}}
    )
    assert (status, body["conflictingRequest"]["message"]) == (
        409,
        f"Instance {sid} is not ready",
    )
    assert raw(conn, "PUT", f"/servers/{sid}/tags/early")[1] == {
        "conflictingRequest": {
            "code": 409,
            "message": f"Cannot 'update tag' instance {sid} while it is in vm_state building",
        }
    }
    status, body = raw(conn, "POST", f"/servers/{sid}/metadata", json={"metadata": {"a": "b"}})
    assert (status, body["conflictingRequest"]["message"]) == (
        409,
        f"Cannot 'update metadata' instance {sid} while it is in vm_state building",
    )


def test_more_create_errors_read_as_on_nova(conn: connection.Connection, ids: Ids) -> None:
    def message(**extra: Any) -> str:
        status, body = raw(conn, "POST", "/servers", json=server_body(ids, "bad", **extra))
        assert status == 400
        return str(body["badRequest"]["message"])

    assert message(key_name="nope") == "Invalid key_name provided."
    assert message(security_groups=[{"name": "nope"}]) == (
        "Unable to find security_group with name or id 'nope'"
    )
    missing = str(uuid.uuid4())
    assert message(networks=[{"uuid": missing}]) == f"Network {missing} could not be found."
    assert raw(conn, "GET", "/servers?status=FOO") == (
        400,
        {"badRequest": {"code": 400, "message": "Invalid status value"}},
    )
    response = conn.network.get("/floatingips?foo=bar", raise_exc=False)
    assert response.status_code == 400
    assert response.json() == {
        "NeutronError": {
            "type": "HTTPBadRequest",
            "message": "['foo'] is invalid attribute for filtering",
            "detail": "",
        }
    }


def test_metadata_updates_merge_and_keep_novas_limits(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    server = wait_active(conn, create(conn, ids, "meta-limits", metadata={"owner": "ci"}))
    sid = server.id
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm9ql0h8hZ5Lh1b3sOx2CVa0a1JgD0iKfW7mS9mK6mZ"
    status, body = raw(
        conn, "POST", f"/servers/{sid}/metadata", json={"metadata": {"scaleset-host-key": key}}
    )
    assert (status, body) == (200, {"metadata": {"owner": "ci", "scaleset-host-key": key}})
    status, body = raw(
        conn, "POST", f"/servers/{sid}/metadata", json={"metadata": {"long": "x" * 256}}
    )
    assert status == 400
    assert body["badRequest"]["message"].endswith("is too long")
    assert (
        raw(conn, "POST", f"/servers/{sid}/metadata", json={"metadata": {"v": "x" * 255}})[0] == 200
    )
    status, body = raw(conn, "POST", f"/servers/{sid}/metadata", json={"metadata": {"a/b": "1"}})
    assert status == 400
    assert "does not match any of the regexes" in body["badRequest"]["message"]
    limit = int(control.config()["quotas"]["metadata_items"])
    many = {f"k{n}": "1" for n in range(limit)}
    status, body = raw(conn, "POST", f"/servers/{sid}/metadata", json={"metadata": many})
    assert status == 403
    assert body["forbidden"]["message"] == f"Maximum number of metadata items exceeds {limit}"
    assert conn.compute.get_server(sid).metadata == {
        "owner": "ci",
        "scaleset-host-key": key,
        "v": "x" * 255,
    }


def test_the_tenant_subnet_can_be_a_loopback_range_for_sandbox_vms(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    before = create(conn, ids, "vm-before")
    control.update_config(fixed_subnet="127.77.0.0/16")
    server = conn.compute.get_server(wait_active(conn, create(conn, ids, "vm-1")).id)

    (address,) = server.addresses["runners-net"]
    assert (address["OS-EXT-IPS:type"], address["version"]) == ("fixed", 4)
    assert address["addr"].startswith("127.77.0.")
    (subnet,) = conn.network.subnets(name="runners-subnet")
    assert (subnet.cidr, subnet.gateway_ip) == ("127.77.0.0/16", "127.77.0.1")
    assert subnet.allocation_pools == [{"start": "127.77.0.2", "end": "127.77.255.254"}]
    assert control.server(before.id).addresses[0].startswith("10.0.0.")  # kept its address
    assert control.server(server.id).addresses == (address["addr"],)


@pytest.mark.parametrize("bad", ["10.0.0.0/30", "not-a-network", 42, "2001:db8::/64"])
def test_a_bad_fixed_subnet_is_refused_naming_the_field(control: CloudControl, bad: Any) -> None:
    with pytest.raises(ControlApiError) as caught:
        control.update_config(fixed_subnet=bad)
    assert caught.value.status == 400
    assert "fixed_subnet" in caught.value.message
    assert control.config()["fixed_subnet"] == "10.0.0.0/20"
