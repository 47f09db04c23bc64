"""`scaleset-listener usage FILE`: the usage log grouped by repository, workflow or flavor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scaleset_listener.cli import main
from scaleset_listener.usage import UsageLog, UsageRecord

NOW = datetime.now(UTC)


def record(
    repository: str,
    flavor: str,
    vm_minutes: float,
    wait_seconds: float,
    days_ago: float = 0.0,
    workflow: str = "ci.yml",
) -> UsageRecord:
    deleted = NOW - timedelta(days=days_ago)
    requested = deleted - timedelta(minutes=vm_minutes)
    assigned = requested - timedelta(seconds=1)
    return UsageRecord(
        repository=repository,
        workflow_ref=f"{repository}/.github/workflows/{workflow}@refs/heads/main",
        job_name="build",
        event="push",
        result="succeeded",
        scale_set="gpu",
        runner="gpu-abc",
        server_id="5e1d",
        flavor=flavor,
        assigned_at=assigned,
        vm_requested_at=requested,
        job_started_at=assigned + timedelta(seconds=wait_seconds),
        job_finished_at=deleted,
        vm_deleted_at=deleted,
        vm_seconds=vm_minutes * 60,
    )


@pytest.fixture
def usage_log(tmp_path: Path) -> Path:
    log = UsageLog(tmp_path / "usage.jsonl")
    for entry in [
        record("acme/train", "g1.large", 90, 40),
        record("acme/train", "g1.large", 30, 20, workflow="nightly.yml"),
        record("acme/train", "g1.large", 60, 60, days_ago=10),
        record("acme/web", "m1.small", 6, 5),
    ]:
        log.append(entry)
    return log.path


def test_the_table_groups_by_repository_with_vm_hours_jobs_and_median_wait(
    usage_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["usage", str(usage_log)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "JOBS", "VM-HOURS", "MEDIAN", "QUEUE", "WAIT"]
    assert lines[1].split() == ["acme/train", "3", "3.00", "40s"]
    assert lines[2].split() == ["acme/web", "1", "0.10", "5s"]
    assert lines[3].split() == ["total", "4", "3.10"]


def test_since_leaves_out_older_jobs_and_json_reports_the_same(
    usage_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["usage", str(usage_log), "--since", "7d", "--by", "flavor", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"flavor": "g1.large", "jobs": 2, "vm_hours": 2.0, "median_queue_wait_seconds": 30.0},
        {"flavor": "m1.small", "jobs": 1, "vm_hours": 0.1, "median_queue_wait_seconds": 5.0},
    ]


def test_by_workflow_splits_a_repository_by_its_workflow_files(
    usage_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["usage", str(usage_log), "--by", "workflow", "--json"]) == 0
    groups = {row["workflow"]: row["jobs"] for row in json.loads(capsys.readouterr().out)}
    assert groups == {
        "acme/train/.github/workflows/ci.yml": 2,
        "acme/train/.github/workflows/nightly.yml": 1,
        "acme/web/.github/workflows/ci.yml": 1,
    }


def test_a_broken_line_is_reported_and_the_rest_still_counted(
    usage_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with usage_log.open("a") as log:
        log.write('{"repository": "acme/cut-short", "vm_sec\n')
        log.write('{"repository": "acme/no-times"}\n')
    assert main(["usage", str(usage_log), "--json"]) == 0
    captured = capsys.readouterr()
    assert sum(row["jobs"] for row in json.loads(captured.out)) == 4
    assert f"{usage_log}:5: skipped" in captured.err
    assert f"{usage_log}:6: skipped" in captured.err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "a week"], "--since: 'a week' is not a duration"),
        ([], "cannot read"),
    ],
)
def test_bad_input_exits_2_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["usage", str(tmp_path / "missing.jsonl"), *arguments]) == 2
    assert message in capsys.readouterr().err
