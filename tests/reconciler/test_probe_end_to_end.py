"""The reconciler with the real SSH prober: the cloud and the runner list from the simulators,
the VMs played by real sshd test hosts. The simulated cloud reports 10.0.x.x addresses, so the
test wiring maps each VM's address to its sshd host (`MappedProber`); the pinned host key is the
one written in the server metadata, as in production."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from provisioners.naming import Ownership
from provisioners.openstack import OpenStackProvisioner
from provisioners.ssh import SSHProbeConfig, SSHProber
from reconciler.reconcile import run_once
from scaleset_listener.cloud import openstack_config
from tests.reconciler.test_end_to_end import Setup, admin_client, create_vm, world_state
from tests.testsupport.ssh_hosts import HostSpec, MappedProber, SSHHost, SSHHostFactory


async def test_probed_vms_are_adopted_cleaned_up_or_deleted_per_the_table(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    f = ssh_host_factory
    alive, done, crashed, booting = f.start_many(
        [
            HostSpec.runner_alive(),
            HostSpec.run_complete(0),
            HostSpec.runner_crashed(),
            HostSpec.setup_not_complete(),
        ]
    )
    wrong_key = f.wrong_key_host()
    hour, minute = timedelta(hours=1), timedelta(minutes=1)
    plan = {
        "linux-alive001": (alive, hour, "adopt_idle"),
        "linux-done0001": (done, hour, "clean_up"),
        "linux-crash001": (crashed, minute, "delete"),
        "linux-boot0001": (booting, minute, "adopt_booting"),
        "linux-wrongkey": (wrong_key, hour, "delete"),
    }
    async with admin_client(setup) as client:
        for name in plan:
            jit = await client.generate_jit_config(setup.scale_set_id, name)
            if name == "linux-alive001":
                setup.github.control.connect_runner(jit.encoded_jit_config)
    hosts: dict[str, SSHHost] = {}
    for name, (host, age, _) in plan.items():
        vm = await create_vm(setup, name, age, host.pinned_public_key)
        assert vm.address is not None
        hosts[vm.address] = host
    prober = SSHProber(
        SSHProbeConfig(
            user=f.user,
            private_key_path=f.client_key_path,
            connect_timeout=1.0,
            banner_timeout=1.0,
            auth_timeout=1.0,
            command_timeout=1.0,
            deadline=5.0,
            sentinel_dir=f.sentinel_dir,
            port=f.port,
        )
    )
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    try:
        async with admin_client(setup) as client:
            ownership = Ownership(setup.settings.effective_listener_instance_id, setup.scale_set_id)
            dry = await run_once(
                provisioner=provisioner,
                registry=client,
                prober=MappedProber(prober, hosts),
                ownership=ownership,
                boot_timeout=timedelta(minutes=10),
                dry_run=True,
            )
            before = world_state(setup)
            assert {r.runner_name: r.decision.action.value for r in dry.rows} == {
                name: action for name, (_, _, action) in plan.items()
            }
            assert world_state(setup) == before
            report = await run_once(
                provisioner=provisioner,
                registry=client,
                prober=MappedProber(prober, hosts),
                ownership=ownership,
                boot_timeout=timedelta(minutes=10),
                concurrency=4,
            )
    finally:
        await prober.close()
        await provisioner.close()
    probes = {r.runner_name: str(r.probe.outcome) if r.probe else None for r in report.rows}
    assert probes["linux-wrongkey"] == "host_key_mismatch"
    assert probes["linux-alive001"] == "ok"
    servers, runners = world_state(setup)
    assert [name for name, _ in servers] == ["linux-alive001", "linux-boot0001"]
    assert sorted(name for name, _, _ in runners) == ["linux-alive001", "linux-boot0001"]
