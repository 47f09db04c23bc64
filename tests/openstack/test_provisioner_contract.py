"""The OpenStack provisioner's contract, written once and run against two clouds.

`cloud` is the simulator's OpenStack (always) and a real Nova with the fake virt driver (marker
`real_openstack`; started by tests/real_openstack/up). A behaviour that differs between the two
is a bug in the simulator. Cases the real Nova here cannot show (boot from volume without
Cinder, floating IPs without an L3 agent, injected faults) are in test_provisioner_simulator.py.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from provisioners.base import (
    PermanentProvisionerError,
    ServerNotFound,
    ServerSpec,
)
from provisioners.bootstrap import generate_host_key
from provisioners.naming import (
    Ownership,
    host_key_metadata,
    ownership_metadata,
    parse_ownership,
    runner_name,
)
from provisioners.openstack import OpenStackConfig, OpenStackProvisioner
from tests.testsupport.clouds import CloudTarget

pytestmark = pytest.mark.timeout(120)


def config_for(cloud: CloudTarget, **overrides: object) -> OpenStackConfig:
    values: dict[str, object] = {
        "image": cloud.image,
        "flavor": cloud.flavor,
        "network": cloud.network,
        "security_groups": (cloud.security_group,) if cloud.security_group else (),
        "keypair": cloud.keypair,
        "cloud": cloud.cloud_name,
        "poll_interval": 0.1,
        "active_timeout": 60.0,
        "delete_timeout": 60.0,
        "max_workers": 4,
        **overrides,
    }
    return OpenStackConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def provisioner(cloud: CloudTarget) -> AsyncIterator[OpenStackProvisioner]:
    adapter = OpenStackProvisioner(config_for(cloud))
    yield adapter
    await adapter.close()


def owner() -> Ownership:
    # A fresh listener instance per test: tests sharing a real cloud never see each other.
    return Ownership(listener_instance=f"test-{secrets.token_hex(4)}", scale_set_id=7)


def spec_for(ownership: Ownership, user_data: bytes = b"#!/bin/bash\necho hi\n") -> ServerSpec:
    name = runner_name("contract")
    return ServerSpec(
        name=name,
        user_data=user_data,
        tags=ownership.tags(),
        metadata=ownership_metadata(name, "contract", datetime.now(UTC), "ssh-ed25519 AAAAtest"),
    )


async def test_a_created_server_is_active_and_carries_its_ownership(
    provisioner: OpenStackProvisioner,
) -> None:
    ownership = owner()
    spec = spec_for(ownership)
    vm = await provisioner.create(spec)
    try:
        assert vm.status == "ACTIVE"
        assert vm.name == spec.name
        assert set(ownership.tags()) <= set(vm.tags)
        info = parse_ownership(vm.tags, vm.metadata)
        assert info is not None
        assert info.ownership == ownership
        assert info.runner_name == spec.name
        assert info.host_public_key == "ssh-ed25519 AAAAtest"
        assert vm.address is not None
        fetched = await provisioner.get(vm.id)
        assert fetched is not None
        assert fetched.id == vm.id
    finally:
        await provisioner.delete(vm.id)
    assert await provisioner.get(vm.id) is None


async def test_listing_by_tags_finds_only_our_servers(provisioner: OpenStackProvisioner) -> None:
    ours, theirs = owner(), owner()
    mine = await provisioner.create(spec_for(ours))
    foreign = await provisioner.create(spec_for(theirs))
    try:
        listed = await provisioner.list_owned(ours.tags())
        assert [vm.id for vm in listed] == [mine.id]
        assert [vm.id for vm in await provisioner.list_owned(theirs.listener_tags())] == [
            foreign.id
        ]
    finally:
        await provisioner.delete(mine.id)
        await provisioner.delete(foreign.id)
    assert await provisioner.list_owned(ours.tags()) == []


async def test_deleting_a_gone_server_is_success(provisioner: OpenStackProvisioner) -> None:
    vm = await provisioner.create(spec_for(owner()))
    await provisioner.delete(vm.id)
    await provisioner.delete(vm.id)
    assert await provisioner.get(vm.id) is None


async def test_the_user_data_reaches_the_server_and_console_output_is_readable(
    provisioner: OpenStackProvisioner,
) -> None:
    vm = await provisioner.create(spec_for(owner(), b"#!/bin/bash\necho runner-bootstrap\n"))
    try:
        output = await provisioner.console_output(vm.id)
        assert isinstance(output, str)
    finally:
        await provisioner.delete(vm.id)


@pytest.mark.parametrize("field", ["image", "flavor", "network"])
async def test_an_unknown_image_flavor_or_network_is_permanent(
    cloud: CloudTarget, field: str
) -> None:
    adapter = OpenStackProvisioner(config_for(cloud, **{field: "does-not-exist"}))
    try:
        with pytest.raises(PermanentProvisionerError, match="does-not-exist"):
            await adapter.create(spec_for(owner()))
    finally:
        await adapter.close()


async def test_user_data_over_novas_limit_is_refused_before_any_call(
    provisioner: OpenStackProvisioner,
) -> None:
    with pytest.raises(PermanentProvisionerError, match="65535"):
        await provisioner.create(spec_for(owner(), b"x" * 50_000))


async def test_listing_without_an_ownership_filter_is_refused(
    provisioner: OpenStackProvisioner,
) -> None:
    with pytest.raises(ValueError, match="ownership tag"):
        await provisioner.list_owned(())


async def test_set_metadata_merges_so_a_learned_host_key_joins_the_ownership_marks(
    provisioner: OpenStackProvisioner,
) -> None:
    ownership = owner()
    name = runner_name("contract")
    vm = await provisioner.create(
        ServerSpec(
            name=name,
            user_data=b"#!/bin/bash\necho hi\n",
            tags=ownership.tags(),
            # Created without a host key, as with SSH_HOST_KEY_POLICY=accept-new.
            metadata=ownership_metadata(name, "contract", datetime.now(UTC)),
        )
    )
    key = generate_host_key().public_openssh
    try:
        await provisioner.set_metadata(vm.id, host_key_metadata(key))
        fetched = await provisioner.get(vm.id)
        assert fetched is not None
        info = parse_ownership(fetched.tags, fetched.metadata)
        assert info is not None
        assert info.host_public_key == key
        assert info.runner_name == name
        assert info.created_at is not None
        # Nova's limit on a metadata value is 255 characters.
        with pytest.raises(PermanentProvisionerError):
            await provisioner.set_metadata(vm.id, {"scaleset-test": "x" * 256})
        await provisioner.set_metadata(vm.id, {"scaleset-test": "x" * 255})
    finally:
        await provisioner.delete(vm.id)
    with pytest.raises(ServerNotFound):
        await provisioner.set_metadata(vm.id, host_key_metadata(key))
