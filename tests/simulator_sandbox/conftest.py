"""Both simulators in-process, a scale set with a live session, and a fleet whose VMs run the
real rendered bootstrap: sandbox VMs and light VMs, each test once per kind (`guest_kind`).
Sandbox tests are skipped where `sandbox_problem()` says the machine cannot run sandbox VMs; with
REQUIRE_SSH_HOSTS=1 (CI) that is a failure instead. Light VMs run on any Linux machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from provisioners.bootstrap import (
    BootstrapSpec,
    HostKey,
    RunnerDownload,
    generate_host_key,
    render_user_data,
)
from simulator.openstack.config import CloudConfig
from simulator.openstack.control import CloudControl
from simulator.openstack.server import RunningCloud, run_in_thread
from simulator.sandbox import (
    LightFleet,
    SandboxConfig,
    SandboxFleet,
    light_problem,
    sandbox_problem,
)
from tests.conftest import GitHubSim, GitHubSimFactory

# The reconciler tests' world (simulators, settings, a scale set), for the prober tests.
from tests.reconciler.test_end_to_end import setup  # noqa: F401
from tests.simulator.helpers import Actions, Session
from tests.simulator_fleet.conftest import Nova
from tests.testsupport.ssh_hosts import install_system_deps

LABEL = "linux"
# The runner the tests' bootstraps pin, from the fleet's mirror (`World.boot_latest` takes the
# GitHub simulator's newest release instead).
PINNED_RUNNER = "2.330.0"
FAST_CLOUD = CloudConfig(build_delay=0.05, delete_delay=0.05, power_delay=0.02)
FAST_SANDBOX = SandboxConfig(poll_interval=0.02)


@pytest.fixture(scope="session")
def sandbox_available() -> None:
    """Skip (or, with REQUIRE_SSH_HOSTS=1, fail) where sandbox VMs cannot run."""
    problem = sandbox_problem()
    if problem is not None and "not installed" in problem:
        install_system_deps(force=True)
        sandbox_problem.cache_clear()
        problem = sandbox_problem()
    if problem is not None:
        if os.environ.get("REQUIRE_SSH_HOSTS") == "1":
            pytest.fail(f"REQUIRE_SSH_HOSTS=1 but {problem}")
        pytest.skip(problem)


GUEST_KINDS = ("sandbox", "light")


@pytest.fixture(params=GUEST_KINDS)
def guest_kind(request: pytest.FixtureRequest) -> str:
    """Each test runs on sandbox VMs and on light VMs."""
    kind = str(request.param)
    if kind == "sandbox":
        request.getfixturevalue("sandbox_available")
    else:
        problem = light_problem()
        if problem is not None:
            pytest.fail(f"light VMs must run on every Linux machine, but: {problem}")
    return kind


def make_fleet(
    kind: str, github_url: str, cloud_url: str, config: SandboxConfig = FAST_SANDBOX
) -> SandboxFleet:
    return (LightFleet if kind == "light" else SandboxFleet)(github_url, cloud_url, config)


@dataclass
class World:
    """Both simulators, a scale set with a live session (so jobs get assigned), the sandbox."""

    github: GitHubSim
    cloud: RunningCloud
    nova: Nova
    actions: Actions
    scale_set_id: int
    session: Session
    fleet: SandboxFleet
    kind: str
    host_keys: dict[str, HostKey] = field(default_factory=dict)
    jit_configs: dict[str, str] = field(default_factory=dict)

    @property
    def cloud_control(self) -> CloudControl:
        return self.cloud.control

    def jit(self, name: str) -> str:
        response = self.actions.generate_jit(self.scale_set_id, name)
        assert response.status_code == 200, response.text
        self.jit_configs[name] = str(response.json()["encodedJITConfig"])
        return self.jit_configs[name]

    def user_data(self, name: str, **overrides: Any) -> bytes:
        """The real bootstrap for `name` with a fresh JIT config and host key; the runner
        pinned to PINNED_RUNNER from the fleet's mirror."""
        key = self.host_keys[name] = generate_host_key(name)
        mirror = self.fleet.mirror_settings(PINNED_RUNNER)
        values: dict[str, Any] = {
            "runner_name": name,
            "jit_config": self.jit(name),
            "runner_version": mirror["GITHUB_RUNNER_VERSION"],
            "runner_download_url": mirror["RUNNER_DOWNLOAD_URL"],
            "runner_sha256": mirror["RUNNER_SHA256"],
            "labels": (LABEL,),
            "ssh_host_key_private": key.private_openssh,
            "ssh_host_key_public": key.public_openssh,
            "probe_public_key": self.fleet.client_public_key,
        }
        values.update(overrides)
        return render_user_data(BootstrapSpec(**values))

    def boot(self, name: str, **overrides: Any) -> str:
        return self.nova.create(name, self.user_data(name, **overrides))

    def latest_release(self) -> tuple[str, dict[str, RunnerDownload]]:
        """The newest runner release as the GitHub simulator's downloads endpoint lists it (what
        a listener with GITHUB_RUNNER_VERSION=latest gives its VMs): version and Linux files."""
        response = httpx.get(
            f"{self.github.api_url}/orgs/acme/actions/runners/downloads",
            headers={"Authorization": f"Bearer {self.github.pat}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        linux = [e for e in response.json() if e["os"] == "linux"]
        versions = {e["filename"].rsplit("-", 1)[1].removesuffix(".tar.gz") for e in linux}
        [version] = versions
        return version, {
            e["architecture"]: RunnerDownload(e["download_url"], e["sha256_checksum"])
            for e in linux
        }

    def boot_latest(self, name: str) -> str:
        """Boot `name` with the newest release, downloaded from the GitHub simulator."""
        version, downloads = self.latest_release()
        return self.boot(
            name,
            runner_version=version,
            runner_download_url="",
            runner_sha256=None,
            runner_downloads=downloads,
        )

    def runner(self, name: str) -> dict[str, Any] | None:
        runners = self.github.control.state()["runners"]
        return next((r for r in runners if r["name"] == name), None)

    def markers(self, name: str) -> list[str]:
        return [
            line for line in self.cloud_control.console(name) if line.startswith("SCALESET-RUNNER")
        ]


def leftovers(fleet: SandboxFleet, *names: str) -> dict[str, list[int]]:
    """Processes still alive in any of these VMs (their PID namespace, a light VM's
    session)."""
    return {name: pids for name in names if (pids := fleet.vm_processes(name))}


@pytest.fixture
def github_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def fleet_config() -> SandboxConfig:
    return FAST_SANDBOX


@pytest.fixture
def world(
    guest_kind: str,
    github_sim_factory: GitHubSimFactory,
    github_overrides: dict[str, Any],
    fleet_config: SandboxConfig,
) -> Iterator[World]:
    github = github_sim_factory(**github_overrides)
    actions = Actions(github)
    scale_set_id = actions.create_scale_set(LABEL)
    session = actions.create_session(scale_set_id)
    with run_in_thread(FAST_CLOUD.copy()) as cloud:
        nova = Nova(cloud)
        fleet = make_fleet(guest_kind, github.base_url, cloud.base_url, fleet_config)
        with fleet:
            yield World(github, cloud, nova, actions, scale_set_id, session, fleet, guest_kind)
        nova.close()
    actions.close()
