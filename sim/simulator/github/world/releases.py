"""The actions/runner releases: the list, the files behind the download URLs, GitHub's downloads
answer, and the policy that refuses old runners."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from simulator.github.model import DAY, JSON, ControlError, RunnerRelease, parse_version
from simulator.runner_stub import RunnerTarball, build_runner_tarball

if TYPE_CHECKING:
    from simulator.github.world import World

# The files of a runner release, as GitHub's downloads endpoint lists them: os, architecture,
# archive type. Only the Linux ones can be downloaded here (the stub runner, arch-independent).
RUNNER_PLATFORMS = (
    ("osx", "x64", "tar.gz"),
    ("osx", "arm64", "tar.gz"),
    ("linux", "x64", "tar.gz"),
    ("linux", "arm64", "tar.gz"),
    ("linux", "arm", "tar.gz"),
    ("win", "x64", "zip"),
    ("win", "arm64", "zip"),
)


class Releases:
    def __init__(self, world: World) -> None:
        self._world = world
        config = world.config
        # At start (and after a reset): the configured release, published that long ago.
        self.releases: list[RunnerRelease] = [
            RunnerRelease(config.runner_version, time.time() - config.runner_version_age_days * DAY)
        ]

    def newest_first(self) -> list[RunnerRelease]:
        return sorted(self.releases, key=lambda r: r.key, reverse=True)

    def newest(self) -> RunnerRelease:
        return max(self.releases, key=lambda r: r.key)

    def get(self, version: str) -> RunnerRelease | None:
        return next((r for r in self.releases if r.version == version), None)

    def add(self, version: str, published_at: float) -> RunnerRelease:
        """Publish a release (announcing a newer runner, or back-dating an older one)."""
        try:
            key = parse_version(version)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        release = RunnerRelease(".".join(map(str, key)), published_at)
        if self.get(release.version) is not None:
            raise ControlError(409, f"runner release v{release.version} exists")
        self.releases.append(release)
        self._world.ledger.event(
            "runner_release", version=release.version, published_at=release.published_at
        )
        return release

    def file(self, version: str, filename: str) -> RunnerTarball | None:
        """The bytes behind a release download URL: the stub for a known release's Linux
        files; None for anything else."""
        if self.get(version) is None:
            return None
        linux = {
            f"actions-runner-{os_}-{arch}-{version}.{ext}"
            for os_, arch, ext in RUNNER_PLATFORMS
            if os_ == "linux"
        }
        return build_runner_tarball(version) if filename in linux else None

    def downloads(self) -> list[JSON]:
        """GitHub's `actions/runners/downloads` answer: the newest release's files."""
        world = self._world
        version = self.newest().version
        entries: list[JSON] = []
        for os_, arch, ext in RUNNER_PLATFORMS:
            filename = f"actions-runner-{os_}-{arch}-{version}.{ext}"
            if os_ == "linux":
                checksum = build_runner_tarball(version).sha256
            else:
                # Not served here; a stable stand-in for the real archive's checksum.
                checksum = hashlib.sha256(filename.encode()).hexdigest()
            entry: JSON = {
                "os": os_,
                "architecture": arch,
                "download_url": (
                    f"{world.base_url}/actions/runner/releases/download/v{version}/{filename}"
                ),
                "filename": filename,
                "sha256_checksum": checksum,
            }
            if world.config.mode == "ghes":
                entry["temp_download_token"] = world.credentials.issue_download_token()
            entries.append(entry)
        return entries

    def refusal(self, version: str) -> tuple[int, str, str] | None:
        """Why GitHub would refuse a runner of this version (status, reason, message), or None.
        Below the minimum it cannot register; once a newer release has been out for more than
        `runner_deprecation_days` it gets no messages."""
        config = self._world.config
        key = parse_version(version)
        minimum = config.runner_min_version
        if key < parse_version(minimum):
            return (
                400,
                "below_minimum",
                f"Runner version v{version} is older than the minimum v{minimum} and cannot be "
                "registered.",
            )
        cutoff = time.time() - config.runner_deprecation_days * DAY
        if any(r.key > key and r.published_at < cutoff for r in self.releases):
            return (
                403,
                "deprecated",
                f"Runner version v{version} is deprecated and cannot receive messages.",
            )
        return None
