"""Cloud fixtures for the provisioner's contract tests: the simulator's cloud and a real Nova."""

from tests.testsupport.real_cloud import real_cloud  # noqa: F401
from tests.testsupport.sim_cloud import sim_cloud  # noqa: F401
