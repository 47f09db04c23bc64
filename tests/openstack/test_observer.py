"""The OpenStack provisioner in a burst: many booting servers watched by one shared observer, the
ACTIVE deadline as a timer of its own, and the warm-up that spares the first create its look-ups.

Against the simulated cloud, whose request log (its control API) counts what reached Nova.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest

from provisioners.base import ActiveTimeout, PermanentProvisionerError, ServerFailed
from provisioners.openstack import OpenStackProvisioner
from simulator.openstack.control import CloudControl
from tests.openstack.test_provisioner_contract import config_for, owner, spec_for
from tests.testsupport.clouds import CloudTarget

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cloud(sim_cloud: CloudTarget, monkeypatch: pytest.MonkeyPatch) -> CloudTarget:
    for name, value in sim_cloud.env.items():
        monkeypatch.setenv(name, value)
    return sim_cloud


@pytest.fixture
def control(cloud: CloudTarget) -> Iterator[CloudControl]:
    assert cloud.control_url is not None
    with CloudControl(cloud.control_url) as client:
        yield client


async def test_many_booting_servers_cost_one_listing_per_interval_and_no_get(
    cloud: CloudTarget, control: CloudControl
) -> None:
    interval = 0.2
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=interval))
    ownership = owner()
    control.set_quotas(instances=40, cores=400, ram=400_000)
    ids: list[str] = []
    try:
        specs = [spec_for(ownership) for _ in range(20)]
        ids = await asyncio.gather(*(adapter.submit(spec) for spec in specs))
        control.clear_requests()
        began = time.monotonic()
        vms = await asyncio.gather(
            *(
                adapter.finish_create(server_id, spec.name, spec.tags)
                for server_id, spec in zip(ids, specs, strict=True)
            )
        )
        waited = time.monotonic() - began
        assert {vm.status for vm in vms} == {"ACTIVE"}
        assert sorted(vm.id for vm in vms) == sorted(ids)
        compute = control.requests(service="compute")
        listings = [r for r in compute if r.endpoint == "compute.servers.list"]
        # Shared listings (at most one per first look, 0.1 s), filtered by the servers' tags; no
        # server asked alone.
        assert 1 <= len(listings) <= min(len(ids) - 1, math.floor(waited / 0.1) + 1)
        assert all(f"tags={ownership.tags()[0]}" in r.query for r in listings)
        assert [r for r in compute if r.endpoint == "compute.servers.get"] == []
    finally:
        await asyncio.gather(*(adapter.delete(server_id) for server_id in ids))
        await adapter.close()


async def test_the_active_deadline_fires_on_time_not_at_the_next_listing(
    cloud: CloudTarget, control: CloudControl
) -> None:
    control.never_active()
    # A listing every minute: the 0.3 s deadline must not wait for one.
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=60.0, active_timeout=0.3))
    try:
        async with asyncio.timeout(15):
            with pytest.raises(ActiveTimeout, match=r"still BUILD after 0\.3 s"):
                await adapter.create(spec_for(owner()))
    finally:
        await adapter.close()
    assert control.servers() == []


async def test_a_server_gone_while_booting_ends_its_wait(
    cloud: CloudTarget, control: CloudControl
) -> None:
    control.never_active()
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=0.05))
    try:
        spec = spec_for(owner())
        server_id = await adapter.submit(spec)
        waiting = asyncio.create_task(adapter.finish_create(server_id, spec.name, spec.tags))
        await adapter.delete(server_id)
        with pytest.raises(ServerFailed, match="disappeared while booting"):
            await waiting
    finally:
        await adapter.close()


async def test_after_the_warm_up_a_create_is_one_request(
    cloud: CloudTarget, control: CloudControl
) -> None:
    adapter = OpenStackProvisioner(config_for(cloud))
    try:
        adapter.start()
        await adapter.wait_warm()
        control.clear_requests()
        server_id = await adapter.submit(spec_for(owner()))
        # No token, version document, image, flavor or network look-up: the create alone.
        assert [r.endpoint for r in control.requests()] == ["compute.servers.create"]
        await adapter.delete(server_id)
    finally:
        await adapter.close()


async def test_a_refused_create_looks_its_image_up_again(
    cloud: CloudTarget, control: CloudControl
) -> None:
    adapter = OpenStackProvisioner(config_for(cloud))
    try:
        adapter.start()
        await adapter.wait_warm()
        control.fail_requests("compute.servers.create", status=400, times=1)
        with pytest.raises(PermanentProvisionerError):
            await adapter.submit(spec_for(owner()))
        control.clear_requests()
        server_id = await adapter.submit(spec_for(owner()))
        endpoints = [r.endpoint for r in control.requests()]
        assert endpoints[-1] == "compute.servers.create"
        assert any(endpoint.startswith("image.") for endpoint in endpoints)
        await adapter.delete(server_id)
    finally:
        await adapter.close()
