"""The project's quota headroom between two reads of Nova's /limits (provisioners/headroom.py):
pure bookkeeping, so tested as such; the provisioner's use of it is tested against the clouds
(tests/openstack/test_capacity_contract.py) and end to end (tests/scaleset_listener)."""

from __future__ import annotations

import pytest

from provisioners.headroom import ComputeLimits, FlavorSize, ProjectHeadroom

pytestmark = pytest.mark.timeout(10)

SMALL = FlavorSize(vcpus=1, ram_mb=512)
LARGE = FlavorSize(vcpus=4, ram_mb=8192)
SET_A = ("scaleset-runner", "scaleset-listener-x", "scaleset-set-1")
SET_B = ("scaleset-runner", "scaleset-listener-x", "scaleset-set-2")


def limits(
    instances: int = 10,
    cores: int = 20,
    ram: int = 51200,
    used: tuple[int, int, int] = (0, 0, 0),
) -> ComputeLimits:
    return ComputeLimits(instances, cores, ram, *used)


def read(headroom: ProjectHeadroom, answer: ComputeLimits) -> None:
    headroom.apply(answer, headroom.begin_read())


def test_the_scarcest_resource_at_the_flavor_decides() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=10, cores=20, ram=51200, used=(2, 8, 16384)))
    assert headroom.free_servers(SMALL, SET_A) == 8  # instances: 8 left
    assert headroom.free_servers(LARGE, SET_A) == 3  # cores: 12 left, 4 each
    read(headroom, limits(instances=10, cores=-1, ram=20480, used=(2, 8, 16384)))
    assert headroom.free_servers(LARGE, SET_A) == 0  # RAM: 4096 MiB left, 8192 each


def test_unlimited_or_unread_limits_limit_nothing() -> None:
    headroom = ProjectHeadroom()
    assert headroom.free_servers(SMALL, SET_A) is None
    assert headroom.claim(SMALL, SET_A) is not None
    read(headroom, limits(instances=-1, cores=-1, ram=-1))
    assert headroom.free_servers(SMALL, SET_A) is None


def test_used_above_the_limit_is_no_room_not_negative_room() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=2, used=(5, 5, 2560)))
    assert headroom.free_servers(SMALL, SET_A) == 0


def test_a_create_takes_its_share_until_a_read_that_began_after_nova_accepted_it() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=2))
    claim = headroom.claim(SMALL, SET_A)
    assert claim is not None
    # Its own creator counts it in flight itself; every other owner sees it taken.
    assert headroom.free_servers(SMALL, SET_A) == 2
    assert headroom.free_servers(SMALL, SET_B) == 1
    began_before = headroom.begin_read()
    headroom.accepted(claim, "server-1")
    headroom.settled("server-1")
    assert headroom.free_servers(SMALL, SET_A) == 1
    # A read that began before Nova accepted it may not count it: the claim stays.
    headroom.apply(limits(instances=2, used=(0, 0, 0)), began_before)
    assert headroom.free_servers(SMALL, SET_A) == 1
    # A read that began after counts it; the claim is done, not counted twice.
    read(headroom, limits(instances=2, used=(1, 1, 512)))
    assert headroom.free_servers(SMALL, SET_A) == 1


def test_a_refused_create_gives_its_share_back() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=1))
    claim = headroom.claim(SMALL, SET_A)
    assert claim is not None
    assert headroom.claim(SMALL, SET_B) is None
    headroom.refused(claim)
    assert headroom.free_servers(SMALL, SET_B) == 1


def test_two_scale_sets_cannot_both_take_the_last_slot() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=3, used=(2, 2, 1024)))
    # Both see the one free slot before either creates...
    assert headroom.free_servers(SMALL, SET_A) == headroom.free_servers(SMALL, SET_B) == 1
    # ...the first claim takes it, the second is refused without asking Nova.
    assert headroom.claim(LARGE, SET_A) is not None
    assert headroom.claim(SMALL, SET_B) is None
    assert headroom.free_servers(SMALL, SET_B) == 0


def test_a_finished_delete_gives_back_what_a_server_created_here_took() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=10, cores=4))
    claim = headroom.claim(LARGE, SET_A)
    assert claim is not None
    headroom.accepted(claim, "server-1")
    headroom.settled("server-1")
    read(headroom, limits(instances=10, cores=4, used=(1, 4, 8192)))
    assert headroom.free_servers(LARGE, SET_A) == 0
    headroom.released("server-1")
    assert headroom.free_servers(LARGE, SET_A) == 1
    # Deleting it again (or a server of an earlier process) makes no room Nova does not have.
    headroom.released("server-1")
    headroom.released("someone-elses")
    assert headroom.free_servers(LARGE, SET_A) == 1
    # A read that began after the delete counts it: the release is done, not counted twice.
    read(headroom, limits(instances=10, cores=4, used=(0, 0, 0)))
    assert headroom.free_servers(LARGE, SET_A) == 1


def test_a_delete_finished_during_a_read_is_not_counted_twice() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=1))
    claim = headroom.claim(SMALL, SET_A)
    assert claim is not None
    headroom.accepted(claim, "server-1")
    read(headroom, limits(instances=1, used=(1, 1, 512)))
    began = headroom.begin_read()
    headroom.released("server-1")
    # Nova's answer may or may not have seen the delete: the release goes, the answer decides.
    headroom.apply(limits(instances=1, used=(1, 1, 512)), began)
    assert headroom.free_servers(SMALL, SET_A) == 0


def test_after_novas_quota_refusal_there_is_no_room_until_the_next_read() -> None:
    headroom = ProjectHeadroom()
    read(headroom, limits(instances=4))
    in_flight = headroom.claim(SMALL, SET_A)
    assert in_flight is not None
    headroom.exhausted()
    # The caller's own create in flight still counts as its own; nothing more fits.
    assert headroom.free_servers(SMALL, SET_A) == 1
    assert headroom.free_servers(SMALL, SET_B) == 0
    assert headroom.claim(SMALL, SET_B) is None
    read(headroom, limits(instances=4, used=(1, 1, 512)))
    assert headroom.free_servers(SMALL, SET_B) == 2
