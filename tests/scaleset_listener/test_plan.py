"""plan(): every row of the scaler's table, and the demand arithmetic around it.

The table: scaleset_listener/vm_scaler/plan.py and docs/architecture.md#the-scalers-plan.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from provisioners.base import RunnerVM
from scaleset_listener.vm_scaler.ledger import Phase, TrackedRunner
from scaleset_listener.vm_scaler.plan import (
    CreateRunners,
    DeleteReason,
    DeleteRunner,
    DiscardAbandoned,
    EndLifetime,
    FailBoot,
    Lifecycle,
    MarkRegistered,
    Observation,
    RetireIdle,
    Step,
    WarnStillBusy,
    next_deadline,
    plan,
)
from scaleset_listener.wire import RunnerReference

NOW = 100_000.0
LIFECYCLE = Lifecycle(
    boot_timeout=600,
    idle_runner_timeout=300,
    max_runner_lifetime=86_400,
    deregistration_timeout=30,
    keep_failed_vms=0,
)
MAX = 10


def runner(
    name: str,
    phase: Phase,
    *,
    age: float = 1000,
    in_phase: float = 1000,
    server: bool = True,
    completed_ago: float | None = None,
    busy_warned: bool = False,
    runner_id: int = 1,
) -> TrackedRunner:
    return TrackedRunner(
        name=name,
        phase=phase,
        created_at=NOW - age,
        phase_since=NOW - in_phase,
        runner_id=runner_id,
        server_id=f"srv-{name}" if server else None,
        job_completed_at=None if completed_ago is None else NOW - completed_ago,
        busy_warned=busy_warned,
    )


def registered(name: str, *, busy: bool = False, online: bool = True) -> RunnerReference:
    return RunnerReference(id=1, name=name, status="online" if online else "offline", busy=busy)


def vm(name: str, status: str = "ACTIVE") -> RunnerVM:
    return RunnerVM(f"srv-{name}", name, status, datetime(2026, 12, 1, tzinfo=UTC))


def observe(
    runners: list[TrackedRunner],
    *,
    desired: int | None = None,
    **fields: object,
) -> Observation:
    """An observation in which demand matches what is owned, unless `desired` says otherwise."""
    owned = sum(1 for r in runners if r.phase in (Phase.BOOTING, Phase.IDLE, Phase.BUSY))
    base = Observation(now=NOW, desired=owned if desired is None else desired, runners=runners)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


ROWS: list[tuple[str, Observation, list[Step]]] = [
    ("nothing_to_do", observe([runner("a", Phase.IDLE)]), []),
    (
        "create_in_flight_is_left_to_the_create",
        observe([runner("a", Phase.CREATING, server=False, age=99_999)], desired=1),
        [],
    ),
    (
        "lifetime_even_busy",
        observe([runner("a", Phase.BUSY, age=90_000)], desired=1),
        [EndLifetime("a"), CreateRunners(1)],
    ),
    (
        "lifetime_finished",
        observe(
            [runner("a", Phase.FINISHED, age=90_000, completed_ago=1)],
            registrations={"a": registered("a")},
            finished_vms={"a": vm("a")},
        ),
        [EndLifetime("a")],
    ),
    (
        "booting_registered_busy",
        observe([runner("a", Phase.BOOTING)], registrations={"a": registered("a", busy=True)}),
        [MarkRegistered("a", Phase.BUSY)],
    ),
    (
        "booting_registered_online",
        observe([runner("a", Phase.BOOTING)], registrations={"a": registered("a")}),
        [MarkRegistered("a", Phase.IDLE)],
    ),
    (
        "booting_offline_within_boot_timeout",
        observe(
            [runner("a", Phase.BOOTING, in_phase=100)],
            registrations={"a": registered("a", online=False)},
        ),
        [],
    ),
    (
        "boot_timeout_deleted",
        observe([runner("a", Phase.BOOTING, in_phase=700)], desired=1),
        [FailBoot("a", keep_vm=False), CreateRunners(1)],
    ),
    (
        "finished_deregistered",
        observe([runner("a", Phase.FINISHED, completed_ago=1)]),
        [DeleteRunner("a", DeleteReason.JOB_DONE_DEREGISTERED)],
    ),
    (
        "finished_powered_off",
        observe(
            [runner("a", Phase.FINISHED, completed_ago=1)],
            registrations={"a": registered("a")},
            finished_vms={"a": vm("a", "SHUTOFF")},
        ),
        [DeleteRunner("a", DeleteReason.JOB_DONE_POWERED_OFF)],
    ),
    (
        "finished_vm_gone",
        observe(
            [runner("a", Phase.FINISHED, completed_ago=1)],
            registrations={"a": registered("a")},
            finished_vms={"a": None},
        ),
        [DeleteRunner("a", DeleteReason.JOB_DONE_POWERED_OFF)],
    ),
    (
        "finished_waiting_for_a_second_signal",
        observe(
            [runner("a", Phase.FINISHED, completed_ago=10)],
            registrations={"a": registered("a")},
            finished_vms={"a": vm("a")},
        ),
        [],
    ),
    (
        "finished_deregistration_timeout",
        observe(
            [runner("a", Phase.FINISHED, completed_ago=31)],
            registrations={"a": registered("a")},
            finished_vms={"a": vm("a")},
        ),
        [DeleteRunner("a", DeleteReason.DEREGISTRATION_TIMEOUT)],
    ),
    (
        "finished_but_github_says_busy_warned_once",
        observe(
            [runner("a", Phase.FINISHED, completed_ago=31)],
            registrations={"a": registered("a", busy=True)},
            finished_vms={"a": vm("a")},
        ),
        [WarnStillBusy("a", "finished_runner_still_busy")],
    ),
    (
        "finished_but_github_says_busy_already_warned",
        observe(
            [runner("a", Phase.FINISHED, completed_ago=31, busy_warned=True)],
            registrations={"a": registered("a", busy=True)},
            finished_vms={"a": vm("a")},
        ),
        [],
    ),
    (
        "abandoned_discarded",
        observe([], abandoned=[runner("old", Phase.IDLE)]),
        [DiscardAbandoned("old")],
    ),
    (
        "abandoned_busy_kept_with_a_warning",
        observe(
            [],
            abandoned=[runner("old", Phase.BUSY)],
            abandoned_registrations={"old": registered("old", busy=True)},
        ),
        [WarnStillBusy("old", "abandoned_runner_still_busy")],
    ),
    (
        "abandoned_create_in_flight_waits",
        observe([], abandoned=[runner("old", Phase.CREATING, server=False)]),
        [],
    ),
    (
        "demand_creates_the_missing",
        observe([runner("a", Phase.IDLE)], desired=4),
        [CreateRunners(3)],
    ),
    (
        "demand_capped_by_max_runners",
        observe([runner("a", Phase.IDLE)], desired=50),
        [CreateRunners(MAX - 1)],
    ),
    (
        "finished_vms_count_against_max_runners",
        observe(
            [runner(f"f{i}", Phase.FINISHED, completed_ago=1) for i in range(8)],
            desired=5,
            registrations={f"f{i}": registered(f"f{i}") for i in range(8)},
            finished_vms={f"f{i}": vm(f"f{i}") for i in range(8)},
        ),
        [CreateRunners(2)],
    ),
    (
        "demand_capped_by_the_clouds_free_capacity",
        observe([runner("a", Phase.IDLE)], desired=5, free=3, in_flight=1),
        [CreateRunners(2)],
    ),
    ("create_backoff_holds", observe([], desired=2, create_allowed=False), []),
    (
        "surplus_retires_the_oldest_idle_past_the_idle_timeout",
        observe(
            [
                runner("young", Phase.IDLE, age=400, in_phase=350),
                runner("old", Phase.IDLE, age=5000, in_phase=350),
                runner("fresh", Phase.IDLE, age=6000, in_phase=10),
                runner("busy", Phase.BUSY),
            ],
            desired=2,
        ),
        [RetireIdle("old"), RetireIdle("young")],
    ),
    (
        "surplus_never_retires_busy_or_booting",
        observe(
            [runner("b", Phase.BUSY), runner("c", Phase.BOOTING, in_phase=10)],
            desired=0,
            registrations={"c": registered("c", online=False)},
        ),
        [],
    ),
]


@pytest.mark.parametrize(
    ("observation", "steps"), [(o, s) for _, o, s in ROWS], ids=[r[0] for r in ROWS]
)
def test_each_row_of_the_plan_table_gives_its_steps(
    observation: Observation, steps: list[Step]
) -> None:
    assert plan(observation, LIFECYCLE, MAX).steps == steps


def test_failed_vms_are_kept_only_up_to_keep_failed_vms() -> None:
    lifecycle = dataclasses.replace(LIFECYCLE, keep_failed_vms=2)
    hung = [runner(f"h{i}", Phase.BOOTING, in_phase=700) for i in range(3)]
    steps = plan(observe(hung, desired=0, kept_failed=1), lifecycle, MAX).steps
    assert steps == [FailBoot("h0", True), FailBoot("h1", False), FailBoot("h2", False)]


def test_a_runner_leaving_this_pass_is_replaced_in_the_same_pass() -> None:
    # Two past their lifetime with demand for two: both go and two are created at once.
    old = [runner(f"o{i}", Phase.IDLE, age=90_000) for i in range(2)]
    steps = plan(observe(old, desired=2), LIFECYCLE, MAX).steps
    assert steps == [EndLifetime("o0"), EndLifetime("o1"), CreateRunners(2)]


@pytest.mark.parametrize(
    ("free", "in_flight", "owned", "capacity"),
    [(None, 0, 3, 2**31 - 1), (4, 0, 3, 7), (4, 2, 3, 5)],
)
def test_the_plan_reports_the_clouds_capacity_for_the_listener(
    free: int | None, in_flight: int, owned: int, capacity: int
) -> None:
    runners = [runner(f"r{i}", Phase.IDLE) for i in range(owned - in_flight)]
    runners += [runner(f"c{i}", Phase.CREATING, server=False) for i in range(in_flight)]
    observation = observe(runners, desired=owned, free=free, in_flight=in_flight)
    assert plan(observation, LIFECYCLE, MAX).cloud_capacity == capacity


def test_plan_changes_nothing_it_reads() -> None:
    runners = [runner("a", Phase.BOOTING, in_phase=700), runner("b", Phase.IDLE)]
    before = [dataclasses.replace(r) for r in runners]
    plan(observe(runners, desired=0), LIFECYCLE, MAX)
    assert runners == before


def test_the_next_deadline_is_the_earliest_timer_still_to_come() -> None:
    runners = [
        runner("booting", Phase.BOOTING, in_phase=590),  # boot timeout in 10 s
        runner("idle", Phase.IDLE, in_phase=280),  # idle timeout in 20 s
        runner("finished", Phase.FINISHED, completed_ago=25),  # deregistration in 5 s
        runner("in-flight", Phase.CREATING, server=False, in_phase=599),  # its create owns it
    ]
    assert next_deadline(runners, LIFECYCLE, NOW) == NOW + 5
    assert next_deadline(runners[:2], LIFECYCLE, NOW) == NOW + 10


def test_a_deadline_already_past_does_not_count_so_no_pass_repeats_at_once() -> None:
    # A finished runner GitHub still reports busy stays past its deregistration timeout.
    kept = runner("kept", Phase.FINISHED, completed_ago=60, busy_warned=True)
    assert next_deadline([kept], LIFECYCLE, NOW) == kept.created_at + LIFECYCLE.max_runner_lifetime
    assert next_deadline([], LIFECYCLE, NOW) is None
