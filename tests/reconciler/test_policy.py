"""decide(): every row of the decision table, and the reasons it gives.

The table: docs/architecture.md#reconciler-decision-table and docs/reconciler.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.policy import Action, ConsoleFacts, GitHubRunnerFacts, VMFacts, decide

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
