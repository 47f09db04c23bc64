"""The simulated world: credentials, runner releases, scale sets, statistics, sessions, message
queues, runners and jobs, one module each, composed by `World`.

Each part keeps its own state and rules and reaches the others through the world
(`world.jobs.schedule()` when a change may let a queued job move). Everything is touched only
from the server's event loop, so no locks are needed; every change is an event in the shared
ledger (ledger.py), which wakes whoever waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection, Iterable

from simulator.github.config import SimulatorConfig
from simulator.github.faults import FaultBook
from simulator.github.model import JSON, Job
from simulator.github.tokens import JwtIssuer
from simulator.github.world.credentials import Credentials
from simulator.github.world.jobs import Jobs
from simulator.github.world.ledger import Ledger
from simulator.github.world.messages import MessageQueues
from simulator.github.world.releases import Releases
from simulator.github.world.runners import Runners
from simulator.github.world.scale_sets import ScaleSets
from simulator.github.world.sessions import Sessions
from simulator.github.world.statistics import Statistics

__all__ = ["World"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.05


class World:
    """The simulated service's state: its parts, the config they read, the base URL its
    answers name, and the ledger they record through."""

    def __init__(self, config: SimulatorConfig, base_url: str = "http://127.0.0.1") -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        # Kept across resets, as the process's secret is: a token stays a well-formed token.
        self.issuer = JwtIssuer()
        self.ledger = Ledger()
        self._ticker: asyncio.Task[None] | None = None
        self.reset()

    def reset(self) -> None:
        """Everything back to the start of the current config; waiters stay."""
        self.ledger.clear()
        self.rng = random.Random(self.config.seed)
        self.faults = FaultBook(self.rng)
        self.credentials = Credentials(self)
        self.releases = Releases(self)
        self.scale_sets = ScaleSets(self)
        self.statistics = Statistics(self)
        self.sessions = Sessions(self)
        self.messages = MessageQueues(self)
        self.runners = Runners(self)
        self.jobs = Jobs(self)
        self.ledger.waiters.bump()

    def shutdown(self) -> None:
        """Wake every long poll and waiter so the server can stop promptly."""
        if self._ticker is not None:
            self._ticker.cancel()
        self.ledger.close()

    @property
    def tenant_url(self) -> str:
        return f"{self.base_url}/pipelines/{self.config.tenant_id}/"

    def ensure_ticker(self) -> None:
        """Start the periodic sweep (abandoned sessions) once a loop is running."""
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while not self.ledger.closing:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.sessions.sweep_abandoned()
            except Exception:
                log.exception("simulator sweep failed")

    def state(
        self, parts: Collection[str] | None = None, completed_within: float | None = None
    ) -> JSON:
        """Everything, as the control API's `GET /_sim/state` shows it; only the keys in `parts`
        (and `version`) when given, and with `completed_within` only the jobs not completed
        or completed at most that many seconds ago (a watcher polling thousands of runners)."""
        everything = self._state(completed_within)
        if parts is None:
            return everything
        return {key: value for key, value in everything.items() if key in parts or key == "version"}

    def _state(self, completed_within: float | None) -> JSON:
        ledger, scale_sets = self.ledger, self.scale_sets
        jobs: Iterable[Job] = self.jobs.by_id.values()
        if completed_within is not None:
            since = time.time() - completed_within
            jobs = [j for j in jobs if j.finish_time is None or j.finish_time >= since]
        return {
            "version": ledger.waiters.version,
            "config": self.config.model_dump(mode="json"),
            "runner_groups": [scale_sets.group_json(g) for g in scale_sets.groups.values()],
            "scale_sets": scale_sets.state(),
            "sessions": self.sessions.state(),
            "jobs": [j.to_state() for j in jobs],
            "runners": [r.to_state() for r in self.runners.by_id.values()],
            "runner_releases": [r.to_control(time.time()) for r in self.releases.newest_first()],
            "counters": dict(ledger.counters),
            "admin_epoch": self.credentials.admin_epoch,
            "last_request_seq": ledger.request_seq,
            "last_event_seq": ledger.event_seq,
        }
