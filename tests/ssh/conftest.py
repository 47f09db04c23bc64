"""The SSH prober's test hosts: one fleet of real sshd VMs and misbehaving hosts per test run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from provisioners.ssh import SSHProbeConfig, SSHProber
from tests.testsupport.ssh_hosts import (
    HostSpec,
    RunnerState,
    SSHHost,
    SSHHostFactory,
    ssh_host_factory,
)

__all__ = ["ssh_host_factory"]  # the session fixture, re-exported for pytest


@dataclass(frozen=True)
class Fleet:
    factory: SSHHostFactory
    setup_not_complete: SSHHost
    alive: SSHHost
    done_ok: SSHHost
    done_exit_3: SSHHost
    crashed: SSHHost
    rebooted: SSHHost
    unrecorded: SSHHost
    setup_failed: SSHHost
    exec_stall: SSHHost
    auth_stall: SSHHost
    garbage: SSHHost
    bad_exit: SSHHost
    wrong_key: SSHHost
    hang: SSHHost
    refused: SSHHost
    silent: SSHHost
    banner_stall: SSHHost


SETUP_FAILED_REASON = "sha256 mismatch for https://example.invalid/x.tar.gz: expected a, got b"


@pytest.fixture(scope="session")
def fleet(ssh_host_factory: SSHHostFactory) -> Fleet:
    f = ssh_host_factory
    complete = {"setup-complete": "2026-01-01T00:00:00Z\n"}
    vms = f.start_many(
        [
            HostSpec.setup_not_complete(),
            HostSpec.runner_alive(),
            HostSpec.run_complete(0),
            HostSpec.run_complete(3),
            HostSpec.runner_crashed(),
            HostSpec(complete, RunnerState.REBOOTED, label="rebooted"),
            HostSpec(complete, RunnerState.UNRECORDED, label="unrecorded"),
            HostSpec.setup_failed(SETUP_FAILED_REASON),
            HostSpec(force_command="sleep 120", label="exec stall"),
            HostSpec(auth_stall=True, label="auth stall"),
            HostSpec(force_command="echo hello", label="garbage"),
            HostSpec(force_command="echo scaleset-probe 1; exit 3", label="bad exit"),
        ]
    )
    others = [
        f.wrong_key_host(),
        f.hang_host(),
        f.refusing_host(),
        f.silent_host(),
        f.banner_stall_host(),
    ]
    return Fleet(f, *vms, *others)


ProberFactory = Callable[..., SSHProber]


@pytest.fixture
async def make_prober(ssh_host_factory: SSHHostFactory) -> AsyncIterator[ProberFactory]:
    """`make_prober(connect_timeout=1, ...)`: a prober for the test hosts, closed afterwards.
    Short stage timeouts by default (1 s each, deadline 5 s) keep hung-host tests quick."""
    made: list[SSHProber] = []

    def make(**overrides: Any) -> SSHProber:
        values: dict[str, Any] = {
            "user": ssh_host_factory.user,
            "private_key_path": ssh_host_factory.client_key_path,
            "connect_timeout": 1.0,
            "banner_timeout": 1.0,
            "auth_timeout": 1.0,
            "command_timeout": 1.0,
            "deadline": 5.0,
            "sentinel_dir": ssh_host_factory.sentinel_dir,
            "port": ssh_host_factory.port,
            "max_workers": 64,
        }
        values.update(overrides)
        prober = SSHProber(SSHProbeConfig(**values))
        made.append(prober)
        return prober

    yield make
    for prober in made:
        await prober.close()
