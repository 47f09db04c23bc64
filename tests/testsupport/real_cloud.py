"""The real-Nova cloud for the contract tests: the stack that tests/real_openstack/up starts.

The stack (Keystone, Placement, Glance, Neutron, Nova with the fake virt driver, RabbitMQ, all on
127.0.0.1) lives in a scratch folder, ``$REAL_OPENSTACK_DIR`` (default
/var/tmp/scaleset-real-openstack). Its start script seeds a demo project and writes
``etc/clouds.yaml`` (cloud ``osk-demo``: an application credential of that project) and
``etc/real_cloud.json`` (the names of the seeded image, flavor, network, security group and key
pair), which this fixture reads.

When the stack is not running the fixture skips, unless ``REQUIRE_REAL_OPENSTACK=1`` (CI), where
it fails: a CI run must not pass by skipping the real tier.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.testsupport.clouds import CloudTarget

# A fixed, documented place that the stack scripts share with this fixture (not a temp file).
DEFAULT_SCRATCH = Path("/var/tmp/scaleset-real-openstack")  # noqa: S108
HOW_TO_START = "run tests/real_openstack/up"
# The APIs that must answer (port, path of the version document, expected status).
_PROBES = (("keystone", 5000, "/v3", 200), ("nova-api", 8774, "/", 200))


def scratch_dir() -> Path:
    return Path(os.environ.get("REAL_OPENSTACK_DIR", str(DEFAULT_SCRATCH)))


def stack_info(scratch: Path | None = None) -> dict[str, Any]:
    """The names written by the start script (etc/real_cloud.json), including the admin cloud."""
    path = (scratch or scratch_dir()) / "etc" / "real_cloud.json"
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def _answers(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def not_ready_reason(scratch: Path | None = None) -> str | None:
    """Why the stack cannot serve tests now, or None when it can."""
    scratch = scratch or scratch_dir()
    if not (scratch / "run" / "ready").exists():
        return f"no ready marker in {scratch}/run"
    if not (scratch / "etc" / "real_cloud.json").exists():
        return f"{scratch}/etc/real_cloud.json is missing"
    for name, port, path, expected in _PROBES:
        status = _answers(port, path)
        if status != expected:
            return f"{name} on 127.0.0.1:{port} answers {status}, expected {expected}"
    return None


@pytest.fixture(scope="session")
def real_cloud() -> CloudTarget:
    scratch = scratch_dir()
    reason = not_ready_reason(scratch)
    if reason is not None:
        message = f"real OpenStack not running: {HOW_TO_START} ({reason})"
        if os.environ.get("REQUIRE_REAL_OPENSTACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    info = stack_info(scratch)
    clouds_yaml = Path(info["clouds_yaml"])
    return CloudTarget(
        kind="real",
        clouds_yaml=clouds_yaml,
        cloud_name=info["cloud"],
        image=info["image"],
        flavor=info["flavor"],
        network=info["network"],
        security_group=info["security_group"],
        keypair=info["keypair"],
        supports_boot_from_volume=False,
        supports_floating_ips=False,
        env={"OS_CLIENT_CONFIG_FILE": str(clouds_yaml), "OS_CLOUD": info["cloud"]},
    )
