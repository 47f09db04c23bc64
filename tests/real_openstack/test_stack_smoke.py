"""Smoke test of the real-OpenStack tier through real openstacksdk and the application credential.

Each test also pins down one behaviour of a real Nova 34 (status codes, error texts, what is
ignored) that the simulator's cloud must match; tests/real_openstack/README.md records them.
Timings are printed as ``TIMING`` lines (run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openstack import connection
from openstack.compute.v2.server import Server
from openstack.config import loader

from tests.testsupport.clouds import CloudTarget
from tests.testsupport.real_cloud import stack_info

pytestmark = [
    pytest.mark.real_openstack,
    # openstacksdk 4.22 trips over its own pending deprecations (RemovedInSDK50/60Warning): on
    # every clouds.yaml load (InfluxDB, although none is configured), in every Proxy.request
    # ('service_type' parameter) and in find_* (ignore_missing), whatever the caller passes.
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]

USER_DATA = base64.b64encode(b"#cloud-config\nruncmd:\n - echo hello\n").decode()
METADATA = {"owner": "ci", "purpose": "smoke"}
# The compute API's microversion for the raw requests below (tags in the create body need 2.52).
MICROVERSION = "2.100"


def timing(label: str, seconds: float) -> None:
    print(f"TIMING {label} {seconds:.2f}s")


def _connect(clouds_yaml: Path, cloud: str) -> connection.Connection:
    # Only the stack's clouds.yaml, and no OS_* variable of the caller's environment.
    config = loader.OpenStackConfig(config_files=[str(clouds_yaml)], load_envvars=False)
    return connection.Connection(config=config.get_one(cloud=cloud))


@pytest.fixture(scope="module")
def demo(real_cloud: CloudTarget) -> Iterator[connection.Connection]:
    started = time.monotonic()
    conn = _connect(real_cloud.clouds_yaml, real_cloud.cloud_name)
    conn.authorize()
    timing("keystone_auth_with_application_credential", time.monotonic() - started)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def admin(real_cloud: CloudTarget) -> Iterator[connection.Connection]:
    conn = _connect(real_cloud.clouds_yaml, str(stack_info()["admin_cloud"]))
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def ids(demo: connection.Connection, real_cloud: CloudTarget) -> dict[str, str]:
    """The ids of the seeded image, flavor and network."""
    return {
        "image": demo.image.find_image(real_cloud.image, ignore_missing=False).id,
        "flavor": demo.compute.find_flavor(real_cloud.flavor, ignore_missing=False).id,
        "network": demo.network.find_network(real_cloud.network, ignore_missing=False).id,
    }


@pytest.fixture(scope="module")
def run_tag() -> str:
    """A tag unique to this test run, so that list filters see only this run's servers."""
    return f"smoke-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(
    demo: connection.Connection, real_cloud: CloudTarget, ids: dict[str, str], run_tag: str
) -> Iterator[Server]:
    started = time.monotonic()
    created = demo.compute.create_server(
        name=f"{run_tag}-vm-1",
        image_id=ids["image"],
        flavor_id=ids["flavor"],
        networks=[{"uuid": ids["network"]}],
        key_name=real_cloud.keypair,
        security_groups=[{"name": real_cloud.security_group}],
        user_data=USER_DATA,
        metadata=METADATA,
        tags=["ci", run_tag],
    )
    posted = time.monotonic()
    timing("post_servers", posted - started)
    active = demo.compute.wait_for_server(
        created, status="ACTIVE", failures=["ERROR"], interval=0.5, wait=60
    )
    timing("create_to_active", time.monotonic() - started)
    yield active
    demo.compute.delete_server(active.id, ignore_missing=True)


def _raw(
    conn: connection.Connection, method: str, url: str, microversion: str = MICROVERSION, **kw: Any
) -> tuple[int, Any]:
    """A compute API request without openstacksdk's error translation: (status, JSON body)."""
    response = conn.compute.request(url, method, microversion=microversion, raise_exc=False, **kw)
    try:
        body = response.json()
    except ValueError:
        body = response.text
    print(f"{method} {url} (microversion {microversion}) -> {response.status_code} {body!r:.400}")
    return response.status_code, body


def _server_body(ids: dict[str, str], name: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": {
            "name": name,
            "imageRef": ids["image"],
            "flavorRef": ids["flavor"],
            "networks": [{"uuid": ids["network"]}],
            **extra,
        }
    }


def test_server_reads_back_metadata_tags_and_addresses(
    demo: connection.Connection, server: Server, run_tag: str, real_cloud: CloudTarget
) -> None:
    got = demo.compute.get_server(server.id)
    assert got.status == "ACTIVE"
    assert got.metadata == METADATA
    assert sorted(got.tags) == sorted(["ci", run_tag])
    assert got.key_name == real_cloud.keypair
    assert got.security_groups == [{"name": real_cloud.security_group}]
    # The fake driver reports no addresses; they come from the Neutron port (loopback subnet).
    (address,) = got.addresses[real_cloud.network]
    assert address["OS-EXT-IPS:type"] == "fixed"
    assert address["addr"].startswith("127.99.0.")
    # user_data is admin-only in the default policy: the owner reads None.
    assert got.user_data is None


def test_admin_reads_back_the_user_data(admin: connection.Connection, server: Server) -> None:
    got = admin.compute.get_server(server.id)
    assert got.user_data == USER_DATA
    assert got.compute_host == "osk-compute1"


def test_tag_filters_are_applied_by_nova(
    demo: connection.Connection, server: Server, run_tag: str
) -> None:
    def names(**query: Any) -> set[str]:
        return {s.name for s in demo.compute.servers(**query)}

    assert names(tags=run_tag) == {server.name}
    assert names(tags=f"ci,{run_tag}") == {server.name}
    assert names(any_tags=f"nope,{run_tag}") == {server.name}
    assert server.name not in names(not_tags=run_tag)
    assert names(tags=f"{run_tag},absent") == set()
    # The name filter is a regular expression.
    assert names(name=f"^{run_tag}-vm-[0-9]$") == {server.name}


def test_metadata_filter_is_silently_ignored(demo: connection.Connection, server: Server) -> None:
    status, body = _raw(demo, "GET", "/servers/detail?metadata=owner%3Dnobody")
    assert status == 200
    assert server.id in {s["id"] for s in body["servers"]}


def test_console_output_is_the_fake_drivers_fixed_text(
    demo: connection.Connection, server: Server
) -> None:
    output = demo.compute.get_server_console_output(server)
    assert output == {"output": "FAKE CONSOLE OUTPUT\nANOTHER\nLAST LINE"}


def test_console_output_length_keeps_the_last_lines(
    demo: connection.Connection, server: Server
) -> None:
    status, body = _raw(
        demo, "POST", f"/servers/{server.id}/action", json={"os-getConsoleOutput": {"length": 1}}
    )
    assert (status, body) == (200, {"output": "LAST LINE"})


def test_tag_filter_is_ignored_before_microversion_2_26(
    demo: connection.Connection, server: Server
) -> None:
    status, body = _raw(demo, "GET", "/servers?tags=no-such-tag", microversion="2.25")
    assert status == 200
    assert server.id in {s["id"] for s in body["servers"]}


def test_unknown_server_is_404_item_not_found(demo: connection.Connection) -> None:
    missing = str(uuid.uuid4())
    status, body = _raw(demo, "GET", f"/servers/{missing}")
    assert status == 404
    assert body == {
        "itemNotFound": {"code": 404, "message": f"Instance {missing} could not be found."}
    }


def test_user_data_over_64k_is_rejected_with_400(
    demo: connection.Connection, ids: dict[str, str], run_tag: str
) -> None:
    too_big = base64.b64encode(os.urandom(49152 + 3)).decode()  # 65540 characters
    status, body = _raw(
        demo, "POST", "/servers", json=_server_body(ids, f"{run_tag}-big", user_data=too_big)
    )
    assert status == 400
    message = body["badRequest"]["message"]
    assert message.startswith("Invalid input for field/attribute user_data.")
    assert message.endswith("is too long")


def test_user_data_that_is_not_base64_is_rejected_with_400(
    demo: connection.Connection, ids: dict[str, str], run_tag: str
) -> None:
    body = _server_body(ids, f"{run_tag}-b64", user_data="not base64!")
    assert _raw(demo, "POST", "/servers", json=body) == (
        400,
        {
            "badRequest": {
                "code": 400,
                "message": "Invalid input for field/attribute user_data. Value: not base64!. "
                "'not base64!' is not a 'base64'",
            }
        },
    )


def test_unknown_flavor_and_image_are_400(
    demo: connection.Connection, ids: dict[str, str], run_tag: str
) -> None:
    body = _server_body(ids, f"{run_tag}-fl")
    body["server"]["flavorRef"] = "nope"
    assert _raw(demo, "POST", "/servers", json=body) == (
        400,
        {"badRequest": {"code": 400, "message": "Flavor nope could not be found."}},
    )
    body = _server_body(ids, f"{run_tag}-im")
    body["server"]["imageRef"] = str(uuid.uuid4())
    assert _raw(demo, "POST", "/servers", json=body) == (
        400,
        {"badRequest": {"code": 400, "message": "Can not find requested image"}},
    )


def test_tags_in_create_need_microversion_2_52(
    demo: connection.Connection, ids: dict[str, str], run_tag: str
) -> None:
    body_with_tags = _server_body(ids, f"{run_tag}-old", tags=["ci"])
    status, body = _raw(demo, "POST", "/servers", microversion="2.51", json=body_with_tags)
    assert status == 400
    assert body == {
        "badRequest": {
            "code": 400,
            "message": "Invalid input for field/attribute server. Value: "
            f"{body_with_tags['server']}. Additional properties are not allowed "
            "('tags' was unexpected)",
        }
    }


def test_quota_exceeded_is_403(
    demo: connection.Connection,
    admin: connection.Connection,
    server: Server,
    ids: dict[str, str],
    run_tag: str,
) -> None:
    project = demo.current_project_id
    status, body = _raw(admin, "GET", f"/os-quota-sets/{project}/detail")
    assert status == 200
    used = body["quota_set"]["instances"]["in_use"]
    assert used >= 1  # at least the module's server
    # A limit below what is in use is refused.
    status, body = _raw(
        admin, "PUT", f"/os-quota-sets/{project}", json={"quota_set": {"instances": used - 1}}
    )
    assert status == 400
    assert body["badRequest"]["message"] == (
        f"Quota limit {used - 1} for instances must be greater than or equal to already used "
        f"and reserved {used}."
    )
    status, _ = _raw(
        admin, "PUT", f"/os-quota-sets/{project}", json={"quota_set": {"instances": used}}
    )
    assert status == 200
    try:
        status, body = _raw(demo, "POST", "/servers", json=_server_body(ids, f"{run_tag}-q"))
    finally:
        # Back to the default quotas.
        assert _raw(admin, "DELETE", f"/os-quota-sets/{project}")[0] == 202
    assert status == 403
    assert body == {
        "forbidden": {
            "code": 403,
            "message": f"Quota exceeded for instances: Requested 1, but already used {used} "
            f"of {used} instances",
        }
    }


def test_boot_from_volume_fails_without_cinder(
    demo: connection.Connection, ids: dict[str, str], run_tag: str
) -> None:
    started = time.monotonic()
    created = demo.compute.create_server(
        name=f"{run_tag}-bfv",
        flavor_id=ids["flavor"],
        networks=[{"uuid": ids["network"]}],
        block_device_mapping=[
            {
                "boot_index": 0,
                "uuid": ids["image"],
                "source_type": "image",
                "destination_type": "volume",
                "volume_size": 1,
                "delete_on_termination": True,
            }
        ],
    )
    try:
        failed = demo.compute.wait_for_server(
            created, status="ERROR", failures=["ACTIVE"], interval=0.5, wait=45
        )
        timing("boot_from_volume_to_error", time.monotonic() - started)
        print(f"boot-from-volume fault: {failed.fault}")
        assert failed.fault["code"] == 500
        assert failed.fault["message"] == (
            f"Build of instance {created.id} aborted: publicURL endpoint for volumev3 service "
            "in RegionOne region not found"
        )
    finally:
        demo.compute.delete_server(created.id, ignore_missing=True)
        demo.compute.wait_for_delete(created, interval=0.25, wait=30)


def test_delete_removes_the_server_and_a_second_delete_is_404(
    demo: connection.Connection, server: Server
) -> None:
    started = time.monotonic()
    demo.compute.delete_server(server)
    demo.compute.wait_for_delete(server, interval=0.25, wait=30)
    timing("delete_to_gone", time.monotonic() - started)
    status, body = _raw(demo, "GET", f"/servers/{server.id}")
    assert status == 404
    assert body["itemNotFound"]["message"] == f"Instance {server.id} could not be found."
    status, body = _raw(demo, "DELETE", f"/servers/{server.id}")
    assert status == 404
    assert body == {
        "itemNotFound": {"code": 404, "message": f"Instance {server.id} could not be found."}
    }
