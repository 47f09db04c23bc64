"""The recovery backoff grows over one incident and starts over after a success."""

from __future__ import annotations

from structlog.testing import capture_logs

from scaleset_listener.errors import TransportFailure
from scaleset_listener.retrying import RetryPolicy


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
