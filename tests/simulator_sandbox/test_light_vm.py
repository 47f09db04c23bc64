"""What only light VMs have: their paramiko sshd, the per-VM `pgrep`, the refusal to run a
user_data that is not the default bootstrap, the light VM's own `curl` for hosts without one."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from provisioners.base import ProbeOutcome, ProbeResult
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


async def test_the_sshd_lets_in_only_the_login_user_with_the_fleets_key(world: World) -> None:
    world.fleet.behave("runner-1", "hang")
    world.boot("runner-1")
    world.fleet.wait_for_event("sshd-started", "runner-1", timeout=30)
    with tempfile.TemporaryDirectory() as scratch:
        other_key = Path(scratch) / "other"
        write_key_pair(other_key, "someone-else")

        wrong_user = await _probe(world, "runner-1", user="someone-else")
        wrong_key = await _probe(world, "runner-1", key=other_key)
    right = await _probe(world, "runner-1")

    assert wrong_user.outcome is ProbeOutcome.AUTH_FAILED
    assert wrong_key.outcome is ProbeOutcome.AUTH_FAILED
    assert right.outcome is ProbeOutcome.OK, right.detail
    assert (right.setup_complete, right.runner_alive) == (False, False)
    assert right.host_key == " ".join(world.host_keys["runner-1"].public_openssh.split()[:2])


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
    hung = await _probe(world, "runner-2")

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
