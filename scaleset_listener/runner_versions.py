"""Which GitHub Actions runner release new VMs get, and whether GitHub will still give it jobs.

GitHub gives jobs only to recent runners: registering needs 2.329.0 or later, and a release is
refused 30 days after a newer one came out ("Runner version vX is deprecated and cannot receive
messages"). Our JIT runners have self-update disabled, so a pinned version quietly stops a whole
deployment one month after GitHub's next release. Hence:

* `GITHUB_RUNNER_VERSION=latest` (the default): the release is resolved from the REST endpoint
  `GET .../actions/runners/downloads` of the configured scope (repository, organization or
  enterprise; GHES answers with the version it wants): version, per-architecture URL and
  SHA-256. At start no VM is created before it is resolved: a transient failure (network, 5xx,
  429) that outlasted the request's own retries is retried with a growing wait, the listener's
  recovery backoff (`retrying.RecoveryBackoff`; the health endpoints answer meanwhile and
  `/readyz` says why); any other failure (bad credentials, 404, an answer we cannot use) stops
  the start with that message. Later, every RUNNER_VERSION_CHECK_INTERVAL, a failure keeps the
  last good answer and says so.
* A pinned version (air-gapped mirrors) is used as given, and checked on the same schedule
  against the releases GitHub lists (`GET /repos/actions/runner/releases`): once a newer
  release has been out for more than STALE_AFTER_DAYS, a warning is logged at every check and
  `/readyz` carries the reason, days before GitHub's cut-off. GHES lists no releases: there the
  pin is compared with the version GHES's downloads endpoint wants.

The VM gets the URLs and checksums; `temp_download_token` (GHES) is never kept or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from provisioners.bootstrap import RUNNER_ARCHITECTURES, RunnerDownload, downloads_from_template
from scaleset_listener.auth import GITHUB_JSON, Credential
from scaleset_listener.errors import GitHubAPIError, ListenerError, ProtocolError
from scaleset_listener.github_urls import GitHubTarget
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RecoveryBackoff, RetryPolicy, is_transient

log = structlog.get_logger(__name__)

LATEST = "latest"
GITHUB_RELEASE_URL = (
    "https://github.com/actions/runner/releases/download/v{version}/"
    "actions-runner-linux-{arch}-{version}.tar.gz"
)
# GitHub refuses a release this many days after a newer one; we warn a few days before.
GITHUB_CUTOFF_DAYS = 30
STALE_AFTER_DAYS = 25
# One page of GitHub's release list (its maximum page size): all the pre-flight and the
# staleness clock look at.
RELEASES_LISTED = 100
DAY = 86400.0

_LINUX_TARBALL = re.compile(r"actions-runner-linux-(x64|arm64|arm)-(\d+\.\d+\.\d+)\.tar\.gz$")
_SHA256 = re.compile(r"[0-9a-f]{64}")
Version = tuple[int, int, int]
Clock = Callable[[], float]


class RunnerVersionUnavailable(ListenerError):
    """GITHUB_RUNNER_VERSION=latest could not be resolved and no earlier answer exists."""


def parse_version(text: str) -> Version | None:
    """`2.331.0` or `v2.331.0` as a comparable tuple; None for anything else."""
    found = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if found is None:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


@dataclass(frozen=True)
class RunnerRelease:
    """The runner new VMs install."""

    version: str
    downloads: Mapping[str, RunnerDownload]
    # The download URL with `{arch}` left for the VM (the documented template variable).
    url_template: str
    source: Literal["github", "pinned"]

    @property
    def common_sha256(self) -> str | None:
        """The checksum when every architecture has the same one (a pin's RUNNER_SHA256): the
        documented `runner_sha256` template variable."""
        checksums = {download.sha256 for download in self.downloads.values()}
        return checksums.pop() or None if len(checksums) == 1 else None


@dataclass(frozen=True)
class PublishedRelease:
    version: Version
    published_at: float


def pinned_release(version: str, url_template: str, sha256: str) -> RunnerRelease:
    """A pinned release: the URL template (GitHub's, or a mirror's) and one optional checksum."""
    template = (url_template or GITHUB_RELEASE_URL).replace("{version}", version)
    downloads = downloads_from_template(template, dict.fromkeys(RUNNER_ARCHITECTURES, sha256))
    return RunnerRelease(version, downloads, template, "pinned")


def release_from_downloads(data: Any, mirror_template: str = "") -> RunnerRelease:
    """The Linux runner from a downloads-endpoint answer (a JSON list, one entry per OS and
    architecture). With a mirror, its URLs replace GitHub's and GitHub's checksums still apply."""
    if not isinstance(data, list):
        raise ProtocolError("runner downloads: the answer is not a JSON list")
    found: dict[str, tuple[str, RunnerDownload]] = {}
    for entry in data:
        if not isinstance(entry, dict) or str(entry.get("os", "")).lower() != "linux":
            continue
        filename = str(entry.get("filename") or entry.get("download_url") or "")
        match = _LINUX_TARBALL.search(filename)
        url, sha256 = entry.get("download_url"), str(entry.get("sha256_checksum") or "").lower()
        if match is None or not isinstance(url, str) or not url.startswith(("http://", "https://")):
            continue
        if not _SHA256.fullmatch(sha256):
            raise ProtocolError(f"runner downloads: {filename} has no valid sha256_checksum")
        found[match.group(1)] = (match.group(2), RunnerDownload(url, sha256))
    if not found:
        raise ProtocolError("runner downloads: no Linux runner (linux x64, arm64 or arm) listed")
    versions = {version for version, _ in found.values()}
    if len(versions) != 1:
        raise ProtocolError(f"runner downloads: several versions listed: {sorted(versions)}")
    version = versions.pop()
    downloads = {arch: download for arch, (_, download) in found.items()}
    if mirror_template:
        template = mirror_template.replace("{version}", version)
        checksums = {arch: download.sha256 for arch, download in downloads.items()}
        downloads = downloads_from_template(template, checksums)
    else:
        # GitHub names every file alike: any one URL, its architecture made `{arch}`.
        arch = "x64" if "x64" in downloads else next(iter(downloads))
        template = downloads[arch].url.replace(f"linux-{arch}-", "linux-{arch}-")
    return RunnerRelease(version, downloads, template, "github")


def releases_from_listing(data: Any) -> list[PublishedRelease]:
    """Published, non-draft, non-prerelease releases from `GET /repos/actions/runner/releases`."""
    if not isinstance(data, list):
        raise ProtocolError("runner releases: the answer is not a JSON list")
    releases = []
    for entry in data:
        if not isinstance(entry, dict) or entry.get("draft") or entry.get("prerelease"):
            continue
        version = parse_version(str(entry.get("tag_name", "")))
        published = entry.get("published_at")
        if version is None or not isinstance(published, str):
            continue
        try:
            moment = datetime.fromisoformat(published.replace("Z", "+00:00"))
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        releases.append(PublishedRelease(version, moment.timestamp()))
    return releases


def days_superseded(version: str, releases: list[PublishedRelease], now: float) -> float | None:
    """Days since the first release newer than `version` came out (GitHub's deprecation clock);
    None while `version` is the newest."""
    mine = parse_version(version)
    newer = [release.published_at for release in releases if mine and release.version > mine]
    if not newer:
        return None
    return max(0.0, (now - min(newer)) / DAY)


class ReleaseSource(Protocol):
    """Where releases come from (GitHub's REST API; a fake in unit tests)."""

    async def downloads(self) -> Any: ...

    async def releases(self) -> list[PublishedRelease] | None:
        """None where the API has no actions/runner repository (GHES)."""
        ...


class GitHubReleaseSource:
    """The two REST calls, with the service's credential (authenticated rate limits)."""

    def __init__(self, target: GitHubTarget, credential: Credential, http: HttpChannel) -> None:
        self._target = target
        self._credential = credential
        self._http = http

    def __repr__(self) -> str:
        return f"GitHubReleaseSource(api_url={self._target.api_url!r})"

    async def _get(self, path: str, what: str, expected: set[int]) -> Any:
        token = await self._credential.token()
        answer = await self._http.request(
            "GET",
            self._target.api_url + path,
            expected=expected,
            service=GitHubAPIError,
            headers={"Authorization": f"Bearer {token}", "Accept": GITHUB_JSON},
            what=what,
        )
        return None if answer.status == 404 else answer.json(what)

    async def downloads(self) -> Any:
        return await self._get(self._target.runner_downloads_path, "runner downloads", {200})

    async def releases(self) -> list[PublishedRelease] | None:
        data = await self._get(
            f"/repos/actions/runner/releases?per_page={RELEASES_LISTED}",
            "runner releases",
            {200, 404},
        )
        return None if data is None else releases_from_listing(data)


class RunnerVersions:
    """The runner release in use, kept current; `current()` is what the next VM gets."""

    def __init__(
        self,
        wanted: str,
        source: ReleaseSource,
        *,
        mirror_url: str = "",
        pinned_sha256: str = "",
        check_interval: float = DAY,
        clock: Clock = time.time,
    ) -> None:
        self._wanted = wanted
        self._source = source
        self._mirror_url = mirror_url
        self._check_interval = check_interval
        self._clock = clock
        self._release: RunnerRelease | None = None
        self._resolved_at: float | None = None
        self._stale: str | None = None
        self._last_error: ListenerError | None = None
        if wanted != LATEST:
            self._release = pinned_release(wanted, mirror_url, pinned_sha256)

    @property
    def follows_latest(self) -> bool:
        return self._wanted == LATEST

    def current(self) -> RunnerRelease:
        if self._release is None:
            raise RunnerVersionUnavailable("the runner release has not been resolved yet")
        return self._release

    @property
    def version(self) -> str | None:
        """The release in use (None until resolved)."""
        return None if self._release is None else self._release.version

    @property
    def stale(self) -> bool:
        """Superseded long enough that GitHub will soon refuse it (or already does)."""
        return self._stale is not None

    def problem(self) -> str | None:
        """Why no VM can be created yet, or why the runner in use may soon get no jobs (a
        `/readyz` reason); None when all is well."""
        if self._release is None:
            cause = f": {self._last_error}" if self._last_error else ""
            return f"the runner release (GITHUB_RUNNER_VERSION=latest) is not resolved yet{cause}"
        return self._stale

    async def resolve_once(self) -> tuple[RunnerRelease, str | None]:
        """One look, without the start's waiting: the release new VMs would get, and a warning
        when GitHub will soon refuse it (a superseded pin). Raises ListenerError when `latest`
        does not resolve, or when GitHub lists no release of the pinned version. Changes
        nothing here (the pre-flight's check)."""
        if self.follows_latest:
            return release_from_downloads(await self._source.downloads(), self._mirror_url), None
        release = self.current()
        mine = parse_version(release.version)
        releases = await self._source.releases()
        if releases is None:  # GHES: compare with the version it offers
            offered = release_from_downloads(await self._source.downloads()).version
            wanted = parse_version(offered)
            if mine is not None and wanted is not None and mine < wanted:
                return release, f"older than {offered}, the version GitHub Enterprise Server offers"
            return release, None
        listed = {published.version for published in releases}
        if mine is not None and len(listed) >= RELEASES_LISTED and mine < min(listed):
            # Older than the oldest of a full page of releases: not listed, and long past
            # GitHub's cutoff whether it exists or not.
            oldest = ".".join(map(str, min(listed)))
            raise RunnerVersionUnavailable(
                f"GITHUB_RUNNER_VERSION={release.version} is older than {oldest}, the oldest of "
                f"GitHub's newest 100 runner releases; GitHub refuses runners "
                f"{GITHUB_CUTOFF_DAYS} days after a newer release: pin a current one"
            )
        if mine not in listed:
            raise RunnerVersionUnavailable(
                f"GITHUB_RUNNER_VERSION={release.version}: GitHub lists no such runner release "
                "among its newest 100"
            )
        days = days_superseded(release.version, releases, self._clock())
        if days is not None and days > STALE_AFTER_DAYS:
            return release, (
                f"superseded {days:.0f} days ago; GitHub refuses runners {GITHUB_CUTOFF_DAYS} "
                "days after a newer release"
            )
        return release, None

    async def start(
        self, stop: asyncio.Event | None = None, backoff: RecoveryBackoff | None = None
    ) -> RunnerRelease | None:
        """Resolve (latest) or check (pinned) once. `latest` is retried while GitHub fails
        transiently, after the waits of `backoff` (by default the recovery backoff of the
        default retry policy: 1, 2, 4 ... 60 seconds, with jitter); None when `stop` is set
        first. RunnerVersionUnavailable when the failure is not transient."""
        if backoff is None:
            backoff = RetryPolicy().recovery_backoff()
        while True:
            await self.check()
            if self._release is not None:
                return self._release
            error = self._last_error
            if error is None or not is_transient(error):
                raise RunnerVersionUnavailable(
                    "GITHUB_RUNNER_VERSION=latest: GitHub's runner downloads endpoint gave no "
                    f"usable answer ({error}); pin GITHUB_RUNNER_VERSION (with "
                    "RUNNER_DOWNLOAD_URL for a mirror) to start without it"
                )
            wait = backoff.next_wait()
            log.warning(
                "runner_version_unresolved", retry_in_seconds=round(wait, 3), error=str(error)
            )
            if stop is None:
                await asyncio.sleep(wait)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
            if stop.is_set():
                return None

    async def run(self, stop: asyncio.Event) -> None:
        """Check every interval until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await stop.wait()
            if not stop.is_set():
                await self.check()

    async def check(self) -> None:
        """One round: refresh `latest`, or judge how close the pin is to GitHub's cut-off."""
        if self.follows_latest:
            await self._refresh_latest()
        else:
            await self._check_pinned()

    async def _refresh_latest(self) -> None:
        now = self._clock()
        try:
            release = release_from_downloads(await self._source.downloads(), self._mirror_url)
        except ListenerError as exc:
            self._last_error = exc
            kept = self._release
            log.warning(
                "runner_version_refresh_failed",
                error=str(exc),
                keeping=kept.version if kept else None,
                resolved_at=_iso(self._resolved_at) if self._resolved_at else None,
            )
            if kept is not None and self._resolved_at is not None:
                age = (now - self._resolved_at) / DAY
                if age > STALE_AFTER_DAYS:
                    self._stale = (
                        f"runner {kept.version} was resolved {age:.0f} days ago and GitHub's "
                        "downloads endpoint has failed since; GitHub refuses runners "
                        f"{GITHUB_CUTOFF_DAYS} days after a newer release"
                    )
            return
        previous = self._release
        self._release, self._resolved_at, self._stale = release, now, None
        self._last_error = None
        if previous is not None and previous.version != release.version:
            # The VMs created from now on get the new release; running ones keep theirs.
            log.info("runner_version_changed", version=release.version, previous=previous.version)

    async def _check_pinned(self) -> None:
        assert self._release is not None
        version = self._release.version
        try:
            releases = await self._source.releases()
            newest = (
                None
                if releases is not None
                else release_from_downloads(await self._source.downloads()).version
            )
        except ListenerError as exc:
            log.warning("runner_version_check_failed", version=version, error=str(exc))
            return
        if releases is not None:
            days = days_superseded(version, releases, self._clock())
            if days is None or days <= STALE_AFTER_DAYS:
                self._stale = None
                return
            # Superseded, so the newest release is newer than the pin.
            newest = ".".join(map(str, max(release.version for release in releases)))
            reason = (
                f"runner {version} (GITHUB_RUNNER_VERSION) was superseded {days:.0f} days ago "
                f"(newest {newest}); GitHub refuses runners {GITHUB_CUTOFF_DAYS} days after a "
                "newer release"
            )
        else:
            mine, wanted = parse_version(version), parse_version(newest or "")
            if mine is None or wanted is None or mine >= wanted:
                self._stale = None
                return
            reason = f"runner {version} (GITHUB_RUNNER_VERSION) is older than {newest}, the "
            reason += "version GitHub Enterprise Server offers"
        self._stale = reason
        log.warning(
            "runner_version_stale",
            version=version,
            newest=newest,
            reason=reason,
            hint="set GITHUB_RUNNER_VERSION=latest, or update the pin and its mirror",
        )


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
