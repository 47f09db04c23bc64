"""A sandbox VM or a light VM boots the real bootstrap: runner download, one job, markers,
power-off; and it leaves nothing behind, on the host or in the process table."""

from __future__ import annotations

import ipaddress
import pwd
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.openstack.config import CloudConfig
from simulator.openstack.server import run_in_thread
from simulator.openstack.state import NETWORK_NAME
from tests.conftest import GitHubSim
from tests.simulator_sandbox.conftest import LABEL, World, leftovers


def _job(world: World, job_id: int) -> dict[str, object]:
    return next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)


def test_a_vm_runs_the_real_bootstrap_one_job_and_powers_off(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.2)
    world.boot("runner-1")

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

    job = _job(world, job_id)
    assert (job["state"], job["result"], job["runner_name"]) == (
        "completed",
        "succeeded",
        "runner-1",
    )
    assert world.runner("runner-1") is None  # ephemeral: removed with its job
    assert world.markers("runner-1") == [
        "SCALESET-RUNNER setup-complete runner=runner-1",
        "SCALESET-RUNNER run-complete runner=runner-1 exit=0",
    ]
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
    whats = [e.what for e in world.fleet.events if e.server == "runner-1"]
    assert whats == [
        "seen",
        "booting",
        "vm-started",
        "sshd-started",
        "setup-complete",
        "connected",
        "job-started",
        "run-complete",
        "powered-off",
    ]
    assert len(world.fleet.downloads) == 1
    assert world.fleet.downloads[0].endswith("actions-runner-linux-x64-2.330.0.tar.gz")
    output = world.fleet.output_log("runner-1")
    assert "Runner.Listener: job 1001 completed: succeeded" in output
    assert world.jit_configs["runner-1"] not in output  # the secret never reaches the log
    view = world.fleet.vm("runner-1")
    assert (view.phase, view.job_id, view.exit_code) == ("off", job_id, 0)
    assert leftovers(world.fleet, "runner-1") == {}


def test_nova_reports_the_vms_loopback_address(world: World) -> None:
    world.fleet.behave("runner-1", "hang")  # sshd only: the bootstrap would reload it meanwhile
    server_id = world.boot("runner-1")
    world.fleet.wait_for_event("sshd-started", "runner-1", timeout=30)
    vm = world.fleet.sandbox_vm("runner-1")

    response = world.nova.http.get(f"{world.nova.compute}/servers/{server_id}")
    [entry] = response.json()["server"]["addresses"][NETWORK_NAME]
    assert (entry["addr"], entry["version"], entry["OS-EXT-IPS:type"]) == (vm.address, 4, "fixed")
    assert ipaddress.IPv4Address(vm.address) in world.fleet.subnet
    assert ipaddress.IPv4Address(vm.address).is_loopback
    # The VM's own sshd answers there, on the fleet's port (22; light VMs 2222).
    assert vm.port == world.fleet.ssh_port == (22 if world.kind == "sandbox" else 2222)
    with socket.create_connection((vm.address, vm.port), timeout=5) as sock:
        assert sock.recv(4) == b"SSH-"


def test_a_failed_job_gives_exit_1(world: World) -> None:
    world.github.control.enqueue_jobs([LABEL], duration=0.05, result="failed")
    world.boot("runner-1")
    event = world.fleet.wait_for_event("run-complete", "runner-1", timeout=30)
    assert event.detail == "exit=1"
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)
    assert "SCALESET-RUNNER run-complete runner=runner-1 exit=1" in world.markers("runner-1")


def test_a_busy_vm_stays_up_until_its_job_ends(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])  # no duration: the test ends it
    world.boot("runner-1")
    world.fleet.wait_for_event("job-started", "runner-1", timeout=30)
    world.fleet.wait_idle_ticks(3)
    assert world.fleet.vm("runner-1").phase == "busy"
    assert world.cloud_control.server("runner-1").status == "ACTIVE"

    world.github.control.finish_job(job_id)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)
    assert world.fleet.vm("runner-1").exit_code == 0


def test_deleting_a_busy_server_kills_its_vm_and_its_runner_dies(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])
    server_id = world.boot("runner-1")
    world.fleet.wait_for_event("job-started", "runner-1", timeout=30)
    assert world.fleet.vm_processes("runner-1")  # (sshd,) the bootstrap, run.sh, the listener

    world.nova.delete(server_id)

    world.fleet.wait_for_event("runner-killed", "runner-1", timeout=10)
    world.fleet.wait_for_event("runner-offline", "runner-1", timeout=10)
    assert leftovers(world.fleet, "runner-1") == {}
    runner = world.runner("runner-1")
    assert runner is not None
    assert runner["state"] == "offline"
    job = _job(world, job_id)
    assert (job["state"], job["result"]) == ("completed", "failed")
    assert world.fleet.counters.died == 1


def test_a_server_shut_off_from_outside_loses_its_vm(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1", timeout=30)
    assert world.fleet.vm_processes("runner-1")

    world.cloud_control.set_server_status("runner-1", "SHUTOFF")

    world.fleet.wait_for_event("runner-killed", "runner-1", timeout=10)
    assert world.fleet.vm("runner-1").phase == "down"
    assert leftovers(world.fleet, "runner-1") == {}


def test_stop_kills_every_vm_and_leaves_no_mounts_or_directories(world: World) -> None:
    world.boot("runner-1")
    world.boot("runner-2")
    world.fleet.wait_for(lambda: world.fleet.counters.connected == 2, timeout=30)
    assert world.fleet.vm_processes("runner-1")
    assert world.fleet.vm_processes("runner-2")
    addresses = [world.fleet.sandbox_vm(n).address for n in ("runner-1", "runner-2")]
    root = world.fleet.root

    world.fleet.stop()

    assert leftovers(world.fleet, "runner-1", "runner-2") == {}
    for address in addresses:  # their sshd is gone with them
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, world.fleet.ssh_port), timeout=5)
    assert not root.exists()
    assert str(root) not in Path("/proc/self/mountinfo").read_text()


def test_the_bootstrap_changes_nothing_on_the_host(world: World) -> None:
    with pytest.raises(KeyError):
        pwd.getpwnam("sbxrunner")
    host_key = Path("/etc/ssh/ssh_host_ed25519_key")
    before = host_key.read_bytes() if host_key.exists() else None
    sentinels = Path("/var/lib/scaleset-runner")
    sentinels_existed = sentinels.exists()
    runner_dir_existed = Path("/opt/actions-runner").exists()
    world.github.control.enqueue_jobs([LABEL], duration=0.05)
    world.boot("runner-1", runner_user="sbxrunner")

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

    assert "SCALESET-RUNNER run-complete runner=runner-1 exit=0" in world.markers("runner-1")
    with pytest.raises(KeyError):
        # Sandbox: useradd ran in the VM's /etc only. Light: the runner is the simulator's user.
        pwd.getpwnam("sbxrunner")
    assert (host_key.read_bytes() if host_key.exists() else None) == before
    assert sentinels.exists() == sentinels_existed
    assert Path("/opt/actions-runner").exists() == runner_dir_existed
    if world.kind == "light":  # what the bootstrap wrote is in the VM's own directory
        root = world.fleet.sandbox_vm("runner-1").dir / "root"
        assert (root / "var/lib/scaleset-runner/run-complete").read_text() == "0\n"
        assert (root / "opt/actions-runner/run.sh").exists()
        assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().strip() == (
            world.host_keys["runner-1"].public_openssh
        )


def test_two_vms_run_two_jobs_side_by_side(world: World) -> None:
    jobs = world.github.control.enqueue_jobs([LABEL], count=2, duration=0.1)
    world.boot("runner-1")
    world.boot("runner-2")
    world.fleet.wait_for(lambda: world.fleet.counters.powered_off == 2, timeout=30)
    done = {j["id"]: j for j in world.github.control.state()["jobs"]}
    assert {(done[j]["state"], done[j]["result"]) for j in jobs} == {("completed", "succeeded")}
    assert {done[j]["runner_name"] for j in jobs} == {"runner-1", "runner-2"}
    addresses = {world.fleet.sandbox_vm(n).address for n in ("runner-1", "runner-2")}
    assert len(addresses) == 2


def test_the_command_prints_the_listener_settings_and_runs_until_sigterm(
    guest_kind: str, github_sim: GitHubSim
) -> None:
    with run_in_thread(CloudConfig()) as cloud:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator.sandbox",
                "--github-url",
                github_sim.base_url,
                "--cloud-url",
                cloud.base_url,
                "--subnet",
                "127.99.0.0/16",
                "--guest",
                guest_kind,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("simulator.sandbox running: VMs on 127.99.0.0/16"), first
            settings = dict(process.stdout.readline().strip().split("=", 1) for _ in range(3))
            # No runner settings: the listener's default takes the GitHub simulator's release.
            assert set(settings) == {
                "VM_SSH_USER",
                "VM_SSH_PRIVATE_KEY_PATH",
                "VM_SSH_PORT",
            }
            assert settings["VM_SSH_PORT"] == ("22" if guest_kind == "sandbox" else "2222")
            key_path = Path(settings["VM_SSH_PRIVATE_KEY_PATH"])
            assert key_path.exists()
            assert cloud.control.config()["fixed_subnet"] == "127.99.0.0/16"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert not key_path.exists()  # its temporary root is gone
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
