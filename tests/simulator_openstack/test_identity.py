"""Keystone: the two ways the listener logs in, the catalog, and tokens on every call."""

from __future__ import annotations

import httpx
import pytest
from openstack import connection, exceptions

from simulator.openstack.server import RunningCloud
from tests.simulator_openstack.helpers import connect
from tests.testsupport.clouds import CloudTarget

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*")


def test_application_credential_login_gets_a_project_token_and_the_catalog(
    conn: connection.Connection, running: RunningCloud
) -> None:
    conn.authorize()
    assert conn.current_project_id == running.cloud.project.id
    assert conn.compute.get_endpoint() == f"{running.base_url}/compute/v2.1"
    assert str(conn.network.get_endpoint()).startswith(f"{running.base_url}/network")
    assert str(conn.image.get_endpoint()).startswith(f"{running.base_url}/image")
    assert str(conn.block_storage.get_endpoint()).startswith(f"{running.base_url}/volume/v3/")


def test_password_login_works_with_the_second_cloud(target: CloudTarget) -> None:
    password_conn = connect(target.clouds_yaml, "sim-password")
    try:
        password_conn.authorize()
        assert password_conn.session.get_project_id() == password_conn.current_project_id
        assert [f.name for f in password_conn.compute.flavors()] == [
            "m1.small",
            "m1.large",
            "g1.gpu",
        ]
    finally:
        password_conn.close()


def test_compute_microversions_are_negotiated_from_version_discovery(
    conn: connection.Connection,
) -> None:
    data = conn.compute.get_endpoint_data()
    assert data is not None
    assert data.min_microversion == (2, 1)
    assert data.max_microversion == (2, 100)


def test_a_wrong_application_credential_secret_is_401(running: RunningCloud) -> None:
    body = {
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": running.cloud.app_credential.id,
                    "secret": "wrong",
                },
            }
        }
    }
    response = httpx.post(f"{running.auth_url}/auth/tokens", json=body)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": 401,
            "message": "The request you have made requires authentication.",
            "title": "Unauthorized",
        }
    }


def test_an_application_credential_is_also_accepted_by_name_and_user(
    running: RunningCloud,
) -> None:
    body = {
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "name": "runners-appcred",
                    "user": {"name": "runner", "domain": {"name": "Default"}},
                    "secret": "sim-appcred-secret",
                },
            }
        }
    }
    response = httpx.post(f"{running.auth_url}/auth/tokens", json=body)
    assert response.status_code == 201
    token = response.json()["token"]
    assert response.headers["X-Subject-Token"]
    assert token["methods"] == ["application_credential"]
    assert {e["type"] for e in token["catalog"]} >= {
        "identity",
        "compute",
        "image",
        "network",
        "volumev3",
    }


def test_calls_without_a_valid_token_are_401_with_a_keystone_challenge(
    running: RunningCloud,
) -> None:
    response = httpx.get(
        f"{running.base_url}/compute/v2.1/servers", headers={"X-Auth-Token": "nope"}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Keystone uri="{running.base_url}/identity"'


def test_identity_version_discovery_answers_at_the_root_and_at_v3(running: RunningCloud) -> None:
    root = httpx.get(f"{running.base_url}/identity")
    assert root.status_code == 300
    assert root.json()["versions"]["values"][0]["id"] == "v3.14"
    assert httpx.get(running.auth_url).json()["version"]["status"] == "stable"


def test_lookups_by_name_find_the_seeded_resources(
    conn: connection.Connection, target: CloudTarget
) -> None:
    assert conn.compute.find_flavor("g1.gpu", ignore_missing=False).vcpus == 8
    image = conn.image.find_image(target.image, ignore_missing=False)
    assert (image.status, image.min_disk) == ("active", 10)
    assert conn.network.find_network(target.network, ignore_missing=False).subnet_ids
    assert conn.network.find_security_group("default", ignore_missing=False).name == "default"
    assert conn.compute.find_keypair("runner-key", ignore_missing=False).type == "ssh"
    assert [z.name for z in conn.compute.availability_zones()] == ["nova"]
    with pytest.raises(exceptions.NotFoundException):
        conn.compute.find_flavor("m9.huge", ignore_missing=False)
