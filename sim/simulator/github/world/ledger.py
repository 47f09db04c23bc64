"""What every part of the world records through: the version waiters wake on, the event and
request logs, the counters and the timers.

The world is touched only from the server's event loop (handlers and the timers started here),
so no locks are needed. Every change of state goes through `event()`, which bumps the version
and wakes whoever waits (long polls, the control API's `wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.github.model import JSON

log = logging.getLogger(__name__)

LOG_LIMIT = 20_000
# Listed up front so that the state shows every counter, also the ones still at 0.
COUNTERS = (
    "sessions_created",
    "sessions_deleted",
    "sessions_refreshed",
    "sessions_evicted",
    "sessions_abandoned",
    "messages_created",
    "messages_delivered",
    "messages_acked",
    "messages_redelivered",
    "messages_implicitly_acked",
    "duplicate_acks",
    "unknown_acks",
    "acquire_calls",
    "jobs_acquired",
    "jit_configs",
    "runner_removals",
    "runner_removal_calls",
    "jobs_enqueued",
    "jobs_completed",
    "withdrawals",
    "admin_tokens_issued",
    "registration_tokens_issued",
    "installation_tokens_issued",
    "queue_tokens_issued",
    "runners_refused",
)


@dataclass
class Waiters:
    """A version counter plus an event replaced on every bump, so many waiters can wake."""

    version: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def bump(self) -> None:
        self.version += 1
        old, self.event = self.event, asyncio.Event()
        old.set()

    async def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)


class Ledger:
    """Logs, counters, timers and the version; a reset clears them, the waiters stay."""

    def __init__(self) -> None:
        self.waiters = Waiters()
        self.closing = False
        self._timers: set[asyncio.Task[None]] = set()
        # Runs after every event, before the waiters wake (the statistics keep their history).
        self.on_event: Callable[[], None] = _nothing
        self.clear()

    def clear(self) -> None:
        """Cancel pending timers and forget the logs and counters."""
        for task in list(self._timers):
            task.cancel()
        self._timers.clear()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.requests: deque[JSON] = deque(maxlen=LOG_LIMIT)
        self.events: deque[JSON] = deque(maxlen=LOG_LIMIT)
        self.request_seq = 0
        self.event_seq = 0
        # Requests by endpoint (None: no route matched): the request log keeps only the newest.
        self.request_counts: dict[str, int] = {}

    def close(self) -> None:
        """Stop the timers and wake every waiter, so the server can stop promptly."""
        self.closing = True
        for task in list(self._timers):
            task.cancel()
        self.waiters.bump()

    def event(self, kind: str, **fields: Any) -> None:
        self.event_seq += 1
        self.events.append({"seq": self.event_seq, "time": time.time(), "type": kind, **fields})
        self.on_event()
        self.waiters.bump()

    def count(self, counter: str, by: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + by

    def log_request(self, entry: JSON) -> None:
        self.request_seq += 1
        self.requests.append({"seq": self.request_seq, **entry})
        endpoint = str(entry.get("endpoint"))
        self.request_counts[endpoint] = self.request_counts.get(endpoint, 0) + 1
        self.waiters.bump()

    async def wait_until(self, ready: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + min(seconds, 120.0)
        while not ready() and not self.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self.waiters.wait(remaining)

    def later(self, delay: float, action: Callable[[], None]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            try:
                action()
            except Exception:
                log.exception("simulator timer failed")

        task = asyncio.get_running_loop().create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)


def _nothing() -> None:
    pass
