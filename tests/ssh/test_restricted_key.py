"""The probe's key as the bootstrap authorizes it (`restrict` and the report script forced),
against OpenSSH's own sshd and client: the report is all the key can get out of a VM.

Each restricted host's sshd allows TCP, agent and X11 forwarding and terminals, so every refusal
below comes from the key's entry. A host with the same sshd and the bare key shows that the
same requests succeed without it (the tests would notice an entry that restricts nothing)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioners.base import ProbeOutcome
from provisioners.sentinels import SETUP_COMPLETE, parse_report
from tests.ssh.conftest import ProberFactory
from tests.testsupport.ssh_hosts import (
    FAKE_JIT_CONFIG,
    HostSpec,
    RunnerState,
    SSHHost,
    SSHHostFactory,
)

SSH_TIMEOUT = 20.0


@dataclass(frozen=True)
class Hosts:
    restricted: SSHHost
    bare: SSHHost
    known_hosts: Path


@pytest.fixture(scope="module")
def hosts(ssh_host_factory: SSHHostFactory, tmp_path_factory: pytest.TempPathFactory) -> Hosts:
    f = ssh_host_factory
    complete = {SETUP_COMPLETE: "2026-01-01T00:00:00Z\n"}
    restricted, bare = f.start_many(
        [
            HostSpec(complete, RunnerState.ALIVE, probe_entry=True, label="restricted key"),
            HostSpec(complete, RunnerState.ALIVE, label="bare key"),
        ]
    )
    # The bare host keeps the harness's strict sshd; loosen only what the comparison needs.
    known_hosts = tmp_path_factory.mktemp("ssh-client") / "known_hosts"
    known_hosts.write_text(
        "".join(f"[{h.address}]:{h.port} {h.public_key}\n" for h in (restricted, bare))
    )
    return Hosts(restricted, bare, known_hosts)


def ssh(
    factory: SSHHostFactory,
    hosts: Hosts,
    host: SSHHost,
    *options: str,
    command: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """OpenSSH's client, with the probe's key only, as the listener's operator would run it."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(factory.client_key_path),
            "-p",
            str(host.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={hosts.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ExitOnForwardFailure=yes",
            *options,
            f"{factory.user}@{host.address}",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_only_the_report(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    report = parse_report(result.stdout)  # the whole output, strictly: nothing else came back
    assert report.setup_complete
    assert report.runner_alive is True


@pytest.fixture(autouse=True)
def _openssh_client() -> None:
    done = subprocess.run(["ssh", "-V"], capture_output=True, timeout=10, check=False)
    assert done.returncode == 0, "the OpenSSH client is missing: run scripts/install-system-deps"


@pytest.mark.parametrize(
    "command",
    [
        ("id",),
        ("cat", "/etc/shadow"),
        ("sh", "-c", "echo pwned; exit 7"),
        (f"ps -eo args | grep {FAKE_JIT_CONFIG}",),
    ],
)
def test_any_command_the_key_sends_runs_the_report_instead(
    ssh_host_factory: SSHHostFactory, hosts: Hosts, command: tuple[str, ...]
) -> None:
    result = ssh(ssh_host_factory, hosts, hosts.restricted, command=command)

    assert_only_the_report(result)
    assert "uid=" not in result.stdout
    assert "pwned" not in result.stdout
    assert FAKE_JIT_CONFIG not in result.stdout


def test_a_shell_or_a_subsystem_runs_the_report_too(
    ssh_host_factory: SSHHostFactory, hosts: Hosts
) -> None:
    assert_only_the_report(ssh(ssh_host_factory, hosts, hosts.restricted, "-T"))
    assert_only_the_report(ssh(ssh_host_factory, hosts, hosts.restricted, "-s", command=("sftp",)))


def test_a_terminal_is_refused(ssh_host_factory: SSHHostFactory, hosts: Hosts) -> None:
    restricted = ssh(ssh_host_factory, hosts, hosts.restricted, "-tt", command=("tty",))
    bare = ssh(ssh_host_factory, hosts, hosts.bare, "-tt", command=("tty",))

    assert "PTY allocation request failed" in restricted.stderr
    assert "/dev/pts/" not in restricted.stdout
    assert "PTY allocation request failed" not in bare.stderr


@pytest.mark.parametrize(
    "forward",
    [
        ("-W", "127.0.0.1:22"),  # a TCP connection through the VM, at once (direct-tcpip)
        ("-N", "-R", "0:127.0.0.1:9"),  # a port listening on the VM (tcpip-forward)
    ],
)
def test_port_forwarding_is_refused(
    ssh_host_factory: SSHHostFactory, hosts: Hosts, forward: tuple[str, ...]
) -> None:
    restricted = ssh(ssh_host_factory, hosts, hosts.restricted, "-o", "ControlMaster=no", *forward)

    assert restricted.returncode == 255
    assert "forwarding failed" in restricted.stderr or "prohibited" in restricted.stderr


def test_the_bare_key_would_run_the_command(ssh_host_factory: SSHHostFactory, hosts: Hosts) -> None:
    """The control: the same client and sshd without the entry's restrictions."""
    result = ssh(ssh_host_factory, hosts, hosts.bare, command=("id", "-u"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()


async def test_the_prober_reads_the_forced_report(hosts: Hosts, make_prober: ProberFactory) -> None:
    result = await make_prober().probe(*hosts.restricted.target)

    assert result.outcome is ProbeOutcome.OK, result.detail
    assert (result.setup_complete, result.runner_alive) == (True, True)
