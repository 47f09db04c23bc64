"""Scale-up latency: N jobs assigned at once, every cloud API call 100 ms slow.

Measures, from the moment the jobs are queued (the listener's long poll returns the message at
once), the time to the first and to the N-th server create request reaching the cloud, for:

* scaleset-listener: the real service (listener, VMScaler, OpenStack provisioner over
  openstacksdk) against the simulated GitHub and the simulated cloud, over sockets;
* a baseline: a REST-polling scheduler in the style of a home-grown script (AirStack's
  orchestrator): every 15 s it lists the queued jobs and creates one server per new job,
  one after another, through the same openstacksdk adapter against the same slow cloud.
  Its poll phase relative to the burst is uniform in [0, 15 s); the run fixes it at the mean
  (first poll 7.5 s after the burst). It runs a sample of `--baseline-jobs` and the N-th create
  is extrapolated linearly from that sample (said so in the output).

For scaleset-listener it also measures the listener's CPU: `cpu_ms_per_vm` is the process CPU
time (less the bench's own watching) from the burst until every VM has been seen ACTIVE, divided
by the VMs created (`process_cpu_with_start_s` adds the start: imports, session, warm-up).
`--concurrency` defaults to PROVISION_CONCURRENCY's default; the JSON says which.

`python bench/scale_up.py --jobs 500 --latency 0.1` prints progress and, on its last line, one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioners.base import ServerSpec
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.config import LogFormat, LogLevel, ScaleSetSpec, Settings
from scaleset_listener.logs import configure
from scaleset_listener.runner_versions import RunnerVersions
from scaleset_listener.service import run_service
from scaleset_listener.vm_scaler.loop import VMScaler
from scaleset_listener.wiring import CloudProvisioners, openstack_config, vm_scalers
from simulator.github.config import DEFAULT_PAT
from simulator.github.control import SimulatorControl
from simulator.openstack.control import CloudControl
from simulator.openstack.state import FLAVOR_NAMES, IMAGE_NAME, NETWORK_NAME

LABEL = "bench"


@contextlib.contextmanager
def peer(module: str, *args: str) -> Iterator[str]:
    """A simulator as its own process (as in production, it must not share our GIL)."""
    with peer_process(module, *args) as (url, _):
        yield url


@contextlib.contextmanager
def peer_process(module: str, *args: str) -> Iterator[tuple[str, int]]:
    """`peer`, also giving the process id (to read its CPU time)."""
    process = subprocess.Popen(  # noqa: S603 (our own simulator modules)
        [sys.executable, "-m", module, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield match.group(1), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def slow_cloud(directory: Path, latency: float, jobs: int) -> Iterator[str]:
    clouds_yaml = directory / "clouds.yaml"
    with (
        peer("simulator.openstack", "--clouds-yaml", str(clouds_yaml), "--build-delay", "1") as url,
        CloudControl(url) as control,
    ):
        control.set_quotas(instances=jobs * 2 + 10, cores=jobs * 100, ram=jobs * 1_000_000)
        # Every API call of every service waits `latency` before it is answered.
        control.delay_requests("*", latency, times=None)
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds_yaml)
        os.environ["OS_CLOUD"] = "sim"
        yield url


class CreateCounter:
    """Counts the create requests the cloud has seen and when each arrived (the cloud's clock,
    not when this bench looked), reading only the log's new entries; keeps the CPU time it
    spends, which is the bench's and not the listener's."""

    def __init__(self, control: CloudControl) -> None:
        self._control = control
        self._seen = 0
        self.arrivals: list[float] = []
        self.cpu_seconds = 0.0

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def __call__(self) -> int:
        began = time.thread_time()
        new = self._control.requests(since=self._seen)
        if new:
            self._seen = new[-1].id
            self.arrivals += [r.received_at for r in new if r.endpoint == "compute.servers.create"]
        self.cpu_seconds += time.thread_time() - began
        return self.count


async def watch_creates(
    control: CloudControl,
    target: int,
    started_at: float,
    timeout: float,
    counter: CreateCounter | None = None,
) -> tuple[float | None, float | None]:
    """Seconds from `started_at` (Unix time) to the arrival of the first and of the
    `target`-th create request at the cloud."""
    counter = counter or CreateCounter(control)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(counter) >= target:
            break
        await asyncio.sleep(0.05)
    arrivals = sorted(counter.arrivals)
    first = arrivals[0] - started_at if arrivals else None
    last = arrivals[target - 1] - started_at if len(arrivals) >= target else None
    return first, last


def listener_settings(github_url: str, jobs: int, concurrency: int | None) -> Settings:
    settings = Settings(
        github_url=f"{github_url}/bench-org",
        github_token=DEFAULT_PAT,
        runners=[{"name": LABEL, "max_runners": jobs}],
        openstack_image=IMAGE_NAME,
        openstack_flavor=FLAVOR_NAMES[0],
        openstack_network=NETWORK_NAME,
        enable_reconciliation=False,
        boot_timeout=600,
        vm_tracker_interval=3600,
        log_level="warning",
    )
    if concurrency is None:
        return settings
    return settings.model_copy(update={"provision_concurrency": concurrency})


async def run_listener(jobs: int, latency: float, concurrency: int | None, timeout: float) -> JSON:
    with (
        tempfile.TemporaryDirectory() as scratch,
        peer("simulator.github", "--long-poll-timeout", "50") as github_url,
        SimulatorControl(github_url) as github,
        slow_cloud(Path(scratch), latency, jobs) as cloud_url,
        CloudControl(cloud_url) as control,
    ):
        stop = asyncio.Event()
        settings = listener_settings(github_url, jobs, concurrency)
        scalers: list[VMScaler] = []

        def keeping_scalers(
            client: ActionsClient, provisioner: CloudProvisioners, versions: RunnerVersions
        ) -> Callable[[ScaleSetSpec], VMScaler]:
            make = vm_scalers(settings, client, provisioner, versions)

            def made(spec: ScaleSetSpec) -> VMScaler:
                scalers.append(make(spec))
                return scalers[-1]

            return made

        service = asyncio.create_task(
            run_service(
                settings, stop, handle_signals=False, scaler_factory_builder=keeping_scalers
            )
        )
        await asyncio.to_thread(
            github.wait_for_state, lambda s: any(not x["ghost"] for x in s["sessions"]), 60
        )
        counter = CreateCounter(control)
        cpu_before = time.process_time()
        started, started_at = time.monotonic(), time.time()
        github.enqueue_jobs([LABEL], count=jobs)
        first, last = await watch_creates(control, jobs, started_at, timeout, counter)
        cpu_at_last_create = time.process_time() - counter.cpu_seconds - cpu_before
        # Every VM through ACTIVE (the scaler's count), then the CPU the listener spent on them.
        deadline = started + timeout
        # A bench reading the scalers' counters: there is no event to wait for.
        while sum(s.counters.created for s in scalers) < jobs:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        active_s = time.monotonic() - started
        created = sum(s.counters.created for s in scalers)
        cpu_total = time.process_time() - counter.cpu_seconds
        cpu = cpu_total - cpu_before
        stop.set()
        await asyncio.wait_for(service, 120)
        return {
            "first_create_s": first,
            "last_create_s": last,
            "all_active_s": round(active_s, 2),
            "vms_created": created,
            "process_cpu_s": round(cpu, 2),
            "process_cpu_with_start_s": round(cpu_total, 2),
            "process_cpu_at_last_create_s": round(cpu_at_last_create, 2),
            "cpu_ms_per_vm": round(cpu * 1000 / max(1, created), 2),
        }


async def run_baseline(jobs: int, sample: int, latency: float, poll: float, timeout: float) -> JSON:
    with (
        tempfile.TemporaryDirectory() as scratch,
        peer("simulator.github") as github_url,
        SimulatorControl(github_url) as github,
        slow_cloud(Path(scratch), latency, sample) as cloud_url,
        CloudControl(cloud_url) as control,
    ):
        settings = listener_settings(github_url, sample, 1)
        provisioner = OpenStackProvisioner(openstack_config(settings))
        ownership = Ownership("baseline", 1)
        started, started_at = time.monotonic(), time.time()
        github.enqueue_jobs([LABEL], count=sample)
        watcher = asyncio.create_task(watch_creates(control, sample, started_at, timeout))
        handled: set[int] = set()
        # The poll phase is uniform over the interval; use its mean.
        next_poll = started + poll / 2
        while not watcher.done():
            await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
            next_poll += poll
            queued = [job for job in github.state()["jobs"] if job["state"] == "queued"]
            for job in queued:
                if job["id"] in handled or watcher.done():
                    continue
                handled.add(job["id"])
                name = f"baseline-{job['id']}"
                # One create after the other, as a polling script does.
                await provisioner.submit(
                    ServerSpec(
                        name=name,
                        user_data=b"#!/bin/bash\n",
                        tags=ownership.tags(),
                        metadata=ownership_metadata(name, LABEL, datetime.now(UTC)),
                    )
                )
        first, last = await watcher
        await provisioner.close()
    per_create = None if first is None or last is None else (last - first) / max(1, sample - 1)
    extrapolated = None if per_create is None or first is None else first + per_create * (jobs - 1)
    return {
        "baseline_sample_jobs": sample,
        "baseline_first_create_s": first,
        "baseline_sample_last_create_s": last,
        "baseline_last_create_s_extrapolated": extrapolated,
        "baseline_poll_interval_s": poll,
    }


JSON = dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per cloud API call")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="PROVISION_CONCURRENCY (default: the setting's default)",
    )
    parser.add_argument("--baseline-jobs", type=int, default=100, help="0: no baseline")
    parser.add_argument("--poll", type=float, default=15.0, help="baseline poll interval")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    configure(LogLevel.WARNING, LogFormat.TEXT)
    concurrency = args.concurrency or Settings.model_fields["provision_concurrency"].default

    print(
        f"scaleset-listener: {args.jobs} jobs, {args.latency * 1000:.0f} ms per cloud call, "
        f"PROVISION_CONCURRENCY={concurrency}",
        flush=True,
    )
    ours = asyncio.run(run_listener(args.jobs, args.latency, concurrency, args.timeout))
    print(
        f"  first create after {ours['first_create_s']:.2f} s, "
        f"{args.jobs}th after {ours['last_create_s']:.2f} s; all ACTIVE after "
        f"{ours['all_active_s']:.2f} s, {ours['cpu_ms_per_vm']:.1f} ms of listener CPU per VM",
        flush=True,
    )
    base: JSON = {}
    if args.baseline_jobs > 0:
        print(
            f"baseline: {args.poll:.0f} s REST polling, serial creates, sample of "
            f"{args.baseline_jobs} jobs extrapolated to {args.jobs}",
            flush=True,
        )
        base = asyncio.run(
            run_baseline(args.jobs, args.baseline_jobs, args.latency, args.poll, args.timeout)
        )
        print(
            f"  first create after {base['baseline_first_create_s']:.2f} s, "
            f"{args.jobs}th after ~{base['baseline_last_create_s_extrapolated']:.1f} s "
            "(extrapolated)",
            flush=True,
        )
    result = {
        "bench": "scale_up",
        "jobs": args.jobs,
        "latency_s": args.latency,
        "provision_concurrency": concurrency,
        **ours,
        **base,
    }
    last = ours["last_create_s"]
    base_last = base.get("baseline_last_create_s_extrapolated")
    if last and base_last:
        result["speedup_to_last_create"] = round(base_last / last, 1)
    if ours["first_create_s"] and base.get("baseline_first_create_s"):
        result["speedup_to_first_create"] = round(
            base["baseline_first_create_s"] / ours["first_create_s"], 1
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
