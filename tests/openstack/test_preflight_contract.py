"""The provisioner's pre-flight, run against the simulator's cloud and a real Nova.

What it must find (and what it must never do: create anything) is the same on both clouds; a
difference is a bug in the simulator. The quota case tightens the project's instance quota:
through the control API on the simulator, as the admin (os-quota-sets) on the real Nova, put
back to the defaults afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from provisioners.openstack import CloudCheck, OpenStackProvisioner
from tests.openstack.test_provisioner_contract import config_for
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.quotas import instance_quota, servers

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]


def by_subject(checks: list[CloudCheck]) -> dict[tuple[str, str], CloudCheck]:
    return {(check.subject, check.ref): check for check in checks}


@contextlib.asynccontextmanager
async def provisioner_for(
    target: CloudTarget, **overrides: Any
) -> AsyncIterator[OpenStackProvisioner]:
    adapter = OpenStackProvisioner(config_for(target, **overrides))
    try:
        yield adapter
    finally:
        await adapter.close()


async def test_a_good_configuration_passes_every_check_and_creates_nothing(
    cloud: CloudTarget,
) -> None:
    before = servers(cloud)
    async with provisioner_for(cloud) as adapter:
        checks = await adapter.preflight([cloud.image], {cloud.flavor: 2})
    assert [check for check in checks if not check.ok] == []
    found = by_subject(checks)
    subjects = {check.subject for check in checks}
    assert {"cloud", "microversion", "image", "flavor", "network", "quota"} <= subjects
    assert found["image", cloud.image].detail.startswith(f"{cloud.image} (id ")
    assert "vCPUs" in found["flavor", cloud.flavor].detail
    if cloud.security_group:
        assert found["security_group", cloud.security_group].ok
    if cloud.keypair:
        assert found["keypair", cloud.keypair].ok
    assert "instances 2 of" in found["quota", ""].detail
    assert servers(cloud) == before


async def test_a_bad_image_and_a_missing_network_are_named(
    cloud: CloudTarget,
) -> None:
    async with provisioner_for(cloud, network="no-such-net", keypair="no-such-key") as adapter:
        checks = await adapter.preflight(["no-such-image"], {cloud.flavor: 1})
    found = by_subject(checks)
    assert not found["image", "no-such-image"].ok
    assert "no image named 'no-such-image'" in found["image", "no-such-image"].detail
    assert not found["network", "no-such-net"].ok
    assert "no network named 'no-such-net'" in found["network", "no-such-net"].detail
    assert not found["keypair", "no-such-key"].ok
    assert found["flavor", cloud.flavor].ok
    assert found["quota", ""].ok


async def test_an_unknown_flavor_fails_and_leaves_the_quota_unchecked(
    cloud: CloudTarget,
) -> None:
    async with provisioner_for(cloud) as adapter:
        checks = await adapter.preflight([cloud.image], {"no-such-flavor": 1})
    found = by_subject(checks)
    assert "no flavor named 'no-such-flavor'" in found["flavor", "no-such-flavor"].detail
    assert found["quota", ""].ok is None


async def test_a_tight_quota_fails_with_what_is_needed_and_free(
    cloud: CloudTarget,
) -> None:
    in_use = servers(cloud)
    with instance_quota(cloud, in_use + 2):
        async with provisioner_for(cloud) as adapter:
            checks = await adapter.preflight([cloud.image], {cloud.flavor: 3})
    quota = by_subject(checks)["quota", ""]
    assert not quota.ok
    assert f"instances: 3 needed, 2 free ({in_use} of {in_use + 2} in use)" in quota.detail


async def test_wrong_credentials_fail_once_at_the_cloud(
    cloud: CloudTarget,
) -> None:
    adapter = OpenStackProvisioner(dataclasses.replace(config_for(cloud), cloud="no-such-cloud"))
    try:
        checks = await adapter.preflight([cloud.image], {cloud.flavor: 1})
    finally:
        await adapter.close()
    assert len(checks) == 1
    assert checks[0].subject == "cloud"
    assert not checks[0].ok
