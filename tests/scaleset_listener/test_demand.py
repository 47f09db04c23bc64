"""demand.py: the one place where demand, max_runners and the cloud's capacity meet."""

import pytest

from scaleset_listener.demand import (
    UNLIMITED,
    cloud_capacity,
    desired_runner_count,
    runner_ceiling,
)


@pytest.mark.parametrize(
    ("assigned", "min_runners", "max_runners", "capacity", "desired"),
    [
        (0, 0, 10, UNLIMITED, 0),
        (3, 0, 10, UNLIMITED, 3),
        (3, 2, 10, UNLIMITED, 5),
        (30, 0, 10, UNLIMITED, 10),
        (30, 2, 10, 4, 4),
        (0, 2, 10, 1, 1),
        (0, 2, 10, 0, 0),
        (-5, 1, 10, UNLIMITED, 1),
        (5, 0, 0, UNLIMITED, 0),
    ],
)
def test_desired_is_min_of_the_ceiling_and_min_plus_assigned(
    assigned: int, min_runners: int, max_runners: int, capacity: int, desired: int
) -> None:
    ceiling = runner_ceiling(max_runners, capacity)
    assert desired_runner_count(assigned, min_runners, ceiling) == desired


@pytest.mark.parametrize(
    ("max_runners", "capacity", "lingering", "ceiling"),
    [
        (10, UNLIMITED, 0, 10),
        (10, 3, 0, 3),
        (0, UNLIMITED, 0, 0),
        (10, -1, 0, 0),
        # Finished VMs awaiting deletion still cost under max_runners.
        (10, UNLIMITED, 4, 6),
        (10, 5, 4, 5),
        (3, UNLIMITED, 5, 0),
    ],
)
def test_the_ceiling_is_max_runners_less_lingering_vms_within_the_cloud(
    max_runners: int, capacity: int, lingering: int, ceiling: int
) -> None:
    assert runner_ceiling(max_runners, capacity, lingering) == ceiling


@pytest.mark.parametrize(
    ("owned", "in_flight", "free", "capacity"),
    [
        (0, 0, None, UNLIMITED),
        (5, 2, None, UNLIMITED),
        (0, 0, 3, 3),
        (4, 0, 3, 7),
        # Creates in flight have not taken their floating IP yet: they take it from `free`.
        (4, 2, 3, 5),
        (2, 2, 0, 0),
    ],
)
def test_cloud_capacity_counts_owned_runners_plus_what_free_still_starts(
    owned: int, in_flight: int, free: int | None, capacity: int
) -> None:
    assert cloud_capacity(owned, in_flight, free) == capacity
