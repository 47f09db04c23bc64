"""The retry policies, in one place (tenacity): what is transient, how long to wait, when to stop.

Two layers, never more:

* per request (`RetryPolicy.requests`): transport errors, 429 and 5xx except 501, bounded
  attempts with exponential backoff and jitter, `Retry-After` honoured (capped by the policy's
  longest wait so a hostile header cannot stall us for an hour);
* per activity (`RecoveryBackoff`, from `RetryPolicy.recovery_backoff`): once a request gave up,
  a long-running activity backs off (growing, capped, with jitter, never giving up) and starts
  over: the listener with a new session (`RetryPolicy.recovery`), the runner release lookup at
  start with a new lookup. Their waits are asyncio waits that a shutdown ends at once.

A supervisor restarting a crashed listener and scaler pair waits by the same `RecoveryBackoff`.
That is no third layer: a crash is an exception nobody expected (a bug), never a request that
gave up (the listener recovers from those, or ends the set), so no failure passes through both.

The recovery backoff grows over one incident, not over the life of the process: its wait
(`RecoveryBackoff`) counts the failures since it was last reset, and its owner resets it after a
success: the listener whenever a poll cycle succeeds (an empty poll answer, or a message handled
to the end), the supervisor when a pair ran longer than the longest wait before it crashed. So
the first failure after a success waits the first step again (about a second), even after an
earlier outage had pushed the wait to its cap; the `recovering` log's `attempt` counts the
same way. A message whose handling keeps failing still backs off, since no cycle succeeds. The
release lookup at start needs no reset: it ends at its first success.

Token-expiry handling (refresh the session or admin token once, retry once) is protocol logic and
lives beside the protocol, not here.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_fixed,
    wait_random,
)
from tenacity.wait import wait_base

from scaleset_listener.errors import HTTPStatusError, TransportFailure

log = structlog.get_logger(__name__)


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later identical request may not see."""
    if isinstance(exc, TransportFailure):
        return True
    return isinstance(exc, HTTPStatusError) and exc.is_transient


def _exponential_with_jitter(first: float, cap: float) -> wait_base:
    """first, 2x, 4x ... capped, plus up to a quarter of `first` of jitter (spreads herds)."""
    return wait_exponential(multiplier=first, max=cap) + wait_random(0, first / 4)


class RecoveryBackoff(wait_base):
    """Exponential, capped wait with jitter over the failures since the last `reset()`: first,
    2x, 4x ... cap, each plus up to a quarter of the first step.

    One instance is driven one way: as the `wait` of a tenacity loop (`RetryPolicy.recovery`),
    or by hand with `next_wait()` from a loop of the caller's own, so that every such wait
    follows one schedule.

    tenacity's attempt number keeps growing for as long as its loop runs (for the listener, the
    life of the process), so the streak is counted from the attempt at which a reset was seen.
    Failures counted by hand are numbered the same way.
    """

    def __init__(self, first: float, cap: float) -> None:
        # A first step above the cap would still wait the cap, but with the larger step's jitter.
        self.first = min(first, cap)
        self.cap = cap
        self._backoff = _exponential_with_jitter(self.first, cap)
        self._attempts_before_streak = 0
        self._reset_requested = False
        self._failures_by_hand = 0

    def reset(self) -> None:
        """Start over: the next failure is the first of a new streak."""
        self._reset_requested = True

    def streak_attempt(self, state: RetryCallState) -> int:
        """Which failure of the current streak `state` is (1 for the first).

        Idempotent per attempt: the wait and the log line of one failure both ask.
        """
        if self._reset_requested:
            self._reset_requested = False
            self._attempts_before_streak = state.attempt_number - 1
        return state.attempt_number - self._attempts_before_streak

    def __call__(self, retry_state: RetryCallState) -> float:
        # tenacity's strategies read the attempt number from the state: hand them the streak's.
        in_streak = copy.copy(retry_state)
        in_streak.attempt_number = self.streak_attempt(retry_state)
        return float(self._backoff(in_streak))

    def next_wait(self) -> float:
        """One more failure of the current streak, outside a tenacity loop: how long to wait
        before trying again."""
        self._failures_by_hand += 1
        # The strategies read only the attempt number; the state needs a loop, one never run.
        state = RetryCallState(_NO_LOOP, None, (), {})
        state.attempt_number = self._failures_by_hand
        return self(state)


_NO_LOOP = Retrying()


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    max_wait: float = 30.0
    recovery_max_wait: float = 60.0

    @property
    def first_wait(self) -> float:
        return min(1.0, self.max_wait)

    def _request_wait(self) -> Callable[[RetryCallState], float]:
        backoff = _exponential_with_jitter(self.first_wait, self.max_wait)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, HTTPStatusError) and exc.retry_after is not None:
                return min(exc.retry_after, self.max_wait)
            return float(backoff(state))

        return wait

    def requests(
        self, what: str, also_retry: Callable[[BaseException], bool] | None = None
    ) -> AsyncRetrying:
        """Bounded retries for one HTTP call; `also_retry` widens what counts as transient."""

        def retryable(exc: BaseException) -> bool:
            return is_transient(exc) or (also_retry is not None and also_retry(exc))

        return AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=self._request_wait(),
            stop=stop_after_attempt(self.max_attempts),
            before_sleep=_log_retry(what),
            reraise=True,
        )

    def recovery_backoff(self) -> RecoveryBackoff:
        return RecoveryBackoff(self.first_wait, self.recovery_max_wait)

    def recovery(
        self,
        what: str,
        retryable: Callable[[BaseException], bool],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: RecoveryBackoff | None = None,
    ) -> AsyncRetrying:
        """Unbounded, capped backoff for a long-running loop that must outlive incidents.

        `sleep` lets the caller wake early on shutdown instead of finishing a long backoff.
        `backoff` is the caller's handle to reset the wait after a success (see the module
        docstring); without one the wait only grows.
        """
        wait = backoff if backoff is not None else self.recovery_backoff()
        return AsyncRetrying(
            sleep=sleep,
            retry=retry_if_exception(retryable),
            wait=wait,
            stop=stop_never,
            before_sleep=_log_recovery(what, wait),
            reraise=True,
        )

    @staticmethod
    def until_no_conflict(
        is_conflict: Callable[[BaseException], bool],
        interval: float,
        sleep: Callable[[float], Awaitable[None]],
        on_conflict: Callable[[int, float, BaseException | None], None],
    ) -> AsyncRetrying:
        """Fixed-interval retries while another session holds the scale set (409).

        The service drops an abandoned session after a while (not published; minutes); until
        then every attempt is logged so an operator sees why the listener is waiting.
        """

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            on_conflict(state.attempt_number, state.upcoming_sleep, exc)

        return AsyncRetrying(
            sleep=sleep,
            retry=retry_if_exception(is_conflict),
            wait=wait_fixed(interval),
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "request_retry",
            request=what,
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            error=str(exc),
        )

    return before_sleep


def _log_recovery(what: str, backoff: RecoveryBackoff) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.error(
            "recovering",
            activity=what,
            attempt=backoff.streak_attempt(state),
            wait_seconds=round(state.upcoming_sleep, 3),
            error=str(exc),
            error_type=type(exc).__name__,
        )

    return before_sleep
