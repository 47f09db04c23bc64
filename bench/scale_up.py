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
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioners.base import ServerSpec
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.config import LogFormat, LogLevel, Settings
from scaleset_listener.logs import configure
from scaleset_listener.service import run_service
from scaleset_listener.wiring import openstack_config
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


def create_count(control: CloudControl) -> int:
    return len(control.requests(endpoint="compute.servers.create"))


async def watch_creates(
    control: CloudControl, target: int, started: float, timeout: float
) -> tuple[float | None, float | None]:
    """Seconds from `started` to the first and to the `target`-th create request."""
    first = last = None
    deadline = started + timeout
    while time.monotonic() < deadline:
        count = await asyncio.to_thread(create_count, control)
        now = time.monotonic() - started
        if count >= 1 and first is None:
            first = now
        if count >= target:
            last = now
            break
        await asyncio.sleep(0.05)
    return first, last


def listener_settings(github_url: str, jobs: int, concurrency: int) -> Settings:
    return Settings(
        github_url=f"{github_url}/bench-org",
        github_token=DEFAULT_PAT,
        runners=[{"name": LABEL, "max_runners": jobs}],
        openstack_image=IMAGE_NAME,
        openstack_flavor=FLAVOR_NAMES[0],
        openstack_network=NETWORK_NAME,
        provision_concurrency=concurrency,
        enable_reconciliation=False,
        boot_timeout=600,
        vm_tracker_interval=3600,
        log_level="warning",
    )


async def run_listener(jobs: int, latency: float, concurrency: int, timeout: float) -> JSON:
    with (
        tempfile.TemporaryDirectory() as scratch,
        peer("simulator.github", "--long-poll-timeout", "50") as github_url,
        SimulatorControl(github_url) as github,
        slow_cloud(Path(scratch), latency, jobs) as cloud_url,
        CloudControl(cloud_url) as control,
    ):
        stop = asyncio.Event()
        settings = listener_settings(github_url, jobs, concurrency)
        service = asyncio.create_task(run_service(settings, stop, handle_signals=False))
        await asyncio.to_thread(
            github.wait_for_state, lambda s: any(not x["ghost"] for x in s["sessions"]), 60
        )
        started = time.monotonic()
        github.enqueue_jobs([LABEL], count=jobs)
        first, last = await watch_creates(control, jobs, started, timeout)
        cpu = time.process_time()
        stop.set()
        await asyncio.wait_for(service, 120)
        return {"first_create_s": first, "last_create_s": last, "process_cpu_s": round(cpu, 1)}


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
        started = time.monotonic()
        github.enqueue_jobs([LABEL], count=sample)
        watcher = asyncio.create_task(watch_creates(control, sample, started, timeout))
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
    parser.add_argument("--concurrency", type=int, default=8, help="PROVISION_CONCURRENCY")
    parser.add_argument("--baseline-jobs", type=int, default=100)
    parser.add_argument("--poll", type=float, default=15.0, help="baseline poll interval")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    configure(LogLevel.WARNING, LogFormat.TEXT)

    print(
        f"scaleset-listener: {args.jobs} jobs, {args.latency * 1000:.0f} ms per cloud call, "
        f"PROVISION_CONCURRENCY={args.concurrency}",
        flush=True,
    )
    ours = asyncio.run(run_listener(args.jobs, args.latency, args.concurrency, args.timeout))
    print(
        f"  first create after {ours['first_create_s']:.2f} s, "
        f"{args.jobs}th after {ours['last_create_s']:.2f} s",
        flush=True,
    )
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
        "provision_concurrency": args.concurrency,
        **ours,
        **base,
    }
    last = ours["last_create_s"]
    base_last = base["baseline_last_create_s_extrapolated"]
    if last and base_last:
        result["speedup_to_last_create"] = round(base_last / last, 1)
    if ours["first_create_s"] and base["baseline_first_create_s"]:
        result["speedup_to_first_create"] = round(
            base["baseline_first_create_s"] / ours["first_create_s"], 1
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
