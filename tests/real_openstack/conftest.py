"""The real-OpenStack tier's own tests use the same fixture as the contract tests, plus the
simulated GitHub and the real cloud's environment that the listener-level tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulator.github.config import SimulatorConfig
from simulator.github.server import RunningSimulator
from simulator.github.server import run_in_thread as run_github
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.real_cloud import real_cloud  # noqa: F401


@pytest.fixture
def github() -> Iterator[RunningSimulator]:
    with run_github(SimulatorConfig(long_poll_timeout=0.2)) as running:
        yield running


@pytest.fixture
def cloud(real_cloud: CloudTarget, monkeypatch: pytest.MonkeyPatch) -> CloudTarget:  # noqa: F811
    """The real cloud, its OS_* variables set for openstacksdk."""
    for name, value in real_cloud.env.items():
        monkeypatch.setenv(name, value)
    return real_cloud
