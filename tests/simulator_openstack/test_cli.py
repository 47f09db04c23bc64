"""python -m simulator.openstack: runs alone, announces its URL, writes a usable clouds.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simulator_openstack.helpers import connect

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*")


def test_the_module_runs_alone_and_its_clouds_yaml_logs_in(tmp_path: Path) -> None:
    clouds_yaml = tmp_path / "clouds.yaml"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator.openstack",
            "--port",
            "0",
            "--clouds-yaml",
            str(clouds_yaml),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded by the test timeout
        assert line.startswith("simulator.openstack listening on http://127.0.0.1:")
        conn = connect(clouds_yaml, "sim")
        try:
            assert [f.name for f in conn.compute.flavors()] == ["m1.small", "m1.large", "g1.gpu"]
        finally:
            conn.close()
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)
        if process.stdout is not None:
            process.stdout.close()
