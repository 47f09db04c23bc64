"""Fixtures for the simulator's own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import GitHubSim
from tests.simulator.helpers import Actions


@pytest.fixture
def actions(github_sim: GitHubSim) -> Iterator[Actions]:
    client = Actions(github_sim)
    yield client
    client.close()
