"""Sweeper: the periodic pass against in-memory stand-ins for the cloud and GitHub (its table
is in test_policy.py), with its one memory: who was missing on the previous sweep."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from provisioners.naming import FAILED_TAG, failed_metadata
from reconciler.policy import Action, Known
from reconciler.sweep import Sweeper
from tests.reconciler.test_run_once import BOOT, NOW, OWNER, Cloud, Registration, Registry, vm


def sweeper(cloud: Cloud, registry: Registry) -> Sweeper:
    return Sweeper(cloud, registry, BOOT, now=lambda: NOW)


async def test_a_runner_missing_on_two_sweeps_in_a_row_has_its_vm_deleted() -> None:
    cloud = Cloud([vm(1), vm(2)])
    registry = Registry([Registration(2, "linux-00000002")])
    sweep = sweeper(cloud, registry)
    known = {"linux-00000001": Known.IDLE, "linux-00000002": Known.IDLE}

    first = await sweep.sweep(OWNER, known)
    assert [row.runner_name for row in first.with_action(Action.WATCH)] == ["linux-00000001"]
    assert cloud.deleted == []

    second = await sweep.sweep(OWNER, known)
    assert [row.runner_name for row in second.removed] == ["linux-00000001"]
    assert cloud.deleted == ["srv-1"]
    assert set(cloud.vms) == {"srv-2"}


async def test_a_runner_that_shows_up_between_sweeps_starts_over() -> None:
    cloud = Cloud([vm(1)])
    registry = Registry([])
    sweep = sweeper(cloud, registry)
    known = {"linux-00000001": Known.IDLE}
    assert (await sweep.sweep(OWNER, known)).with_action(Action.WATCH)
    registry.runners.append(Registration(1, "linux-00000001"))
    assert (await sweep.sweep(OWNER, known)).with_action(Action.KEEP)
    registry.runners.clear()
    # Missing again: once, so watched again, not deleted.
    again = await sweep.sweep(OWNER, known)
    assert again.with_action(Action.WATCH)
    assert cloud.deleted == []


async def test_a_re_created_scale_set_forgets_who_was_missing() -> None:
    cloud = Cloud([vm(1)])
    sweep = sweeper(cloud, Registry([]))
    await sweep.sweep(OWNER, {})
    sweep.forget_missing()
    assert (await sweep.sweep(OWNER, {})).with_action(Action.WATCH)
    assert cloud.deleted == []


async def test_registrations_without_a_vm_are_removed_unless_busy_or_being_created() -> None:
    registry = Registry(
        [
            Registration(1, "linux-idle"),
            Registration(2, "linux-busy", busy=True),
            Registration(3, "linux-creating", status="offline"),
        ]
    )
    report = await sweeper(Cloud([]), registry).sweep(OWNER, {"linux-creating": Known.CREATING})
    assert registry.removed == [1]
    assert {o.registration.name: o.decision.action for o in report.orphans} == {
        "linux-idle": Action.REMOVE_REGISTRATION,
        "linux-busy": Action.KEEP,
        "linux-creating": Action.KEEP,
    }
    assert report.findings() == {"remove_registration": 1}


async def test_error_and_powered_off_vms_go_with_their_registration_unless_busy() -> None:
    cloud = Cloud([vm(1, status="ERROR"), vm(2, status="SHUTOFF"), vm(3, status="SHUTOFF")])
    registry = Registry(
        [
            Registration(1, "linux-00000001", status="offline"),
            Registration(2, "linux-00000002", status="offline"),
            Registration(3, "linux-00000003", busy=True),
        ]
    )
    report = await sweeper(cloud, registry).sweep(OWNER, {})
    assert sorted(cloud.deleted) == ["srv-1", "srv-2"]
    assert sorted(registry.removed) == [1, 2]
    # Off, but GitHub says busy: not the sweep's to remove; adopted busy, as GitHub says.
    assert [row.runner_name for row in report.with_action(Action.ADOPT_BUSY)] == ["linux-00000003"]


async def test_a_vm_already_gone_when_deleted_counts_as_removed() -> None:
    cloud = Cloud([vm(1, status="ERROR")])
    cloud.vanish.add("srv-1")
    report = await sweeper(cloud, Registry([])).sweep(OWNER, {})
    assert [row.error for row in report.removed] == [None]


async def test_kept_failed_vms_are_counted_from_the_cloud_and_expire() -> None:
    fresh = vm(1, tags=(FAILED_TAG,))
    fresh = dataclasses.replace(fresh, metadata={**fresh.metadata, **failed_metadata(NOW)})
    stale = vm(2, tags=(FAILED_TAG,))
    stale = dataclasses.replace(
        stale, metadata={**stale.metadata, **failed_metadata(NOW - timedelta(days=2))}
    )
    cloud = Cloud([fresh, stale])
    sweep = Sweeper(cloud, Registry([]), BOOT, failed_retention=timedelta(days=1), now=lambda: NOW)
    report = await sweep.sweep(OWNER, {})
    assert report.kept_failed == 1
    assert cloud.deleted == ["srv-2"]
