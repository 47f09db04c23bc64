"""The runner version end to end: the listener resolves `latest` from the simulated GitHub, new
VMs follow a newer release, and a pinned runner GitHub has deprecated gets no job (with the
reason on /readyz) until the listener runs on `latest` again."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from simulator.e2e_world import E2EWorld
from simulator.github.config import SimulatorConfig
from tests.e2e.guests import GUESTS


def downloaded_versions(world: E2EWorld) -> list[str]:
    """The runner versions the VMs downloaded from the simulated GitHub, in order."""
    requests = world.github.control.requests(endpoint="runner_release_download")
    return [r["path"].split("/")[5].removeprefix("v") for r in requests if r["status"] == 200]


def free_addr() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.timeout(120)
def test_vms_run_the_resolved_latest_runner_and_follow_a_new_release(world: E2EWorld) -> None:
    listener = world.start_listener(RUNNER_VERSION_CHECK_INTERVAL="1s")
    resolved = listener.log.wait_event("runner_version", timeout=30)
    assert (resolved["version"], resolved["source"], resolved["follows_latest"]) == (
        "2.331.0",
        "github",
        True,
    )
    world.queue_jobs(2, duration=0.5)
    world.wait_served(timeout=60)

    world.github.control.announce_runner_release("2.332.0")
    listener.log.wait_event("runner_version_changed", timeout=15, version="2.332.0")
    world.queue_jobs(2, duration=0.5)
    world.wait_served(timeout=60)
    world.wait_clean(timeout=30)

    versions = downloaded_versions(world)
    assert "2.331.0" in versions
    # Every VM created after the change downloaded the new release, and only that.
    assert versions[-2:] == ["2.332.0", "2.332.0"]
    assert world.github.control.events(type="runner_refused") == []
    assert listener.stop(timeout=15) == 0
    assert world.violations() == []


@pytest.fixture
def deprecated_world(tmp_path: Path) -> Iterator[E2EWorld]:
    # The newest release came out 31 days ago: GitHub refuses every older runner by now.
    github = SimulatorConfig(
        long_poll_timeout=1.0, session_abandon_timeout=2.0, runner_version_age_days=31
    )
    with E2EWorld(tmp_path, guest_kind=GUESTS, github_config=github) as running:
        yield running


@pytest.mark.timeout(150)
def test_a_deprecated_pin_gets_no_job_says_why_and_latest_serves_it(
    deprecated_world: E2EWorld,
) -> None:
    world = deprecated_world
    addr = free_addr()
    mirror = world.guests.mirror_settings("2.330.0")  # type: ignore[attr-defined]
    pinned = world.start_listener(**mirror, ENABLE_METRICS="true", METRICS_ADDR=addr)
    stale = pinned.log.wait_event("runner_version_stale", timeout=30)
    assert stale["version"] == "2.330.0"
    assert stale["newest"] == "2.331.0"
    [job_id] = world.queue_jobs(1, duration=0.5)

    # GitHub refuses the runner: the VM's runner exits, the VM powers off, the job waits.
    refused = world.wait_github_event(lambda e: e["type"] == "runner_refused", timeout=60)
    assert (refused["version"], refused["reason"]) == ("2.330.0", "deprecated")
    ready = httpx.get(f"http://{addr}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["reasons"][0].startswith(
        "runner 2.330.0 (GITHUB_RUNNER_VERSION) was superseded 31 days ago (newest 2.331.0)"
    )
    [job] = [j for j in world.jobs() if j["id"] == job_id]
    assert job["state"] != "completed"
    assert pinned.stop(timeout=15) == 0

    # The same deployment on the default (latest) serves the job with the newest runner.
    latest = world.start_listener()
    latest.log.wait_event("runner_version", timeout=30, version="2.331.0")
    world.wait_served(timeout=60)
    world.wait_clean(timeout=30)
    assert "2.331.0" in downloaded_versions(world)
    assert world.guests.downloads  # type: ignore[attr-defined]
    assert latest.stop(timeout=15) == 0
    assert world.violations() == []
