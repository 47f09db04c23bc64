"""The scaler's decisions, as a pure function: `plan(observation, lifecycle, max_runners)`
returns the steps one pass takes, each with a name and, for a deletion, its reason.

The rules, in the order they are planned (docs/architecture.md#the-scalers-plan):

| runner                                          | step                                    |
| ----------------------------------------------- | --------------------------------------- |
| abandoned (its set re-created), GitHub: busy    | warn once, keep                         |
| abandoned, otherwise                            | discard_abandoned                       |
| create call in flight                           | nothing (the create owns it)            |
| past MAX_RUNNER_LIFETIME (busy or not)          | end_lifetime (with a warning)           |
| booting, GitHub reports it busy / online        | mark_registered busy / idle             |
| booting past BOOT_TIMEOUT                       | fail_boot (kept while KEEP_FAILED_VMS)  |
| finished, registration gone                     | delete_runner, job done + deregistered  |
| finished, VM gone or powered off                | delete_runner, job done + powered off   |
| finished past the deregistration timeout, busy  | warn once, keep (never kill it)         |
| finished past RUNNER_DEREGISTRATION_TIMEOUT     | delete_runner, deregistration timeout   |
| demand: owned below the target                  | create_runners N                        |
| demand: owned above desired                     | retire_idle, the oldest idle ones first |

The target is `desired`, capped by `runner_ceiling` (max_runners less the VMs that cost without
serving, and the cloud's capacity, demand.py); creation also waits out the create backoff.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from provisioners.base import RunnerVM
from scaleset_listener.demand import cloud_capacity, runner_ceiling
from scaleset_listener.vm_scaler.ledger import OWNED_PHASES, Phase, TrackedRunner
from scaleset_listener.wire import RunnerReference


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle settings, in seconds."""

    boot_timeout: float = 600.0
    idle_runner_timeout: float = 300.0
    max_runner_lifetime: float = 86400.0
    deregistration_timeout: float = 30.0
    sweep_interval: float = 300.0
    keep_failed_vms: int = 0
    failed_vm_retention: float = 86400.0
    create_backoff_max: float = 300.0

    @property
    def tick(self) -> float:
        """How often timers are checked: fine enough for the shortest timer, at most 2 s."""
        shortest = min(self.boot_timeout, self.idle_runner_timeout, self.deregistration_timeout)
        return max(0.02, min(2.0, shortest / 10))


class DeleteReason(enum.StrEnum):
    JOB_DONE_DEREGISTERED = "job done, runner deregistered"
    JOB_DONE_POWERED_OFF = "job done, VM powered off"
    DEREGISTRATION_TIMEOUT = "deregistration timeout after job"


# The steps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRunners:
    count: int


@dataclass(frozen=True)
class MarkRegistered:
    """A booting runner GitHub now reports: idle or busy."""

    name: str
    phase: Phase


@dataclass(frozen=True)
class RetireIdle:
    """Idle beyond demand: the registration is removed first (GitHub refuses if it just took a
    job, and then it stays), then the VM is deleted."""

    name: str


@dataclass(frozen=True)
class DeleteRunner:
    """Its job is done: the VM is deleted, then the registration removed."""

    name: str
    reason: DeleteReason


@dataclass(frozen=True)
class EndLifetime:
    """Past MAX_RUNNER_LIFETIME: deleted even if busy, with a warning."""

    name: str


@dataclass(frozen=True)
class FailBoot:
    """Past BOOT_TIMEOUT without registering: deleted, or kept tagged for debugging."""

    name: str
    keep_vm: bool


@dataclass(frozen=True)
class DiscardAbandoned:
    """Its scale set was deleted at GitHub: the VM is deleted."""

    name: str


@dataclass(frozen=True)
class WarnStillBusy:
    """GitHub still reports a runner busy that we would delete: said once, kept."""

    name: str
    event: str


Step = (
    CreateRunners
    | MarkRegistered
    | RetireIdle
    | DeleteRunner
    | EndLifetime
    | FailBoot
    | DiscardAbandoned
    | WarnStillBusy
)


# What one pass sees ----------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """Everything `plan` reads: the ledger's runners (read, never changed), what GitHub and the
    cloud said this pass, and the time."""

    now: float
    desired: int
    runners: Sequence[TrackedRunner]
    abandoned: Sequence[TrackedRunner] = ()
    # This set's registrations by runner name (listed when a runner boots or has finished).
    registrations: Mapping[str, RunnerReference] = field(default_factory=dict)
    # Abandoned runners' registrations by runner name (None: GitHub no longer has it).
    abandoned_registrations: Mapping[str, RunnerReference | None] = field(default_factory=dict)
    # Finished runners' VMs by runner name, looked up while their registration remains.
    finished_vms: Mapping[str, RunnerVM | None] = field(default_factory=dict)
    free: int | None = None  # the cloud's free capacity (None: not limited by us)
    in_flight: int = 0  # create calls not yet returned
    create_allowed: bool = True  # False while the create backoff holds
    kept_failed: int = 0  # failed VMs kept for debugging so far


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    cloud_capacity: int  # what the listener announces, from this pass's facts


def plan(observation: Observation, lifecycle: Lifecycle, max_runners: int) -> Plan:
    """The steps of one pass, in the order they are to be taken."""
    steps: list[Step] = []
    steps += _abandoned_steps(observation)
    keeps = observation.kept_failed
    for runner in observation.runners:
        step = _runner_step(runner, observation, lifecycle, keeps < lifecycle.keep_failed_vms)
        if step is not None:
            steps.append(step)
            keeps += isinstance(step, FailBoot) and step.keep_vm
    leaving = {step.name for step in steps if isinstance(step, _LEAVING)}
    staying = [runner for runner in observation.runners if runner.name not in leaving]
    owned = [runner for runner in staying if runner.phase in OWNED_PHASES]
    lingering = len(observation.abandoned) - sum(isinstance(s, DiscardAbandoned) for s in steps)
    lingering += sum(1 for runner in staying if runner.phase is Phase.FINISHED)
    capacity = cloud_capacity(len(owned), observation.in_flight, observation.free)
    target = min(observation.desired, runner_ceiling(max_runners, capacity, lingering))
    if len(owned) < target:
        if observation.create_allowed:
            steps.append(CreateRunners(target - len(owned)))
    elif len(owned) > observation.desired:
        steps += _retirements(owned, len(owned) - observation.desired, observation.now, lifecycle)
    return Plan(steps, capacity)


_LEAVING = (DeleteRunner, EndLifetime, FailBoot)


def _abandoned_steps(observation: Observation) -> list[Step]:
    steps: list[Step] = []
    for runner in observation.abandoned:
        if runner.server_id is None:
            continue  # its create call is in flight; it hands the VM back here
        registration = observation.abandoned_registrations.get(runner.name)
        if registration is not None and registration.busy:
            if not runner.busy_warned:
                steps.append(WarnStillBusy(runner.name, "abandoned_runner_still_busy"))
            continue
        steps.append(DiscardAbandoned(runner.name))
    return steps


def _runner_step(
    runner: TrackedRunner, observation: Observation, lifecycle: Lifecycle, may_keep: bool
) -> Step | None:
    if runner.server_id is None:
        # Its create call is still in flight: lifecycle events can outrun its wait for ACTIVE.
        return None
    now = observation.now
    registration = observation.registrations.get(runner.name)
    if now - runner.created_at >= lifecycle.max_runner_lifetime and (
        runner.phase in OWNED_PHASES or runner.phase is Phase.FINISHED
    ):
        return EndLifetime(runner.name)
    if runner.phase is Phase.BOOTING:
        if registration is not None and registration.busy:
            return MarkRegistered(runner.name, Phase.BUSY)
        if registration is not None and registration.status.lower() == "online":
            return MarkRegistered(runner.name, Phase.IDLE)
        if now - runner.phase_since >= lifecycle.boot_timeout:
            return FailBoot(runner.name, keep_vm=may_keep)
        return None
    if runner.phase is Phase.FINISHED:
        return _finished_step(runner, registration, observation, lifecycle)
    return None


def _finished_step(
    runner: TrackedRunner,
    registration: RunnerReference | None,
    observation: Observation,
    lifecycle: Lifecycle,
) -> Step | None:
    """JobCompleted plus a second signal, or the deregistration timeout; never while busy."""
    if registration is None:
        return DeleteRunner(runner.name, DeleteReason.JOB_DONE_DEREGISTERED)
    vm = observation.finished_vms.get(runner.name)
    if vm is None or vm.status == "SHUTOFF":
        return DeleteRunner(runner.name, DeleteReason.JOB_DONE_POWERED_OFF)
    waited = observation.now - (runner.job_completed_at or observation.now)
    if waited < lifecycle.deregistration_timeout:
        return None
    if registration.busy:
        # JobCompleted but GitHub says busy: a false completion; never kill a busy runner.
        return (
            None if runner.busy_warned else WarnStillBusy(runner.name, "finished_runner_still_busy")
        )
    return DeleteRunner(runner.name, DeleteReason.DEREGISTRATION_TIMEOUT)


def next_deadline(
    runners: Sequence[TrackedRunner], lifecycle: Lifecycle, now: float
) -> float | None:
    """When the earliest timer of `runners` still to come after `now` runs out (boot, idle,
    deregistration, lifetime): the loop wakes then rather than at its next tick, so a deadline
    is acted on when it is due. One already past is the pass's that just ran (it may keep the
    runner, e.g. busy at GitHub), so it does not count: no pass is repeated at once for it."""
    due: list[float] = []
    for runner in runners:
        if runner.server_id is None:
            continue  # its create owns it until it returns
        if runner.phase in OWNED_PHASES or runner.phase is Phase.FINISHED:
            due.append(runner.created_at + lifecycle.max_runner_lifetime)
        if runner.phase is Phase.BOOTING:
            due.append(runner.phase_since + lifecycle.boot_timeout)
        elif runner.phase is Phase.IDLE:
            due.append(runner.phase_since + lifecycle.idle_runner_timeout)
        elif runner.phase is Phase.FINISHED and runner.job_completed_at is not None:
            due.append(runner.job_completed_at + lifecycle.deregistration_timeout)
    return min((when for when in due if when > now), default=None)


def _retirements(
    owned: Sequence[TrackedRunner], surplus: int, now: float, lifecycle: Lifecycle
) -> list[Step]:
    idle = sorted(
        (
            runner
            for runner in owned
            if runner.phase is Phase.IDLE
            and now - runner.phase_since >= lifecycle.idle_runner_timeout
        ),
        key=lambda runner: runner.created_at,
    )
    return [RetireIdle(runner.name) for runner in idle[:surplus]]
