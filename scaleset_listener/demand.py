"""How many runners a scale set wants and may have: the one place where demand, max_runners and
the cloud's capacity meet (the listener and the scaler's plan both ask here).

Demand is level-triggered: `statistics.totalAssignedJobs` from the session's initial statistics,
every message and every empty poll. Job messages are never counted (a batch holds at most 50 and
reassigned jobs repeat); they only tell which runner started or finished a job.
"""

from __future__ import annotations

UNLIMITED = 2**31 - 1


def cloud_capacity(owned: int, in_flight: int, free: int | None) -> int:
    """How many runners the cloud could run now (UNLIMITED when it sets no limit): the owned
    ones, plus what `free` still starts; creates in flight take theirs from `free` too.

    `free` is the provisioner's figure for this set (free pool addresses, quota headroom at its
    flavor: docs/architecture.md#capacity), in which this set's creates in flight have not yet
    taken theirs; `in_flight` must be counted in the same instant."""
    if free is None:
        return UNLIMITED
    return max(0, owned - in_flight + free)


def runner_ceiling(max_runners: int, capacity: int = UNLIMITED, lingering_vms: int = 0) -> int:
    """How many runners a set may own now: max_runners less the VMs that still cost without
    serving (finished, awaiting deletion; abandoned), and never more than the cloud holds. The
    X-ScaleSetMaxCapacity header is this ceiling."""
    return max(0, min(max_runners - lingering_vms, capacity))


def desired_runner_count(assigned_jobs: int, min_runners: int, ceiling: int) -> int:
    """min_runners + assigned jobs, up to the ceiling, never below zero."""
    return max(0, min(ceiling, min_runners + max(0, assigned_jobs)))
