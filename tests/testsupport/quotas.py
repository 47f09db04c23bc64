"""The project's quota and servers, on either cloud a test runs against (tests/testsupport/clouds).

Tightening the quota goes through the control API on the simulator and through the admin's
os-quota-sets on the real Nova (tests/real_openstack), put back to the defaults afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from openstack import connection
from openstack.config import loader

from simulator.openstack.control import CloudControl
from tests.testsupport.clouds import CloudTarget
from tests.testsupport.real_cloud import stack_info


def _connect(cloud: CloudTarget, name: str) -> connection.Connection:
    # Only the target's clouds.yaml, and no OS_* variable of the caller's environment.
    config = loader.OpenStackConfig(config_files=[str(cloud.clouds_yaml)], load_envvars=False)
    return connection.Connection(config=config.get_one(cloud=name))


@contextlib.contextmanager
def instance_quota(cloud: CloudTarget, limit: int) -> Iterator[None]:
    """The project's instance quota set to `limit` for the block, then back to the default."""
    if cloud.control_url is not None:
        with CloudControl(cloud.control_url) as control:
            control.set_quotas(instances=limit)
            yield
        return
    demo = _connect(cloud, cloud.cloud_name)
    admin = _connect(cloud, str(stack_info()["admin_cloud"]))
    try:
        project = demo.current_project_id
        path = f"/os-quota-sets/{project}"
        answer = admin.compute.put(path, json={"quota_set": {"instances": limit}})
        assert answer.status_code == 200, answer.text
        try:
            yield
        finally:
            assert admin.compute.delete(path).status_code == 202
    finally:
        admin.close()
        demo.close()


def servers(cloud: CloudTarget) -> int:
    """How many servers the project has (whoever made them)."""
    with contextlib.closing(_connect(cloud, cloud.cloud_name)) as conn:
        return len(list(conn.compute.servers()))
