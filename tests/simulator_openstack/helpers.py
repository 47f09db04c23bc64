"""Helpers for the simulated-cloud tests: connecting, raw requests, a server body."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openstack import connection
from openstack.compute.v2.server import Server
from openstack.config import loader

from tests.testsupport.clouds import CloudTarget

USER_DATA_TEXT = "#cloud-config\nruncmd:\n - echo hello\n"
USER_DATA = base64.b64encode(USER_DATA_TEXT.encode()).decode()
METADATA = {"owner": "ci", "purpose": "smoke"}


@dataclass(frozen=True)
class Ids:
    image: str
    flavor: str
    network: str


def connect(clouds_yaml: Path, cloud: str) -> connection.Connection:
    # Only this clouds.yaml, and no OS_* variable of the caller's environment.
    config = loader.OpenStackConfig(config_files=[str(clouds_yaml)], load_envvars=False)
    return connection.Connection(config=config.get_one(cloud=cloud))


def seeded_ids(conn: connection.Connection, target: CloudTarget) -> Ids:
    return Ids(
        image=conn.image.find_image(target.image, ignore_missing=False).id,
        flavor=conn.compute.find_flavor(target.flavor, ignore_missing=False).id,
        network=conn.network.find_network(target.network, ignore_missing=False).id,
    )


def raw(
    conn: connection.Connection,
    method: str,
    url: str,
    microversion: str | None = "2.100",
    **kw: Any,
) -> tuple[int, Any]:
    """A compute request without openstacksdk's error translation: (status, JSON body)."""
    response = conn.compute.request(url, method, microversion=microversion, raise_exc=False, **kw)
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return response.status_code, body


def server_body(ids: Ids, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": {
            "name": name,
            "imageRef": ids.image,
            "flavorRef": ids.flavor,
            "networks": [{"uuid": ids.network}],
            **extra,
        }
    }


def create(conn: connection.Connection, ids: Ids, name: str, **extra: Any) -> Server:
    attrs: dict[str, Any] = {
        "name": name,
        "image_id": ids.image,
        "flavor_id": ids.flavor,
        "networks": [{"uuid": ids.network}],
        **extra,
    }
    return conn.compute.create_server(**attrs)


def wait_active(conn: connection.Connection, server: Server) -> Server:
    return conn.compute.wait_for_server(
        server, status="ACTIVE", failures=["ERROR"], interval=0.05, wait=5
    )


def wait_error(conn: connection.Connection, server: Server) -> Server:
    return conn.compute.wait_for_server(
        server, status="ERROR", failures=["ACTIVE"], interval=0.05, wait=5
    )
