import pytest

from scaleset_listener.scaling import UNLIMITED, desired_runner_count, max_capacity_header


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
def test_desired_is_min_of_max_capacity_and_min_plus_assigned(
    assigned: int, min_runners: int, max_runners: int, capacity: int, desired: int
) -> None:
    assert desired_runner_count(assigned, min_runners, max_runners, capacity) == desired


@pytest.mark.parametrize(
    ("max_runners", "capacity", "header"),
    [(10, UNLIMITED, 10), (10, 3, 3), (0, UNLIMITED, 0), (10, -1, 0)],
)
def test_capacity_header_is_what_the_set_can_run_now(
    max_runners: int, capacity: int, header: int
) -> None:
    assert max_capacity_header(max_runners, capacity) == header
