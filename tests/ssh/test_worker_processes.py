"""The SSH part of the probe on worker processes (SSH_PROBE_PROCESSES): every host of the fleet
answers as it does on the listener's own threads, and a worker that dies or hangs turns its
probes into "unknown", never into an answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from provisioners.base import HostKeyPolicy, ProbeOutcome, ProbeResult
from provisioners.ssh import SSHProber
from tests.ssh.conftest import Fleet, ProberFactory
from tests.ssh.test_probe_hosts import MARGIN, assert_unknown
from tests.testsupport.ssh_hosts import HostSpec, SSHHost


def _facts(result: ProbeResult) -> tuple[object, ...]:
    return (
        result.address,
        result.outcome,
        result.setup_complete,
        result.setup_failed_reason,
        result.run_complete_exit_code,
        result.runner_alive,
        result.host_key,
    )


@pytest.fixture(scope="module")
def restricted_vm(fleet: Fleet) -> SSHHost:
    """A VM that authorizes the probe key as the bootstrap does (restrict, forced report)."""
    return fleet.factory.start(
        HostSpec({"setup-complete": "2026-01-01T00:00:00Z\n"}, probe_entry=True, label="entry")
    )


def _every_host(fleet: Fleet, restricted_vm: SSHHost) -> list[SSHHost]:
    return [*[*vars(fleet).values()][1:], restricted_vm]


async def wait_in_hand(prober: SSHProber, count: int = 1, within: float = 10.0) -> int:
    """The pid of a worker process once it holds `count` probes (bounded by `within`)."""
    until = time.monotonic() + within
    while time.monotonic() < until:
        for worker in prober._workers:
            if len(worker.pending) >= count:
                return worker.pid
        await asyncio.sleep(0.01)  # polling the prober's own state, bounded above
    raise AssertionError(f"no worker process held {count} probes within {within:g}s")


@pytest.fixture
def stopped_pids() -> Iterator[list[int]]:
    """Worker pids a test SIGSTOPped: continued afterwards so the prober can end them."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_every_host_answers_on_worker_processes_as_on_threads(
    fleet: Fleet, restricted_vm: SSHHost, make_prober: ProberFactory
) -> None:
    hosts = _every_host(fleet, restricted_vm)
    targets = [host.target for host in hosts]
    on_threads = await make_prober(worker_processes=0).probe_many(targets)
    pooled = make_prober(worker_processes=2)
    on_workers = await pooled.probe_many(targets)

    assert [_facts(r) for r in on_workers] == [_facts(r) for r in on_threads]
    outcomes = {host.kind: result.outcome for host, result in zip(hosts, on_workers, strict=True)}
    # Every kind of ending, not only the happy one, came back through the pipes.
    assert {
        ProbeOutcome.OK,
        ProbeOutcome.TIMEOUT,
        ProbeOutcome.UNREACHABLE,
        ProbeOutcome.NO_BANNER,
        ProbeOutcome.HOST_KEY_MISMATCH,
        ProbeOutcome.COMMAND_FAILED,
    } <= set(outcomes.values()), outcomes
    assert outcomes["entry"] is ProbeOutcome.OK
    assert len(pooled.worker_pids) == 2
    assert os.getpid() not in pooled.worker_pids


async def test_a_refused_key_and_accept_new_work_on_worker_processes(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    wrong = make_prober(worker_processes=1, private_key_path=fleet.factory.wrong_client_key_path)
    refused = await wrong.probe(*fleet.alive.target)
    assert refused.outcome is ProbeOutcome.AUTH_FAILED
    assert_unknown(refused)

    tofu = make_prober(worker_processes=1, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
    learned = await tofu.probe(fleet.alive.address, None)
    assert learned.outcome is ProbeOutcome.OK, learned.detail
    assert learned.host_key is not None
    assert fleet.alive.public_key is not None
    assert learned.host_key.split()[:2] == fleet.alive.public_key.split()[:2]


async def test_a_worker_that_dies_turns_its_probes_unreachable_and_is_replaced(
    fleet: Fleet, make_prober: ProberFactory
) -> None:
    prober = make_prober(worker_processes=1, command_timeout=30, deadline=60)
    started = time.monotonic()
    stalled = asyncio.create_task(prober.probe(*fleet.exec_stall.target))
    pid = await wait_in_hand(prober)
    os.kill(pid, signal.SIGKILL)
    result = await asyncio.wait_for(stalled, timeout=10)

    assert result.outcome is ProbeOutcome.UNREACHABLE, result
    assert "worker process" in result.detail
    assert_unknown(result)
    assert time.monotonic() - started < 10  # at once, not at the command's 30 s timeout
    again = await asyncio.wait_for(prober.probe(*fleet.alive.target), timeout=20)
    assert again.outcome is ProbeOutcome.OK, again.detail
    assert again.runner_alive is True
    assert pid not in prober.worker_pids


async def test_a_worker_that_hangs_ends_its_probes_at_the_deadline_as_unknown(
    fleet: Fleet, make_prober: ProberFactory, stopped_pids: list[int]
) -> None:
    deadline = 2.0
    prober = make_prober(worker_processes=1, command_timeout=30, deadline=deadline)
    probing = asyncio.create_task(prober.probe(*fleet.exec_stall.target))
    pid = await wait_in_hand(prober)
    # Once a worker holds it (starting the workers is not the VM's time).
    held = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    stopped_pids.append(pid)
    result = await asyncio.wait_for(probing, timeout=deadline + 10)

    assert result.outcome is ProbeOutcome.TIMEOUT
    assert "hard deadline" in result.detail
    assert_unknown(result)
    assert time.monotonic() - held <= deadline + MARGIN


async def test_where_worker_processes_cannot_start_the_probes_run_on_threads(
    fleet: Fleet, make_prober: ProberFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interpreter that cannot find its standard library exits at once.
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    prober = make_prober(worker_processes=2)
    results = await prober.probe_many([fleet.alive.target, fleet.refused.target])
    assert [r.outcome for r in results] == [ProbeOutcome.OK, ProbeOutcome.UNREACHABLE]
    assert results[0].runner_alive is True
    assert prober.worker_pids == []
