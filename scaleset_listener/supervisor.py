"""One scale set's listener and scaler, supervised together.

The listener acknowledges messages and the scaler turns them into VMs; one without the other is
worse than neither (a listener whose scaler died keeps acknowledging, no job is served, and
nothing would notice). So they run as a pair:

* both stop when `stop` is set (the listener finishes the message in hand, the scaler lets
  creations in flight finish), and the managed scale set is released once, at the end;
* a ListenerError out of the listener is final (it only escapes before the first session: bad
  credentials, an unknown runner group): the set ends, reported as failed;
* any other exception out of either is a bug or a surprise: it is logged with its traceback
  (`scale_set_crashed`), the other half is stopped the graceful way, `/readyz` says the set is
  down and why, and the pair is started again after the listener's recovery backoff
  (`retrying.RecoveryBackoff`: 1, 2, 4 ... RECOVERY_BACKOFF_MAX seconds, with its jitter; a
  pair that ran longer than that starts the count again). The listener keeps its scale set and
  message position, the scaler its runners: a restart loses no VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from typing import Any

import structlog

from scaleset_listener.errors import ListenerError
from scaleset_listener.health import ScaleSetHealth
from scaleset_listener.listener import Listener
from scaleset_listener.retrying import RecoveryBackoff, RetryPolicy
from scaleset_listener.scaler_port import Scaler

log = structlog.get_logger(__name__)


class ScaleSetSupervisor:
    def __init__(
        self,
        listener: Listener,
        scaler: Scaler,
        *,
        backoff: RecoveryBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self.scaler = scaler
        self._backoff = backoff if backoff is not None else RetryPolicy().recovery_backoff()
        self._clock = clock
        self._log = log.bind(scale_set=listener.name)
        self.down: str | None = None
        self.restarts = 0
        self._restart_wait = self._backoff.first

    @property
    def name(self) -> str:
        return self.listener.name

    def health(self) -> ScaleSetHealth:
        def last_poll_at() -> float | None:
            return self.listener.last_poll_at

        def problem() -> str | None:
            return self.down or self.scaler.problem()

        return ScaleSetHealth(self.name, last_poll_at, problem)

    async def run(self, stop: asyncio.Event) -> bool:
        """Serve until `stop` (True), or until the listener fails for good (False)."""
        self._backoff.reset()
        try:
            while not stop.is_set():
                started = self._clock()
                crash = await self._run_pair(stop, started)
                if crash is None:
                    return True
                if isinstance(crash, ListenerError):
                    self._log.error(
                        "scale_set_failed", error=str(crash), error_type=type(crash).__name__
                    )
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._restart_wait):
                        await stop.wait()
                self.down = None
            return True
        finally:
            await self.listener.release()

    def _crashed(self, crash: BaseException, started: float) -> None:
        """Say so at once (log with traceback, `/readyz`), before the other half winds down."""
        if self._clock() - started > self._backoff.cap:
            # It outlived the longest wait, so it had recovered: this crash is a new incident.
            self._backoff.reset()
        self._restart_wait = self._backoff.next_wait()
        self.restarts += 1
        wait = self._restart_wait
        self.down = (
            f"down after {type(crash).__name__}: {crash} (restarting in {round(wait, 1):g} s)"
        )
        self._log.error(
            "scale_set_crashed",
            error=str(crash),
            error_type=type(crash).__name__,
            restart_in_seconds=round(wait, 3),
            restarts=self.restarts,
            exc_info=crash,
        )

    async def _run_pair(self, stop: asyncio.Event, started: float) -> BaseException | None:
        """Run listener and scaler until `stop` or until one of them ends; the exception that
        ended it (None for a clean stop)."""
        pair_stop = asyncio.Event()
        stopper = asyncio.create_task(stop.wait(), name=f"stop:{self.name}")
        scaler = asyncio.create_task(self.scaler.run(pair_stop), name=f"scaler:{self.name}")
        listener = asyncio.create_task(self.listener.run(pair_stop), name=f"listener:{self.name}")
        halves = {scaler, listener}
        try:
            done, _ = await asyncio.wait(halves | {stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # A forced stop (second signal): nothing is waited for.
            for task in halves:
                task.cancel()
            await asyncio.gather(*halves, return_exceptions=True)
            raise
        finally:
            pair_stop.set()
            stopper.cancel()
        failure = _first_failure(listener, scaler, done, stop)
        if failure is not None and not isinstance(failure, ListenerError):
            self._crashed(failure, started)
        # Both halves wind down the graceful way (the message in hand, creations in flight).
        await asyncio.wait(halves)
        if failure is None:
            late = _first_failure(listener, scaler, halves, stop)
            if late is not None:
                # Stopping anyway: worth its traceback, not a restart.
                self._log.error("scale_set_stop_failed", error=str(late), exc_info=late)
        return failure


def _first_failure(
    listener: asyncio.Task[None],
    scaler: asyncio.Task[None],
    done: Collection[asyncio.Task[Any]],
    stop: asyncio.Event,
) -> BaseException | None:
    """Why the pair ended among the finished `done` tasks: an exception, or a half that
    returned without being asked to (as unexpected as an exception); None for a clean stop."""
    for task, name in ((listener, "listener"), (scaler, "scaler")):
        if task not in done or not task.done():
            continue
        failure = task.exception()
        if failure is not None:
            return failure
        if not stop.is_set():
            return RuntimeError(f"the {name} stopped without being asked to")
    return None
