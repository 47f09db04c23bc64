import json
import subprocess
import sys

import pytest

from simulator.sandbox import sandbox_problem


@pytest.mark.timeout(120)
@pytest.mark.parametrize("guest", ["light", "auto"])
def test_the_demo_serves_every_job_on_its_own_vm_and_leaks_nothing(guest: str) -> None:
    """`auto` runs sandbox VMs (real sshd, real bootstrap, reconciliation on) where the machine
    allows namespaces, as CI does; the light fleet elsewhere."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleset_listener",
            "demo",
            "--jobs",
            "3",
            "--job-seconds",
            "2",
            "--max-runners",
            "2",
            "--json",
            "--guest",
            guest,
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["jobs_served"] == 3
    assert summary["vms_created"] == summary["vms_deleted"] == 3
    assert (summary["leaked_vms"], summary["leaked_registrations"]) == (0, 0)
    assert summary["peak_desired_runners"] <= 2
    assert summary["listener_exit_code"] == 0
    expected = "sandbox" if guest == "auto" and sandbox_problem() is None else "light"
    assert summary["guests"] == expected
    assert set(summary["seconds_per_phase"]) >= {"creating", "booting", "busy"}
