"""Cloud fixtures for the provisioner's contract tests: the simulator's cloud and a real Nova,
and `cloud`, which runs a test against each (the real one marked real_openstack)."""

import pytest

from tests.testsupport.clouds import CloudTarget
from tests.testsupport.real_cloud import real_cloud  # noqa: F401
from tests.testsupport.sim_cloud import sim_cloud  # noqa: F401


@pytest.fixture(
    params=[
        pytest.param("simulator", id="simulator"),
        pytest.param("real", id="real-nova", marks=pytest.mark.real_openstack),
    ]
)
def cloud(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CloudTarget:
    target: CloudTarget = request.getfixturevalue(
        "sim_cloud" if request.param == "simulator" else "real_cloud"
    )
    for name, value in target.env.items():
        monkeypatch.setenv(name, value)
    return target
