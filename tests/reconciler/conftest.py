from tests.reconciler.test_end_to_end import setup
from tests.testsupport.ssh_hosts import ssh_host_factory

__all__ = ["setup", "ssh_host_factory"]  # fixtures, re-exported for pytest
