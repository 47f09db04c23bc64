"""The listener's real SSH prober against sandbox VMs and light VMs, the VM created through
the real OpenStack provisioner and the pinned host key read back from the server's metadata."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from provisioners.base import ProbeOutcome, ProbeResult, RunnerVM, ServerSpec
from provisioners.bootstrap import BootstrapSpec, generate_host_key, render_user_data
from provisioners.naming import META_HOST_KEY, Ownership, ownership_metadata, parse_ownership
from provisioners.openstack import OpenStackProvisioner
from provisioners.ssh import SSHProbeConfig, SSHProber
from reconciler.reconcile import run_once
from scaleset_listener.dry_run import DryRunProvisioner, DryRunRegistry
from scaleset_listener.wiring import openstack_config
from simulator.sandbox import SandboxFleet
from tests.reconciler.test_end_to_end import Setup, admin_client
from tests.simulator_sandbox.conftest import PINNED_RUNNER, make_fleet

LABEL = "linux"


@pytest.fixture
def sandbox(guest_kind: str, setup: Setup) -> Iterator[SandboxFleet]:
    with make_fleet(guest_kind, setup.github.base_url, setup.control.base_url) as fleet:
        yield fleet


async def _boot(setup: Setup, fleet: SandboxFleet, name: str) -> RunnerVM:
    """What the listener's scaler does: a JIT config, the bootstrap, the server."""
    async with admin_client(setup) as client:
        jit = await client.generate_jit_config(setup.scale_set_id, name)
    key = generate_host_key(name)
    mirror = fleet.mirror_settings(PINNED_RUNNER)
    user_data = render_user_data(
        BootstrapSpec(
            runner_name=name,
            jit_config=jit.encoded_jit_config,
            runner_version=mirror["GITHUB_RUNNER_VERSION"],
            runner_download_url=mirror["RUNNER_DOWNLOAD_URL"],
            runner_sha256=mirror["RUNNER_SHA256"],
            labels=(LABEL,),
            ssh_host_key_private=key.private_openssh,
            ssh_host_key_public=key.public_openssh,
            probe_public_key=fleet.client_public_key,
        )
    )
    ownership = Ownership(setup.settings.effective_listener_instance_id, setup.scale_set_id)
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    try:
        return await provisioner.create(
            ServerSpec(
                name=name,
                user_data=user_data,
                tags=ownership.tags(),
                metadata=ownership_metadata(name, LABEL, datetime.now(UTC), key.public_openssh),
            )
        )
    finally:
        await provisioner.close()


def _prober(fleet: SandboxFleet) -> SSHProber:
    settings = fleet.listener_settings()
    return SSHProber(
        SSHProbeConfig.from_timeout(
            5.0,
            user=settings["VM_SSH_USER"],
            private_key_path=fleet.client_key_path,
            port=int(settings["VM_SSH_PORT"]),
        )
    )


async def _probe(fleet: SandboxFleet, vm: RunnerVM, pinned: str | None = None) -> ProbeResult:
    owned = parse_ownership(vm.tags, vm.metadata)
    assert owned is not None
    assert vm.address is not None
    prober = _prober(fleet)
    try:
        return await prober.probe(vm.address, pinned or owned.host_public_key)
    finally:
        await prober.close()


async def test_the_prober_sees_a_connected_runner_alive(
    setup: Setup, sandbox: SandboxFleet
) -> None:
    vm = await _boot(setup, sandbox, "linux-probe001")
    await asyncio.to_thread(sandbox.wait_for_event, "connected", "linux-probe001", 30)

    result = await _probe(sandbox, vm)

    assert result.outcome is ProbeOutcome.OK, result.detail
    assert (result.setup_complete, result.runner_alive, result.run_complete_exit_code) == (
        True,
        True,
        None,
    )
    assert result.setup_failed_reason is None
    assert result.host_key == " ".join(vm.metadata[META_HOST_KEY].split()[:2])


async def test_a_hung_boot_does_not_let_the_probe_in(setup: Setup, sandbox: SandboxFleet) -> None:
    """As on a stock image: before the bootstrap runs, no user lets the probe's key in (the key
    pair's key is the default user's; root login is refused), so the probe finds out nothing."""
    sandbox.behave("linux-hang0001", "hang")
    vm = await _boot(setup, sandbox, "linux-hang0001")
    await asyncio.to_thread(sandbox.wait_for_event, "sshd-started", "linux-hang0001", 30)

    result = await _probe(sandbox, vm)

    assert result.outcome is ProbeOutcome.AUTH_FAILED, result.detail
    assert (result.setup_complete, result.runner_alive) == (None, None)


async def test_the_prober_sees_a_wedged_runner_process_alive(
    setup: Setup, sandbox: SandboxFleet
) -> None:
    vm = await _boot(setup, sandbox, "linux-wedge001")
    await asyncio.to_thread(sandbox.wait_for_event, "connected", "linux-wedge001", 30)
    sandbox.crash_runner("linux-wedge001", power_off=False)  # offline, its process stopped
    await asyncio.to_thread(sandbox.wait_for_event, "runner-offline", "linux-wedge001", 30)

    result = await _probe(sandbox, vm)

    assert result.outcome is ProbeOutcome.OK, result.detail
    assert (result.setup_complete, result.runner_alive) == (True, True)


async def test_a_wrong_pinned_key_is_refused(setup: Setup, sandbox: SandboxFleet) -> None:
    # No bootstrap: on a sandbox VM it reloads sshd (SIGHUP, re-exec) after installing the host
    # key, and a probe in that moment is refused, as it would be on a real VM.
    sandbox.behave("linux-wrongkey", "hang")
    vm = await _boot(setup, sandbox, "linux-wrongkey")
    await asyncio.to_thread(sandbox.wait_for_event, "sshd-started", "linux-wrongkey", 30)

    result = await _probe(sandbox, vm, generate_host_key("other").public_openssh)

    assert result.outcome is ProbeOutcome.HOST_KEY_MISMATCH


async def test_the_reconciler_probes_sandbox_vms_at_their_reported_addresses(
    setup: Setup, sandbox: SandboxFleet
) -> None:
    """No address mapping: the cloud reports where each VM's sshd listens, and the key pinned
    from the metadata is the one the bootstrap installed."""
    sandbox.behave("linux-hang0001", "hang")
    await _boot(setup, sandbox, "linux-alive001")
    await _boot(setup, sandbox, "linux-hang0001")
    await asyncio.to_thread(sandbox.wait_for_event, "connected", "linux-alive001", 30)
    await asyncio.to_thread(sandbox.wait_for_event, "sshd-started", "linux-hang0001", 30)
    prober = _prober(sandbox)
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    try:
        async with admin_client(setup) as client:
            report = await run_once(
                provisioner=DryRunProvisioner(provisioner),
                registry=DryRunRegistry(client),
                prober=prober,
                ownership=Ownership(
                    setup.settings.effective_listener_instance_id, setup.scale_set_id
                ),
                boot_timeout=timedelta(minutes=10),
            )
    finally:
        await prober.close()
        await provisioner.close()

    rows = {row.runner_name: row for row in report.rows}
    assert {name: row.decision.action.value for name, row in rows.items()} == {
        "linux-alive001": "adopt_idle",
        "linux-hang0001": "adopt_booting",
    }
    alive, hung = rows["linux-alive001"].probe, rows["linux-hang0001"].probe
    assert alive is not None
    assert hung is not None
    assert (alive.outcome, alive.setup_complete, alive.runner_alive) == (
        ProbeOutcome.OK,
        True,
        True,
    )
    # Cloud-init never ran the bootstrap, so nothing lets the probe in: age decides.
    assert (hung.outcome, hung.setup_complete) == (ProbeOutcome.AUTH_FAILED, None)
