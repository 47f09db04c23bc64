"""decide(): every row of the decision table, and the reasons it gives.

The table: docs/architecture.md#reconciler-decision-table and docs/reconciler.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.policy import (
    RULES,
    Action,
    ConsoleFacts,
    GitHubRunnerFacts,
    Known,
    SweepFacts,
    VMFacts,
    decide,
    decide_registration,
    decide_sweep,
)

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
BOOT_TIMEOUT = timedelta(minutes=10)
YOUNG = NOW - timedelta(minutes=2)
OLD = NOW - timedelta(minutes=30)
IDLE = GitHubRunnerFacts(id=7, busy=False, online=True)
BUSY = GitHubRunnerFacts(id=7, busy=True, online=True)
OFFLINE = GitHubRunnerFacts(id=7, busy=False, online=False)


def ok(
    status: str,
    created_at: datetime,
    runner: GitHubRunnerFacts | None,
    *,
    setup_complete: bool = False,
    setup_failed: bool = False,
    run_complete_exit_code: int | None = None,
    runner_alive: bool | None = None,
) -> VMFacts:
    """The facts of a VM whose probe answered."""
    return VMFacts(
        status,
        created_at,
        runner,
        "ok",
        setup_complete=setup_complete,
        setup_failed=setup_failed,
        run_complete_exit_code=run_complete_exit_code,
        runner_alive=runner_alive,
    )


ROWS: list[tuple[str, VMFacts, Action]] = [
    ("error_status", ok("ERROR", YOUNG, BUSY, runner_alive=True), Action.DELETE),
    (
        "run_complete_probe",
        ok("ACTIVE", OLD, IDLE, setup_complete=True, run_complete_exit_code=0),
        Action.CLEAN_UP,
    ),
    (
        "run_complete_console",
        VMFacts("ACTIVE", OLD, IDLE, "timeout", console=ConsoleFacts(True, True)),
        Action.CLEAN_UP,
    ),
    ("powered_off", VMFacts("SHUTOFF", OLD, None), Action.CLEAN_UP),
    ("powered_off_idle", VMFacts("SHUTOFF", OLD, IDLE), Action.CLEAN_UP),
    ("powered_off_busy", VMFacts("SHUTOFF", OLD, BUSY), Action.ADOPT_BUSY),
    (
        "powered_off_busy_run_complete",
        VMFacts("SHUTOFF", OLD, BUSY, console=ConsoleFacts(run_complete=True)),
        Action.CLEAN_UP,
    ),
    ("no_runner_reachable", ok("ACTIVE", YOUNG, None), Action.DELETE),
    ("no_runner_unreachable", VMFacts("ACTIVE", YOUNG, None, "timeout"), Action.DELETE),
    (
        "alive_idle",
        ok("ACTIVE", OLD, IDLE, setup_complete=True, runner_alive=True),
        Action.ADOPT_IDLE,
    ),
    (
        "alive_busy",
        ok("ACTIVE", OLD, BUSY, setup_complete=True, runner_alive=True),
        Action.ADOPT_BUSY,
    ),
    (
        "crashed",
        ok("ACTIVE", YOUNG, IDLE, setup_complete=True, runner_alive=False),
        Action.DELETE,
    ),
    ("setup_young", ok("ACTIVE", YOUNG, OFFLINE), Action.ADOPT_BOOTING),
    ("setup_old", ok("ACTIVE", OLD, OFFLINE), Action.DELETE),
    ("setup_failed", ok("ACTIVE", YOUNG, OFFLINE, setup_failed=True), Action.DELETE),
    ("unreachable_busy", VMFacts("ACTIVE", OLD, BUSY, "host_key_mismatch"), Action.ADOPT_BUSY),
    ("unreachable_young", VMFacts("ACTIVE", YOUNG, OFFLINE, "timeout"), Action.ADOPT_BOOTING),
    ("unreachable_old", VMFacts("ACTIVE", OLD, IDLE, "unreachable"), Action.DELETE),
    ("building_young", VMFacts("BUILD", YOUNG, OFFLINE), Action.ADOPT_BOOTING),
    (
        "console_setup_failed",
        VMFacts("ACTIVE", YOUNG, OFFLINE, "timeout", console=ConsoleFacts(setup_failed=True)),
        Action.DELETE,
    ),
    (
        "hidden_process_online",
        ok("ACTIVE", OLD, IDLE, setup_complete=True, runner_alive=None),
        Action.ADOPT_IDLE,
    ),
    ("kept_failed", VMFacts("ERROR", OLD, None, kept_failed=True), Action.SKIP),
]


@pytest.mark.parametrize(
    ("facts", "action"), [(f, a) for _, f, a in ROWS], ids=[r[0] for r in ROWS]
)
def test_each_row_of_the_decision_table_maps_to_its_action_with_a_reason(
    facts: VMFacts, action: Action
) -> None:
    decision = decide(facts, NOW, BOOT_TIMEOUT)
    assert decision.action is action
    assert decision.reason


def test_a_busy_runner_is_never_deleted_on_a_failed_probe_whatever_its_age() -> None:
    for outcome in ("timeout", "unreachable", "auth_failed", "host_key_mismatch", None):
        facts = VMFacts("ACTIVE", NOW - timedelta(days=3), BUSY, outcome)
        assert decide(facts, NOW, BOOT_TIMEOUT).action is Action.ADOPT_BUSY


def test_a_vm_without_a_creation_time_is_adopted_as_booting_with_a_fresh_deadline() -> None:
    decision = decide(VMFacts("ACTIVE", None, OFFLINE, "timeout"), NOW, BOOT_TIMEOUT)
    assert decision.action is Action.ADOPT_BOOTING
    assert "unknown" in decision.reason


def test_probe_facts_are_ignored_unless_the_probe_ended_ok() -> None:
    facts = VMFacts("ACTIVE", OLD, IDLE, "timeout", setup_complete=True, runner_alive=True)
    assert decide(facts, NOW, BOOT_TIMEOUT).action is Action.DELETE


# The periodic pass ---------------------------------------------------------------------------

SWEEP_ROWS: list[tuple[str, SweepFacts, Action]] = [
    ("create_in_flight", SweepFacts("ERROR", OLD, None, Known.CREATING), Action.KEEP),
    ("kept_failed", SweepFacts("ERROR", OLD, None, None, kept_failed=True), Action.SKIP),
    ("error_not_busy", SweepFacts("ERROR", OLD, IDLE, Known.IDLE), Action.DELETE),
    ("error_untracked", SweepFacts("ERROR", YOUNG, None, None), Action.DELETE),
    ("error_busy_kept", SweepFacts("ERROR", OLD, BUSY, Known.BUSY), Action.KEEP),
    ("powered_off", SweepFacts("SHUTOFF", OLD, OFFLINE, Known.FINISHED), Action.CLEAN_UP),
    ("powered_off_busy_kept", SweepFacts("SHUTOFF", OLD, BUSY, Known.BUSY), Action.KEEP),
    ("missing_while_booting", SweepFacts("ACTIVE", OLD, None, Known.BOOTING), Action.KEEP),
    ("missing_young", SweepFacts("ACTIVE", YOUNG, None, None), Action.KEEP),
    ("missing_no_creation_time", SweepFacts("ACTIVE", None, None, None), Action.KEEP),
    ("missing_once", SweepFacts("ACTIVE", OLD, None, Known.IDLE), Action.WATCH),
    (
        "missing_twice",
        SweepFacts("ACTIVE", OLD, None, Known.IDLE, missing_before=True),
        Action.DELETE,
    ),
    ("untracked_idle", SweepFacts("ACTIVE", OLD, IDLE, None), Action.ADOPT_IDLE),
    ("untracked_busy", SweepFacts("ACTIVE", OLD, BUSY, None), Action.ADOPT_BUSY),
    ("untracked_offline", SweepFacts("ACTIVE", YOUNG, OFFLINE, None), Action.ADOPT_BOOTING),
    ("tracked_busy_github_idle", SweepFacts("ACTIVE", OLD, IDLE, Known.BUSY), Action.MARK_IDLE),
    ("tracked_busy_github_offline", SweepFacts("ACTIVE", OLD, OFFLINE, Known.BUSY), Action.KEEP),
    ("tracked_and_known", SweepFacts("ACTIVE", OLD, IDLE, Known.IDLE), Action.KEEP),
]


@pytest.mark.parametrize(
    ("facts", "action"), [(f, a) for _, f, a in SWEEP_ROWS], ids=[r[0] for r in SWEEP_ROWS]
)
def test_each_row_of_the_sweep_table_maps_to_its_action_with_a_reason(
    facts: SweepFacts, action: Action
) -> None:
    decision = decide_sweep(facts, NOW, BOOT_TIMEOUT)
    assert decision.action is action
    assert decision.reason


def test_the_sweep_never_removes_a_vm_github_reports_busy_before_its_lifetime() -> None:
    for status in ("ACTIVE", "SHUTOFF", "ERROR"):
        for known in (None, *Known):
            for missing_before in (False, True):
                facts = SweepFacts(status, OLD, BUSY, known, missing_before=missing_before)
                assert not decide_sweep(facts, NOW, BOOT_TIMEOUT).action.removes_vm


REGISTRATION_ROWS: list[tuple[str, GitHubRunnerFacts, Known | None, Action]] = [
    ("idle", IDLE, None, Action.REMOVE_REGISTRATION),
    ("offline", OFFLINE, Known.IDLE, Action.REMOVE_REGISTRATION),
    ("busy", BUSY, None, Action.KEEP),
    ("vm_being_created", OFFLINE, Known.CREATING, Action.KEEP),
]


@pytest.mark.parametrize(
    ("runner", "known", "action"),
    [(r, k, a) for _, r, k, a in REGISTRATION_ROWS],
    ids=[row[0] for row in REGISTRATION_ROWS],
)
def test_each_row_of_the_registration_table(
    runner: GitHubRunnerFacts, known: Known | None, action: Action
) -> None:
    decision = decide_registration(runner, known)
    assert decision.action is action
    assert decision.reason


# MAX_RUNNER_LIFETIME, from the server's creation time ----------------------------------------

LIFETIME = timedelta(hours=24)
ANCIENT = NOW - timedelta(hours=25)


def test_a_vm_past_its_lifetime_is_deleted_at_startup_even_busy_and_alive() -> None:
    facts = ok("ACTIVE", ANCIENT, BUSY, setup_complete=True, runner_alive=True)
    decision = decide(facts, NOW, BOOT_TIMEOUT, LIFETIME)
    assert decision.action is Action.DELETE
    assert "MAX_RUNNER_LIFETIME" in decision.reason
    # Without the limit (or younger than it) the row does not apply.
    assert decide(facts, NOW, BOOT_TIMEOUT).action is Action.ADOPT_BUSY
    young = ok("ACTIVE", OLD, BUSY, setup_complete=True, runner_alive=True)
    assert decide(young, NOW, BOOT_TIMEOUT, LIFETIME).action is Action.ADOPT_BUSY


def test_a_vm_past_its_lifetime_is_deleted_by_the_sweep_even_busy() -> None:
    for known in (None, Known.BUSY, Known.IDLE, Known.BOOTING):
        facts = SweepFacts("ACTIVE", ANCIENT, BUSY, known)
        decision = decide_sweep(facts, NOW, BOOT_TIMEOUT, LIFETIME)
        assert decision.action is Action.DELETE
        assert "25.0h old" in decision.reason


def test_the_lifetime_leaves_kept_failed_vms_and_creates_in_flight_alone() -> None:
    kept = SweepFacts("ERROR", ANCIENT, None, None, kept_failed=True)
    assert decide_sweep(kept, NOW, BOOT_TIMEOUT, LIFETIME).action is Action.SKIP
    creating = SweepFacts("BUILD", ANCIENT, None, Known.CREATING)
    assert decide_sweep(creating, NOW, BOOT_TIMEOUT, LIFETIME).action is Action.KEEP
    assert decide(
        VMFacts("ERROR", ANCIENT, None, kept_failed=True), NOW, BOOT_TIMEOUT, LIFETIME
    ) == (decide(VMFacts("ERROR", ANCIENT, None, kept_failed=True), NOW, BOOT_TIMEOUT))


# Failed VMs kept for debugging, until FAILED_VM_RETENTION ------------------------------------

RETENTION = timedelta(hours=24)


@pytest.mark.parametrize(
    ("failed_at", "created_at", "action"),
    [
        (NOW - timedelta(hours=2), ANCIENT, Action.SKIP),  # kept 2h ago: its age does not count
        (NOW - timedelta(hours=30), OLD, Action.DELETE),
        (None, NOW - timedelta(hours=30), Action.DELETE),  # undated: its creation time counts
        (None, None, Action.SKIP),  # nothing to count from: kept
    ],
)
def test_a_kept_failed_vm_is_deleted_once_past_its_retention_by_both_passes(
    failed_at: datetime | None, created_at: datetime | None, action: Action
) -> None:
    startup = VMFacts("ERROR", created_at, None, kept_failed=True, failed_at=failed_at)
    sweep = SweepFacts("ERROR", created_at, None, None, kept_failed=True, failed_at=failed_at)
    decisions = [
        decide(startup, NOW, BOOT_TIMEOUT, LIFETIME, RETENTION),
        decide_sweep(sweep, NOW, BOOT_TIMEOUT, LIFETIME, RETENTION),
    ]
    assert [d.action for d in decisions] == [action, action]
    assert all(d.reason for d in decisions)


def test_every_row_names_its_rule_from_the_fixed_set() -> None:
    decisions = [decide(facts, NOW, BOOT_TIMEOUT) for _, facts, _ in ROWS]
    decisions += [decide_sweep(facts, NOW, BOOT_TIMEOUT) for _, facts, _ in SWEEP_ROWS]
    decisions += [decide_registration(runner, known) for _, runner, known, _ in REGISTRATION_ROWS]
    decisions.append(decide(VMFacts("ACTIVE", ANCIENT, BUSY), NOW, BOOT_TIMEOUT, LIFETIME))
    assert {decision.rule for decision in decisions} <= RULES
    # Ages and figures stay in the reason; the rule is the same for every VM of a row.
    young, old = (decide(ok("ACTIVE", when, OFFLINE), NOW, BOOT_TIMEOUT) for when in (YOUNG, OLD))
    assert young.reason != old.reason
    assert (young.rule, old.rule) == ("booting", "boot_timeout")
    expired = decide(VMFacts("ACTIVE", ANCIENT, BUSY), NOW, BOOT_TIMEOUT, LIFETIME)
    assert expired.rule == "lifetime"
