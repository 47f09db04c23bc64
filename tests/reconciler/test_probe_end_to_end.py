"""The reconciler with the real SSH prober: the cloud and the runner list from the simulators,
the VMs played by real sshd test hosts. The simulated cloud reports 10.0.x.x addresses, so the
test wiring maps each VM's address to its sshd host (`MappedProber`); the pinned host key is the
one written in the server metadata, as in production."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from provisioners.base import HostKeyPolicy, ProbeOutcome, ServerSpec
from provisioners.naming import META_HOST_KEY, Ownership
from provisioners.openstack import OpenStackProvisioner
from provisioners.ssh import SSHProbeConfig, SSHProber
from reconciler.policy import Action
from reconciler.reconcile import ReconcileReport, run_once
from scaleset_listener.config import ScaleSetSpec
from scaleset_listener.dry_run import DryRunProvisioner, DryRunRegistry
from scaleset_listener.vm_scaler.ledger import Adoption, Phase, adoptions
from scaleset_listener.vm_scaler.loop import VMScaler
from scaleset_listener.vm_scaler.plan import Lifecycle
from scaleset_listener.wire import Statistics
from scaleset_listener.wiring import openstack_config
from tests.reconciler.test_end_to_end import (
    Setup,
    admin_client,
    create_vm,
    make_busy,
    world_state,
)
from tests.ssh.test_worker_processes import wait_in_hand
from tests.testsupport.ssh_hosts import HostSpec, MappedProber, SSHHost, SSHHostFactory


def make_prober(f: SSHHostFactory, policy: HostKeyPolicy = HostKeyPolicy.PINNED) -> SSHProber:
    return SSHProber(
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
            host_key_policy=policy,
        )
    )


async def test_probed_vms_are_adopted_cleaned_up_or_deleted_per_the_table(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    f = ssh_host_factory
    alive, done, crashed, booting, stuck, failed = f.start_many(
        [
            HostSpec.runner_alive(),
            HostSpec.run_complete(0),
            HostSpec.runner_crashed(),
            HostSpec.setup_not_complete(),
            HostSpec.setup_not_complete(),
            HostSpec.setup_failed("runner download failed"),
        ]
    )
    wrong_key = f.wrong_key_host()
    hour, minute = timedelta(hours=1), timedelta(minutes=1)
    plan = {
        "linux-alive001": (alive, hour, "adopt_idle"),
        "linux-done0001": (done, hour, "clean_up"),
        "linux-crash001": (crashed, minute, "delete"),
        "linux-boot0001": (booting, minute, "adopt_booting"),
        "linux-stuck001": (stuck, hour, "delete"),
        "linux-fail0001": (failed, minute, "delete"),
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
    prober = make_prober(f)
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    try:
        async with admin_client(setup) as client:
            ownership = Ownership(setup.settings.effective_listener_instance_id, setup.scale_set_id)
            dry = await run_once(
                provisioner=DryRunProvisioner(provisioner),
                registry=DryRunRegistry(client),
                prober=MappedProber(prober, hosts),
                ownership=ownership,
                boot_timeout=timedelta(minutes=10),
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


@contextlib.asynccontextmanager
async def reconciling(
    setup: Setup, prober: MappedProber
) -> AsyncIterator[Callable[[bool], Awaitable[ReconcileReport]]]:
    """`await reconcile(dry_run)`: one pass with the real prober, provisioner and Actions client."""
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    try:
        async with admin_client(setup) as client:

            async def reconcile(dry_run: bool) -> ReconcileReport:
                return await run_once(
                    provisioner=DryRunProvisioner(provisioner) if dry_run else provisioner,
                    registry=DryRunRegistry(client) if dry_run else client,
                    prober=prober,
                    ownership=Ownership(
                        setup.settings.effective_listener_instance_id, setup.scale_set_id
                    ),
                    boot_timeout=timedelta(minutes=10),
                )

            yield reconcile
    finally:
        await prober.inner.close()
        await provisioner.close()


def key_of(openssh_line: str | None) -> str:
    """`<type> <base64>` of an OpenSSH public key line (without its comment)."""
    assert openssh_line is not None
    return " ".join(openssh_line.split()[:2])


def recorded_host_key(setup: Setup, name: str) -> str | None:
    return setup.control.server(name).metadata.get(META_HOST_KEY)


async def test_accept_new_records_the_learned_host_key_so_that_later_probes_pin_it(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    f = ssh_host_factory
    vm_host, other_machine = f.start_many([HostSpec.runner_alive(), HostSpec.runner_alive()])
    name = "linux-tofu0001"
    async with admin_client(setup) as client:
        jit = await client.generate_jit_config(setup.scale_set_id, name)
    setup.github.control.connect_runner(jit.encoded_jit_config)
    # An image that cannot take an injected host key: nothing is recorded at creation.
    vm = await create_vm(setup, name, timedelta(hours=1), host_key=None)
    assert vm.address is not None
    prober = MappedProber(make_prober(f, HostKeyPolicy.ACCEPT_NEW), {vm.address: vm_host})
    async with reconciling(setup, prober) as reconcile:
        dry = await reconcile(True)
        (row,) = dry.rows
        assert row.decision.action is Action.ADOPT_IDLE
        assert row.learned_host_key == key_of(vm_host.public_key)
        # The table says what a real pass would do; the dry run's cloud records nothing.
        assert "host key learned, recorded" in dry.table()
        assert recorded_host_key(setup, name) is None

        first = await reconcile(False)
        (row,) = first.rows
        assert (row.decision.action, row.host_key_recorded) == (Action.ADOPT_IDLE, True)
        assert recorded_host_key(setup, name) == key_of(vm_host.public_key)

        second = await reconcile(False)
        (row,) = second.rows
        assert prober.pinned[vm.address] == key_of(vm_host.public_key)
        assert row.probe is not None
        assert row.probe.reachable
        assert (row.decision.action, row.learned_host_key) == (Action.ADOPT_IDLE, None)

        # The address now answers with another machine: refused before auth, reported, and
        # the recorded key is never replaced by the stranger's.
        prober.hosts[vm.address] = other_machine
        third = await reconcile(True)
        (row,) = third.rows
        assert row.probe is not None
        assert row.probe.outcome is ProbeOutcome.HOST_KEY_MISMATCH
        assert row.learned_host_key is None
        assert "host_key_mismatch" in third.table()
        assert recorded_host_key(setup, name) == key_of(vm_host.public_key)
        # Per the table: unreachable, not busy, past BOOT_TIMEOUT.
        assert row.decision.action is Action.DELETE


async def test_pinned_policy_never_contacts_a_server_without_a_recorded_key(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    f = ssh_host_factory
    vm_host = f.start(HostSpec.runner_alive())
    name = "linux-nokey001"
    vm = await create_vm(setup, name, timedelta(minutes=1), host_key=None)
    assert vm.address is not None
    prober = MappedProber(make_prober(f), {vm.address: vm_host})
    async with admin_client(setup) as client:
        jit = await client.generate_jit_config(setup.scale_set_id, name)
    setup.github.control.connect_runner(jit.encoded_jit_config)
    async with reconciling(setup, prober) as reconcile:
        (row,) = (await reconcile(False)).rows
    assert row.probe is not None
    assert row.probe.outcome is ProbeOutcome.HOST_KEY_UNKNOWN
    assert row.learned_host_key is None
    assert recorded_host_key(setup, name) is None
    assert row.decision.action is Action.ADOPT_BOOTING


async def test_a_probed_live_busy_runner_is_adopted_busy_and_no_second_vm_is_made(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    f = ssh_host_factory
    vm_host = f.start(HostSpec.runner_alive())
    name = "linux-busy0001"
    async with admin_client(setup) as client:
        jit = await client.generate_jit_config(setup.scale_set_id, name)
        await make_busy(setup, client, jit.encoded_jit_config)
    vm = await create_vm(setup, name, timedelta(hours=3), vm_host.pinned_public_key)
    assert vm.address is not None
    prober = MappedProber(make_prober(f), {vm.address: vm_host})
    provisioner = OpenStackProvisioner(
        dataclasses.replace(openstack_config(setup.settings), poll_interval=0.05)
    )
    reports: list[ReconcileReport] = []
    try:
        async with admin_client(setup) as client:

            async def reconcile(scale_set_id: int) -> list[Adoption]:
                report = await run_once(
                    provisioner=provisioner,
                    registry=client,
                    prober=prober,
                    ownership=Ownership(
                        setup.settings.effective_listener_instance_id, scale_set_id
                    ),
                    boot_timeout=timedelta(minutes=10),
                )
                reports.append(report)
                return adoptions(report.rows)

            def no_spec(*_: object) -> ServerSpec:
                raise AssertionError("the scaler must not create a VM")

            scaler = VMScaler(
                ScaleSetSpec(name="linux", max_runners=5),
                client,
                provisioner,
                no_spec,
                setup.settings.effective_listener_instance_id,
                Lifecycle(boot_timeout=600.0),
                asyncio.Semaphore(2),
                reconcile=reconcile,
            )
            scaler.bind_scale_set(setup.scale_set_id)
            await scaler.prepare(setup.scale_set_id)
            # The listener's demand: the one assigned job, which this runner is running.
            await scaler.handle_desired_runner_count(1, Statistics(total_assigned_jobs=1))
            await scaler.converge()
            await scaler.sweep()
            await scaler.converge()
    finally:
        await prober.inner.close()
        await provisioner.close()
    (row,) = reports[0].rows
    assert row.probe is not None
    assert row.probe.runner_alive is True
    assert row.decision.action is Action.ADOPT_BUSY
    assert "runner process alive" in row.decision.reason
    assert [(r.name, r.phase) for r in scaler.owned()] == [(name, Phase.BUSY)]
    assert scaler.counters.created == 0
    servers, runners = world_state(setup)
    assert [n for n, _ in servers] == [name]
    assert [(n, state) for n, state, _ in runners] == [(name, "busy")]


async def test_powered_off_vms_are_cleaned_up_unless_github_still_says_busy(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    f = ssh_host_factory
    hour = timedelta(hours=1)
    # SHUTOFF VMs are not probed (nothing answers); these hosts would say "alive" if asked.
    done, off_unregistered, off_busy = f.start_many([HostSpec.run_complete(0)] * 3)
    async with admin_client(setup) as client:
        jit_done = await client.generate_jit_config(setup.scale_set_id, "linux-off00001")
        jit_busy = await client.generate_jit_config(setup.scale_set_id, "linux-offbusy1")
        await make_busy(setup, client, jit_busy.encoded_jit_config)
    setup.github.control.connect_runner(jit_done.encoded_jit_config)
    hosts: dict[str, SSHHost] = {}
    plan = {
        # Its run ended: run-complete on the console, powered itself off, registration left.
        "linux-off00001": (done, "clean_up"),
        # Powered off without run-complete and without a registration.
        "linux-off00002": (off_unregistered, "clean_up"),
        # Powered off while GitHub still reports its runner busy: never deleted on that.
        "linux-offbusy1": (off_busy, "adopt_busy"),
    }
    for name, (host, _) in plan.items():
        vm = await create_vm(setup, name, hour, host.pinned_public_key)
        assert vm.address is not None
        hosts[vm.address] = host
        if name == "linux-off00001":
            setup.control.append_console(
                vm.id, f"SCALESET-RUNNER run-complete runner={name} exit=0"
            )
        setup.control.set_server_status(vm.id, "SHUTOFF")
    prober = MappedProber(make_prober(f), hosts)
    async with reconciling(setup, prober) as reconcile:
        before = world_state(setup)
        dry = await reconcile(True)
        assert world_state(setup) == before
        assert {r.runner_name: r.decision.action.value for r in dry.rows} == {
            name: action for name, (_, action) in plan.items()
        }
        report = await reconcile(False)
    assert prober.pinned == {}  # nothing was probed
    assert all(row.error is None for row in report.rows)
    servers, runners = world_state(setup)
    assert servers == [("linux-offbusy1", "SHUTOFF")]
    assert [(n, state) for n, state, _ in runners] == [("linux-offbusy1", "busy")]


async def test_a_probe_worker_process_that_dies_mid_pass_never_deletes_a_busy_runner(
    setup: Setup, ssh_host_factory: SSHHostFactory
) -> None:
    """The probes' worker process is killed while it holds both VMs' probes (their report
    command stalls): each VM is decided as unreachable, so GitHub's busy flag and the age
    rule keep them both, and the pass does not wait out any probe timeout."""
    f = ssh_host_factory
    busy_host, young_host = f.start_many(
        [HostSpec(force_command="sleep 120", label="stall") for _ in range(2)]
    )
    busy_name, young_name = "linux-busy0002", "linux-young002"
    async with admin_client(setup) as client:
        jit = await client.generate_jit_config(setup.scale_set_id, busy_name)
        await make_busy(setup, client, jit.encoded_jit_config)
        await client.generate_jit_config(setup.scale_set_id, young_name)  # offline: booting
    busy = await create_vm(setup, busy_name, timedelta(hours=3), busy_host.pinned_public_key)
    young = await create_vm(setup, young_name, timedelta(minutes=1), young_host.pinned_public_key)
    assert busy.address is not None
    assert young.address is not None
    inner = SSHProber(
        dataclasses.replace(
            make_prober(f).config, worker_processes=1, command_timeout=60, deadline=120
        )
    )
    prober = MappedProber(inner, {busy.address: busy_host, young.address: young_host})

    async def kill_the_worker_once_it_holds_both() -> None:
        os.kill(await wait_in_hand(inner, count=2), signal.SIGKILL)

    async with reconciling(setup, prober) as reconcile:
        killer = asyncio.create_task(kill_the_worker_once_it_holds_both())
        report = await asyncio.wait_for(reconcile(False), timeout=30)
        await asyncio.wait_for(killer, timeout=11)
    rows = {row.runner_name: row for row in report.rows}
    for row in rows.values():
        assert row.probe is not None
        assert row.probe.outcome is ProbeOutcome.UNREACHABLE, row.probe
        assert row.probe.runner_alive is None
    assert rows[busy_name].decision.action is Action.ADOPT_BUSY
    assert rows[young_name].decision.action is Action.ADOPT_BOOTING
    servers, _ = world_state(setup)
    assert sorted(name for name, _ in servers) == [busy_name, young_name]
