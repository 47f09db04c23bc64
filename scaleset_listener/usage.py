"""Per-job usage: one record per job once its VM is gone, and the `usage` report over them.

The scaler logs each record as a `job_usage` event and, with USAGE_LOG_PATH, appends it to a
JSON Lines file (one object per line, the fields of `UsageRecord`). `scaleset-listener usage
FILE` groups the records by repository, workflow or flavor: VM-hours, jobs and the median queue
wait (assigned to the scale set -> the job started on its runner). docs/monitoring.md#usage.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError


class UsageRecord(BaseModel):
    """What one job cost: who ran it, on what, and when each step happened (UTC)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    repository: str  # owner/name
    workflow_ref: str
    job_name: str
    event: str
    result: str
    scale_set: str
    runner: str
    server_id: str
    flavor: str
    assigned_at: AwareDatetime | None = None  # the job assigned to the scale set
    vm_requested_at: AwareDatetime | None = None
    vm_active_at: AwareDatetime | None = None
    runner_online_at: AwareDatetime | None = None
    job_started_at: AwareDatetime | None = None
    job_finished_at: AwareDatetime | None = None
    vm_deleted_at: AwareDatetime
    vm_seconds: float  # from the create request to the deletion

    @property
    def workflow(self) -> str:
        """The workflow file of `workflow_ref` (`owner/repo/.github/workflows/ci.yml@ref`)."""
        return self.workflow_ref.partition("@")[0] or "(unknown)"

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.assigned_at is None or self.job_started_at is None:
            return None
        return max(0.0, (self.job_started_at - self.assigned_at).total_seconds())

    def log_fields(self) -> dict[str, object]:
        """The record as log keys: `event` is the log line's own name there, so the job's
        event is `event_name`."""
        fields = self.model_dump(mode="json")
        fields["event_name"] = fields.pop("event")
        return fields


class UsageLog:
    """Appends records to a JSON Lines file, one write per record (safe across threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: UsageRecord) -> None:
        line = record.model_dump_json() + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as sink:
            sink.write(line)


@dataclass(frozen=True)
class Unreadable:
    line_number: int
    problem: str


def read_records(path: Path) -> tuple[list[UsageRecord], list[Unreadable]]:
    """The file's records, and the lines that are not records (reported, never fatal: a line
    cut short by a crash must not hide a month of usage)."""
    records: list[UsageRecord] = []
    unreadable: list[Unreadable] = []
    with path.open(encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                records.append(UsageRecord.model_validate_json(line))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "line"
                unreadable.append(Unreadable(number, f"{where}: {first['msg']}"))
    return records, unreadable


class GroupBy(StrEnum):
    REPOSITORY = "repository"
    WORKFLOW = "workflow"
    FLAVOR = "flavor"


def _key(record: UsageRecord, by: GroupBy) -> str:
    if by is GroupBy.REPOSITORY:
        return record.repository or "(unknown)"
    if by is GroupBy.WORKFLOW:
        return record.workflow
    return record.flavor or "(unknown)"


@dataclass(frozen=True)
class UsageRow:
    group: str
    jobs: int
    vm_hours: float
    median_queue_wait_seconds: float | None


def summarize(
    records: Iterable[UsageRecord], by: GroupBy, since: datetime | None = None
) -> list[UsageRow]:
    """One row per group, most VM-hours first; records whose VM was deleted before `since`
    are left out."""
    groups: dict[str, list[UsageRecord]] = {}
    for record in records:
        if since is not None and record.vm_deleted_at < since:
            continue
        groups.setdefault(_key(record, by), []).append(record)
    rows = []
    for group, members in groups.items():
        waits = [wait for r in members if (wait := r.queue_wait_seconds) is not None]
        rows.append(
            UsageRow(
                group=group,
                jobs=len(members),
                vm_hours=sum(r.vm_seconds for r in members) / 3600,
                median_queue_wait_seconds=statistics.median(waits) if waits else None,
            )
        )
    return sorted(rows, key=lambda row: (-row.vm_hours, row.group))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def table(rows: list[UsageRow], by: GroupBy) -> Iterator[str]:
    header = (by.value.upper(), "JOBS", "VM-HOURS", "MEDIAN QUEUE WAIT")
    cells = [
        (row.group, str(row.jobs), f"{row.vm_hours:.2f}", _duration(row.median_queue_wait_seconds))
        for row in rows
    ]
    total_jobs = sum(row.jobs for row in rows)
    total_hours = sum(row.vm_hours for row in rows)
    cells.append(("total", str(total_jobs), f"{total_hours:.2f}", ""))
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        yield "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()


def as_json(rows: list[UsageRow], by: GroupBy) -> str:
    return json.dumps(
        [
            {
                by.value: row.group,
                "jobs": row.jobs,
                "vm_hours": round(row.vm_hours, 4),
                "median_queue_wait_seconds": row.median_queue_wait_seconds,
            }
            for row in rows
        ],
        indent=2,
    )


def utc_now() -> datetime:
    return datetime.now(UTC)
