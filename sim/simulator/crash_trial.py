"""One crash-restart trial: SIGKILL the listener at a chosen point, restart it, judge the world.

A trial starts a fresh world (`simulator.e2e_world`) and a listener, queues a stream of jobs,
SIGKILLs the listener at one of the kill points below (each with a seeded random offset),
restarts it with ENABLE_RECONCILIATION=true, queues a few more jobs, waits until every job is
done and the cloud and GitHub are clean, stops the listener with SIGTERM and checks the
invariants (`E2EWorld.violations`) plus a clean exit.

Kill points, each found from what the simulators or the listener's log show:

* provisioning: after the listener logged a runner `creating` (JIT config, server create and
  the wait for ACTIVE are under way), plus 0-0.5 s;
* jobs_running: after the simulated GitHub started the k-th job on a runner, plus 0-1 s;
* after_ack: as soon as the simulated GitHub recorded the acknowledgement of the first message
  that assigned jobs, before the listener has a runner for them (JIT configs are delayed 0.5 s
  meanwhile so that the kill reliably lands there);
* reconcile: first killed while jobs run, then the restarted listener is killed in the middle of
  its startup reconciliation (the cloud answers console requests slowly to widen the window),
  then started once more;
* anytime: killed 0-5 s after the jobs are queued, restarted, killed again 0-5 s after that
  start (in the session conflict wait, the reconciliation or the catch-up), started once more.

The tests run a few trials; `bench/crash_restart.py` runs many.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simulator.e2e_world import E2EWorld, GuestKind, Violation
from simulator.listener_process import ListenerProcess

KillPoint = Literal["provisioning", "jobs_running", "after_ack", "reconcile", "anytime"]
KILL_POINTS: tuple[KillPoint, ...] = (
    "provisioning",
    "jobs_running",
    "after_ack",
    "reconcile",
    "anytime",
)

WAIT = 30.0  # seconds any one expected step may take


@dataclass
class TrialResult:
    point: KillPoint
    seed: int
    seconds: float = 0.0
    # Whether the kill landed where it was aimed (a random offset can overshoot a short phase).
    landed: bool = True
    violations: list[Violation] = field(default_factory=list)
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.violations

    def summary(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "seed": self.seed,
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "landed": self.landed,
            "violations": [f"{v.kind}: {v.detail}" for v in self.violations],
            "error": self.error,
            **self.notes,
        }


def _kill_while_provisioning(
    world: E2EWorld, listener: ListenerProcess, rng: random.Random
) -> bool:
    nth = rng.randint(1, world.max_runners)
    listener.log.wait_for(
        lambda: len(listener.log.named("runner_state", state="creating")) >= nth,
        WAIT,
        f"runner {nth} creating",
    )
    world.wait_until(rng.uniform(0.0, 0.5))
    listener.kill()
    # Landed: some runner was still being created (no VM of it booted yet) at the kill.
    creating = {e["runner_name"] for e in listener.log.named("runner_state", state="creating")}
    booted = {e["runner_name"] for e in listener.log.named("runner_state", state="booting")}
    return bool(creating - booted)


def _kill_while_jobs_run(
    world: E2EWorld, listener: ListenerProcess, rng: random.Random, after: int
) -> bool:
    nth = rng.randint(1, 3)
    started: list[int] = []

    def kth_job_running(event: dict[str, Any]) -> bool:
        if event["type"] == "job_state" and event.get("state") == "running":
            started.append(event["job"])
        return len(started) >= nth

    world.wait_github_event(kth_job_running, WAIT, after)
    world.wait_until(rng.uniform(0.0, 1.0))
    listener.kill()
    return any(j["state"] == "running" for j in world.jobs())


def _kill_after_ack(world: E2EWorld, listener: ListenerProcess, after: int) -> bool:
    assigning = world.wait_github_event(
        lambda e: e["type"] == "message_created" and "JobAssigned" in e.get("job_messages", []),
        WAIT,
        after,
    )
    world.wait_github_event(
        lambda e: e["type"] == "message_acked" and e.get("message_id") == assigning["message_id"],
        WAIT,
        assigning["seq"],
    )
    listener.kill()
    killed_at = time.time()
    world.github.control.clear_faults()
    # Landed: no runner had been registered for the listener before the kill (a delayed JIT
    # request still in flight registers one afterwards).
    registered = world.github.control.events(after=assigning["seq"], type="runner_registered")
    return all(event["time"] > killed_at for event in registered)


def _kill_during_reconcile(world: E2EWorld, rng: random.Random) -> bool:
    # Widen the window: console reads (light VMs) and the runner list (every reconcile; with
    # SSH probes it is the slow part that remains) answer slowly until the kill.
    delay = world.cloud_control.delay_requests("compute.servers.action", 0.4, times=None)
    world.github.control.add_fault("find_runner", "delay", delay=0.5, times=None)
    try:
        second = world.start_listener()
        second.log.wait_event("scale_set_reused", WAIT)
        world.wait_until(rng.uniform(0.0, 0.4))
        second.kill()
    finally:
        world.cloud_control.remove_fault(int(delay["id"]))
        world.github.control.clear_faults()
    return not second.log.named("reconcile_summary")


def _kill_twice_at_random(world: E2EWorld, first: ListenerProcess, rng: random.Random) -> bool:
    world.wait_until(rng.uniform(0.0, 5.0))
    first.kill()
    second = world.start_listener()
    world.wait_until(rng.uniform(0.0, 5.0))
    second.kill()
    return True


def _keep_evidence(directory: Path, world: E2EWorld) -> None:
    """The listeners' logs and the simulated GitHub's event log, for a failed trial."""
    for number, listener in enumerate(world.listeners, 1):
        lines = [json.dumps(event, default=str) for event in listener.log.events]
        lines += listener.log.other_lines
        (directory / f"listener-{number}.log").write_text("\n".join(lines) + "\n")
    events = world.github.control.events()
    (directory / "github-events.jsonl").write_text(
        "\n".join(json.dumps(event) for event in events) + "\n"
    )


def run_trial(
    directory: Path,
    point: KillPoint,
    seed: int,
    *,
    jobs: int = 8,
    max_runners: int = 3,
    guests: GuestKind = "light",
) -> TrialResult:
    started = time.monotonic()
    result = TrialResult(point, seed)
    rng = random.Random(seed)
    # A short BOOT_TIMEOUT makes the reconciler delete leftovers it cannot see set up (a probe
    # cut off, a VM still booting) while their runners may be taking a job: the race that must
    # never kill a busy runner.
    boot_timeout = rng.choice(("3s", "20s"))
    overrides = {"BOOT_TIMEOUT": boot_timeout}
    result.notes["boot_timeout"] = boot_timeout
    with E2EWorld(
        directory, guest_kind=guests, max_runners=max_runners, listener_overrides=overrides
    ) as world:
        try:
            first = world.start_listener()
            first.log.wait_event("session_created", WAIT)
            after = int(world.github.control.state()["last_event_seq"])
            before_kill = jobs - jobs // 4
            if point == "after_ack":
                # JIT configs come slowly until the kill, so that it lands before any runner
                # exists (the request in flight still registers its runner: a registration
                # without a VM is left behind).
                world.github.control.add_fault(
                    "generate_jit_config", "delay", delay=0.5, times=None
                )
            world.queue_stream(before_kill, rng)
            if point == "provisioning":
                result.landed = _kill_while_provisioning(world, first, rng)
            elif point == "after_ack":
                result.landed = _kill_after_ack(world, first, after)
            elif point == "anytime":
                result.landed = _kill_twice_at_random(world, first, rng)
            else:
                result.landed = _kill_while_jobs_run(world, first, rng, after)
                if point == "reconcile":
                    result.landed = _kill_during_reconcile(world, rng)
            final = world.start_listener()
            final.log.wait_event("session_created", WAIT)
            world.queue_stream(jobs - before_kill, rng)
            world.wait_served(WAIT + jobs * 3)
            world.wait_clean(WAIT)
            code = final.stop(timeout=20)
            if code != 0:
                result.violations.append(Violation("exit_code", f"final listener exited {code}"))
            reconciles = [e for p in world.listeners for e in p.log.named("reconcile_summary")]
            result.notes |= {
                "listeners": len(world.listeners),
                "reconciled": [e.get("counts") for e in reconciles],
                "probes": [e.get("probes") for e in reconciles],
                "peak_servers": world.peak_servers(),
            }
        except Exception as exc:  # noqa: BLE001 - a trial reports, the soak goes on
            result.error = f"{type(exc).__name__}: {exc}"
            result.notes["traceback"] = traceback.format_exc(limit=3)
        finally:
            for listener in world.listeners:
                if listener.running:
                    listener.kill()
            result.violations += world.violations()
            if not result.passed:
                _keep_evidence(directory, world)
    result.seconds = time.monotonic() - started
    return result
