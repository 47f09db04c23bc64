"""The prober against real OpenSSH sshd VMs (own PID and mount namespace each) and against hosts
that hang, refuse, stay silent, stall or present the wrong key."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provisioners.base import HostKeyPolicy, ProbeOutcome, ProbeResult
from provisioners.bootstrap import generate_host_key
from provisioners.ssh import PARAMIKO_LOG_CHANNEL, SSHProbeConfigError, SSHProber
from tests.ssh.conftest import SETUP_FAILED_REASON, Fleet, ProberFactory
from tests.testsupport.ssh_hosts import FAKE_JIT_CONFIG, HostSpec, SSHHostFactory

# Wall-clock slack on a loaded 2-core box: bounds are "configured timeout + margin".
MARGIN = 1.5


def assert_unknown(result: ProbeResult) -> None:
    """A probe that did not get an answer says nothing about the VM."""
    assert result.outcome is not ProbeOutcome.OK
    assert result.runner_alive is None
    assert result.setup_complete is None
    assert result.run_complete_exit_code is None
    assert result.setup_failed_reason is None


async def test_a_vm_whose_setup_is_not_complete_reports_so(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.setup_not_complete.target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert (result.setup_complete, result.runner_alive) == (False, False)
    assert result.run_complete_exit_code is None
    assert result.host_key == " ".join(fleet.setup_not_complete.public_key.split()[:2])  # type: ignore[union-attr]


async def test_a_vm_with_a_running_runner_reports_it_alive(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.alive.target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert (result.setup_complete, result.runner_alive) == (True, True)
    assert result.run_complete_exit_code is None


@pytest.mark.parametrize(("attribute", "code"), [("done_ok", 0), ("done_exit_3", 3)])
async def test_a_finished_vm_reports_run_complete_with_its_exit_code(
    fleet: Fleet, make_prober: ProberFactory, attribute: str, code: int
) -> None:
    result = await make_prober().probe(*getattr(fleet, attribute).target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert result.run_complete_exit_code == code
    assert result.runner_alive is False


async def test_a_crashed_runner_is_reported_dead(fleet: Fleet, make_prober: ProberFactory) -> None:
    result = await make_prober().probe(*fleet.crashed.target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert (result.setup_complete, result.runner_alive) == (True, False)
    assert result.run_complete_exit_code is None
    assert "is gone" in result.detail


async def test_a_runner_recorded_in_an_earlier_boot_is_dead_although_its_pid_runs(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.rebooted.target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert result.runner_alive is False
    assert "rebooted" in result.detail


async def test_without_runner_started_the_exact_process_name_finds_the_runner(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.unrecorded.target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert result.runner_alive is True


async def test_the_probes_own_shell_is_not_mistaken_for_a_runner(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    # The probe's command line names Runner.Listener; `pgrep -f` would match it (never used).
    for host in (fleet.setup_not_complete, fleet.done_ok):
        result = await make_prober().probe(*host.target)
        assert result.runner_alive is False, result.detail


async def test_a_failed_setup_reports_its_reason(fleet: Fleet, make_prober: ProberFactory) -> None:
    result = await make_prober().probe(*fleet.setup_failed.target)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert result.setup_failed_reason == SETUP_FAILED_REASON
    assert result.setup_complete is False


async def test_sentinels_changed_while_the_vm_runs_are_seen_by_the_next_probe(
    ssh_host_factory: SSHHostFactory, make_prober: ProberFactory
) -> None:
    host = ssh_host_factory.start(HostSpec.runner_alive())
    prober = make_prober()
    assert (await prober.probe(*host.target)).runner_alive is True
    (host.state_dir / "run-complete").write_text("1\n")
    result = await prober.probe(*host.target)
    assert (result.run_complete_exit_code, result.runner_alive) == (1, False)


async def test_a_refusing_host_is_unreachable_at_once(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.refused.target)
    assert result.outcome is ProbeOutcome.UNREACHABLE
    assert "ECONNREFUSED" in result.detail
    assert result.elapsed_seconds < 0.5
    assert_unknown(result)


async def test_a_host_name_is_resolved_and_an_unknown_one_is_unreachable(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    prober = make_prober()
    # localhost resolves to 127.0.0.1, where no test host listens: refused, so it was reached.
    named = await prober.probe("localhost", fleet.alive.pinned_public_key)
    assert named.outcome is ProbeOutcome.UNREACHABLE
    assert "ECONNREFUSED" in named.detail
    unknown = await prober.probe("no-such-vm.invalid", fleet.alive.pinned_public_key)
    assert unknown.outcome is ProbeOutcome.UNREACHABLE
    assert "cannot resolve" in unknown.detail
    assert_unknown(unknown)


async def test_a_host_that_never_answers_the_tcp_handshake_times_out_at_the_connect_timeout(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(connect_timeout=0.5, deadline=5).probe(*fleet.hang.target)
    assert result.outcome is ProbeOutcome.TIMEOUT
    assert "TCP connect" in result.detail
    assert 0.45 <= result.elapsed_seconds <= 0.5 + MARGIN
    assert_unknown(result)


async def test_a_host_that_accepts_but_sends_no_banner_is_no_banner_at_the_banner_timeout(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(banner_timeout=0.7).probe(*fleet.silent.target)
    assert result.outcome is ProbeOutcome.NO_BANNER
    assert 0.65 <= result.elapsed_seconds <= 0.7 + MARGIN
    assert_unknown(result)


async def test_a_stalled_key_exchange_times_out_within_the_banner_timeout(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(banner_timeout=0.8).probe(*fleet.banner_stall.target)
    assert result.outcome is ProbeOutcome.TIMEOUT
    assert "key exchange" in result.detail
    assert result.elapsed_seconds <= 2 * 0.8 + MARGIN
    assert_unknown(result)


async def test_a_stalled_authentication_times_out_at_the_auth_timeout(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(auth_timeout=0.9).probe(*fleet.auth_stall.target)
    assert result.outcome is ProbeOutcome.TIMEOUT
    assert "authentication" in result.detail
    assert 0.85 <= result.elapsed_seconds <= 0.9 + MARGIN
    assert_unknown(result)


async def test_a_stalled_command_times_out_at_the_command_timeout_and_says_nothing(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(command_timeout=0.9).probe(*fleet.exec_stall.target)
    assert result.outcome is ProbeOutcome.TIMEOUT
    assert "command" in result.detail
    assert 0.85 <= result.elapsed_seconds <= 0.9 + MARGIN
    assert_unknown(result)


@pytest.mark.parametrize(
    "attribute", ["hang", "silent", "banner_stall", "auth_stall", "exec_stall"]
)
async def test_the_hard_deadline_cuts_off_every_stage_and_leaves_liveness_unknown(
    fleet: Fleet, make_prober: ProberFactory, attribute: str
) -> None:
    prober = make_prober(
        connect_timeout=10, banner_timeout=10, auth_timeout=10, command_timeout=10, deadline=0.6
    )
    started = time.monotonic()
    result = await prober.probe(*getattr(fleet, attribute).target)
    assert result.outcome is ProbeOutcome.TIMEOUT
    assert "hard deadline" in result.detail
    assert time.monotonic() - started <= 0.6 + MARGIN
    assert_unknown(result)


async def test_garbage_output_is_a_failed_command_not_an_empty_vm(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.garbage.target)
    assert result.outcome is ProbeOutcome.COMMAND_FAILED
    assert "report marker" in result.detail
    assert_unknown(result)


async def test_a_non_zero_exit_status_is_a_failed_command(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober().probe(*fleet.bad_exit.target)
    assert result.outcome is ProbeOutcome.COMMAND_FAILED
    assert "status 3" in result.detail
    assert_unknown(result)


async def test_a_key_the_vm_does_not_authorize_is_auth_failed(
    fleet: Fleet, ssh_host_factory: SSHHostFactory, make_prober: ProberFactory
) -> None:
    prober = make_prober(private_key_path=ssh_host_factory.wrong_client_key_path)
    result = await prober.probe(*fleet.alive.target)
    assert result.outcome is ProbeOutcome.AUTH_FAILED
    assert_unknown(result)


async def test_an_unknown_user_is_auth_failed(fleet: Fleet, make_prober: ProberFactory) -> None:
    result = await make_prober(user="no-such-user-here").probe(*fleet.alive.target)
    assert result.outcome is ProbeOutcome.AUTH_FAILED
    assert_unknown(result)


# Host keys


async def test_a_host_presenting_another_key_is_refused_and_both_fingerprints_reported(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    host = fleet.wrong_key
    result = await make_prober().probe(*host.target)
    assert result.outcome is ProbeOutcome.HOST_KEY_MISMATCH
    assert result.detail.count("SHA256:") == 2
    assert result.host_key == " ".join(host.public_key.split()[:2])  # type: ignore[union-attr]
    assert_unknown(result)


async def test_a_mismatch_is_refused_under_every_policy(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    for policy in HostKeyPolicy:
        result = await make_prober(host_key_policy=policy).probe(*fleet.wrong_key.target)
        assert result.outcome is ProbeOutcome.HOST_KEY_MISMATCH, policy


async def test_a_pinned_key_of_another_type_is_a_mismatch(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    # The VM has only an ed25519 key; an ECDSA key recorded for it cannot be presented.
    ecdsa = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        .decode()
    )
    result = await make_prober().probe(fleet.alive.address, ecdsa)
    assert result.outcome is ProbeOutcome.HOST_KEY_MISMATCH, result.detail
    assert_unknown(result)


async def test_pinned_policy_does_not_contact_a_server_without_a_recorded_key(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(host_key_policy="pinned").probe(fleet.alive.address, None)
    assert result.outcome is ProbeOutcome.HOST_KEY_UNKNOWN
    assert "SSH_HOST_KEY_POLICY=pinned" in result.detail
    assert result.host_key is None
    assert_unknown(result)


async def test_accept_new_probes_a_server_without_a_recorded_key_and_returns_its_key(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    result = await make_prober(host_key_policy="accept-new").probe(fleet.alive.address, None)
    assert result.outcome is ProbeOutcome.OK, result.detail
    assert result.runner_alive is True
    assert result.host_key == " ".join(fleet.alive.public_key.split()[:2])  # type: ignore[union-attr]
    # The returned key pins the next probe.
    again = await make_prober(host_key_policy="pinned").probe(fleet.alive.address, result.host_key)
    assert again.outcome is ProbeOutcome.OK


async def test_an_unparsable_recorded_key_is_not_trusted(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    for recorded in ("ssh-ed25519", "ssh-ed25519 not-base64!", "ssh-unknown AAAA"):
        result = await make_prober(host_key_policy="accept-new").probe(
            fleet.alive.address, recorded
        )
        assert result.outcome is ProbeOutcome.HOST_KEY_UNKNOWN, recorded


# Secrets, logs, lifecycle


async def test_no_secret_reaches_results_or_logs(
    fleet: Fleet,
    ssh_host_factory: SSHHostFactory,
    make_prober: ProberFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    private_key = ssh_host_factory.client_key_path.read_text()
    secret_lines = [line for line in private_key.splitlines() if "PRIVATE KEY" not in line]
    paramiko_log = logging.getLogger(PARAMIKO_LOG_CHANNEL)
    paramiko_log.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            prober = make_prober(deadline=3)
            results = await prober.probe_many(
                [
                    fleet.alive.target,
                    fleet.unrecorded.target,
                    fleet.wrong_key.target,
                    fleet.garbage.target,
                    fleet.silent.target,
                ]
            )
    finally:
        paramiko_log.setLevel(logging.CRITICAL)
    assert results[0].runner_alive is True  # the runner with the JIT config was looked at
    texts = [repr(result) for result in results] + [repr(prober.config)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    assert any("ssh probe" in text for text in texts)
    for text in texts:
        assert FAKE_JIT_CONFIG not in text
        for line in secret_lines:
            assert line not in text


async def test_a_missing_or_unusable_private_key_is_a_configuration_error(
    make_prober: ProberFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("keys")
    with pytest.raises(SSHProbeConfigError, match="does not exist"):
        make_prober(private_key_path=folder / "absent")
    garbage = folder / "garbage"
    garbage.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0\n")
    with pytest.raises(SSHProbeConfigError) as raised:
        make_prober(private_key_path=garbage)
    assert "c2VjcmV0" not in str(raised.value)


async def test_a_cancelled_probe_stops_its_worker(fleet: Fleet, make_prober: ProberFactory) -> None:
    prober = make_prober(command_timeout=30, deadline=60)
    task = asyncio.create_task(prober.probe(*fleet.exec_stall.target))
    await asyncio.sleep(0)  # the probe takes its slot and hands the work to a thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await prober.close()
    _join_probe_threads(prober, timeout=3)


async def test_close_cuts_off_probes_in_flight_and_refuses_new_ones(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    prober = make_prober(command_timeout=30, deadline=60)
    task = asyncio.create_task(prober.probe(*fleet.exec_stall.target))
    await asyncio.sleep(0)  # the probe takes its slot and hands the work to a thread
    await prober.close()
    result = await asyncio.wait_for(task, timeout=5)
    assert result.outcome is ProbeOutcome.TIMEOUT
    assert_unknown(result)
    with pytest.raises(RuntimeError, match="closed"):
        await prober.probe(*fleet.alive.target)
    _join_probe_threads(prober, timeout=3)


def _join_probe_threads(prober: SSHProber, timeout: float) -> None:
    """Every worker of a closed prober ends (its socket was shut down), within `timeout`."""
    until = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(prober.thread_name_prefix + "_"):
            thread.join(max(until - time.monotonic(), 0))
            assert not thread.is_alive(), f"{thread.name} still running"


def test_a_generated_key_is_never_that_of_a_vm(fleet: Fleet) -> None:
    assert generate_host_key().public_openssh != fleet.alive.public_key


async def test_probing_a_closed_prober_does_not_start_threads(
    fleet: Fleet, ssh_host_factory: SSHHostFactory
) -> None:
    from provisioners.ssh import SSHProbeConfig

    prober = SSHProber(
        SSHProbeConfig(
            user=ssh_host_factory.user,
            private_key_path=ssh_host_factory.client_key_path,
            sentinel_dir=ssh_host_factory.sentinel_dir,
            port=ssh_host_factory.port,
        )
    )
    await prober.close()
    with pytest.raises(RuntimeError):
        await prober.probe(*fleet.alive.target)
