"""The simulator's cloud for the provisioner's contract tests (and the simulator's own tests).

`sim_cloud` starts a fresh simulated OpenStack per test on a 127.0.0.1 port, writes its
clouds.yaml (application-credential cloud ``sim``) and yields the CloudTarget that the contract
tests share with the real-Nova fixture. Delays are short so that a create -> ACTIVE -> delete
cycle takes well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from simulator.openstack.cloudsyaml import APP_CREDENTIAL_CLOUD
from simulator.openstack.config import CloudConfig
from simulator.openstack.server import RunningCloud, run_in_thread
from simulator.openstack.state import (
    FLAVOR_NAMES,
    IMAGE_NAME,
    KEYPAIR_NAME,
    NETWORK_NAME,
    SECURITY_GROUP_NAME,
)
from tests.testsupport.clouds import CloudTarget

FAST = CloudConfig(build_delay=0.2, delete_delay=0.1, power_delay=0.05)


def target_for(running: RunningCloud, clouds_yaml: Path) -> CloudTarget:
    return CloudTarget(
        kind="simulator",
        clouds_yaml=clouds_yaml,
        cloud_name=APP_CREDENTIAL_CLOUD,
        image=IMAGE_NAME,
        flavor=FLAVOR_NAMES[0],
        network=NETWORK_NAME,
        security_group=SECURITY_GROUP_NAME,
        keypair=KEYPAIR_NAME,
        supports_boot_from_volume=True,
        supports_floating_ips=True,
        floating_ip_pool=running.config.floating_ip_pool,
        env={"OS_CLIENT_CONFIG_FILE": str(clouds_yaml), "OS_CLOUD": APP_CREDENTIAL_CLOUD},
        control_url=running.base_url,
    )


@contextmanager
def simulated_cloud(
    directory: Path, config: CloudConfig | None = None
) -> Iterator[tuple[CloudTarget, RunningCloud]]:
    """Start a simulated cloud; its clouds.yaml goes into `directory`."""
    with run_in_thread((config or FAST).copy()) as running:
        clouds_yaml = running.write_clouds_yaml(directory / "clouds.yaml")
        yield target_for(running, clouds_yaml), running


@pytest.fixture
def sim_cloud(tmp_path: Path) -> Iterator[CloudTarget]:
    with simulated_cloud(tmp_path) as (target, _running):
        yield target
