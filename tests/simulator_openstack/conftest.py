"""Fixtures for driving the simulated cloud through real openstacksdk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openstack import connection

from simulator.openstack.control import CloudControl
from simulator.openstack.server import RunningCloud
from tests.simulator_openstack.helpers import Ids, connect, seeded_ids
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.sim_cloud import simulated_cloud


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[CloudTarget, RunningCloud]]:
    with simulated_cloud(tmp_path) as started:
        yield started


@pytest.fixture
def target(cloud: tuple[CloudTarget, RunningCloud]) -> CloudTarget:
    return cloud[0]


@pytest.fixture
def running(cloud: tuple[CloudTarget, RunningCloud]) -> RunningCloud:
    return cloud[1]


@pytest.fixture
def control(running: RunningCloud) -> CloudControl:
    return running.control


@pytest.fixture
def conn(target: CloudTarget) -> Iterator[connection.Connection]:
    """The application-credential cloud `sim`, as the listener would use it."""
    opened = connect(target.clouds_yaml, target.cloud_name)
    yield opened
    opened.close()


@pytest.fixture
def ids(conn: connection.Connection, target: CloudTarget) -> Ids:
    return seeded_ids(conn, target)


@pytest.fixture
def target_conn_factory(
    control: CloudControl, target: CloudTarget
) -> Iterator[connection.Connection]:
    """A connection made after the cloud was turned into an old one (max microversion 2.51)."""
    control.update_config(max_microversion="2.51")
    opened = connect(target.clouds_yaml, target.cloud_name)
    yield opened
    opened.close()
