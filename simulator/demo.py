"""`scaleset-listener demo`: the real listener against the built-in simulator, no accounts needed.

The demo is a driver on the simulator's side of the wire: it starts the simulated GitHub +
Actions service, writes a temporary env file, runs `scaleset-listener run` as a subprocess
(exactly as a user would), plays GitHub users who queue a stream of jobs, and watches both
sides: the service's state through the control API and the listener's JSON log lines.

Until the OpenStack provisioner lands, the listener's scaler only logs the runners it would
start, so nobody runs the jobs: the demo's users cancel them after a while, and the summary
checks that demand rose to the number of queued jobs, fell back to zero, every message was
acknowledged once and the session was deleted on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.github.config import SimulatorConfig
from simulator.github.server import RunningSimulator, run_in_thread

SCALE_SET = "demo-linux"


@dataclass
class ListenerLog:
    """The listener's JSON log lines, read on a thread as they arrive."""

    events: list[dict[str, Any]] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def follow(self, stream: Any) -> None:
        for line in stream:
            with self.changed:
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    self.other_lines.append(line.rstrip())
                self.changed.notify_all()

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.changed:
            return [event for event in self.events if event.get("event") == name]


def _env_file(directory: Path, sim: RunningSimulator, max_runners: int) -> Path:
    path = directory / "demo.env"
    runners = [{"name": SCALE_SET, "labels": ["demo"], "max_runners": max_runners}]
    path.write_text(
        f"GITHUB_URL={sim.base_url}/demo-org\n"
        f"GITHUB_TOKEN={sim.config.pats[0]}\n"
        f"RUNNERS={json.dumps(runners)}\n"
        "LOG_FORMAT=json\n"
        "ENABLE_RECONCILIATION=false\n"
        "RETRY_MAX_WAIT=1s\n"
        "RECOVERY_BACKOFF_MAX=2s\n"
    )
    return path


def _progress(started: float, sim: RunningSimulator, log: ListenerLog) -> str:
    state = sim.control.state()
    jobs = state["jobs"]
    by_state: dict[str, int] = {}
    for job in jobs:
        by_state[job["state"]] = by_state.get(job["state"], 0) + 1
    desired = log.named("desired_runners")
    stats = log.named("runner_statistics")
    last = stats[-1] if stats else {}
    return (
        f"[{time.monotonic() - started:5.1f}s] jobs queued {len(jobs)}: "
        + ", ".join(f"{name} {count}" for name, count in sorted(by_state.items()))
        + f" | desired runners {desired[-1]['desired'] if desired else '-'}"
        + f" | statistics: assigned {last.get('assigned', '-')}, running {last.get('running', '-')}"
        + f" | messages acked {state['counters'].get('messages_acked', 0)}"
    )


def _wait(
    condition: Any,
    timeout: float,
    what: str,
    started: float,
    sim: RunningSimulator,
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
            print(_progress(started, sim, log), flush=True)
            last_print = time.monotonic()
        with log.changed:
            log.changed.wait(timeout=min(1.0, remaining))


def run_demo(jobs: int, job_seconds: float, keep: bool, as_json: bool) -> int:
    started = time.monotonic()
    config = SimulatorConfig(long_poll_timeout=5.0)
    with run_in_thread(config) as sim, tempfile.TemporaryDirectory() as scratch:
        env_file = _env_file(Path(scratch), sim, max_runners=max(jobs, 1))
        print(f"simulator.github at {sim.base_url}; env file {env_file}", flush=True)
        listener = subprocess.Popen(  # noqa: S603 (our own command)
            [sys.executable, "-m", "scaleset_listener", "run", "--env-file", str(env_file)],
            stderr=subprocess.PIPE,
            text=True,
            env={key: value for key, value in os.environ.items() if not key.startswith("GITHUB_")},
        )
        log = ListenerLog()
        reader = threading.Thread(target=log.follow, args=(listener.stderr,), daemon=True)
        reader.start()
        try:
            _wait(lambda: bool(log.named("session_created")), 30, "session", started, sim, log)
            job_ids = sim.control.enqueue_jobs([SCALE_SET], count=jobs)
            print(f"queued {jobs} jobs for runs-on: {SCALE_SET}", flush=True)
            _wait(
                lambda: any(e["desired"] == jobs for e in log.named("desired_runners")),
                30,
                "demand",
                started,
                sim,
                log,
            )
            print(
                f"the listener wants {jobs} runners (the scaler logs them until the "
                "OpenStack provisioner lands); the users cancel the jobs in "
                f"{job_seconds:.0f} s",
                flush=True,
            )
            deadline = time.monotonic() + job_seconds
            _wait(lambda: time.monotonic() >= deadline, job_seconds + 5, "wait", started, sim, log)
            for job_id in job_ids:
                sim.control.cancel_job(job_id)
            _wait(
                lambda: log.named("desired_runners")[-1]["desired"] == 0,
                30,
                "demand back to zero",
                started,
                sim,
                log,
            )
            print(_progress(started, sim, log), flush=True)
            if keep:
                print("--keep: listener and simulator keep running; Ctrl-C to stop", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    listener.wait()
        finally:
            if listener.poll() is None:
                listener.send_signal(signal.SIGTERM)
            try:
                exit_code = listener.wait(timeout=30)
            except subprocess.TimeoutExpired:
                listener.kill()
                exit_code = listener.wait()
            reader.join(timeout=5)
        state = sim.control.state()
    counters = state["counters"]
    summary = {
        "jobs_queued": jobs,
        "peak_desired_runners": max(
            (e["desired"] for e in log.named("desired_runners")), default=0
        ),
        "messages_created": counters.get("messages_created", 0),
        "messages_acked": counters.get("messages_acked", 0),
        "duplicate_acks": counters.get("duplicate_acks", 0),
        "statistics_events": len(log.named("runner_statistics")),
        "sessions_created": counters.get("sessions_created", 0),
        "sessions_left_open": sum(1 for s in state["sessions"] if not s["ghost"]),
        "listener_exit_code": exit_code,
        "seconds": round(time.monotonic() - started, 1),
    }
    ok = (
        exit_code == 0
        and summary["peak_desired_runners"] == jobs
        and summary["messages_acked"] == summary["messages_created"]
        and summary["duplicate_acks"] == 0
        and summary["sessions_left_open"] == 0
    )
    summary["ok"] = ok
    print("summary: " + ", ".join(f"{key} {value}" for key, value in summary.items()), flush=True)
    if not ok and log.other_lines:
        print("listener output:\n" + "\n".join(log.other_lines[-20:]), file=sys.stderr)
    if as_json:
        print(json.dumps(summary), flush=True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaleset-listener demo", description=__doc__)
    parser.add_argument("--jobs", type=int, default=5, help="jobs to queue (default 5)")
    parser.add_argument(
        "--job-seconds", type=float, default=5.0, help="how long the jobs stay queued"
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running at the end")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON last")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return run_demo(args.jobs, args.job_seconds, args.keep, args.json)


if __name__ == "__main__":
    sys.exit(main())
