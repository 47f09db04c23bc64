"""Both simulators in-process, a scale set with a live session, and a running fleet."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from provisioners.bootstrap import BootstrapSpec, render_user_data
from simulator.fleet import Fleet, FleetConfig
from simulator.openstack.config import CloudConfig
from simulator.openstack.control import CloudControl
from simulator.openstack.server import RunningCloud, run_in_thread
from simulator.openstack.state import (
    APP_CREDENTIAL_ID,
    APP_CREDENTIAL_SECRET,
    FLAVOR_NAMES,
    IMAGE_NAME,
    NETWORK_NAME,
)
from tests.conftest import GitHubSim, GitHubSimFactory
from tests.simulator.helpers import Actions, Session

LABEL = "linux"
FAST_CLOUD = CloudConfig(build_delay=0.05, delete_delay=0.05, power_delay=0.02)
FAST_FLEET = FleetConfig(boot_seconds=0.05, poweroff_seconds=0.05, poll_interval=0.02)


class Nova:
    """Just enough of the compute API over plain httpx: create and delete servers."""

    def __init__(self, cloud: RunningCloud) -> None:
        self.http = httpx.Client(timeout=10)
        auth = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {
                        "id": APP_CREDENTIAL_ID,
                        "secret": APP_CREDENTIAL_SECRET,
                    },
                }
            }
        }
        response = self.http.post(f"{cloud.base_url}/identity/v3/auth/tokens", json=auth)
        assert response.status_code == 201, response.text
        self.http.headers["X-Auth-Token"] = response.headers["X-Subject-Token"]
        self.compute = f"{cloud.base_url}/compute/v2.1"
        images = self.http.get(f"{cloud.base_url}/image/v2/images", params={"name": IMAGE_NAME})
        self.image = images.json()["images"][0]["id"]
        flavors = self.http.get(f"{self.compute}/flavors").json()["flavors"]
        self.flavor = next(f["id"] for f in flavors if f["name"] == FLAVOR_NAMES[0])
        networks = self.http.get(
            f"{cloud.base_url}/network/v2.0/networks", params={"name": NETWORK_NAME}
        )
        self.network = networks.json()["networks"][0]["id"]

    def close(self) -> None:
        self.http.close()

    def create(self, name: str, user_data: bytes | None) -> str:
        server: dict[str, Any] = {
            "name": name,
            "imageRef": self.image,
            "flavorRef": self.flavor,
            "networks": [{"uuid": self.network}],
        }
        if user_data is not None:
            server["user_data"] = base64.b64encode(user_data).decode()
        response = self.http.post(f"{self.compute}/servers", json={"server": server})
        assert response.status_code == 202, response.text
        return str(response.json()["server"]["id"])

    def delete(self, server_id: str) -> None:
        response = self.http.delete(f"{self.compute}/servers/{server_id}")
        assert response.status_code == 204, response.text


def bootstrap(name: str, jit_config: str) -> bytes:
    return render_user_data(
        BootstrapSpec(
            runner_name=name,
            jit_config=jit_config,
            runner_version="2.330.0",
            runner_download_url="https://example.invalid/actions-runner-{version}-{arch}.tgz",
            labels=(LABEL,),
        )
    )


@dataclass
class World:
    """Both simulators, a scale set with a live session (so jobs get assigned), the fleet."""

    github: GitHubSim
    cloud: RunningCloud
    nova: Nova
    actions: Actions
    scale_set_id: int
    session: Session
    fleet: Fleet

    @property
    def cloud_control(self) -> CloudControl:
        return self.cloud.control

    def jit(self, name: str) -> str:
        response = self.actions.generate_jit(self.scale_set_id, name)
        assert response.status_code == 200, response.text
        return str(response.json()["encodedJITConfig"])

    def boot(self, name: str) -> str:
        """Create a server whose user_data is the bootstrap with a fresh JIT config."""
        return self.nova.create(name, bootstrap(name, self.jit(name)))

    def runner(self, name: str) -> dict[str, Any] | None:
        runners = self.github.control.state()["runners"]
        return next((r for r in runners if r["name"] == name), None)

    def markers(self, name: str) -> list[str]:
        return [
            line for line in self.cloud_control.console(name) if line.startswith("SCALESET-RUNNER")
        ]


@pytest.fixture
def fleet_config() -> FleetConfig:
    return FAST_FLEET


@pytest.fixture
def github_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def world(
    github_sim_factory: GitHubSimFactory,
    github_overrides: dict[str, Any],
    fleet_config: FleetConfig,
) -> Iterator[World]:
    github = github_sim_factory(**github_overrides)
    actions = Actions(github)
    scale_set_id = actions.create_scale_set(LABEL)
    session = actions.create_session(scale_set_id)
    with run_in_thread(FAST_CLOUD.copy()) as cloud:
        nova = Nova(cloud)
        with Fleet(github.base_url, cloud.base_url, fleet_config) as fleet:
            yield World(github, cloud, nova, actions, scale_set_id, session, fleet)
        nova.close()
    actions.close()
