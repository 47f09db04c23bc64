"""The runner release new VMs get: resolved from GitHub's downloads endpoint (`latest`) or pinned
and checked against GitHub's releases, against the simulator over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from provisioners.bootstrap import RunnerDownload
from scaleset_listener.auth import PersonalAccessToken
from scaleset_listener.config import load_settings
from scaleset_listener.errors import ConfigError, ProtocolError
from scaleset_listener.github_urls import parse_github_url
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RecoveryBackoff, RetryPolicy
from scaleset_listener.runner_versions import (
    DAY,
    GITHUB_RELEASE_URL,
    PublishedRelease,
    RunnerVersions,
    RunnerVersionUnavailable,
    days_superseded,
    pinned_release,
    release_from_downloads,
    releases_from_listing,
)
from scaleset_listener.runner_versions import GitHubReleaseSource as Source
from tests.conftest import GitHubSim, GitHubSimFactory

SHA = {arch: f"{index}" * 64 for index, arch in enumerate(("x64", "arm64", "arm"))}


def github_answer(version: str = "2.331.0") -> list[dict[str, Any]]:
    """The downloads endpoint's answer as GitHub documents it, every OS and architecture."""
    base = f"https://github.com/actions/runner/releases/download/v{version}"
    entries = []
    for os_name, arch, suffix in (
        ("osx", "x64", "tar.gz"),
        ("linux", "x64", "tar.gz"),
        ("linux", "arm64", "tar.gz"),
        ("linux", "arm", "tar.gz"),
        ("win", "x64", "zip"),
    ):
        filename = f"actions-runner-{os_name}-{arch}-{version}.{suffix}"
        entries.append(
            {
                "os": os_name,
                "architecture": arch,
                "download_url": f"{base}/{filename}",
                "filename": filename,
                "temp_download_token": "secret-download-token",
                "sha256_checksum": SHA.get(arch, "f" * 64) if os_name == "linux" else "e" * 64,
            }
        )
    return entries


# Parsing ----------------------------------------------------------------------------------


def test_the_linux_runners_of_a_downloads_answer_become_the_release() -> None:
    release = release_from_downloads(github_answer())

    assert release.version == "2.331.0"
    assert release.source == "github"
    base = "https://github.com/actions/runner/releases/download/v2.331.0"
    assert release.downloads == {
        arch: RunnerDownload(f"{base}/actions-runner-linux-{arch}-2.331.0.tar.gz", SHA[arch])
        for arch in ("x64", "arm64", "arm")
    }
    assert release.url_template == f"{base}/actions-runner-linux-{{arch}}-2.331.0.tar.gz"
    assert release.common_sha256 is None
    assert "secret-download-token" not in repr(release)


def test_a_mirror_serves_the_files_and_githubs_checksums_still_apply() -> None:
    mirror = "https://mirror.example/runner/{version}/{arch}.tar.gz"

    release = release_from_downloads(github_answer(), mirror)

    assert release.downloads["arm64"] == RunnerDownload(
        "https://mirror.example/runner/2.331.0/arm64.tar.gz", SHA["arm64"]
    )
    assert release.url_template == "https://mirror.example/runner/2.331.0/{arch}.tar.gz"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"os": "linux"}, "not a JSON list"),
        ([entry for entry in github_answer() if entry["os"] != "linux"], "no Linux runner"),
        ([{**github_answer()[1], "sha256_checksum": "nope"}], "no valid sha256_checksum"),
        ([github_answer()[1], github_answer("2.332.0")[2]], "several versions"),
    ],
)
def test_a_downloads_answer_we_cannot_use_is_a_protocol_error(answer: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        release_from_downloads(answer)


def test_a_pin_uses_githubs_url_or_the_mirror_with_one_checksum() -> None:
    github = pinned_release("2.330.0", "", "")
    mirror = pinned_release("2.330.0", "https://m.example/{version}-{arch}.tgz", "a" * 64)

    assert github.downloads["x64"].url == GITHUB_RELEASE_URL.format(version="2.330.0", arch="x64")
    assert github.common_sha256 is None
    assert mirror.downloads["arm"] == RunnerDownload("https://m.example/2.330.0-arm.tgz", "a" * 64)
    assert mirror.common_sha256 == "a" * 64


def test_drafts_prereleases_and_odd_tags_are_not_releases() -> None:
    listing = [
        {"tag_name": "v2.332.0", "published_at": "2026-12-01T00:00:00Z", "draft": True},
        {"tag_name": "v2.332.0-rc1", "published_at": "2026-11-30T00:00:00Z"},
        {"tag_name": "v2.331.0", "published_at": "2026-11-20T00:00:00Z", "prerelease": True},
        {"tag_name": "v2.330.0", "published_at": "2026-11-01T00:00:00Z"},
        {"tag_name": "v2.329.0", "published_at": None},
    ]

    releases = releases_from_listing(listing)

    assert [release.version for release in releases] == [(2, 330, 0)]


def test_deprecation_counts_from_the_first_newer_release() -> None:
    now = time.time()
    releases = [
        PublishedRelease((2, 332, 0), now - 3 * DAY),
        PublishedRelease((2, 331, 0), now - 27 * DAY),
        PublishedRelease((2, 330, 0), now - 60 * DAY),
    ]

    assert days_superseded("2.332.0", releases, now) is None
    assert days_superseded("2.331.0", releases, now) == pytest.approx(3.0)
    assert days_superseded("2.330.0", releases, now) == pytest.approx(27.0)
    assert days_superseded("2.10.0", releases, now) == pytest.approx(60.0)


# Settings ---------------------------------------------------------------------------------


def settings_with(monkeypatch: pytest.MonkeyPatch, **values: str) -> Any:
    monkeypatch.setenv("GITHUB_URL", "https://github.com/acme")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_x")
    monkeypatch.setenv("RUNNERS", '[{"name": "linux"}]')
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_latest_is_the_default_and_a_pin_may_carry_a_v(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_with(monkeypatch).github_runner_version == "latest"
    assert settings_with(monkeypatch).runner_version_check_interval == DAY
    pinned = settings_with(monkeypatch, GITHUB_RUNNER_VERSION="v2.331.0")
    assert pinned.github_runner_version == "2.331.0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"GITHUB_RUNNER_VERSION": "newest"}, "GITHUB_RUNNER_VERSION: expected latest or a"),
        ({"RUNNER_SHA256": "a" * 64}, "RUNNER_SHA256: only with a pinned GITHUB_RUNNER_VERSION"),
        ({"RUNNER_DOWNLOAD_URL": "https://m/{ver}.tgz"}, "RUNNER_DOWNLOAD_URL: unknown placeh"),
        ({"RUNNER_DOWNLOAD_URL": "mirror.example/x.tgz"}, "RUNNER_DOWNLOAD_URL: expected an"),
        ({"RUNNER_VERSION_CHECK_INTERVAL": "0s"}, "RUNNER_VERSION_CHECK_INTERVAL: must be at"),
    ],
)
def test_runner_settings_that_cannot_work_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_with(monkeypatch, **values)


# Against the simulated GitHub -------------------------------------------------------------


@contextlib.asynccontextmanager
async def source_for(sim: GitHubSim, path: str = "acme") -> AsyncIterator[Source]:
    http = HttpChannel(RetryPolicy(max_attempts=2, max_wait=0.01))
    try:
        yield Source(parse_github_url(sim.config_url(path)), PersonalAccessToken(sim.pat), http)
    finally:
        await http.aclose()


def announce(sim: GitHubSim, version: str, age_days: float = 0.0) -> None:
    sim.control.announce_runner_release(version, age_days=age_days)


@pytest.mark.parametrize("path", ["acme", "acme/app", "enterprises/big"])
async def test_every_scope_resolves_the_newest_release_with_githubs_checksums(
    github_sim_factory: GitHubSimFactory, path: str
) -> None:
    sim = github_sim_factory(runner_version="2.331.0")
    async with source_for(sim, path) as source:
        versions = RunnerVersions("latest", source)
        await versions.start()
        release = versions.current()

    assert release.version == "2.331.0"
    assert set(release.downloads) == {"x64", "arm64", "arm"}
    (request,) = sim.control.requests(endpoint="runner_downloads")
    expected = parse_github_url(sim.config_url(path)).runner_downloads_path
    assert request["path"] == "/api/v3" + expected
    assert request["status"] == 200
    # The URLs GitHub gave are the ones a VM downloads, and they serve those exact bytes.
    served = await asyncio.to_thread(_fetch, release.downloads["x64"].url)
    assert hashlib.sha256(served).hexdigest() == release.downloads["x64"].sha256


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback test URL)
        return bytes(answer.read())


async def test_a_newer_release_reaches_the_next_vm_after_the_next_check(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(runner_version="2.331.0")
    async with source_for(sim) as source:
        versions = RunnerVersions("latest", source)
        await versions.start()
        announce(sim, "2.332.0")
        with capture_logs() as logs:
            await versions.check()

    assert versions.current().version == "2.332.0"
    assert versions.current().downloads["x64"].url.endswith("linux-x64-2.332.0.tar.gz")
    changed = [entry for entry in logs if entry["event"] == "runner_version_changed"]
    assert changed == [
        {
            "event": "runner_version_changed",
            "version": "2.332.0",
            "previous": "2.331.0",
            "log_level": "info",
        }
    ]


async def test_a_failing_endpoint_keeps_the_last_good_answer_and_says_so(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(runner_version="2.331.0")
    async with source_for(sim) as source:
        now = [time.time()]
        versions = RunnerVersions("latest", source, clock=lambda: now[0])
        await versions.start()
        sim.control.add_fault("runner_downloads", status=503, times=None)
        announce(sim, "2.332.0")
        with capture_logs() as logs:
            await versions.check()
        assert versions.current().version == "2.331.0"
        assert versions.problem() is None
        # Weeks of failures: the kept release may be past GitHub's cut-off by now.
        now[0] += 26 * DAY
        await versions.check()

    (failed, *_) = [entry for entry in logs if entry["event"] == "runner_version_refresh_failed"]
    assert failed["keeping"] == "2.331.0"
    assert failed["log_level"] == "warning"
    assert "503" in failed["error"]
    problem = versions.problem()
    assert problem is not None
    assert "runner 2.331.0 was resolved 26 days ago" in problem


async def test_latest_that_github_refuses_at_start_stops_the_start(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("runner_downloads", status=404, times=None, type_name="")
    async with source_for(sim) as source:
        versions = RunnerVersions("latest", source)
        with pytest.raises(RunnerVersionUnavailable, match="pin GITHUB_RUNNER_VERSION") as err:
            await versions.start()
    assert "404" in str(err.value)
    assert len(sim.control.requests(endpoint="runner_downloads")) == 1
    with pytest.raises(RunnerVersionUnavailable):
        versions.current()


async def test_latest_is_retried_at_start_while_github_fails_transiently(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(runner_version="2.331.0")
    # Each start attempt makes two requests (RetryPolicy max_attempts=2): two attempts fail.
    sim.control.add_fault("runner_downloads", status=503, times=4)
    async with source_for(sim) as source:
        versions = RunnerVersions("latest", source)
        with capture_logs() as logs:
            unresolved = versions.problem()
            release = await versions.start(asyncio.Event(), RecoveryBackoff(0.05, 0.05))

    assert unresolved == "the runner release (GITHUB_RUNNER_VERSION=latest) is not resolved yet"
    assert release is not None
    assert release.version == "2.331.0"
    waits = [e["retry_in_seconds"] for e in logs if e["event"] == "runner_version_unresolved"]
    # The capped step plus up to a quarter of it of jitter, rounded to milliseconds.
    assert len(waits) == 2
    assert all(0.05 <= wait <= 0.063 for wait in waits)
    assert versions.problem() is None


async def test_a_stop_while_latest_is_retried_ends_the_start_without_a_release(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("runner_downloads", status=502, times=None)
    stop = asyncio.Event()
    async with source_for(sim) as source:
        versions = RunnerVersions("latest", source)
        starting = asyncio.create_task(versions.start(stop, RecoveryBackoff(60.0, 60.0)))
        await asyncio.to_thread(
            sim.control.wait_for_request, lambda e: e["endpoint"] == "runner_downloads", 5.0
        )
        problem = versions.problem()
        stop.set()
        async with asyncio.timeout(5):
            assert await starting is None
    assert problem is not None
    assert problem.startswith("the runner release (GITHUB_RUNNER_VERSION=latest) is not resolved")


async def test_a_pin_warns_and_turns_unready_25_days_after_a_newer_release(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(runner_version="2.330.0", runner_version_age_days=60)
    announce(sim, "2.331.0", age_days=20)
    async with source_for(sim) as source:
        now = [time.time()]
        versions = RunnerVersions("2.330.0", source, clock=lambda: now[0])
        await versions.start()
        release = versions.current()
        assert release.version == "2.330.0"
        assert versions.problem() is None
        now[0] += 6 * DAY
        with capture_logs() as logs:
            await versions.check()

    problem = versions.problem()
    assert problem is not None
    assert problem.startswith("runner 2.330.0 (GITHUB_RUNNER_VERSION) was superseded 26 days ago")
    assert "newest 2.331.0" in problem
    (stale,) = [entry for entry in logs if entry["event"] == "runner_version_stale"]
    assert stale["log_level"] == "warning"
    assert versions.current().version == "2.330.0"
    assert sim.control.requests(endpoint="runner_downloads") == []


async def test_on_ghes_a_pin_is_compared_with_the_version_ghes_offers(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(mode="ghes", runner_version="2.331.0")
    async with source_for(sim) as source:
        current = RunnerVersions("2.331.0", source)
        await current.start()
        older = RunnerVersions("2.330.0", source)
        with capture_logs() as logs:
            await older.start()

    assert current.problem() is None
    assert older.problem() == (
        "runner 2.330.0 (GITHUB_RUNNER_VERSION) is older than 2.331.0, the version GitHub "
        "Enterprise Server offers"
    )
    assert "temp_download_token" not in str(logs)
    assert all("token" not in str(value) for entry in logs for value in entry.values())


async def test_a_pin_whose_check_fails_keeps_running_and_says_so(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    sim.control.add_fault("runner_releases", status=502, times=None)
    async with source_for(sim) as source:
        versions = RunnerVersions("2.331.0", source)
        with capture_logs() as logs:
            await versions.start()
            release = versions.current()

    assert release.version == "2.331.0"
    assert versions.problem() is None
    ours = [entry for entry in logs if entry["event"].startswith("runner_version")]
    assert [entry["event"] for entry in ours] == ["runner_version_check_failed"]
    assert "502" in ours[0]["error"]


async def test_the_check_loop_runs_every_interval_until_stopped(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(runner_version="2.331.0")
    async with source_for(sim) as source:
        versions = RunnerVersions("latest", source, check_interval=1.0)
        await versions.start()
        stop = asyncio.Event()
        loop = asyncio.create_task(versions.run(stop))
        announce(sim, "2.332.0")
        async with asyncio.timeout(10):
            while versions.current().version != "2.332.0":
                await asyncio.to_thread(
                    sim.control.wait_for_request,
                    lambda entry: entry["endpoint"] == "runner_downloads",
                    5.0,
                    after=_last_request(sim),
                )
        stop.set()
        async with asyncio.timeout(5):
            await loop


def _last_request(sim: GitHubSim) -> int:
    logged = sim.control.requests()
    return int(logged[-1]["seq"]) if logged else 0
