"""`scaleset-listener demo`: the real listener against the built-in world, no accounts needed.

The demo is a driver on the simulators' side of the wire. It starts the simulated GitHub +
Actions service, the simulated OpenStack cloud and the guests that play the VMs
(`simulator.sandbox`): each server runs the real bootstrap from its user_data, which downloads a
stub runner that takes one job with the JIT config, runs it and powers the VM off; the listener's
startup reconciliation is on and probes the VMs over SSH. Sandbox VMs (own namespaces, OpenSSH
sshd on port 22) where the machine allows them (root, namespaces), else light VMs (a
directory and a process session per VM, a paramiko sshd on port 2222): `--guest` chooses. It
writes a temporary env file, runs `scaleset-listener run` as a subprocess exactly as a user
would, queues a stream of jobs, shows progress and ends with a summary that checks the outcome:
every job served, every VM and registration gone. `--kill-listener` SIGKILLs the listener while
jobs run and starts it again, so its startup reconciliation has VMs to probe and adopt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulator.github.config import SimulatorConfig
from simulator.github.server import RunningSimulator
from simulator.github.server import run_in_thread as run_github
from simulator.listener_process import ListenerLog, ListenerProcess, world_settings, write_env_file
from simulator.openstack.config import CloudConfig
from simulator.openstack.server import RunningCloud
from simulator.openstack.server import run_in_thread as run_cloud
from simulator.sandbox import (
    LightFleet,
    SandboxConfig,
    SandboxFleet,
    light_problem,
    sandbox_problem,
)

SCALE_SET = "demo-linux"


GUESTS = ("auto", "sandbox", "light")


def _env_file(
    directory: Path,
    sim: RunningSimulator,
    cloud: RunningCloud,
    max_runners: int,
    fleet: SandboxFleet,
) -> Path:
    runners = [{"name": SCALE_SET, "labels": ["demo"], "max_runners": max_runners}]
    settings = world_settings(sim, cloud, directory / "clouds.yaml", runners, "demo-org")
    settings.update(
        ENABLE_RECONCILIATION="true",
        IDLE_RUNNER_TIMEOUT="5s",
        SESSION_CONFLICT_RETRY_INTERVAL="1s",
        RUNNER_DEREGISTRATION_TIMEOUT="5s",
        VM_TRACKER_INTERVAL="10s",
        RETRY_MAX_WAIT="1s",
        RECOVERY_BACKOFF_MAX="2s",
    )
    settings.update(fleet.listener_settings())
    return write_env_file(directory / "demo.env", settings)


def choose_guest(guest: str) -> tuple[str, str]:
    """`sandbox` or `light` for `--guest`, and why."""
    if guest == "light":
        light = light_problem()
        if light is not None:
            raise SystemExit(f"--guest light: light VMs cannot run here: {light}")
        return "light", "asked for"
    problem = sandbox_problem()
    if guest == "sandbox":
        if problem is not None:
            raise SystemExit(f"--guest sandbox: sandbox VMs cannot run here: {problem}")
        return "sandbox", "asked for"
    if problem is None:
        return "sandbox", "this machine allows namespaces"
    light = light_problem()
    if light is not None:
        raise SystemExit(f"no guests can run here: {problem}; and {light}")
    return "light", f"no sandbox here: {problem}"


def _guests(kind: str, sim: RunningSimulator, cloud: RunningCloud) -> SandboxFleet:
    fleet = SandboxFleet if kind == "sandbox" else LightFleet
    return fleet(sim.base_url, cloud.base_url, SandboxConfig(boot_seconds=1.0))


def _counts(items: list[dict[str, Any]], key: str) -> str:
    totals: dict[str, int] = {}
    for item in items:
        totals[str(item[key])] = totals.get(str(item[key]), 0) + 1
    return ", ".join(f"{name} {count}" for name, count in sorted(totals.items())) or "none"


def _progress(started: float, sim: RunningSimulator, cloud: RunningCloud, log: ListenerLog) -> str:
    jobs = sim.control.state()["jobs"]
    servers = cloud.control.state()["servers"]
    stats = log.named("runner_statistics")
    last = stats[-1] if stats else {}
    return (
        f"[{time.monotonic() - started:5.1f}s] jobs: {_counts(jobs, 'state')}"
        f" | VMs: {_counts(servers, 'status')}"
        f" | statistics: assigned {last.get('assigned', '-')}, running {last.get('running', '-')}"
        f", registered {last.get('registered', '-')}"
    )


def _wait(
    condition: Any,
    timeout: float,
    what: str,
    started: float,
    world: tuple[RunningSimulator, RunningCloud],
    log: ListenerLog,
) -> None:
    """Wait for `condition` (checked on every listener log line), printing progress each second."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"demo: {what} did not happen within {timeout:.0f} s")
        if time.monotonic() - last_print >= 1.0:
            print(_progress(started, *world, log), flush=True)
            last_print = time.monotonic()
        with log.changed:
            log.changed.wait(timeout=min(1.0, remaining))


def _kill_and_restart(
    listener: ListenerProcess,
    env_file: Path,
    running: int,
    world: tuple[RunningSimulator, RunningCloud],
) -> ListenerProcess:
    """SIGKILL the listener once `running` jobs run, start it again: its startup reconciliation
    finds the VMs, probes them over SSH and adopts those whose runners still work."""
    sim, _ = world

    def jobs_running(state: dict[str, Any]) -> bool:
        busy: int = sum(j["state"] == "running" for j in state["jobs"])
        return busy >= running

    sim.control.wait_for_state(jobs_running, timeout=120)
    print(
        f"--kill-listener: SIGKILL the listener (pid {listener.pid}) with jobs running", flush=True
    )
    listener.kill()
    restarted = ListenerProcess(env_file)
    print(
        f"--kill-listener: restarted (pid {restarted.pid}); its startup reconciliation probes "
        "the VMs it finds over SSH",
        flush=True,
    )
    restarted.log.wait_event("reconcile_summary", timeout=120)
    found = _reconciled(restarted.log)
    print(
        f"--kill-listener: reconciled {found['vms_reconciled']}, probes {found['probes']}",
        flush=True,
    )
    return restarted


def _reconciled(log: ListenerLog) -> dict[str, Any]:
    """What the restarted listener's startup reconciliation decided."""
    events = log.named("reconcile_summary")
    counts: dict[str, int] = events[0].get("counts", {}) if events else {}
    adopted = sum(n for name, n in counts.items() if name.startswith("adopt"))
    return {
        "listener_restarts": 1,
        "vms_adopted": adopted,
        "vms_reconciled": {name: n for name, n in counts.items() if n},
        "probes": events[0].get("probes", {}) if events else {},
    }


def _phase_seconds(logs: list[ListenerLog]) -> dict[str, float]:
    """Mean seconds per lifecycle phase, from the listeners' runner_state events."""
    spent: dict[str, list[float]] = {}
    for event in (e for log in logs for e in log.named("runner_state")):
        if "previous" in event and "seconds_in_previous" in event:
            spent.setdefault(event["previous"], []).append(float(event["seconds_in_previous"]))
    return {phase: round(sum(values) / len(values), 2) for phase, values in spent.items()}


def run_demo(
    jobs: int,
    max_seconds: float,
    max_runners: int,
    keep: bool,
    as_json: bool,
    guest: str = "auto",
    kill_listener: bool = False,
) -> int:
    started = time.monotonic()
    rng = random.Random(7)
    kind, why = choose_guest(guest)
    # A SIGKILLed listener cannot delete its session: GitHub drops it once unseen for a while.
    github_config = SimulatorConfig(
        long_poll_timeout=5.0, session_abandon_timeout=3.0 if kill_listener else None
    )
    with (
        run_github(github_config) as sim,
        run_cloud(CloudConfig(build_delay=1.0, delete_delay=0.5)) as cloud,
        _guests(kind, sim, cloud) as fleet,
        tempfile.TemporaryDirectory() as scratch,
    ):
        env_file = _env_file(Path(scratch), sim, cloud, max_runners, fleet)
        print(f"simulated GitHub at {sim.base_url}, simulated OpenStack at {cloud.base_url}")
        print(f"guests: {kind} ({why})")
        print(f"listener: scaleset-listener run --env-file {env_file}", flush=True)
        listener = ListenerProcess(env_file)
        listeners = [listener]
        log = listener.log
        world = (sim, cloud)
        try:
            _wait(lambda: bool(log.named("session_created")), 30, "session", started, world, log)
            # A stream: jobs arrive over a few seconds, each runs for a random while.
            queued = 0
            while queued < jobs:
                batch = min(jobs - queued, rng.randint(1, 3))
                for _ in range(batch):
                    sim.control.enqueue_jobs(
                        [SCALE_SET], duration=round(rng.uniform(2.0, max_seconds), 1)
                    )
                queued += batch
                print(f"queued {queued}/{jobs} jobs (runs-on: {SCALE_SET})", flush=True)
                deadline = time.monotonic() + rng.uniform(0.5, 2.0)
                _wait(lambda d=deadline: time.monotonic() >= d, 5, "pause", started, world, log)

            if kill_listener:
                listener = _kill_and_restart(listener, env_file, min(3, max_runners), world)
                listeners.append(listener)
                log = listener.log
                _wait(
                    lambda: bool(log.named("session_created")), 60, "session", started, world, log
                )

            def all_served() -> bool:
                done = [j for j in sim.control.state()["jobs"] if j["state"] == "completed"]
                return len(done) == jobs

            _wait(all_served, 60 + jobs * max_seconds, "all jobs served", started, world, log)
            _wait(lambda: not cloud.control.state()["servers"], 60, "VMs gone", started, world, log)
            print(_progress(started, sim, cloud, log), flush=True)
            if keep:
                print("--keep: everything keeps running; Ctrl-C to stop", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    listener.wait(timeout=None)
        finally:
            exit_code = listener.stop(timeout=30)
            for earlier in listeners[:-1]:
                if earlier.running:
                    earlier.kill()
        github_state = sim.control.state()
        cloud_state = cloud.control.state()
        counters = fleet.counters
    served = [j for j in github_state["jobs"] if j["result"] == "succeeded"]
    summary: dict[str, Any] = {
        "jobs_queued": jobs,
        "jobs_served": len(served),
        "vms_created": counters.seen,
        "vms_deleted": counters.seen - len(cloud_state["servers"]),
        "peak_desired_runners": max(
            (e["desired"] for p in listeners for e in p.log.named("desired_runners")), default=0
        ),
        "leaked_vms": len(cloud_state["servers"]),
        "leaked_registrations": len(github_state["runners"]),
        "messages_acked": github_state["counters"].get("messages_acked", 0),
        "messages_created": github_state["counters"].get("messages_created", 0),
        "seconds_per_phase": _phase_seconds([p.log for p in listeners]),
        "listener_exit_code": exit_code,
        "guests": kind,
        "seconds": round(time.monotonic() - started, 1),
    }
    if kill_listener:
        summary |= _reconciled(listener.log)
    ok = (
        exit_code == 0
        and summary["jobs_served"] == jobs
        and summary["leaked_vms"] == 0
        and summary["leaked_registrations"] == 0
        and summary["messages_acked"] == summary["messages_created"]
        # After the kill, the restart found the VMs and adopted them (all of them: every job
        # still succeeded) after probing them over SSH.
        and (not kill_listener or summary["vms_adopted"] > 0)
    )
    summary["ok"] = ok
    print(
        "summary: "
        + ", ".join(f"{key} {value}" for key, value in summary.items() if key != "ok")
        + ("  -> OK" if ok else "  -> PROBLEM"),
        flush=True,
    )
    if not ok and log.other_lines:
        print("listener output:\n" + "\n".join(log.other_lines[-20:]), file=sys.stderr)
    if as_json:
        print(json.dumps(summary), flush=True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaleset-listener demo", description=__doc__)
    parser.add_argument("--jobs", type=int, default=12, help="jobs to queue (default 12)")
    parser.add_argument(
        "--job-seconds", type=float, default=8.0, help="longest job duration (default 8 s)"
    )
    parser.add_argument("--max-runners", type=int, default=5, help="max_runners (default 5)")
    parser.add_argument("--keep", action="store_true", help="leave everything running at the end")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON last")
    parser.add_argument(
        "--kill-listener",
        action="store_true",
        help="SIGKILL the listener while jobs run and start it again: its startup "
        "reconciliation probes the VMs over SSH and adopts them, and every job still succeeds",
    )
    parser.add_argument(
        "--guest",
        choices=GUESTS,
        default="auto",
        help="who plays the VMs: sandbox VMs (namespaces, OpenSSH sshd; needs root), light "
        "VMs (any user; a paramiko sshd), or auto (sandbox where possible; the default)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.max_runners < 1:
        parser.error("--jobs and --max-runners must be at least 1")
    if args.job_seconds < 2.0:
        parser.error("--job-seconds must be at least 2")
    return run_demo(
        args.jobs,
        args.job_seconds,
        args.max_runners,
        args.keep,
        args.json,
        args.guest,
        kill_listener=args.kill_listener,
    )


if __name__ == "__main__":
    sys.exit(main())
