"""Boot from volume (Cinder) and the floating IP pool (Neutron) through openstacksdk."""

from __future__ import annotations

import pytest
from openstack import connection, exceptions
from openstack.compute.v2.server import Server

from simulator.openstack.control import CloudControl
from tests.simulator_openstack.helpers import Ids, create, raw, wait_active, wait_error
from tests.testsupport.clouds import CloudTarget

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*")


def _bdm(ids: Ids, size: int = 20, delete: bool = True) -> list[dict[str, object]]:
    return [
        {
            "boot_index": 0,
            "uuid": ids.image,
            "source_type": "image",
            "destination_type": "volume",
            "volume_size": size,
            "delete_on_termination": delete,
        }
    ]


def _boot_from_volume(
    conn: connection.Connection, ids: Ids, name: str, delete: bool = True
) -> Server:
    return conn.compute.create_server(
        name=name,
        flavor_id=ids.flavor,
        networks=[{"uuid": ids.network}],
        block_device_mapping=_bdm(ids, delete=delete),
    )


def test_boot_from_volume_creates_the_volume_and_deletes_it_with_the_server(
    conn: connection.Connection, ids: Ids
) -> None:
    server = wait_active(conn, _boot_from_volume(conn, ids, "bfv"))
    fetched = conn.compute.get_server(server.id)
    # A volume-backed server has no image: Nova shows "".
    assert raw(conn, "GET", f"/servers/{server.id}")[1]["server"]["image"] == ""
    (attached,) = fetched.attached_volumes
    volume = conn.block_storage.get_volume(attached["id"])
    assert (volume.status, volume.size, volume.is_bootable) == ("in-use", 20, True)
    assert volume.attachments[0]["server_id"] == server.id
    assert volume.volume_image_metadata["image_id"] == ids.image
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.05, wait=5)
    with pytest.raises(exceptions.NotFoundException):
        conn.block_storage.get_volume(attached["id"])


def test_a_volume_kept_on_termination_becomes_available_again(
    conn: connection.Connection, ids: Ids
) -> None:
    server = wait_active(conn, _boot_from_volume(conn, ids, "keep", delete=False))
    (attached,) = conn.compute.get_server(server.id).attached_volumes
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.05, wait=5)
    volume = conn.block_storage.get_volume(attached["id"])
    assert (volume.status, volume.attachments) == ("available", [])


def test_a_boot_volume_over_the_volume_quota_puts_the_server_in_error(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    control.set_quotas(volumes=0)
    created = _boot_from_volume(conn, ids, "no-room")
    failed = wait_error(conn, created)
    assert failed.fault["code"] == 500
    assert failed.fault["message"].startswith(f"Build of instance {failed.id} aborted: ")
    assert "quota 'volumes'" in failed.fault["message"]
    assert control.state()["volumes"] == []


def test_the_pre_allocated_floating_ips_are_listed_and_filterable(
    conn: connection.Connection, target: CloudTarget
) -> None:
    pool = sorted(ip.floating_ip_address for ip in conn.network.ips())
    assert pool == sorted(target.floating_ip_pool)
    assert len(pool) == 10
    assert [ip.status for ip in conn.network.ips(status="DOWN")].count("DOWN") == 10
    (one,) = conn.network.ips(floating_ip_address="203.0.113.12")
    assert one.port_id is None


def test_associating_a_floating_ip_shows_it_in_the_servers_addresses(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    server = wait_active(conn, create(conn, ids, "public"))
    (port,) = conn.network.ports(device_id=server.id)
    fip = next(iter(conn.network.ips(port_id="")), None) or next(iter(conn.network.ips()))
    updated = conn.network.update_ip(fip, port_id=port.id)
    assert (updated.port_id, updated.status) == (port.id, "ACTIVE")
    assert updated.fixed_ip_address == port.fixed_ips[0]["ip_address"]
    (found,) = conn.network.ips(port_id=port.id)
    assert found.id == fip.id
    kinds = {
        a["OS-EXT-IPS:type"]: a["addr"]
        for a in conn.compute.get_server(server.id).addresses["runners-net"]
    }
    assert kinds == {"fixed": port.fixed_ips[0]["ip_address"], "floating": fip.floating_ip_address}
    assert control.server(server.id).floating_ips == (fip.floating_ip_address,)
    # Disassociate: the address goes back to the pool.
    released = conn.network.update_ip(fip, port_id=None)
    assert (released.port_id, released.status) == (None, "DOWN")
    assert "floating" not in {
        a["OS-EXT-IPS:type"] for a in conn.compute.get_server(server.id).addresses["runners-net"]
    }


def test_deleting_the_server_frees_its_floating_ip(conn: connection.Connection, ids: Ids) -> None:
    server = wait_active(conn, create(conn, ids, "short"))
    (port,) = conn.network.ports(device_id=server.id)
    fip = next(iter(conn.network.ips(floating_ip_address="203.0.113.10")))
    conn.network.update_ip(fip, port_id=port.id)
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.05, wait=5)
    after = conn.network.get_ip(fip.id)
    assert (after.port_id, after.fixed_ip_address, after.status) == (None, None, "DOWN")


def test_a_port_can_hold_only_one_floating_ip(conn: connection.Connection, ids: Ids) -> None:
    server = wait_active(conn, create(conn, ids, "greedy"))
    (port,) = conn.network.ports(device_id=server.id)
    first, second = list(conn.network.ips())[:2]
    conn.network.update_ip(first, port_id=port.id)
    with pytest.raises(exceptions.ConflictException, match="already has a floating IP"):
        conn.network.update_ip(second, port_id=port.id)


def test_the_floating_ip_pool_is_configurable(
    conn: connection.Connection, control: CloudControl
) -> None:
    control.update_config(floating_ip_pool=["198.51.100.7"])
    assert [ip.floating_ip_address for ip in conn.network.ips()] == ["198.51.100.7"]
