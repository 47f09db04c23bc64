"""Fixtures shared by every test: a clean environment and the GitHub simulator."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scaleset_listener.config import Settings
from simulator.github.config import SimulatorConfig
from simulator.github.control import SimulatorControl
from simulator.github.server import RunningSimulator, run_in_thread

_LEAKY_PREFIXES = ("GITHUB_", "OS_", "LOG_")
# Every variable the service reads, so a developer's or CI's settings never reach a test.
_LEAKY_NAMES = frozenset(name.upper() for name in Settings.model_fields)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's or CI's settings must not change what a test sees."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY_NAMES:
            monkeypatch.delenv(name)


@dataclass(frozen=True)
class GitHubSim:
    """A running simulator: `base_url` serves the API (also under /api/v3), the Actions service
    and the broker; `control` drives it."""

    base_url: str
    control: SimulatorControl
    config: SimulatorConfig
    server: RunningSimulator

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/v3"

    @property
    def pat(self) -> str:
        return self.config.pats[0]

    def config_url(self, path: str = "acme") -> str:
        """A GHES-style config URL whose API base is `api_url`."""
        return f"{self.base_url}/{path}"


GitHubSimFactory = Callable[..., GitHubSim]


@pytest.fixture
def github_sim_factory() -> Iterator[GitHubSimFactory]:
    """Start simulators with config overrides: `github_sim_factory(mode="ghes")`."""
    started: list[RunningSimulator] = []

    def start(**overrides: Any) -> GitHubSim:
        config = SimulatorConfig(**overrides)
        server = run_in_thread(config)
        started.append(server)
        return GitHubSim(server.base_url, server.control, config, server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def github_sim(request: pytest.FixtureRequest, github_sim_factory: GitHubSimFactory) -> GitHubSim:
    """A simulator with test defaults; parametrise indirectly with a dict of config overrides."""
    overrides: dict[str, Any] = getattr(request, "param", None) or {}
    return github_sim_factory(**overrides)
