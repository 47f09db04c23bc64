"""The test-host harness itself: when it skips, and that its VMs really are separate."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.testsupport import ssh_hosts
from tests.testsupport.ssh_hosts import HostSpec, SSHHostFactory


def test_a_non_root_user_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "need root" in (ssh_hosts.namespace_problem() or "")


def test_a_machine_that_forbids_namespaces_is_a_reason_to_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name, **_: "/bin/false")
    assert "forbids PID/mount namespaces" in (ssh_hosts.namespace_problem() or "")


def test_each_vm_sees_only_its_own_processes_and_sentinels(
    ssh_host_factory: SSHHostFactory,
) -> None:
    alive, fresh = ssh_host_factory.start_many(
        [HostSpec.runner_alive(), HostSpec.setup_not_complete()]
    )
    views = []
    for host in (alive, fresh):
        assert host.sshd_pid is not None
        done = subprocess.run(
            [
                "nsenter",
                "-t",
                str(host.sshd_pid),
                "-p",
                "-m",
                "sh",
                "-c",
                f"ls {ssh_host_factory.sentinel_dir}; pgrep -x Runner.Listener || true",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        views.append(done.stdout.split())
    assert "setup-complete" in views[0]
    assert "runner-started" in views[0]
    assert any(item.isdigit() for item in views[0])  # the runner, by its in-namespace pid
    assert views[1] == []
