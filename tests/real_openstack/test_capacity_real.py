"""The whole listener against a real Nova (and the simulated GitHub) with the demo project's
instance quota at 2 and max_runners 4: GitHub is told 2, two servers are created, and Nova never
refuses one (docs/architecture.md#capacity). Marked real_openstack (tests/real_openstack).

The fake virt driver boots no runner, so the servers stay ACTIVE with runners that never come
online: the test ends once both are there and the demand has been seen, then deletes them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from provisioners.naming import Ownership
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.config import Settings
from scaleset_listener.service import run_service
from scaleset_listener.wiring import openstack_config
from simulator.github.server import RunningSimulator
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.listener_harness import FAST_SETTINGS
from tests.testsupport.quotas import instance_quota, servers

pytestmark = [
    pytest.mark.real_openstack,
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]

JSON = dict[str, Any]


def settings(github: RunningSimulator, cloud: CloudTarget, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "github_url": f"{github.base_url}/acme",
        "github_token": github.config.pats[0],
        "openstack_image": cloud.image,
        "openstack_flavor": cloud.flavor,
        "openstack_network": cloud.network,
        "openstack_security_groups": (cloud.security_group,),
        "openstack_keypair": cloud.keypair,
        **FAST_SETTINGS,
        **overrides,
    }
    return Settings(**values)


async def eventually(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"not reached in {timeout:g} s: {what}"
        await asyncio.sleep(0.2)


async def delete_servers_of(listener_instance: str, config: Settings) -> None:
    adapter = OpenStackProvisioner(openstack_config(config))
    try:
        for vm in await adapter.list_owned(Ownership(listener_instance, 0).listener_tags()):
            await adapter.delete(vm.id)
    finally:
        await adapter.close()


async def test_an_instance_quota_of_2_is_the_capacity_header_and_no_create_is_refused(
    github: RunningSimulator, cloud: CloudTarget
) -> None:
    in_use = servers(cloud)
    instance = f"quota-{secrets.token_hex(4)}"
    config = settings(
        github,
        cloud,
        runners=[{"name": "linux", "max_runners": 4}],
        listener_instance_id=instance,
    )

    def scale_set() -> JSON:
        sets: list[JSON] = github.control.state()["scale_sets"]
        return sets[0] if sets else {}

    with instance_quota(cloud, in_use + 2), capture_logs() as logs:
        stop = asyncio.Event()
        service = asyncio.create_task(run_service(config, stop, handle_signals=False))
        try:
            await eventually(lambda: scale_set().get("max_capacity") is not None, "first poll")
            github.control.enqueue_jobs(["linux"], count=4)
            await eventually(lambda: servers(cloud) == in_use + 2, "two servers")
            # The demand (two jobs assigned: GitHub holds to the header) has been handed on.
            await eventually(
                lambda: any(e["event"] == "desired_runners" and e["desired"] == 2 for e in logs),
                "desired 2",
            )
            await eventually(
                lambda: sum(e.get("state") == "booting" for e in logs) == 2, "both ACTIVE"
            )
            assert servers(cloud) == in_use + 2
        finally:
            stop.set()
            try:
                async with asyncio.timeout(60):
                    assert await service == 0
            finally:
                await delete_servers_of(instance, config)
    history = scale_set()["max_capacity_history"]
    assert history == [2], history
    assert not [e for e in logs if e["event"] in ("runner_create_failed", "step_failed")]
    assert not [e for e in logs if e["log_level"] == "error"]
