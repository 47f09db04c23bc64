"""Many hosts at once: hung hosts cost one timeout wave, not one timeout each; the pool stays
bounded; a probe's deadline starts when it gets a worker."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import pytest

from provisioners.base import ProbeOutcome, ProbeResult
from tests.ssh.conftest import ProberFactory
from tests.testsupport.ssh_hosts import SSHHost, SSHHostFactory

# Long enough that 40 healthy handshakes at once finish within it on a loaded 2-core machine
# (2 s was not, under a load of 19); the hung hosts wait it out once, together.
TIMEOUT = 3.0


@pytest.fixture(scope="module")
def forty_vms(ssh_host_factory: SSHHostFactory) -> list[SSHHost]:
    """40 VMs in rotating states (not complete, alive, run complete 0, crashed)."""
    return ssh_host_factory.start_fleet(40)


async def test_fifty_hosts_with_hanging_ones_finish_in_about_one_timeout(
    ssh_host_factory: SSHHostFactory,
    forty_vms: list[SSHHost],
    make_prober: ProberFactory,
    record_property: Callable[[str, object], None],
) -> None:
    f = ssh_host_factory
    hung = [f.hang_host() for _ in range(5)] + [f.silent_host() for _ in range(5)]
    hosts = forty_vms + hung
    prober = make_prober(
        connect_timeout=TIMEOUT,
        banner_timeout=TIMEOUT,
        auth_timeout=TIMEOUT,
        command_timeout=TIMEOUT,
        deadline=2 * TIMEOUT,
        max_workers=200,
    )
    started = time.monotonic()
    results = await prober.probe_many([host.target for host in hosts], concurrency=200)
    wall = time.monotonic() - started
    record_property("probe_50_hosts_10_hung_wall_s", round(wall, 3))
    print(f"50 hosts (10 hung, T={TIMEOUT:g}s): {wall:.2f}s wall")

    assert [result.address for result in results] == [host.address for host in hosts]
    healthy = results[:40]
    assert all(result.outcome is ProbeOutcome.OK for result in healthy), _outcomes(healthy)
    alive = [result.runner_alive for result in healthy]
    assert alive == [False, True, False, False] * 10
    assert [r.run_complete_exit_code for r in healthy] == [None, None, 0, None] * 10
    assert [r.outcome for r in results[40:45]] == [ProbeOutcome.TIMEOUT] * 5
    assert [r.outcome for r in results[45:]] == [ProbeOutcome.NO_BANNER] * 5
    assert all(r.runner_alive is None for r in results[40:])
    # One timeout wave plus the healthy work; serially this would be 10 x T = 30 s.
    assert wall < 2 * TIMEOUT + 4


async def test_the_pool_never_runs_more_than_max_workers_and_each_deadline_starts_with_a_worker(
    ssh_host_factory: SSHHostFactory, make_prober: ProberFactory
) -> None:
    hung = [ssh_host_factory.hang_host() for _ in range(6)]
    prober = make_prober(connect_timeout=0.5, deadline=0.9, max_workers=2)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            busy = sum(
                1 for t in threading.enumerate() if t.name.startswith(prober.thread_name_prefix)
            )
            peak = max(peak, busy)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        results = await prober.probe_many([host.target for host in hung])
    finally:
        stop.set()
        watcher.join(timeout=5)
    wall = time.monotonic() - started
    # Three waves of two, each cut at the connect timeout, never at the deadline: the queue
    # wait (up to 1 s) is not counted against a host.
    assert all("TCP connect timed out" in r.detail for r in results), _outcomes(results)
    assert all(0.45 <= r.elapsed_seconds <= 0.9 for r in results)
    assert wall >= 3 * 0.5 - 0.05
    assert peak <= 2


async def test_concurrency_below_max_workers_is_honoured(
    ssh_host_factory: SSHHostFactory, make_prober: ProberFactory
) -> None:
    hung = [ssh_host_factory.hang_host() for _ in range(4)]
    prober = make_prober(connect_timeout=0.4, max_workers=64)
    started = time.monotonic()
    results = await prober.probe_many([host.target for host in hung], concurrency=1)
    assert time.monotonic() - started >= 4 * 0.4 - 0.05
    assert {r.outcome for r in results} == {ProbeOutcome.TIMEOUT}


def _outcomes(results: list[ProbeResult]) -> str:
    return str(collections.Counter(f"{r.outcome}: {r.detail}" for r in results))
