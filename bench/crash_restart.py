"""Crash-restart soak: SIGKILL the real listener at random points, restart it, judge the world.

Each trial (`simulator.crash_trial.run_trial`) is a fresh world: the simulated GitHub and cloud,
light VMs playing the VMs, and `python -m scaleset_listener run --env-file F` as a
subprocess. The kill point rotates over provisioning, jobs running, right after the ack of a
message that assigned jobs, during the startup reconciliation of a restart, and twice at any
moment; the offset within it is random (seeded). After the restart (reconciliation on) every
job must be served, no VM and no runner registration left, no busy runner killed, never more
than max runners, no session left, and the listener must exit 0 on SIGTERM.

`python -m bench.crash_restart --trials 100 [--seed S] [--jobs 8] [--max-runners 3]` prints one
line per trial and, last, one JSON object: trials, passed, failed (with reasons), mean and max
trial seconds, violations by kind, and how many kills landed in the phase they aimed at.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from simulator.crash_trial import KILL_POINTS, KillPoint, TrialResult, run_trial
from simulator.e2e_world import GuestKind


def soak(
    trials: int,
    seed: int,
    jobs: int,
    max_runners: int,
    guests: GuestKind = "light",
    keep_failed: Path | None = None,
    points: Sequence[KillPoint] = KILL_POINTS,
) -> dict[str, Any]:
    results: list[TrialResult] = []
    for number in range(trials):
        point = points[number % len(points)]
        with tempfile.TemporaryDirectory(prefix="crash-trial-") as scratch:
            result = run_trial(
                Path(scratch),
                point,
                seed + number,
                jobs=jobs,
                max_runners=max_runners,
                guests=guests,
            )
            if not result.passed and keep_failed is not None:
                kept = keep_failed / f"trial-{number + 1}-{point}-seed-{seed + number}"
                shutil.copytree(scratch, kept)
                result.notes["evidence"] = str(kept)
        results.append(result)
        outcome = "ok" if result.passed else "FAILED"
        reasons = "; ".join(f"{v.kind}: {v.detail}" for v in result.violations)
        print(
            f"trial {number + 1}/{trials} point={point} seed={seed + number} {outcome}"
            f" {result.seconds:.1f}s landed={result.landed}"
            f" boot_timeout={result.notes.get('boot_timeout')}"
            + (f" error={result.error}" if result.error else "")
            + (f" violations={reasons}" if reasons else ""),
            flush=True,
        )
    seconds = [r.seconds for r in results]
    kinds: Counter[str] = Counter(v.kind for r in results for v in r.violations)
    return {
        "trials": trials,
        "passed": sum(r.passed for r in results),
        "failed": [
            {k: v for k, v in r.summary().items() if k not in ("reconciled",)}
            for r in results
            if not r.passed
        ],
        "mean_trial_seconds": round(statistics.fmean(seconds), 2) if seconds else 0.0,
        "max_trial_seconds": round(max(seconds), 2) if seconds else 0.0,
        "violations_by_kind": dict(kinds),
        "landed_by_point": {
            point: f"{sum(r.landed for r in results if r.point == point)}"
            f"/{sum(r.point == point for r in results)}"
            for point in points
        },
        "seed": seed,
        "jobs_per_trial": jobs,
        "max_runners": max_runners,
        "guests": guests,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/crash_restart.py", description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=8, help="jobs per trial (default 8)")
    parser.add_argument("--max-runners", type=int, default=3, help="max_runners (default 3)")
    parser.add_argument(
        "--guests", choices=["light", "sandbox"], default="light", help="what plays the VMs"
    )
    parser.add_argument(
        "--keep-failed",
        type=Path,
        default=None,
        help="copy a failed trial's listener logs and GitHub event log under this directory",
    )
    parser.add_argument(
        "--points",
        default=",".join(KILL_POINTS),
        help=f"kill points to rotate over, comma-separated (default {','.join(KILL_POINTS)})",
    )
    args = parser.parse_args(argv)
    points = [point.strip() for point in args.points.split(",") if point.strip()]
    unknown = sorted(set(points) - set(KILL_POINTS))
    if unknown or not points:
        parser.error(f"--points: unknown {unknown}; known: {', '.join(KILL_POINTS)}")
    if args.trials < 1 or args.jobs < 2 or args.max_runners < 1:
        parser.error("--trials and --max-runners must be at least 1, --jobs at least 2")
    summary = soak(
        args.trials,
        args.seed,
        args.jobs,
        args.max_runners,
        args.guests,
        args.keep_failed,
        cast("list[KillPoint]", points),
    )
    print(json.dumps(summary), flush=True)
    return 0 if summary["passed"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
