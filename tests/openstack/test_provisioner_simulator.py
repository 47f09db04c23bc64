"""Provisioner behaviour the real fake-driver Nova cannot show, on the simulator's cloud only.

Named as such: injected faults (ERROR with a fault, quota, 5xx, a server that never becomes
ACTIVE, a failing delete), an old compute API without tags, boot from volume (no Cinder in the
real tier) and the floating IP pool (no L3 agent in the real tier).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from provisioners.base import (
    ActiveTimeout,
    CloudTooOld,
    ProvisionerError,
    QuotaExceeded,
    ServerFailed,
    TemporaryProvisionerError,
)
from provisioners.openstack import OpenStackProvisioner
from simulator.openstack.control import CloudControl
from tests.openstack.test_provisioner_contract import config_for, owner, spec_for
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.forward_proxy import forward_proxy


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


@pytest.fixture
async def provisioner(cloud: CloudTarget) -> AsyncIterator[OpenStackProvisioner]:
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=0.05))
    yield adapter
    await adapter.close()


async def test_a_server_in_error_surfaces_novas_fault_and_is_deleted(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    control.fail_server_creates("No valid host was found. There are not enough hosts available.")
    with pytest.raises(ServerFailed, match="No valid host was found") as caught:
        await provisioner.create(spec_for(owner()))
    assert "not enough hosts" in caught.value.fault
    assert control.servers() == []


async def test_quota_exceeded_is_its_own_temporary_error(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    control.exceed_quota("instances")
    with pytest.raises(QuotaExceeded, match="Quota exceeded for instances"):
        await provisioner.create(spec_for(owner()))
    assert isinstance(QuotaExceeded("x"), TemporaryProvisionerError)


async def test_a_real_quota_limit_is_reported_as_quota_exceeded(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    control.set_quotas(instances=1)
    first = await provisioner.create(spec_for(owner()))
    try:
        with pytest.raises(QuotaExceeded):
            await provisioner.create(spec_for(owner()))
    finally:
        await provisioner.delete(first.id)


async def test_a_server_that_never_becomes_active_times_out_and_is_deleted(
    cloud: CloudTarget, control: CloudControl
) -> None:
    control.never_active()
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=0.05, active_timeout=0.5))
    try:
        with pytest.raises(ActiveTimeout, match="still BUILD"):
            await adapter.create(spec_for(owner()))
    finally:
        await adapter.close()
    assert control.servers() == []


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_of_the_api_are_temporary(
    provisioner: OpenStackProvisioner, control: CloudControl, status: int
) -> None:
    control.fail_requests("compute.servers.create", status=status, times=1)
    with pytest.raises(TemporaryProvisionerError):
        await provisioner.create(spec_for(owner()))
    assert control.servers() == []


async def test_a_delete_that_fails_is_reported_not_hidden(
    cloud: CloudTarget, control: CloudControl
) -> None:
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=0.05, delete_timeout=0.5))
    try:
        vm = await adapter.create(spec_for(owner()))
        control.fail_server_deletes("disk stuck", times=1)
        with pytest.raises(TemporaryProvisionerError):
            await adapter.delete(vm.id)
        # The next delete goes through: deletion is retryable and idempotent.
        await adapter.delete(vm.id)
        assert await adapter.get(vm.id) is None
    finally:
        await adapter.close()


async def test_an_old_compute_api_without_tags_is_refused_clearly(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    control.update_config(max_microversion="2.51")
    with pytest.raises(CloudTooOld, match=r"2\.51.*needs 2\.52"):
        await provisioner.create(spec_for(owner()))
    with pytest.raises(CloudTooOld):
        await provisioner.list_owned(owner().tags())
    assert control.servers() == []


async def test_boot_from_volume_creates_the_volume_and_deletes_it_with_the_server(
    cloud: CloudTarget, control: CloudControl
) -> None:
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=0.05, boot_volume_size_gb=40))
    try:
        vm = await adapter.create(spec_for(owner()))
        (server,) = control.servers()
        assert len(server.volumes) == 1
        (mapping,) = control.requests(endpoint="compute.servers.create")[-1].body["server"][
            "block_device_mapping_v2"
        ]
        assert mapping["volume_size"] == 40
        assert mapping["delete_on_termination"] is True
        await adapter.delete(vm.id)
    finally:
        await adapter.close()
    assert control.state()["volumes"] == []


async def test_floating_ips_come_from_the_pool_in_order_and_go_back_on_delete(
    cloud: CloudTarget, control: CloudControl
) -> None:
    pool = cloud.floating_ip_pool[:2]
    adapter = OpenStackProvisioner(config_for(cloud, poll_interval=0.05, floating_ips=pool))
    try:
        assert await adapter.capacity() == 2
        first = await adapter.create(spec_for(owner()))
        second = await adapter.create(spec_for(owner()))
        assert (first.floating_ip, second.floating_ip) == pool
        assert first.address == pool[0]
        assert await adapter.capacity() == 0
        with pytest.raises(QuotaExceeded, match="no free floating IP"):
            await adapter.create(spec_for(owner()))
        # The failed create left nothing behind.
        assert len(control.servers()) == 2
        await adapter.delete(first.id)
        assert await adapter.capacity() == 1
        third = await adapter.create(spec_for(owner()))
        assert third.floating_ip == pool[0]
        await adapter.delete(second.id)
        await adapter.delete(third.id)
        assert await adapter.capacity() == 2
    finally:
        await adapter.close()


async def test_without_a_pool_and_with_an_unlimited_quota_capacity_is_not_limited(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    control.set_quotas(instances=-1, cores=-1, ram=-1)
    assert await provisioner.capacity() is None


async def test_console_output_carries_what_the_guest_printed(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    vm = await provisioner.create(spec_for(owner()))
    try:
        control.append_console(vm.id, "SCALESET-RUNNER setup-complete runner=x")
        assert "SCALESET-RUNNER setup-complete runner=x" in await provisioner.console_output(vm.id)
    finally:
        await provisioner.delete(vm.id)


async def test_the_user_data_and_ownership_reach_nova_as_sent(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    ownership = owner()
    spec = spec_for(ownership, b"#!/bin/bash\necho hello\n")
    vm = await provisioner.create(spec)
    try:
        server = control.server(vm.id)
        assert server.user_data is not None
        assert "echo hello" in server.user_data
        assert set(server.tags) == set(ownership.tags())
        assert server.metadata == dict(spec.metadata)
    finally:
        await provisioner.delete(vm.id)


async def test_capacity_is_the_scarcest_quota_at_each_flavor(
    provisioner: OpenStackProvisioner, control: CloudControl
) -> None:
    # Nova's default quota (10 instances, 20 cores, 51200 MiB): m1.small (1 vCPU, 2048 MiB) is
    # held by instances, m1.large (4, 8192) by cores, g1.gpu (8, 32768) by RAM.
    assert await provisioner.capacity() == 10
    assert await provisioner.capacity("m1.large") == 5
    assert await provisioner.capacity("g1.gpu") == 1
    # An unknown flavor limits by instances only (its create fails and says why).
    assert await provisioner.capacity("no-such-flavor") == 10
    assert len(control.requests("compute.limits")) == 1


async def test_capacity_is_the_least_of_the_pool_and_the_quota(
    cloud: CloudTarget, control: CloudControl
) -> None:
    control.set_quotas(instances=1)
    adapter = OpenStackProvisioner(
        config_for(cloud, poll_interval=0.05, floating_ips=cloud.floating_ip_pool[:2])
    )
    try:
        assert await adapter.capacity() == 1
    finally:
        await adapter.close()


async def test_unreadable_limits_leave_the_capacity_unlimited_by_quota_and_are_read_again(
    cloud: CloudTarget, control: CloudControl
) -> None:
    control.set_quotas(instances=3)
    control.fail_requests("compute.limits", status=500, times=None)
    adapter = OpenStackProvisioner(
        config_for(cloud, poll_interval=0.05, capacity_refresh_interval=1.0)
    )
    try:
        assert await adapter.capacity() is None
        failed_reads = len(control.requests("compute.limits"))
        # Not once per look-up: the next read waits for its turn.
        assert await adapter.capacity() is None
        assert len(control.requests("compute.limits")) == failed_reads
        control.clear_faults()
        deadline = asyncio.get_running_loop().time() + 10
        while await adapter.capacity() is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert await adapter.capacity() == 3
    finally:
        await adapter.close()


async def test_the_clouds_requests_go_through_http_proxy_when_the_environment_sets_one(
    cloud: CloudTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests reads the environment only when something is there to read (a proxy, a CA
    bundle, a netrc file); with a proxy set, every call to the cloud goes through it."""
    for name in ("http_proxy", "no_proxy", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with forward_proxy() as (proxy_url, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        adapter = OpenStackProvisioner(config_for(cloud, max_workers=1))
        try:
            with pytest.raises(ProvisionerError):
                await adapter.list_owned(owner().tags())
        finally:
            await adapter.close()
    auth_url = cloud.env.get("OS_AUTH_URL") or ""
    assert seen, "no request reached the proxy"
    assert all(url.startswith("http://127.0.0.1:") for url in seen), seen
    assert auth_url == "" or seen[0].startswith(auth_url.rstrip("/")), (auth_url, seen)
