"""The fault book both simulators use (simulator.faults): matching, counting, chance, checks.

Both simulators' books are the shared one with their own fault fields and kinds; the request
kinds behave the same in each (their HTTP tests: tests/simulator/test_faults.py,
tests/simulator_openstack/test_faults.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from simulator import faults
from simulator.faults import FaultBook, FaultSpecError
from simulator.github import faults as github_faults
from simulator.openstack import faults as openstack_faults

ENDPOINTS = ("compute.servers.create", "compute.servers.delete", "network.ports.create")


@dataclass
class TaggedFault(faults.Fault):
    tag: str = ""


class MiniBook(FaultBook[TaggedFault]):
    """A simulator's book in miniature: its own field (`tag`) and kind (`mark`)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(random.Random(seed), TaggedFault)

    def _normalise(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("kind", "status") not in (*faults.REQUEST_KINDS, "mark"):
            raise FaultSpecError("unknown kind")
        return spec

    def _check(self, fault: TaggedFault) -> None:
        if fault.tag == "bad":
            raise FaultSpecError("bad tag")


def test_a_fault_fires_its_times_then_is_used_up() -> None:
    book = MiniBook()
    twice = book.add({"endpoint": "compute.servers.create", "times": 2, "status": 503})
    fired = [book.decide("compute.servers.create").terminal for _ in range(3)]
    assert fired == [twice, twice, None]
    assert twice.fired == 2
    assert twice.exhausted()
    forever = book.add({"endpoint": "compute.servers.create", "times": None})
    assert all(book.decide("compute.servers.create").terminal is forever for _ in range(5))
    assert not forever.exhausted()


def test_delays_add_up_and_the_first_status_or_drop_ends_the_request() -> None:
    book = MiniBook()
    slow = book.add({"endpoint": "network.*", "kind": "delay", "delay": 0.25})
    slower = book.add({"endpoint": "network.ports.create", "kind": "delay", "delay": 0.5})
    first = book.add({"endpoint": "network.ports.create", "kind": "drop"})
    second = book.add({"endpoint": "network.ports.create", "status": 500})
    decision = book.decide("network.ports.create")
    assert decision.delay == 0.75
    assert decision.terminal is first
    # Only what applied is used up: the second terminal fault waits for the next request.
    assert (slow.fired, slower.fired, first.fired, second.fired) == (1, 1, 1, 0)
    assert book.decide("network.ports.create").terminal is second


def test_an_endpoint_pattern_matches_by_fnmatch_and_a_plain_name_only_itself() -> None:
    book = MiniBook()
    book.add({"endpoint": "compute.*", "times": None})
    book.add({"endpoint": "network.ports.create", "times": None, "status": 502})
    assert book.decide("compute.servers.delete").terminal is not None
    assert book.decide("network.ports.create").terminal is not None
    assert book.decide("network.ports.list").terminal is None
    assert book.decide("identity.tokens").terminal is None


def test_a_simulators_own_kinds_are_taken_where_they_apply_never_by_decide() -> None:
    book = MiniBook()
    mark = book.add({"endpoint": "compute.servers.create", "kind": "mark", "tag": "x"})
    assert book.decide("compute.servers.create") == faults.Decision(delay=0.0, terminal=None)
    assert book.take("mark", "compute.servers.delete") is None
    assert book.take("other") is None
    assert book.take("mark", "compute.servers.create") is mark
    assert book.take("mark") is None  # used up
    assert mark.to_json()["tag"] == "x"


def test_probability_decides_by_the_books_random_source() -> None:
    never = MiniBook()
    never.add({"endpoint": "compute.*", "times": None, "probability": 0})
    assert not any(never.decide("compute.servers.create").terminal for _ in range(50))
    always = MiniBook()
    always.add({"endpoint": "compute.*", "times": None, "probability": 1})
    assert all(always.decide("compute.servers.create").terminal for _ in range(50))

    def pattern(seed: int) -> list[bool]:
        book = MiniBook(seed)
        book.add({"endpoint": "compute.*", "times": None, "probability": 0.5})
        return [book.decide("compute.servers.create").terminal is not None for _ in range(40)]

    # The same seed, the same faults: a flaky scenario replays exactly.
    assert pattern(7) == pattern(7)
    assert 0 < sum(pattern(7)) < 40


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"endpoint": "compute.*", "kind": "nonsense"}, "unknown kind"),
        ({"endpoint": "compute.*", "colour": "red"}, "unknown fault fields: ['colour']"),
        ({"endpoint": "compute.*", "probability": 1.5}, "probability must be within [0, 1]"),
        ({"endpoint": "compute.*", "times": -1}, "times must be >= 0 or null"),
        ({"endpoint": "compute.*", "tag": "bad"}, "bad tag"),
    ],
)
def test_a_bad_spec_is_refused_and_nothing_is_added(spec: dict[str, Any], message: str) -> None:
    book = MiniBook()
    with pytest.raises(FaultSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        book.add(spec)
    assert book.faults == []
    assert book.add({"endpoint": "compute.*"}).id == 1  # no id was spent


def test_faults_are_removed_by_id_or_all_at_once() -> None:
    book = MiniBook()
    first = book.add({"endpoint": "compute.*"})
    second = book.add({"endpoint": "network.*"})
    assert book.remove(first.id)
    assert not book.remove(first.id)
    assert book.faults == [second]
    book.clear()
    assert book.faults == []


BOOKS: dict[str, tuple[Callable[[], FaultBook[Any]], str]] = {
    "github": (lambda: github_faults.FaultBook(random.Random(1)), "get_message"),
    "openstack": (
        lambda: openstack_faults.FaultBook(random.Random(1), ENDPOINTS),
        "compute.servers.create",
    ),
}


@pytest.mark.parametrize("simulator", sorted(BOOKS))
def test_both_simulators_books_treat_the_request_kinds_alike(simulator: str) -> None:
    make, endpoint = BOOKS[simulator]
    book = make()
    delay = book.add({"endpoint": endpoint, "kind": "delay", "delay": 0.5, "times": None})
    drop = book.add({"endpoint": endpoint, "kind": "drop", "after_processing": True})
    status = book.add({"endpoint": endpoint, "kind": "status", "status": 503, "times": 2})
    decisions = [book.decide(endpoint) for _ in range(4)]
    assert [d.terminal for d in decisions] == [drop, status, status, None]
    assert all(d.delay == 0.5 for d in decisions)
    assert delay.fired == 4
    assert drop.to_json()["after_processing"] is True
    with pytest.raises(FaultSpecError, match="unknown fault fields"):
        book.add({"endpoint": endpoint, "kind": "status", "colour": "red"})
