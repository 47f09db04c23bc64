"""Settings -> ServerSpec -> a server on the simulator's cloud, with the rendered bootstrap."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime

import pytest

from provisioners.bootstrap import generate_host_key
from provisioners.naming import Ownership, parse_ownership
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener.config import Settings
from scaleset_listener.runner_versions import pinned_release
from scaleset_listener.wiring import missing_cloud_settings, openstack_config, server_spec
from simulator.openstack.control import CloudControl
from tests.testsupport.clouds import CloudTarget

RUNNER = pinned_release("2.331.0", "https://mirror.example/{version}/{arch}.tgz", "c" * 64)


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "github_url": "https://github.com/acme",
        "github_token": "ghp_x",
        "runners": [{"name": "gpu", "flavor": "m1.large"}],
        "openstack_image": "ubuntu-24.04",
        "openstack_flavor": "m1.small",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_missing_cloud_settings_are_named() -> None:
    assert missing_cloud_settings(settings()) == []
    bare = [{"name": "gpu"}]
    assert missing_cloud_settings(
        settings(openstack_image="", openstack_flavor="", runners=bare)
    ) == [
        "OPENSTACK_IMAGE",
        "OPENSTACK_FLAVOR",
    ]
    per_set = [{"name": "gpu", "image": "i", "flavor": "f"}]
    assert missing_cloud_settings(settings(openstack_image="", runners=per_set)) == []


async def test_a_runner_server_boots_with_its_bootstrap_ownership_and_overrides(
    sim_cloud: CloudTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in sim_cloud.env.items():
        monkeypatch.setenv(name, value)
    configured = settings(openstack_network=sim_cloud.network, provision_concurrency=2)
    config = openstack_config(configured)
    assert config.max_workers == 2
    host_key = generate_host_key()
    ownership = Ownership("prod", 12)
    spec = server_spec(
        configured,
        configured.runners[0],
        ownership,
        "gpu-0123abcd",
        "SECRET-JIT-CONFIG",
        host_key,
        datetime.now(UTC),
        RUNNER,
    )
    assert spec.flavor == "m1.large"
    assert "SECRET-JIT-CONFIG" not in repr(spec)
    provisioner = OpenStackProvisioner(dataclasses.replace(config, poll_interval=0.05))
    try:
        vm = await provisioner.create(spec)
        assert sim_cloud.control_url is not None
        with CloudControl(sim_cloud.control_url) as control:
            server = control.server(vm.id)
        assert server.flavor == "m1.large"
        assert server.user_data is not None
        script = server.user_data
        if not script.startswith("#!"):
            script = base64.b64decode(script).decode()
        assert script.startswith("#!")
        assert "gpu-0123abcd" in script
        assert "SECRET-JIT-CONFIG" in script
        # The runner release is the one handed in, per architecture.
        assert "RUNNER_VERSION=2.331.0\n" in script
        assert "x64) url=https://mirror.example/2.331.0/x64.tgz sha256=" + "c" * 64 in script
        info = parse_ownership(vm.tags, vm.metadata)
        assert info is not None
        assert info.ownership == ownership
        assert info.host_public_key == host_key.public_openssh
        await provisioner.delete(vm.id)
    finally:
        await provisioner.close()


def test_with_accept_new_no_host_key_is_injected_or_recorded() -> None:
    host_key = generate_host_key()
    for policy, expect_key in (("pinned", True), ("accept-new", False)):
        configured = settings(ssh_host_key_policy=policy)
        spec = server_spec(
            configured,
            configured.runners[0],
            Ownership("prod", 12),
            "gpu-0123abcd",
            "SECRET-JIT-CONFIG",
            host_key,
            datetime.now(UTC),
            RUNNER,
        )
        info = parse_ownership(spec.tags, spec.metadata)
        assert info is not None
        assert (info.host_public_key == host_key.public_openssh) is expect_key
        assert (info.host_public_key is None) is not expect_key
        assert (host_key.public_openssh.split()[1] in spec.user_data.decode()) is expect_key


def test_the_safety_net_timers_reach_the_bootstrap_in_whole_seconds() -> None:
    configured = settings(
        idle_runner_timeout=100.5, max_runner_lifetime=7200.0, vm_lifetime_grace=0.5
    )
    spec = server_spec(
        configured,
        configured.runners[0],
        Ownership("prod", 12),
        "gpu-0123abcd",
        "SECRET-JIT-CONFIG",
        generate_host_key(),
        datetime.now(UTC),
        RUNNER,
    )
    script = spec.user_data.decode()
    assert "IDLE_SHUTDOWN=302\n" in script  # 3 x 100.5 s, rounded up
    assert "LIFETIME_SHUTDOWN=7201\n" in script
