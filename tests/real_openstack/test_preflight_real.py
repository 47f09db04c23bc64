"""`check-config --online` against the real Nova (and the simulated GitHub): what the pre-flight
says about a real cloud's image, network and quota. Marked real_openstack (tests/real_openstack).
"""

from __future__ import annotations

from typing import Any

import pytest

from scaleset_listener.config import Settings
from scaleset_listener.preflight import Check, preflight
from simulator.github.server import RunningSimulator
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.listener_harness import FAST_SETTINGS
from tests.testsupport.quotas import instance_quota, servers

pytestmark = [
    pytest.mark.real_openstack,
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]


def settings(github: RunningSimulator, cloud: CloudTarget, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "github_url": f"{github.base_url}/acme",
        "github_token": github.config.pats[0],
        "runners": [{"name": "linux", "max_runners": 2}],
        "openstack_image": cloud.image,
        "openstack_flavor": cloud.flavor,
        "openstack_network": cloud.network,
        "openstack_security_groups": (cloud.security_group,),
        "openstack_keypair": cloud.keypair,
        **FAST_SETTINGS,
        **overrides,
    }
    return Settings(**values)


def failed(checks: list[Check]) -> dict[str, str]:
    return {check.setting: check.detail for check in checks if check.status == "FAIL"}


async def test_a_good_configuration_passes_on_a_real_nova(
    github: RunningSimulator, cloud: CloudTarget
) -> None:
    before = servers(cloud)
    checks = await preflight(settings(github, cloud))
    assert failed(checks) == {}
    lines = {check.setting: check.detail for check in checks}
    assert lines["OPENSTACK_IMAGE"].startswith(f"{cloud.image} (id ")
    assert "1 vCPUs, 512 MiB RAM" in lines["OPENSTACK_FLAVOR"]
    assert servers(cloud) == before


async def test_a_bad_image_and_a_missing_network_fail_on_a_real_nova(
    github: RunningSimulator, cloud: CloudTarget
) -> None:
    checks = await preflight(
        settings(github, cloud, openstack_image="no-such-image", openstack_network="no-such-net")
    )
    assert failed(checks) == {
        "OPENSTACK_IMAGE": "no image named 'no-such-image' (nor with that id)",
        "OPENSTACK_NETWORK": "no network named 'no-such-net' (nor with that id)",
    }


async def test_a_tight_quota_fails_on_a_real_nova(
    github: RunningSimulator, cloud: CloudTarget
) -> None:
    in_use = servers(cloud)
    with instance_quota(cloud, in_use + 1):
        checks = await preflight(settings(github, cloud))
    assert failed(checks) == {
        "RUNNERS (max_runners)": "max_runners of every scale set do not fit: instances: 2 "
        f"needed, 1 free ({in_use} of {in_use + 1} in use)"
    }
