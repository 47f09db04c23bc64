"""Crash-restart: SIGKILL the listener at each kill point, restart it with reconciliation on.

One seeded trial per kill point (bench/crash_restart.py runs a hundred). A trial passes when
every job was served, no VM, runner registration or session is left, no busy runner was
killed, there were never more servers than max_runners and the restarted listener exits 0 on
SIGTERM (sim/simulator/crash_trial.py).
"""

from pathlib import Path

import pytest

from simulator.crash_trial import KILL_POINTS, KillPoint, run_trial
from tests.e2e.guests import GUESTS


@pytest.mark.timeout(90)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_listener_killed_and_restarted_serves_every_job_and_leaks_nothing(
    tmp_path: Path, point: KillPoint
) -> None:
    result = run_trial(tmp_path, point, seed=KILL_POINTS.index(point) + 100, guests=GUESTS)

    assert result.passed, result.summary()
    # The kill hit the phase it aimed at (the seeds are chosen so; a miss would test less).
    assert result.landed, result.summary()
    assert result.notes["listeners"] == (3 if point in ("reconcile", "anytime") else 2)


@pytest.mark.timeout(90)
def test_light_vms_answer_the_restarted_listeners_ssh_probes(tmp_path: Path) -> None:
    """The light VMs (no namespaces, a paramiko sshd on port 2222, VM_SSH_PORT) in a trial:
    the restarted listener probes the VMs it finds over SSH and they answer."""
    result = run_trial(tmp_path, "jobs_running", seed=101, guests="light")

    assert result.passed, result.summary()
    assert result.landed, result.summary()
    first, restarted = result.notes["probes"]
    assert first == {}  # nothing to probe at the first start
    # A VM whose job ends meanwhile powers off and stops answering: `unreachable` is fair.
    assert restarted.get("ok", 0) >= 1, result.summary()
