import json
import subprocess
import sys
from typing import Any

import pytest

from simulator.sandbox import sandbox_problem


def _demo(*options: str, timeout: float) -> tuple[dict[str, Any], str]:
    """`scaleset-listener demo --json ...` as a user runs it: its summary and its output."""
    result = subprocess.run(
        [sys.executable, "-m", "scaleset_listener", "demo", "--json", *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary, result.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("guest", ["light", "auto"])
def test_the_demo_serves_every_job_on_its_own_vm_and_leaks_nothing(guest: str) -> None:
    """`auto` runs sandbox VMs (real sshd, real bootstrap, reconciliation on) where the machine
    allows namespaces, as CI does; light VMs elsewhere."""
    summary, _ = _demo(
        "--jobs", "3", "--job-seconds", "2", "--max-runners", "2", "--guest", guest, timeout=110
    )
    assert summary["ok"] is True
    assert summary["jobs_served"] == 3
    assert summary["vms_created"] == summary["vms_deleted"] == 3
    assert (summary["leaked_vms"], summary["leaked_registrations"]) == (0, 0)
    assert summary["peak_desired_runners"] <= 2
    assert summary["listener_exit_code"] == 0
    expected = "sandbox" if guest == "auto" and sandbox_problem() is None else "light"
    assert summary["guests"] == expected
    assert set(summary["seconds_per_phase"]) >= {"creating", "booting", "busy"}
    assert "listener_restarts" not in summary


@pytest.mark.timeout(150)
@pytest.mark.parametrize("guest", ["light", "auto"])
def test_with_kill_listener_the_restart_probes_and_adopts_the_busy_vms(guest: str) -> None:
    """The listener is SIGKILLed while jobs run; the restarted one's startup reconciliation
    probes the VMs it finds over SSH (the light VMs' paramiko sshd, or a sandbox VM's
    OpenSSH), adopts the busy ones, and every job still succeeds."""
    summary, output = _demo(
        "--jobs",
        "4",
        "--job-seconds",
        "6",
        "--max-runners",
        "2",
        "--guest",
        guest,
        "--kill-listener",
        timeout=140,
    )
    assert summary["ok"] is True
    assert summary["jobs_served"] == 4
    assert (summary["leaked_vms"], summary["leaked_registrations"]) == (0, 0)
    assert summary["listener_restarts"] == 1
    # Killed once two jobs ran: their VMs were found, probed and adopted busy.
    assert summary["vms_reconciled"].get("adopt_busy", 0) >= 1, summary
    assert summary["vms_adopted"] >= 1, summary
    assert summary["probes"].get("ok", 0) >= 1, summary
    assert "--kill-listener: SIGKILL the listener" in output
