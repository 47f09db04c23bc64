"""The reconciler's decisions: what to do with an owned VM, at startup and on every sweep.

docs/architecture.md#reconciler-decision-table gives the tables' place in the design,
docs/reconciler.md the operator's view. Three pure functions, each a table read top down:
`decide()` for the startup pass, `decide_sweep()` for the periodic one, `decide_registration()`
for a runner registration with no VM behind it (both passes).

## At startup

`decide()` is pure: it reads the facts gathered about one VM (cloud status and age, the GitHub
runner, the SSH probe, the console markers read when SSH cannot answer) and returns an action
with a reason. The rows, in the order they are checked:

| situation                                                   | action        |
| ----------------------------------------------------------- | ------------- |
| a failed VM kept for debugging, past FAILED_VM_RETENTION    | delete        |
| a failed VM kept for debugging                              | skip          |
| older than MAX_RUNNER_LIFETIME (its creation time), even busy | delete      |
| status ERROR                                                | delete        |
| run-complete (probe or console)                             | clean_up      |
| powered off (SHUTOFF), GitHub says busy                     | adopt_busy    |
| powered off (SHUTOFF), otherwise                            | clean_up      |
| no GitHub runner and no run-complete                        | delete        |
| setup-failed (probe or console marker)                      | delete        |
| probe ok: setup-complete, runner process alive              | adopt_idle/busy |
| probe ok: setup-complete, no runner process (crashed)       | delete        |
| probe ok: setup-complete, process hidden (hidepid)          | as GitHub, or by age |
| probe ok: setup not complete, younger than BOOT_TIMEOUT     | adopt_booting |
| probe ok: setup not complete, older than BOOT_TIMEOUT       | delete        |
| unreachable, GitHub says busy (never kill it on a failed probe) | adopt_busy |
| unreachable, not busy, younger than BOOT_TIMEOUT            | adopt_booting |
| unreachable, not busy, older than BOOT_TIMEOUT              | delete        |

"Unreachable" is every probe outcome but `ok` (a host key mismatch included), and a VM that was
not probed (not ACTIVE yet, or no address).

## On every sweep (VM_TRACKER_INTERVAL)

`decide_sweep()` reads no probe and no console: the cloud, GitHub and what the scaler tracks
(`Known`), plus whether the runner was already missing from GitHub on the previous sweep. It
takes over the running service's clean-up, so every rule about a VM's fate lives here.

| situation                                                     | action        |
| ------------------------------------------------------------- | ------------- |
| the scaler's create call for it is in flight                  | keep          |
| a failed VM kept for debugging, past FAILED_VM_RETENTION      | delete        |
| a failed VM kept for debugging                                | skip          |
| older than MAX_RUNNER_LIFETIME (its creation time), even busy | delete        |
| status ERROR, GitHub does not say busy                        | delete        |
| powered off (SHUTOFF), GitHub does not say busy               | clean_up      |
| no GitHub runner, booting (tracked so, or younger than BOOT_TIMEOUT) | keep   |
| no GitHub runner, also missing on the previous sweep          | delete        |
| no GitHub runner                                              | watch         |
| not tracked by the scaler (an earlier process's VM)           | adopt_*, as GitHub reports it |
| tracked busy, GitHub reports it online and idle               | mark_idle     |
| otherwise                                                     | keep          |

## A registration with no VM (both passes)

| situation                                                     | action              |
| ------------------------------------------------------------- | ------------------- |
| the scaler's create call for it is in flight                  | keep                |
| GitHub reports it busy (a removal would be refused)           | keep                |
| otherwise                                                     | remove_registration |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Action(enum.StrEnum):
    ADOPT_IDLE = "adopt_idle"
    ADOPT_BUSY = "adopt_busy"
    ADOPT_BOOTING = "adopt_booting"
    CLEAN_UP = "clean_up"  # remove the runner registration, then delete the VM
    DELETE = "delete"
    SKIP = "skip"  # not ours to touch now (a failed VM kept for debugging)
    KEEP = "keep"  # the sweep finds nothing to change
    WATCH = "watch"  # runner missing from GitHub once: deleted if still missing next sweep
    MARK_IDLE = "mark_idle"  # the scaler thought it busy; GitHub reports it idle
    REMOVE_REGISTRATION = "remove_registration"  # a registration with no VM behind it

    @property
    def adopts(self) -> bool:
        return self in (Action.ADOPT_IDLE, Action.ADOPT_BUSY, Action.ADOPT_BOOTING)

    @property
    def removes_vm(self) -> bool:
        return self in (Action.CLEAN_UP, Action.DELETE)


class Known(enum.StrEnum):
    """What the scaler tracks about a runner, as the sweep reads it."""

    CREATING = "creating"  # its create call is in flight: the create path owns the VM
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    FINISHED = "finished"


@dataclass(frozen=True)
class GitHubRunnerFacts:
    """The runner registration GitHub holds for the VM's runner name."""

    id: int
    busy: bool
    online: bool


@dataclass(frozen=True)
class ConsoleFacts:
    """The bootstrap's marker lines found in the VM's console log (docs/bootstrap.md)."""

    setup_complete: bool = False
    run_complete: bool = False
    setup_failed: bool = False


@dataclass(frozen=True)
class VMFacts:
    """Everything `decide()` reads about one owned VM. Probe facts are None unless the probe
    ended `ok` (`probe_ok`)."""

    status: str
    created_at: datetime | None
    runner: GitHubRunnerFacts | None
    probe_outcome: str | None = None  # None: not probed
    setup_complete: bool | None = None
    setup_failed: bool | None = None
    run_complete_exit_code: int | None = None
    runner_alive: bool | None = None
    console: ConsoleFacts | None = None  # read only when the probe did not answer
    kept_failed: bool = False
    failed_at: datetime | None = None  # when it was kept (else its creation time counts)

    @property
    def probe_ok(self) -> bool:
        return self.probe_outcome == "ok"


# Every `Decision.rule`: a fixed set, so a metric labelled by it stays bounded.
RULES = frozenset(
    {
        "booting", "boot_timeout", "busy_without_vm", "creating", "error", "failed_retention",
        "idle_again", "kept_failed", "lifetime", "no_registration", "no_registration_once",
        "no_vm", "powered_off", "powered_off_busy", "run_complete", "runner_alive",
        "runner_crashed", "runner_not_visible", "setup_failed", "tracked", "unreachable_busy",
        "untracked",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str  # for people: the row, with this VM's figures
    # The row that decided, a short fixed name (`lifetime`, `boot_timeout`, ...): what metrics
    # count by (docs/monitoring.md), where `reason` would make a series per VM age.
    rule: str


def _age(facts: VMFacts, now: datetime) -> timedelta | None:
    return None if facts.created_at is None else now - facts.created_at


def _adopt_running(runner: GitHubRunnerFacts, why: str, rule: str) -> Decision:
    if runner.busy:
        return Decision(Action.ADOPT_BUSY, f"{why}; GitHub reports the runner busy", rule)
    return Decision(Action.ADOPT_IDLE, f"{why}; GitHub reports the runner idle", rule)


def _by_age(facts: VMFacts, now: datetime, boot_timeout: timedelta, what: str) -> Decision:
    age = _age(facts, now)
    if age is None:
        # No creation time to keep a deadline with: the boot deadline restarts now.
        return Decision(
            Action.ADOPT_BOOTING, f"{what}; creation time unknown, deadline restarts", "booting"
        )
    if age < boot_timeout:
        return Decision(
            Action.ADOPT_BOOTING,
            f"{what}; {int(age.total_seconds())}s old, younger than BOOT_TIMEOUT "
            f"({int(boot_timeout.total_seconds())}s)",
            "booting",
        )
    return Decision(
        Action.DELETE,
        f"{what}; {int(age.total_seconds())}s old, past BOOT_TIMEOUT "
        f"({int(boot_timeout.total_seconds())}s)",
        "boot_timeout",
    )


def _kept_failed(
    failed_at: datetime | None,
    created_at: datetime | None,
    now: datetime,
    retention: timedelta | None,
) -> Decision:
    since = failed_at or created_at
    if retention is None or since is None:
        return Decision(
            Action.SKIP, "failed VM kept for debugging (KEEP_FAILED_VMS)", "kept_failed"
        )
    left = retention - (now - since)
    if left <= timedelta(0):
        return Decision(
            Action.DELETE,
            f"failed VM kept for debugging, past FAILED_VM_RETENTION "
            f"({retention.total_seconds() / 3600:g}h)",
            "failed_retention",
        )
    return Decision(
        Action.SKIP,
        f"failed VM kept for debugging (KEEP_FAILED_VMS), deleted in "
        f"{left.total_seconds() / 3600:.1f}h (FAILED_VM_RETENTION)",
        "kept_failed",
    )


def _past_lifetime(
    created_at: datetime | None, now: datetime, max_lifetime: timedelta | None
) -> Decision | None:
    """MAX_RUNNER_LIFETIME counts from the server's creation, whoever created or adopted it: a
    restart gives no VM a fresh lifetime."""
    if max_lifetime is None or created_at is None or now - created_at < max_lifetime:
        return None
    hours = (now - created_at).total_seconds() / 3600
    return Decision(
        Action.DELETE,
        f"{hours:.1f}h old, past MAX_RUNNER_LIFETIME ({max_lifetime.total_seconds() / 3600:g}h)",
        "lifetime",
    )


def decide(
    facts: VMFacts,
    now: datetime,
    boot_timeout: timedelta,
    max_lifetime: timedelta | None = None,
    failed_retention: timedelta | None = None,
) -> Decision:
    """The action for one owned VM, with the reason the table gives."""
    if facts.kept_failed:
        return _kept_failed(facts.failed_at, facts.created_at, now, failed_retention)
    expired = _past_lifetime(facts.created_at, now, max_lifetime)
    if expired is not None:
        return expired
    if facts.status == "ERROR":
        return Decision(Action.DELETE, "server status ERROR", "error")
    console = facts.console or ConsoleFacts()
    if facts.probe_ok and facts.run_complete_exit_code is not None:
        return Decision(
            Action.CLEAN_UP,
            f"run-complete present (exit {facts.run_complete_exit_code})",
            "run_complete",
        )
    if not facts.probe_ok and console.run_complete:
        return Decision(Action.CLEAN_UP, "run-complete marker on the console", "run_complete")
    if facts.status == "SHUTOFF":
        if facts.runner is not None and facts.runner.busy:
            # Off, so nothing runs on it; but the deletion rule waits for GitHub to let go
            # (JobCompleted or the registration gone), as the scaler's sweep does.
            return Decision(
                Action.ADOPT_BUSY,
                "powered off without run-complete, but GitHub says busy "
                "(the scaler deletes it once GitHub lets go)",
                "powered_off_busy",
            )
        return Decision(Action.CLEAN_UP, "powered off after a run", "powered_off")
    runner = facts.runner
    if runner is None:
        return Decision(Action.DELETE, "no GitHub runner and no run-complete", "no_registration")
    if facts.probe_ok:
        return _decide_reachable(facts, runner, now, boot_timeout)
    return _decide_unreachable(facts, runner, console, now, boot_timeout)


def _decide_reachable(
    facts: VMFacts, runner: GitHubRunnerFacts, now: datetime, boot_timeout: timedelta
) -> Decision:
    """The probe answered: its facts decide, GitHub only for idle or busy."""
    if facts.setup_failed:
        return Decision(Action.DELETE, "setup-failed sentinel present", "setup_failed")
    if facts.setup_complete:
        if facts.runner_alive is True:
            return _adopt_running(runner, "setup complete, runner process alive", "runner_alive")
        if facts.runner_alive is False:
            return Decision(
                Action.DELETE,
                "setup complete, no runner process, no run-complete (crashed)",
                "runner_crashed",
            )
        if runner.busy or runner.online:
            return _adopt_running(
                runner, "setup complete, runner process not visible", "runner_not_visible"
            )
        return _by_age(
            facts, now, boot_timeout, "setup complete, runner process not visible, offline"
        )
    return _by_age(facts, now, boot_timeout, "setup not complete")


def _decide_unreachable(
    facts: VMFacts,
    runner: GitHubRunnerFacts,
    console: ConsoleFacts,
    now: datetime,
    boot_timeout: timedelta,
) -> Decision:
    """The probe did not answer (or was not made): GitHub and the console decide."""
    if runner.busy:
        return Decision(
            Action.ADOPT_BUSY,
            f"probe {facts.probe_outcome or 'not made'}, GitHub says busy "
            "(never kill a busy runner on a failed probe)",
            "unreachable_busy",
        )
    if console.setup_failed:
        return Decision(Action.DELETE, "setup-failed marker on the console", "setup_failed")
    what = f"probe {facts.probe_outcome or 'not made'}, not busy"
    if console.setup_complete:
        what += " (setup-complete marker on the console)"
    return _by_age(facts, now, boot_timeout, what)


# On every sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepFacts:
    """Everything `decide_sweep()` reads about one owned VM."""

    status: str
    created_at: datetime | None
    runner: GitHubRunnerFacts | None
    known: Known | None  # None: the scaler does not track it
    missing_before: bool = False  # its runner was missing from GitHub on the previous sweep
    kept_failed: bool = False
    failed_at: datetime | None = None  # when it was kept (else its creation time counts)


def decide_sweep(
    facts: SweepFacts,
    now: datetime,
    boot_timeout: timedelta,
    max_lifetime: timedelta | None = None,
    failed_retention: timedelta | None = None,
) -> Decision:
    """The periodic pass's action for one owned VM, with the reason its table gives."""
    if facts.known is Known.CREATING:
        return Decision(Action.KEEP, "its create call is in flight", "creating")
    if facts.kept_failed:
        return _kept_failed(facts.failed_at, facts.created_at, now, failed_retention)
    expired = _past_lifetime(facts.created_at, now, max_lifetime)
    if expired is not None:
        return expired
    runner = facts.runner
    busy = runner is not None and runner.busy
    if facts.status == "ERROR" and not busy:
        return Decision(Action.DELETE, "server ERROR", "error")
    if facts.status == "SHUTOFF" and not busy:
        return Decision(Action.CLEAN_UP, "VM powered off", "powered_off")
    if runner is None:
        age = None if facts.created_at is None else now - facts.created_at
        # A VM without a creation time cannot be timed: it is given the boot window.
        if facts.known is Known.BOOTING or age is None or age < boot_timeout:
            return Decision(Action.KEEP, "booting, not registered yet", "booting")
        if facts.missing_before:
            return Decision(
                Action.DELETE, "runner missing from GitHub on two sweeps", "no_registration"
            )
        return Decision(
            Action.WATCH,
            "runner missing from GitHub; deleted if still missing next sweep",
            "no_registration_once",
        )
    if facts.known is None:
        if runner.busy:
            return Decision(
                Action.ADOPT_BUSY, "not tracked; GitHub reports the runner busy", "untracked"
            )
        if runner.online:
            return Decision(
                Action.ADOPT_IDLE, "not tracked; GitHub reports the runner idle", "untracked"
            )
        return Decision(
            Action.ADOPT_BOOTING, "not tracked; GitHub reports the runner offline", "untracked"
        )
    if facts.known is Known.BUSY and runner.online and not runner.busy:
        # A refused retirement, or a JobStarted that never came: idle again, so retirable.
        return Decision(Action.MARK_IDLE, "tracked busy, GitHub reports it idle", "idle_again")
    return Decision(Action.KEEP, "tracked, GitHub knows the runner", "tracked")


def decide_registration(runner: GitHubRunnerFacts, known: Known | None) -> Decision:
    """A runner registered in the scale set with no VM of ours behind it."""
    if known is Known.CREATING:
        return Decision(Action.KEEP, "its VM is being created", "creating")
    if runner.busy:
        return Decision(
            Action.KEEP, "registered with no VM, GitHub reports it busy", "busy_without_vm"
        )
    return Decision(Action.REMOVE_REGISTRATION, "registered in the scale set with no VM", "no_vm")
