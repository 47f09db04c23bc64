"""One process at fleet scale: many scale sets, thousands of runners alive, then steady churn.

The real service runs as its own process (`python -m scaleset_listener run --env-file F`, as a
user starts it), against the simulated GitHub and the simulated cloud (each its own process,
servers ACTIVE at once) and the scripted fleet (`python -m simulator.fleet`, its own process:
it plays every VM in Python, boots instantly, takes one job per runner, powers off after it).

1. `--runners` jobs are queued, spread evenly over `--scale-sets` scale sets (RUNNERS), and the
   bench waits until every one runs on its own runner: that many runners alive at once.
2. Churn for `--churn-seconds`: `--churn-rate` jobs a second finish (the oldest running ones)
   and as many new ones are queued, round robin over the sets, so the fleet stays at its size.
3. Drain: every job finishes; the bench waits until the cloud holds no server and GitHub no
   runner, and counts what is left as leaks.

Measured on the listener process only (/proc): its peak RSS (VmHWM) over the whole run,
its CPU during the churn (user + system seconds / wall seconds). From its JSON log: each
message's `decision_ms` (the poll answered -> the message handled and the demand handed to the
scaler: `message_handled`), p50/p99 during the churn. From the simulators' request counters:
every request to GitHub and the Actions service, and every cloud API request, during the churn,
divided by the jobs served in it (by endpoint, too).

`python bench/fleet.py` runs the full size (50 sets, 5,000 runners, 20 jobs/s for 180 s);
`python bench/fleet.py --scale-sets 5 --runners 500 --churn-seconds 30` is a quick try. The
last line printed is one JSON object with the figures and what ran.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaleset_listener.config import Settings
from simulator.github.config import DEFAULT_PAT
from simulator.github.control import SimulatorControl
from simulator.listener_process import ListenerProcess, write_env_file
from simulator.openstack.control import CloudControl
from simulator.openstack.state import FLAVOR_NAMES, IMAGE_NAME, NETWORK_NAME

JSON = dict[str, Any]
REPOSITORY = Path(__file__).resolve().parent.parent
# Goals of issue 14 (docs/sizing.md).
GOALS = {
    "rss_mb": 300,
    "cpu_cores": 1.0,
    "decision_p99_ms": 50,
    "github_requests_per_job": 3,
    "cloud_requests_per_job": 4,
    "leaks": 0,
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextlib.contextmanager
def peer_process(
    module: str, *args: str, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A simulator (or the fleet) as its own process; its URL and the process. Its stderr
    goes to `log` when given."""
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("w")) if log else subprocess.DEVNULL
        process = subprocess.Popen(  # noqa: S603 (our own simulator modules)
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if match is None:
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield match.group(1), process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB; 0 once the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


class Sampler:
    """The listener's RSS, sampled on a thread (the peak also from VmHWM) and its CPU."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.rss_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss_peak_kib = max(self.rss_peak_kib, status_kib(self.pid, "VmRSS"))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def high_water_mark_kib(self) -> int:
        """VmHWM: the peak resident set the kernel saw, between samples too."""
        return status_kib(self.pid, "VmHWM") or self.rss_peak_kib

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def open_jobs(github: SimulatorControl) -> list[JSON]:
    return list(github.state(parts=("jobs",), completed_within=0)["jobs"])


def wait_until(check: Any, timeout: float, what: str, every: float = 1.0) -> float:
    """Poll `check()` until truthy; seconds it took. TimeoutError naming `what`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - started


def per_job(before: JSON, after: JSON, jobs: int) -> tuple[float | None, dict[str, float]]:
    """Requests between two counter snapshots, per job, in total and by endpoint."""
    total = after["total"] - before["total"]
    by_endpoint = {
        name: count - before["by_endpoint"].get(name, 0)
        for name, count in after["by_endpoint"].items()
    }
    if not jobs:
        return None, {}
    ranked = sorted(((n, c) for n, c in by_endpoint.items() if c), key=lambda x: -x[1])
    return round(total / jobs, 2), {name: round(count / jobs, 3) for name, count in ranked}


class Churn:
    """Jobs queued round robin over the sets; the oldest running ones finished first."""

    def __init__(self, github: SimulatorControl, sets: list[str]) -> None:
        self.github = github
        self.sets = sets
        self.running: collections.deque[int] = collections.deque()  # oldest first
        self._next_set = 0
        self.finished = 0
        self.finish_refused = 0

    def queue(self, count: int, *, spread: bool = True) -> None:
        """`count` new jobs: spread round robin over the sets, or (a churn tick: one call) all
        on the next set in turn."""
        by_set: collections.Counter[str] = collections.Counter()
        for _ in range(count if spread else 1):
            by_set[self.sets[self._next_set % len(self.sets)]] += 1 if spread else count
            self._next_set += 1
        for name, n in by_set.items():
            self.running.extend(self.github.enqueue_jobs([name], count=n))

    def finish(self, count: int) -> None:
        """Finish up to `count` of the oldest jobs; one not running yet goes to the back."""
        for start in range(0, min(count, len(self.running)), 500):
            batch = [
                self.running.popleft() for _ in range(min(500, len(self.running), count - start))
            ]
            answer = self.github.finish_jobs(batch)
            self.finished += len(answer["finished"])
            self.finish_refused += len(answer["refused"])
            self.running.extend(answer["refused"])


def listener_env(args: argparse.Namespace, github_url: str, clouds_yaml: Path) -> dict[str, str]:
    per_set = math.ceil(args.runners / args.scale_sets)
    runners = [
        {"name": f"fleet-{i:03d}", "max_runners": per_set + args.headroom}
        for i in range(args.scale_sets)
    ]
    return {
        "GITHUB_URL": f"{github_url}/bench-org",
        "GITHUB_TOKEN": DEFAULT_PAT,
        "RUNNERS": json.dumps(runners),
        "OS_CLIENT_CONFIG_FILE": str(clouds_yaml),
        "OS_CLOUD": "sim",
        "OPENSTACK_IMAGE": IMAGE_NAME,
        "OPENSTACK_FLAVOR": FLAVOR_NAMES[0],
        "OPENSTACK_NETWORK": NETWORK_NAME,
        "ENABLE_RECONCILIATION": "false",
        "PROVISION_CONCURRENCY": str(args.provision_concurrency),
        "VM_TRACKER_INTERVAL": str(args.vm_tracker_interval),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
    }


def run(args: argparse.Namespace) -> JSON:
    sets = [f"fleet-{i:03d}" for i in range(args.scale_sets)]
    result: JSON = {
        "bench": "fleet",
        "scale_sets": args.scale_sets,
        "runners": args.runners,
        "churn_rate": args.churn_rate,
        "churn_seconds": args.churn_seconds,
        "provision_concurrency": args.provision_concurrency,
        "vm_tracker_interval": args.vm_tracker_interval,
        "fleet_poll_interval": args.fleet_poll_interval,
    }
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        clouds_yaml = scratch / "clouds.yaml"
        github_url, github_process = stack.enter_context(
            peer_process("simulator.github", "--port", "0", "--long-poll-timeout", "50")
        )
        cloud_url, cloud_process = stack.enter_context(
            peer_process(
                "simulator.openstack",
                "--port",
                "0",
                "--clouds-yaml",
                str(clouds_yaml),
                "--build-delay",
                "0",
                "--delete-delay",
                "0",
            )
        )
        github = stack.enter_context(SimulatorControl(github_url, timeout=120))
        cloud = stack.enter_context(CloudControl(cloud_url, timeout=120))
        room = args.runners * 2 + 100
        cloud.update_config(
            fixed_subnet="10.64.0.0/14",
            quotas={"instances": room, "cores": room * 100, "ram": room * 1_000_000},
        )
        _, fleet_process = stack.enter_context(
            peer_process(
                "simulator.fleet",
                "--github-url",
                github_url,
                "--cloud-url",
                cloud_url,
                "--boot-seconds",
                "0",
                "--poweroff-seconds",
                "0",
                "--poll-interval",
                str(args.fleet_poll_interval),
                "--action-workers",
                "16",
                "--request-timeout",
                "120",
                log=args.fleet_log,
            )
        )
        peers = {
            "github": github_process.pid,
            "cloud": cloud_process.pid,
            "fleet": fleet_process.pid,
        }
        env_file = write_env_file(
            scratch / "listener.env", listener_env(args, github_url, clouds_yaml)
        )
        listener = stack.enter_context(ListenerProcess(env_file, cwd=args.listener_source))
        sampler = Sampler(listener.pid)
        stack.callback(sampler.stop)

        def sessions_open() -> bool:
            if not listener.running:
                raise RuntimeError(f"the listener exited: {listener.log.other_lines[-5:]}")
            sessions = github.state(parts=("sessions",))["sessions"]
            return sum(1 for s in sessions if not s.get("ghost")) >= int(args.scale_sets)

        result["start_s"] = round(wait_until(sessions_open, 300, "every session open", 0.5), 1)
        say(f"{args.scale_sets} sessions open after {result['start_s']} s")

        churn = Churn(github, sets)
        ramp_github, ramp_cloud = github.request_counts(), cloud.request_counts()
        churn.queue(args.runners)

        def all_running() -> bool:
            if not listener.running:
                raise RuntimeError("the listener exited during the ramp")
            states = collections.Counter(job["state"] for job in open_jobs(github))
            say(f"  jobs {dict(states)}")
            return states.get("running", 0) >= int(args.runners)

        result["ramp_s"] = round(
            wait_until(all_running, args.ramp_timeout, "every job running", 5), 1
        )
        say(f"{args.runners} runners alive, each running a job, after {result['ramp_s']} s")
        result["ramp_github_requests_per_runner"], _ = per_job(
            ramp_github, github.request_counts(), args.runners
        )
        result["ramp_cloud_requests_per_runner"], _ = per_job(
            ramp_cloud, cloud.request_counts(), args.runners
        )
        result["ramp_listener_cpu_s"] = round(sampler.cpu_seconds(), 1)

        # Churn ---------------------------------------------------------------------------
        log_from = len(listener.log.events)
        github_before, cloud_before = github.request_counts(), cloud.request_counts()
        cpu_before = sampler.cpu_seconds()
        peers_before = {name: cpu_seconds(pid) for name, pid in peers.items()}
        started = time.monotonic()
        tick = 0.5
        due = 0.0
        while (elapsed := time.monotonic() - started) < args.churn_seconds:
            due_now = int(args.churn_rate * elapsed) - int(due)
            if due_now > 0:
                churn.finish(due_now)
                churn.queue(due_now, spread=False)
                due += due_now
            if not listener.running:
                raise RuntimeError("the listener exited during the churn")
            time.sleep(max(0.0, tick - (time.monotonic() - started - elapsed)))
        wall = time.monotonic() - started
        cpu = sampler.cpu_seconds() - cpu_before
        github_after, cloud_after = github.request_counts(), cloud.request_counts()
        served = churn.finished
        log_to = len(listener.log.events)
        result["churn_wall_s"] = round(wall, 1)
        result["jobs_served"] = served
        result["finish_refused"] = churn.finish_refused
        result["cpu_cores"] = round(cpu / wall, 3)
        result["listener_cpu_s_churn"] = round(cpu, 1)
        result["peer_cpu_cores_churn"] = {
            name: round((cpu_seconds(pid) - peers_before[name]) / wall, 3)
            for name, pid in peers.items()
        }
        decisions = [
            float(e["decision_ms"])
            for e in listener.log.events[log_from:log_to]
            if e.get("event") == "message_handled" and "decision_ms" in e
        ]
        result["messages_handled"] = len(decisions)
        p50, p99 = percentile(decisions, 0.5), percentile(decisions, 0.99)
        result["decision_p50_ms"] = None if p50 is None else round(p50, 2)
        result["decision_p99_ms"] = None if p99 is None else round(p99, 2)
        result["decision_max_ms"] = round(max(decisions), 2) if decisions else None
        result["github_requests_per_job_churn"], _ = per_job(github_before, github_after, served)
        result["cloud_requests_per_job_churn"], _ = per_job(cloud_before, cloud_after, served)
        states = collections.Counter(job["state"] for job in open_jobs(github))
        # Jobs not on a runner yet when the churn ended: the listener's (or the fleet's) lag.
        result["backlog_at_churn_end"] = sum(n for state, n in states.items() if state != "running")
        say(
            f"churn: {served} jobs in {wall:.0f} s, listener {result['cpu_cores']} cores, "
            f"decision p99 {result['decision_p99_ms']} ms, backlog "
            f"{result['backlog_at_churn_end']} jobs"
        )

        # Drain ---------------------------------------------------------------------------
        drain_started = time.monotonic()
        while churn.running:
            churn.finish(len(churn.running))
            if churn.running:
                time.sleep(0.5)

        def world_empty() -> bool:
            servers = len(cloud.server_briefs(user_data_after=1 << 62))
            runners = len(github.state(parts=("runners",))["runners"])
            return servers == 0 and runners == 0

        try:
            result["drain_s"] = round(
                wait_until(world_empty, args.drain_timeout, "every VM and runner gone", 2), 1
            )
        except TimeoutError:
            result["drain_s"] = None
        # Every request of the whole run (start, ramp, churn, drain) over every job it served:
        # nothing is left in flight once the world is empty, so nothing is counted short.
        all_jobs = args.runners + served
        result["jobs_total"] = all_jobs
        result["github_requests_per_job"], result["github_by_endpoint"] = per_job(
            {"total": 0, "by_endpoint": {}}, github.request_counts(), all_jobs
        )
        result["cloud_requests_per_job"], result["cloud_by_endpoint"] = per_job(
            {"total": 0, "by_endpoint": {}}, cloud.request_counts(), all_jobs
        )
        result["listener_cpu_ms_per_job"] = round(1000 * sampler.cpu_seconds() / all_jobs, 1)
        servers_left = len(cloud.server_briefs(user_data_after=1 << 62))
        runners_left = len(github.state(parts=("runners",))["runners"])
        result["leaks"] = servers_left + runners_left
        result["leaks_detail"] = {"servers": servers_left, "runners": runners_left}
        jobs = github.state(parts=("jobs",))["jobs"]
        results = collections.Counter(str(job["result"]) for job in jobs)
        result["job_results"] = dict(results)
        result["drain_wall_s"] = round(time.monotonic() - drain_started, 1)
        result["rss_mb"] = round(sampler.high_water_mark_kib() / 1024, 1)
        errors = collections.Counter(
            str(e.get("event")) for e in listener.log.events if e.get("level") in ("error",)
        )
        result["listener_errors"] = dict(errors)
        result["goals_met"] = {
            name: result.get(name) is not None and result[name] <= goal
            for name, goal in GOALS.items()
        }
        listener.stop(60)
        if args.listener_log is not None:
            with args.listener_log.open("w") as out:
                for event in listener.log.events:
                    out.write(json.dumps(event) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-sets", type=int, default=50)
    parser.add_argument("--runners", type=int, default=5000, help="alive at once")
    parser.add_argument("--churn-rate", type=float, default=20.0, help="jobs a second")
    parser.add_argument("--churn-seconds", type=float, default=180.0)
    parser.add_argument(
        "--provision-concurrency",
        type=int,
        default=Settings.model_fields["provision_concurrency"].default,
        help="PROVISION_CONCURRENCY (default: the product's)",
    )
    parser.add_argument(
        "--vm-tracker-interval",
        type=float,
        default=300.0,
        help="VM_TRACKER_INTERVAL: seconds between sweeps (the product's default)",
    )
    parser.add_argument("--headroom", type=int, default=10, help="max_runners above the share")
    parser.add_argument("--fleet-poll-interval", type=float, default=0.5)
    parser.add_argument("--fleet-log", type=Path, help="write the scripted fleet's log here")
    parser.add_argument("--listener-log", type=Path, help="write the listener's JSON log here")
    parser.add_argument(
        "--listener-source",
        type=Path,
        default=REPOSITORY,
        help="the checkout whose scaleset_listener runs (an older commit, to compare)",
    )
    parser.add_argument("--ramp-timeout", type=float, default=1800.0)
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    args = parser.parse_args()
    # SIGTERM unwinds like an exception, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    say(
        f"fleet: {args.scale_sets} scale sets, {args.runners} runners, churn "
        f"{args.churn_rate:g}/s for {args.churn_seconds:g} s"
    )
    result = run(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
