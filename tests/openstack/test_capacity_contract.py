"""The provisioner's capacity from the project's quota, run against both clouds (`cloud`: the
simulator's and, marked real_openstack, a real Nova): Nova's /limits, read now and then, and in
between this process's own creates and deletes (docs/architecture.md#capacity)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from provisioners.base import QuotaExceeded
from provisioners.headroom import ProjectHeadroom
from provisioners.naming import Ownership
from provisioners.openstack import OpenStackProvisioner
from simulator.openstack.control import CloudControl
from tests.openstack.test_provisioner_contract import config_for, owner, spec_for
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.quotas import instance_quota, servers

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]

# Long enough that no timed read happens during a test: what it sees is the local accounting.
NO_TIMED_READ: dict[str, Any] = {"capacity_refresh_interval": 3600.0}


@contextlib.asynccontextmanager
async def provisioner_for(
    target: CloudTarget,
    *owners: Ownership,
    headroom: ProjectHeadroom | None = None,
    **overrides: Any,
) -> AsyncIterator[OpenStackProvisioner]:
    """A provisioner; the servers of `owners` are deleted afterwards, whatever happened."""
    adapter = OpenStackProvisioner(
        config_for(target, poll_interval=0.05, **overrides), headroom=headroom
    )
    try:
        yield adapter
    finally:
        try:
            for ownership in owners:
                for vm in await adapter.list_owned(ownership.tags()):
                    await adapter.delete(vm.id)
        finally:
            await adapter.close()


def requests_to(target: CloudTarget, endpoint: str) -> int | None:
    """How many requests the simulator's cloud got for `endpoint`; None on a real cloud."""
    if target.control_url is None:
        return None
    with CloudControl(target.control_url) as control:
        return len(control.requests(endpoint))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_capacity_is_the_quota_headroom_and_follows_our_creates_and_deletes(
    cloud: CloudTarget,
) -> None:
    in_use = servers(cloud)
    ours = owner()
    with instance_quota(cloud, in_use + 2):
        async with provisioner_for(cloud, ours, **NO_TIMED_READ) as adapter:
            assert await adapter.capacity() == 2
            first = await adapter.create(spec_for(ours))
            assert await adapter.capacity() == 1
            second = await adapter.create(spec_for(ours))
            assert await adapter.capacity() == 0
            # No room left: refused here, the request is never sent.
            with pytest.raises(QuotaExceeded, match="not sent"):
                await adapter.create(spec_for(ours))
            assert servers(cloud) == in_use + 2
            await adapter.delete(first.id)
            assert await adapter.capacity() == 1
            await adapter.delete(second.id)
            assert await adapter.capacity() == 2


async def test_a_create_in_flight_counts_for_its_owner_only_and_the_last_slot_goes_once(
    cloud: CloudTarget,
) -> None:
    in_use = servers(cloud)
    set_a, set_b = owner(), owner()
    with instance_quota(cloud, in_use + 2):
        async with provisioner_for(cloud, set_a, set_b, **NO_TIMED_READ) as adapter:
            assert await adapter.capacity(owner=set_a.tags()) == 2
            spec = spec_for(set_a)
            server_id = await adapter.submit(spec)
            # Set A counts its own create in flight itself; set B sees the slot taken.
            assert await adapter.capacity(owner=set_a.tags()) == 2
            assert await adapter.capacity(owner=set_b.tags()) == 1
            await adapter.finish_create(server_id, spec.name, spec.tags)
            assert await adapter.capacity(owner=set_a.tags()) == 1
            # Both sets see the last slot; the first to create takes it, the other is refused
            # without a request.
            both = await asyncio.gather(
                adapter.create(spec_for(set_b)),
                adapter.create(spec_for(set_a)),
                return_exceptions=True,
            )
            refused = [result for result in both if isinstance(result, QuotaExceeded)]
            assert len(refused) == 1
            assert "not sent" in str(refused[0])
            assert servers(cloud) == in_use + 2


async def test_novas_refusal_stops_creates_until_a_new_read_shows_room(
    cloud: CloudTarget,
) -> None:
    """Someone outside this process takes the room: Nova's 403 is one refusal, not a storm."""
    in_use = servers(cloud)
    ours, theirs = owner(), owner()
    with instance_quota(cloud, in_use + 1):
        async with (
            provisioner_for(cloud, ours, capacity_refresh_interval=1.0) as adapter,
            provisioner_for(cloud, theirs) as outsider,
        ):
            assert await adapter.capacity() == 1
            taken = await outsider.create(spec_for(theirs))
            creates_before = requests_to(cloud, "compute.servers.create")
            with pytest.raises(QuotaExceeded, match="Quota exceeded for instances"):
                await adapter.create(spec_for(ours))
            # No room at once, and the next create is refused here: Nova saw one request.
            assert await adapter.capacity() == 0
            with pytest.raises(QuotaExceeded, match="not sent"):
                await adapter.create(spec_for(ours))
            if creates_before is not None:
                assert requests_to(cloud, "compute.servers.create") == creates_before + 1
            await outsider.delete(taken.id)

            async def room_again() -> bool:
                return await adapter.capacity() == 1

            await eventually(room_again)
            vm = await adapter.create(spec_for(ours))
            assert vm.status == "ACTIVE"


async def test_provisioners_sharing_a_headroom_see_each_others_creates_and_deletes(
    cloud: CloudTarget,
) -> None:
    """Scale sets with different placements on one cloud: provisioners of their own, one view of
    the project's quota."""
    in_use = servers(cloud)
    set_a, set_b = owner(), owner()
    shared = ProjectHeadroom()
    with instance_quota(cloud, in_use + 1):
        async with (
            provisioner_for(cloud, set_a, headroom=shared, **NO_TIMED_READ) as first,
            provisioner_for(cloud, set_b, headroom=shared, **NO_TIMED_READ) as second,
        ):
            assert await second.capacity(owner=set_b.tags()) == 1
            taken = await first.create(spec_for(set_a))
            assert await second.capacity(owner=set_b.tags()) == 0
            creates_before = requests_to(cloud, "compute.servers.create")
            with pytest.raises(QuotaExceeded, match="not sent"):
                await second.create(spec_for(set_b))
            if creates_before is not None:
                assert requests_to(cloud, "compute.servers.create") == creates_before
            await first.delete(taken.id)
            assert await second.capacity(owner=set_b.tags()) == 1
            await second.create(spec_for(set_b))
            assert servers(cloud) == in_use + 1
