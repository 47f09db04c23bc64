"""What only light VMs have: their paramiko sshd, the per-VM `pgrep`, the refusal to run a
user_data that is not the default bootstrap, the light VM's own `curl` for hosts without one."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import paramiko
import pytest

from provisioners.base import ProbeOutcome, ProbeResult
from provisioners.sentinels import parse_report
from provisioners.ssh import SSHProbeConfig, SSHProber
from simulator.sandbox import SandboxConfig
from simulator.sandbox.fleet import write_key_pair
from tests.simulator_sandbox.conftest import FAST_SANDBOX, LABEL, World

SENTINELS = "var/lib/scaleset-runner"


@pytest.fixture
def guest_kind() -> str:
    return "light"


def _root(world: World, name: str) -> Path:
    return world.fleet.sandbox_vm(name).dir / "root"


async def _probe(
    world: World, name: str, *, user: str | None = None, key: Path | None = None
) -> ProbeResult:
    vm = world.fleet.sandbox_vm(name)
    prober = SSHProber(
        SSHProbeConfig.from_timeout(
            5.0,
            user=user or world.fleet.login_user,
            private_key_path=key or world.fleet.client_key_path,
            port=vm.port,
        )
    )
    try:
        return await prober.probe(vm.address, world.host_keys[name].public_openssh)
    finally:
        await prober.close()


async def test_the_probe_gets_in_only_through_the_bootstraps_entry(world: World) -> None:
    world.fleet.behave("runner-1", "hang")  # cloud-init never runs the bootstrap
    world.boot("runner-1")
    world.boot("runner-2")
    world.fleet.wait_for_event("sshd-started", "runner-1", timeout=30)
    world.fleet.wait_for_event("setup-complete", "runner-2", timeout=30)
    with tempfile.TemporaryDirectory() as scratch:
        other_key = Path(scratch) / "other"
        write_key_pair(other_key, "someone-else")
        wrong_key = await _probe(world, "runner-2", key=other_key)

    no_entry = await _probe(world, "runner-1")
    as_root = await _probe(world, "runner-2", user="root")
    wrong_user = await _probe(world, "runner-2", user="someone-else")
    right = await _probe(world, "runner-2")
    # The key pair's key lets the image's default user in, as on a stock image.
    default_user = await _probe(world, "runner-2", user="ubuntu")

    for refused in (no_entry, as_root, wrong_user, wrong_key):
        assert refused.outcome is ProbeOutcome.AUTH_FAILED, refused.detail
    assert right.outcome is ProbeOutcome.OK, right.detail
    assert right.setup_complete is True
    assert right.host_key == " ".join(world.host_keys["runner-2"].public_openssh.split()[:2])
    assert default_user.outcome is ProbeOutcome.OK, default_user.detail


def test_the_probe_key_runs_the_forced_report_whatever_it_asks(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("setup-complete", "runner-1", timeout=30)
    vm = world.fleet.sandbox_vm("runner-1")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 (a test VM)
    try:
        client.connect(
            vm.address,
            port=vm.port,
            username=world.fleet.login_user,
            key_filename=str(world.fleet.client_key_path),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        _, stdout, _ = client.exec_command("echo pwned; id", timeout=10)
        output = stdout.read().decode()
        with pytest.raises(paramiko.SSHException):
            client.get_transport().open_session(timeout=10).get_pty()  # type: ignore[union-attr]
        with pytest.raises(paramiko.ChannelException):
            client.get_transport().open_channel(  # type: ignore[union-attr]
                "direct-tcpip", ("127.0.0.1", vm.port), ("127.0.0.1", 0), timeout=10
            )
    finally:
        client.close()

    report = parse_report(output)
    assert report.setup_complete
    assert "pwned" not in output


async def test_the_probe_reads_the_vms_own_sentinels_and_sees_only_its_own_processes(
    world: World,
) -> None:
    world.github.control.enqueue_jobs([LABEL])  # no duration: it runs until the test ends
    world.fleet.behave("runner-2", "hang")
    world.boot("runner-1")
    world.boot("runner-2")
    world.fleet.wait_for_event("job-started", "runner-1", timeout=30)
    world.fleet.wait_for_event("sshd-started", "runner-2", timeout=30)
    # Without runner-started the probe falls back to `pgrep -x Runner.Listener`: runner-1's
    # runs on this host, but only in runner-1's session.
    (_root(world, "runner-1") / SENTINELS / "runner-started").unlink()
    (_root(world, "runner-2") / SENTINELS).mkdir(parents=True)
    (_root(world, "runner-2") / SENTINELS / "setup-complete").write_text("2026-12-02T06:00:00Z\n")

    busy = await _probe(world, "runner-1")
    # runner-2's bootstrap never ran, so no probe user: the key pair's default user reads it.
    hung = await _probe(world, "runner-2", user="ubuntu")

    assert busy.outcome is ProbeOutcome.OK, busy.detail
    assert (busy.setup_complete, busy.runner_alive) == (True, True)
    assert "runner process runs" in busy.detail
    assert hung.outcome is ProbeOutcome.OK, hung.detail
    assert (hung.setup_complete, hung.runner_alive) == (True, False)
    assert "no runner process" in hung.detail


def test_a_user_data_that_is_not_the_default_bootstrap_is_not_run(
    world: World, tmp_path: Path
) -> None:
    touched = tmp_path / "host-file"
    script = f"#!/bin/bash\nJIT_CONFIG={world.jit('runner-1')}\ntouch {touched}\n"
    world.nova.create("runner-1", script.encode())

    world.fleet.wait_for_event("setup-hang", "runner-1", timeout=30)

    [error] = [e for e in world.fleet.events if e.what == "error"]
    assert "not the default bootstrap" in error.detail
    assert world.fleet.vm("runner-1").phase == "hung"
    assert not touched.exists()
    assert world.fleet.vm_processes("runner-1") == []


class TestWithTheLightVmsOwnCurl:
    @pytest.fixture
    def fleet_config(self) -> SandboxConfig:
        return dataclasses.replace(FAST_SANDBOX, provide_curl=True)

    def test_the_runner_is_downloaded_with_it_and_serves_its_job(self, world: World) -> None:
        [job_id] = world.github.control.enqueue_jobs([LABEL], duration=0.1)
        world.boot("runner-1")

        world.fleet.wait_for_event("powered-off", "runner-1", timeout=30)

        curl = _root(world, "runner-1") / "usr/local/bin/curl"
        assert "a curl for hosts that have none" in curl.read_text()
        assert len(world.fleet.downloads) == 1
        job = next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)
        assert (job["state"], job["result"]) == ("completed", "succeeded")

    def test_a_failed_download_takes_the_bootstraps_failure_path(self, world: World) -> None:
        world.boot("runner-1", runner_download_url="http://127.0.0.1:9/missing-{version}.tar.gz")

        event = world.fleet.wait_for_event("setup-failed", "runner-1", timeout=30)

        assert event.detail == "the download of http://127.0.0.1:9/missing-2.330.0.tar.gz failed"
        assert world.fleet.downloads == []
