"""End to end: the listener as a subprocess (env file, JSON log), the simulators as the world."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.e2e_world import E2EWorld
from tests.e2e.guests import GUESTS


@pytest.fixture
def world(tmp_path: Path) -> Iterator[E2EWorld]:
    with E2EWorld(tmp_path, guest_kind=GUESTS) as running:
        yield running
