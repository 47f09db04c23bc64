import json
import subprocess
import sys


def test_the_demo_runs_end_to_end_and_reports_a_clean_summary() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleset_listener",
            "demo",
            "--jobs",
            "3",
            "--job-seconds",
            "0.2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["peak_desired_runners"] == 3
    assert summary["messages_acked"] == summary["messages_created"] > 0
    assert summary["sessions_left_open"] == 0
    assert summary["listener_exit_code"] == 0
