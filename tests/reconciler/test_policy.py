"""decide(): every row of the decision table in DESIGN.md section 8, and the reasons it gives."""

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


def ok(**facts: object) -> dict[str, object]:
    return {"probe_outcome": "ok", "setup_complete": False, "setup_failed": False, **facts}


ROWS: list[tuple[str, VMFacts, Action]] = [
    ("error_status", VMFacts("ERROR", YOUNG, BUSY, **ok(runner_alive=True)), Action.DELETE),
    (
        "run_complete_probe",
        VMFacts("ACTIVE", OLD, IDLE, **ok(setup_complete=True, run_complete_exit_code=0)),
        Action.CLEAN_UP,
    ),
    (
        "run_complete_console",
        VMFacts("ACTIVE", OLD, IDLE, "timeout", console=ConsoleFacts(True, True)),
        Action.CLEAN_UP,
    ),
    ("powered_off", VMFacts("SHUTOFF", OLD, None), Action.CLEAN_UP),
    ("no_runner_reachable", VMFacts("ACTIVE", YOUNG, None, **ok()), Action.DELETE),
    ("no_runner_unreachable", VMFacts("ACTIVE", YOUNG, None, "timeout"), Action.DELETE),
    (
        "alive_idle",
        VMFacts("ACTIVE", OLD, IDLE, **ok(setup_complete=True, runner_alive=True)),
        Action.ADOPT_IDLE,
    ),
    (
        "alive_busy",
        VMFacts("ACTIVE", OLD, BUSY, **ok(setup_complete=True, runner_alive=True)),
        Action.ADOPT_BUSY,
    ),
    (
        "crashed",
        VMFacts("ACTIVE", YOUNG, IDLE, **ok(setup_complete=True, runner_alive=False)),
        Action.DELETE,
    ),
    ("setup_young", VMFacts("ACTIVE", YOUNG, OFFLINE, **ok()), Action.ADOPT_BOOTING),
    ("setup_old", VMFacts("ACTIVE", OLD, OFFLINE, **ok()), Action.DELETE),
    ("setup_failed", VMFacts("ACTIVE", YOUNG, OFFLINE, **ok(setup_failed=True)), Action.DELETE),
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
        VMFacts("ACTIVE", OLD, IDLE, **ok(setup_complete=True, runner_alive=None)),
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
