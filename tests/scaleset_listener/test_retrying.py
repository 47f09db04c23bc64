"""The recovery backoff grows over one incident and starts over after a success; whether a
tenacity loop or a loop by hand drives it, it waits the same."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from scaleset_listener.errors import TransportFailure
from scaleset_listener.retrying import RecoveryBackoff, RetryPolicy


async def test_a_reset_backoff_waits_the_first_step_again_and_counts_attempts_anew() -> None:
    policy = RetryPolicy(max_wait=0.04, recovery_max_wait=0.3)
    backoff = policy.recovery_backoff()
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    # Five failures, a success (reset), two failures, then done.
    script = iter(["fail"] * 5 + ["succeed-then-fail", "fail", "done"])
    with capture_logs() as logs:
        async for attempt in policy.recovery(
            "test", lambda exc: isinstance(exc, TransportFailure), sleep=record, backoff=backoff
        ):
            with attempt:
                step = next(script)
                if step == "succeed-then-fail":
                    backoff.reset()  # what the listener does after a successful poll
                if step != "done":
                    raise TransportFailure("GET", "http://x", step)
    jitter = 0.04 / 4
    expected = [0.04, 0.08, 0.16, 0.3, 0.3, 0.04, 0.08]
    assert len(waits) == len(expected)
    for wait, base in zip(waits, expected, strict=True):
        assert base <= wait <= base + jitter
    recovering = [entry for entry in logs if entry["event"] == "recovering"]
    assert [entry["attempt"] for entry in recovering] == [1, 2, 3, 4, 5, 1, 2]
    assert [entry["wait_seconds"] for entry in recovering] == [round(w, 3) for w in waits]


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Pins the random draw of the jitter (0 <= draw < 1); 0 until set."""
    draw = [0.0]
    monkeypatch.setattr(random, "random", lambda: draw[0])

    def pin(value: float) -> None:
        draw[0] = value

    return pin


@pytest.mark.parametrize(
    ("first", "cap", "waits"),
    [
        (1.0, 60.0, [1, 2, 4, 8, 16, 32, 60, 60, 60]),
        (0.5, 3.0, [0.5, 1, 2, 3, 3]),
        (1.0, 1.0, [1, 1, 1]),
        # A first step above the cap waits the cap from the start.
        (2.0, 0.5, [0.5, 0.5]),
    ],
)
def test_the_wait_doubles_per_failure_up_to_the_cap(
    jitter: Callable[[float], None], first: float, cap: float, waits: list[float]
) -> None:
    backoff = RecoveryBackoff(first, cap)
    assert [backoff.next_wait() for _ in waits] == pytest.approx(waits)


@pytest.mark.parametrize(
    ("script", "waits"),
    [
        # f: a failure (its wait recorded), r: a success resets the backoff.
        ("fffrff", [1, 2, 4, 1, 2]),
        ("rf", [1]),
        ("frrf", [1, 1]),
        ("ffffffffrf", [1, 2, 4, 8, 16, 32, 60, 60, 1]),
        ("fffrfrf", [1, 2, 4, 1, 1]),
    ],
)
def test_a_reset_makes_the_next_failure_the_first_of_a_new_incident(
    jitter: Callable[[float], None], script: str, waits: list[float]
) -> None:
    backoff = RecoveryBackoff(1.0, 60.0)
    seen: list[float] = []
    for step in script:
        if step == "r":
            backoff.reset()
        else:
            seen.append(backoff.next_wait())
    assert seen == pytest.approx(waits)


@pytest.mark.parametrize(
    ("first", "cap", "failures", "draw", "wait"),
    [
        # Up to a quarter of the first step on top, at every step, the cap included.
        (1.0, 60.0, 1, 0.0, 1.0),
        (1.0, 60.0, 1, 0.5, 1.125),
        (1.0, 60.0, 1, 0.999, 1.24975),
        (1.0, 60.0, 3, 0.999, 4.24975),
        (1.0, 60.0, 10, 0.999, 60.24975),
        (0.04, 0.3, 5, 0.5, 0.305),
        # The jitter follows the first step actually waited, not one clamped to the cap.
        (2.0, 0.5, 1, 0.999, 0.624875),
    ],
)
def test_the_jitter_adds_up_to_a_quarter_of_the_first_step(
    jitter: Callable[[float], None],
    first: float,
    cap: float,
    failures: int,
    draw: float,
    wait: float,
) -> None:
    jitter(draw)
    backoff = RecoveryBackoff(first, cap)
    *_, last = (backoff.next_wait() for _ in range(failures))
    assert last == pytest.approx(wait)


def test_the_jitter_varies_between_waits_within_its_bounds() -> None:
    firsts = [RecoveryBackoff(1.0, 60.0).next_wait() for _ in range(200)]
    assert all(1.0 <= wait <= 1.25 for wait in firsts)
    # Herds of listeners restarting together spread out.
    assert len(set(firsts)) > 1


@pytest.mark.parametrize(
    ("max_wait", "recovery_max_wait", "first", "cap"),
    [
        (30.0, 60.0, 1.0, 60.0),  # the defaults: 1, 2, 4 ... 60 s
        (0.5, 60.0, 0.5, 60.0),  # a request wait below a second starts recovery lower too
        (30.0, 0.05, 0.05, 0.05),  # a tiny cap bounds the first step as well
    ],
)
def test_the_policy_builds_its_recovery_backoff_from_its_settings(
    max_wait: float, recovery_max_wait: float, first: float, cap: float
) -> None:
    backoff = RetryPolicy(max_wait=max_wait, recovery_max_wait=recovery_max_wait).recovery_backoff()
    assert (backoff.first, backoff.cap) == (first, cap)


async def test_a_tenacity_loop_and_a_loop_by_hand_wait_the_same(
    jitter: Callable[[float], None],
) -> None:
    """One schedule whichever way a backoff is driven, resets included."""
    script = "ffffrff"
    policy = RetryPolicy(max_wait=0.04, recovery_max_wait=0.3)
    jitter(0.5)

    in_loop = policy.recovery_backoff()
    looped: list[float] = []

    async def record(seconds: float) -> None:
        looped.append(seconds)

    steps = iter(script + "d")
    async for attempt in policy.recovery(
        "test", lambda exc: isinstance(exc, TransportFailure), sleep=record, backoff=in_loop
    ):
        with attempt:
            step = next(steps)
            while step == "r":
                in_loop.reset()
                step = next(steps)
            if step == "f":
                raise TransportFailure("GET", "http://x", step)

    by_hand = policy.recovery_backoff()
    handmade: list[float] = []
    for step in script:
        if step == "r":
            by_hand.reset()
        else:
            handmade.append(by_hand.next_wait())

    assert looped == pytest.approx(handmade)
    assert handmade == pytest.approx([0.045, 0.085, 0.165, 0.305, 0.045, 0.085])
