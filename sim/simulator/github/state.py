"""The simulated world: scale sets, sessions, the message queue, jobs and runners.

One `World` holds all state and is touched only from the server's event loop (handlers and the
timers it starts), so no locks are needed. Every mutation goes through `_event()`, which bumps a
version number and wakes whoever waits (long polls, the control API's `wait`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from simulator.github.config import SimulatorConfig
from simulator.github.faults import FaultBook
from simulator.github.model import (
    DAY,
    FIRST_MESSAGE_ID,
    JSON,
    ControlError,
    Envelope,
    Job,
    MessageQueue,
    Runner,
    RunnerGroup,
    RunnerRelease,
    ScaleSet,
    ServiceError,
    Session,
    parse_version,
    statistics_json,
    wire_time,
)
from simulator.github.tokens import QUEUE, App, JwtIssuer, unverified_app_issuer
from simulator.runner_stub import RunnerTarball, build_runner_tarball

log = logging.getLogger(__name__)

LOG_LIMIT = 20_000
IN_FLIGHT = ("available", "acquired", "assigned", "running")
ZEROABLE = frozenset({"runnerRequestId", "workflowRunId", "jobId"})
# What a job may ask of the runner that takes it (simulator.sandbox's stub runner obeys): crash
# (the runner dies, its job fails) or hang (it never reports; auto_finish leaves the job running).
RUNNER_BEHAVIOURS = frozenset({"crash", "hang"})
# The files of a runner release, as GitHub's downloads endpoint lists them: os, architecture,
# archive type. Only the Linux ones can be downloaded here (the stub runner, arch-independent).
RUNNER_PLATFORMS = (
    ("osx", "x64", "tar.gz"),
    ("osx", "arm64", "tar.gz"),
    ("linux", "x64", "tar.gz"),
    ("linux", "arm64", "tar.gz"),
    ("linux", "arm", "tar.gz"),
    ("win", "x64", "zip"),
    ("win", "arm64", "zip"),
)

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
class StatisticsFault:
    """Distortions of the statistics object (docs/architecture.md#statistics)."""

    scale_set_id: int | None = None
    # Send the statistics as they were this many changes ago.
    lag: int = 0
    # Phantom assigned jobs added to totalAssignedJobs.
    inflate_assigned: int = 0
    # Report totalRegisteredRunners 0 (and idle 0) while runners are busy.
    registered_zero: bool = False
    # Leave `statistics` out entirely.
    missing: bool = False
    # "session" (create/refresh answers), "message" (envelopes) or "all".
    applies_to: str = "all"
    times: int | None = None
    fired: int = 0

    def to_json(self) -> JSON:
        return dict(self.__dict__)


@dataclass
class RegistrationToken:
    token: str
    scope_path: str
    expires: float


@dataclass
class InstallationToken:
    token: str
    installation_id: int
    expires: float


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


class World:
    def __init__(self, config: SimulatorConfig, base_url: str = "http://127.0.0.1") -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.issuer = JwtIssuer()
        self.waiters = Waiters()
        self.closing = False
        self._timers: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.reset()

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        for task in list(self._timers):
            task.cancel()
        self._timers.clear()
        self.rng = random.Random(self.config.seed)
        self.faults = FaultBook(self.rng)
        self.statistics_faults: list[StatisticsFault] = []
        self.pats: set[str] = set(self.config.pats)
        self.runner_releases: list[RunnerRelease] = [
            RunnerRelease(
                self.config.runner_version,
                time.time() - self.config.runner_version_age_days * DAY,
            )
        ]
        # GHES hands out a temporary token with each runner download; kept to recognise them.
        self.download_tokens: set[str] = set()
        self.apps: dict[str, App] = {}
        self.installation_tokens: dict[str, InstallationToken] = {}
        self.registration_tokens: dict[str, RegistrationToken] = {}
        self.admin_epoch = 0
        self.runner_groups: dict[int, RunnerGroup] = {1: RunnerGroup(1, "Default")}
        self.scale_sets: dict[int, ScaleSet] = {}
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[int, Job] = {}
        self.runners: dict[int, Runner] = {}
        self.queues: dict[int, MessageQueue] = {}
        self.stats_history: dict[int, deque[dict[str, int]]] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.requests: deque[JSON] = deque(maxlen=LOG_LIMIT)
        self.events: deque[JSON] = deque(maxlen=LOG_LIMIT)
        self.request_seq = 0
        self.event_seq = 0
        self._next_group_id = 2
        self._next_scale_set_id = 1
        self._next_runner_id = 1
        self._next_request_id = 1001
        self._next_run_id = 9001
        self._next_message_id = FIRST_MESSAGE_ID
        self.waiters.bump()

    def shutdown(self) -> None:
        """Wake every long poll and waiter so the server can stop promptly."""
        self.closing = True
        for task in list(self._timers):
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        self.waiters.bump()

    @property
    def tenant_url(self) -> str:
        return f"{self.base_url}/pipelines/{self.config.tenant_id}/"

    def queue_url(self, session: Session) -> str:
        # The query string is deliberate: clients must keep it when polling and acknowledging.
        path = f"/broker/scalesets/{session.scale_set_id}/message"
        return f"{self.base_url}{path}?sessionId={session.id}"

    # ------------------------------------------------------------------ logs and waiting

    def _event(self, kind: str, **fields: Any) -> None:
        self.event_seq += 1
        self.events.append({"seq": self.event_seq, "time": time.time(), "type": kind, **fields})
        for ss_id in self.scale_sets:
            history = self.stats_history.setdefault(ss_id, deque(maxlen=200))
            snapshot = self.raw_statistics(ss_id)
            if not history or history[-1] != snapshot:
                history.append(snapshot)
        self.waiters.bump()

    def count(self, counter: str, by: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + by

    def log_request(self, entry: JSON) -> None:
        self.request_seq += 1
        self.requests.append({"seq": self.request_seq, **entry})
        self.waiters.bump()

    async def wait_until(self, ready: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + min(seconds, 120.0)
        while not ready() and not self.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self.waiters.wait(remaining)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            try:
                action()
            except Exception:
                log.exception("simulator timer failed")

        task = asyncio.get_running_loop().create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def ensure_ticker(self) -> None:
        """Start the periodic sweep (abandoned sessions) once a loop is running."""
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while not self.closing:
            await asyncio.sleep(0.05)
            try:
                self._sweep_abandoned()
            except Exception:
                log.exception("simulator sweep failed")

    def _sweep_abandoned(self) -> None:
        limit = self.config.session_abandon_timeout
        if limit is None:
            return
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if session.ghost or session.polls_in_flight:
                continue
            if now - session.last_seen > limit:
                del self.sessions[session.id]
                self.count("sessions_abandoned")
                self._event(
                    "session_abandoned", session_id=session.id, scale_set_id=session.scale_set_id
                )

    # ------------------------------------------------------------------ statistics

    def raw_statistics(self, ss_id: int) -> dict[str, int]:
        stats = dict.fromkeys(
            ("available", "acquired", "assigned", "running", "registered", "busy", "idle"), 0
        )
        for job in self.jobs.values():
            if job.scale_set_id != ss_id:
                continue
            if job.state in ("available", "acquired"):
                stats[job.state] += 1
            elif job.state in ("assigned", "running"):
                stats["assigned"] += 1
                if job.state == "running":
                    stats["running"] += 1
        for runner in self.runners.values():
            if runner.scale_set_id != ss_id:
                continue
            stats["registered"] += 1
            if runner.state == "busy":
                stats["busy"] += 1
            elif runner.state == "idle":
                stats["idle"] += 1
        return stats

    def statistics(self, ss_id: int, where: str) -> JSON | None:
        """Statistics as sent at this moment, after any statistics fault; None = left out."""
        stats = self.raw_statistics(ss_id)
        for fault in self.statistics_faults:
            if fault.scale_set_id not in (None, ss_id) or fault.applies_to not in ("all", where):
                continue
            if fault.times is not None and fault.fired >= fault.times:
                continue
            fault.fired += 1
            if fault.missing:
                return None
            if fault.lag:
                history = self.stats_history.get(ss_id) or deque([stats])
                index = max(0, len(history) - 1 - fault.lag)
                stats = dict(history[index])
            stats["assigned"] += fault.inflate_assigned
            if fault.registered_zero:
                stats["registered"] = 0
                stats["idle"] = 0
        return statistics_json(stats)

    # ------------------------------------------------------------------ credentials

    def issue_registration_token(self, scope_path: str) -> RegistrationToken:
        token = RegistrationToken(
            token="AREG" + secrets.token_hex(14).upper(),
            scope_path=scope_path,
            expires=time.time() + self.config.registration_token_ttl,
        )
        self.registration_tokens[token.token] = token
        self.count("registration_tokens_issued")
        self._event("registration_token_issued", scope=scope_path)
        return token

    def issue_installation_token(self, installation_id: int) -> InstallationToken:
        token = InstallationToken(
            token="ghs_" + secrets.token_hex(18),
            installation_id=installation_id,
            expires=time.time() + self.config.installation_token_ttl,
        )
        self.installation_tokens[token.token] = token
        self.count("installation_tokens_issued")
        self._event("installation_token_issued", installation_id=installation_id)
        return token

    def issue_admin_token(self, scope_path: str) -> str:
        token, _ = self.issuer.issue(
            "admin", self.config.admin_token_ttl, epoch=self.admin_epoch, scope=scope_path
        )
        self.count("admin_tokens_issued")
        self._event("admin_token_issued", scope=scope_path)
        return token

    def admin_token_valid(self, token: str) -> bool:
        claims = self.issuer.decode(token)
        return (
            claims is not None
            and claims.get("typ") == "admin"
            and claims.get("epoch") == self.admin_epoch
        )

    def session_for_queue_token(self, token: str) -> Session | None:
        claims = self.issuer.decode(token)
        if claims is None or claims.get("typ") != QUEUE:
            return None
        session = self.sessions.get(str(claims.get("sid")))
        if (
            session is None
            or session.evicted
            or session.ghost
            or session.token_expired
            or session.token_jti != claims.get("jti")
        ):
            return None
        return session

    def credential_valid(self, token: str) -> bool:
        if token in self.pats:
            return True
        inst = self.installation_tokens.get(token)
        return inst is not None and inst.expires > time.time()

    def token_kind(self, authorization: str | None) -> str:
        if not authorization:
            return "none"
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "remoteauth":
            return "registration" if token in self.registration_tokens else "invalid"
        if scheme.lower() not in ("bearer", "token") or not token:
            return "invalid"
        if token in self.pats:
            return "pat"
        if token in self.installation_tokens:
            return "installation"
        if token in self.download_tokens:
            return "temp_download"
        kind = self.issuer.peek_kind(token)
        if kind in ("admin", QUEUE):
            return kind
        if unverified_app_issuer(token) is not None:
            return "app_jwt"
        return "invalid"

    # ------------------------------------------------------------------ runner groups

    def add_runner_group(self, name: str) -> RunnerGroup:
        if not name:
            raise ControlError(400, "name is required")
        if self.find_groups(name):
            raise ControlError(409, f"runner group {name} exists")
        group = RunnerGroup(self._next_group_id, name)
        self._next_group_id += 1
        self.runner_groups[group.id] = group
        self._event("runner_group_created", id=group.id, name=name)
        return group

    def find_groups(self, name: str | None) -> list[RunnerGroup]:
        if name is None:
            return list(self.runner_groups.values())
        return [g for g in self.runner_groups.values() if g.name.lower() == name.lower()]

    def group_json(self, group: RunnerGroup) -> JSON:
        size = sum(1 for s in self.scale_sets.values() if s.runner_group_id == group.id)
        return {
            "id": group.id,
            "name": group.name,
            "size": size,
            "isDefaultGroup": group.is_default,
        }

    # ------------------------------------------------------------------ scale sets

    def scale_set(self, ss_id: int) -> ScaleSet:
        ss = self.scale_sets.get(ss_id)
        if ss is None:
            raise ServiceError(
                404,
                "RunnerScaleSetNotFoundException",
                f"The runner scale set with id {ss_id} does not exist.",
            )
        return ss

    def scale_set_json(self, ss: ScaleSet) -> JSON:
        group = self.runner_groups.get(ss.runner_group_id)
        return {
            "id": ss.id,
            "name": ss.name,
            "runnerGroupId": ss.runner_group_id,
            "runnerGroupName": group.name if group else "",
            "labels": [{"type": "System", "name": label} for label in ss.labels],
            "runnerSetting": dict(ss.runner_setting),
            "createdOn": wire_time(ss.created_on),
            "runnerJitConfigUrl": (
                f"{self.tenant_url}_apis/runtime/runnerscalesets/{ss.id}/generatejitconfig"
            ),
            "statistics": statistics_json(self.raw_statistics(ss.id)),
        }

    def find_scale_sets(self, group_id: int | None, name: str | None) -> list[ScaleSet]:
        return [
            s
            for s in self.scale_sets.values()
            if (group_id is None or s.runner_group_id == group_id)
            and (name is None or s.name.lower() == name.lower())
        ]

    def create_scale_set(
        self, name: str, group_id: int, labels: list[str], runner_setting: JSON
    ) -> ScaleSet:
        if not name:
            raise ServiceError(400, "ArgumentException", "The runner scale set name is required.")
        if group_id not in self.runner_groups:
            raise ServiceError(
                404, "RunnerGroupNotFoundException", f"Runner group {group_id} not found."
            )
        if self.find_scale_sets(group_id, name):
            raise ServiceError(
                409,
                "RunnerScaleSetExistsException",
                f"A runner scale set named {name} already exists in runner group {group_id}.",
            )
        ss = ScaleSet(
            id=self._next_scale_set_id,
            name=name,
            runner_group_id=group_id,
            labels=_dedupe(labels or [name]),
            runner_setting={k: v for k, v in runner_setting.items() if v},
            created_on=time.time(),
        )
        self._next_scale_set_id += 1
        self.scale_sets[ss.id] = ss
        self.queues[ss.id] = MessageQueue()
        self._event("scale_set_created", scale_set_id=ss.id, name=name)
        return ss

    def update_scale_set(
        self,
        ss_id: int,
        name: str | None,
        group_id: int | None,
        labels: list[str] | None,
        runner_setting: JSON | None,
    ) -> ScaleSet:
        ss = self.scale_set(ss_id)
        new_group = group_id or ss.runner_group_id
        new_name = name or ss.name
        if new_group not in self.runner_groups:
            raise ServiceError(
                404, "RunnerGroupNotFoundException", f"Runner group {new_group} not found."
            )
        clash = [s for s in self.find_scale_sets(new_group, new_name) if s.id != ss.id]
        if clash:
            raise ServiceError(
                409,
                "RunnerScaleSetExistsException",
                f"A runner scale set named {new_name} already exists in runner group {new_group}.",
            )
        ss.name, ss.runner_group_id = new_name, new_group
        if labels:
            ss.labels = _dedupe(labels)
        if runner_setting:
            ss.runner_setting = {k: v for k, v in runner_setting.items() if v}
        self._event("scale_set_updated", scale_set_id=ss.id, name=ss.name)
        self._schedule()
        return ss

    def delete_scale_set(self, ss_id: int, force: bool = False) -> None:
        ss = self.scale_set(ss_id)
        busy = [r for r in self.runners.values() if r.scale_set_id == ss_id and r.state == "busy"]
        if busy and not force:
            raise ServiceError(
                400,
                "JobStillRunningException",
                f"The runner scale set {ss.name} has runners running jobs and cannot be deleted.",
            )
        # Sessions go first so that nothing below can hand a job back to this set.
        for session in [s for s in self.sessions.values() if s.scale_set_id == ss_id]:
            del self.sessions[session.id]
        for job in list(self.jobs.values()):
            if job.scale_set_id != ss_id or job.state == "completed":
                continue
            if job.state == "running":
                self._complete(job, "canceled", emit=False)
            else:
                # Assigned but not running: back to the queue for another set.
                job.state, job.scale_set_id = "queued", None
                self._event("job_state", job=job.runner_request_id, state="queued")
        for runner in [r for r in self.runners.values() if r.scale_set_id == ss_id]:
            del self.runners[runner.id]
            self._event("runner_removed", runner_id=runner.id, name=runner.name, reason="set")
        del self.scale_sets[ss_id]
        self.queues.pop(ss_id, None)
        self.stats_history.pop(ss_id, None)
        self._event("scale_set_deleted", scale_set_id=ss_id, name=ss.name, forced=force)
        self._schedule()

    # ------------------------------------------------------------------ sessions

    def live_session(self, ss_id: int) -> Session | None:
        return next(
            (s for s in self.sessions.values() if s.scale_set_id == ss_id and not s.evicted), None
        )

    def create_session(self, ss_id: int, owner: str, ghost: bool = False) -> Session:
        ss = self.scale_set(ss_id)
        existing = self.live_session(ss_id)
        if existing is not None:
            raise ServiceError(
                409,
                "RunnerScaleSetSessionConflictException",
                f"The actions runner scaleset {ss.name} already has an active session for owner "
                f"{existing.owner_name}.",
            )
        now = time.monotonic()
        session = Session(
            id=str(uuid.uuid4()),
            scale_set_id=ss_id,
            owner_name=owner,
            token_jti="",
            created=now,
            last_seen=now,
            ghost=ghost,
        )
        self.sessions[session.id] = session
        if not ghost:
            self.count("sessions_created")
        self._event("session_created", session_id=session.id, scale_set_id=ss_id, ghost=ghost)
        self._schedule()
        return session

    def new_queue_token(self, session: Session) -> str:
        token, jti = self.issuer.issue(
            QUEUE, self.config.queue_token_ttl, sid=session.id, scaleSetId=session.scale_set_id
        )
        session.token_jti = jti
        session.token_expired = False
        self.count("queue_tokens_issued")
        return token

    def refresh_session(self, ss_id: int, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.evicted or session.scale_set_id != ss_id or session.ghost:
            raise ServiceError(
                404,
                "RunnerAdminException",
                "runner referenced a session ID that doesn't exist in redis",
            )
        session.last_seen = time.monotonic()
        self.count("sessions_refreshed")
        self._event("session_refreshed", session_id=session_id, scale_set_id=ss_id)
        return session

    def delete_session(self, ss_id: int, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.evicted or session.scale_set_id != ss_id or session.ghost:
            raise ServiceError(
                400,
                "RunnerScaleSetSessionExpiredException",
                f"The session identifier {session_id} is not valid.",
            )
        del self.sessions[session_id]
        self.count("sessions_deleted")
        self._event("session_deleted", session_id=session_id, scale_set_id=ss_id)

    def evict_session(self, session_id: str) -> None:
        session = self._control_session(session_id)
        # The broker forgot it: it no longer blocks a new session and cannot be refreshed.
        session.evicted = True
        del self.sessions[session_id]
        self.count("sessions_evicted")
        self._event("session_evicted", session_id=session_id, scale_set_id=session.scale_set_id)

    def expire_queue_token(self, session_id: str) -> None:
        session = self._control_session(session_id)
        session.token_expired = True
        self._event("queue_token_expired", session_id=session_id)

    def expire_admin_tokens(self) -> None:
        self.admin_epoch += 1
        self._event("admin_tokens_expired", epoch=self.admin_epoch)

    def ghost_session(self, ss_id: int, expires_after: float, owner: str) -> Session:
        try:
            session = self.create_session(ss_id, owner, ghost=True)
        except ServiceError as exc:
            raise ControlError(exc.status, exc.message) from exc

        def expire() -> None:
            if self.sessions.get(session.id) is session:
                del self.sessions[session.id]
                self._event("ghost_session_expired", session_id=session.id, scale_set_id=ss_id)
                self._schedule()

        self._later(expires_after, expire)
        return session

    def _control_session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise ControlError(404, f"no session {session_id}")
        return session

    def session_json(self, session: Session, token: str, empty_queue_url: bool) -> JSON:
        ss = self.scale_sets[session.scale_set_id]
        body: JSON = {
            "sessionId": session.id,
            "ownerName": session.owner_name,
            "runnerScaleSet": self.scale_set_json(ss),
            "messageQueueUrl": "" if empty_queue_url else self.queue_url(session),
            "messageQueueAccessToken": token,
        }
        stats = self.statistics(ss.id, "session")
        if stats is not None:
            body["statistics"] = stats
        return body

    # ------------------------------------------------------------------ message queue

    def record_capacity(self, ss_id: int, capacity: int | None) -> None:
        ss = self.scale_sets.get(ss_id)
        if ss is None:
            return
        if ss.capacity_seen and ss.max_capacity == capacity:
            return
        ss.capacity_seen = True
        ss.max_capacity = capacity
        ss.capacity_history.append(capacity)
        self._event("max_capacity", scale_set_id=ss_id, value=capacity)
        self._schedule()

    def next_envelope(self, ss_id: int, last_id: int) -> Envelope | None:
        queue = self.queues.get(ss_id)
        if queue is None:
            return None
        if self.config.implicit_ack and last_id > 0:
            for message_id in [i for i in queue.unacked if i <= last_id]:
                del queue.unacked[message_id]
                queue.acked.add(message_id)
                self.count("messages_implicitly_acked")
        candidates = [i for i in queue.unacked if i > last_id]
        if candidates:
            return queue.unacked[min(candidates)]
        if not queue.pending:
            return None
        batch = [
            queue.pending.popleft() for _ in range(min(self.config.max_batch, len(queue.pending)))
        ]
        return self._new_envelope(ss_id, "RunnerScaleSetJobMessages", json.dumps(batch))

    def _new_envelope(
        self, ss_id: int, message_type: str, body: str, statistics: JSON | None = None
    ) -> Envelope:
        envelope = Envelope(self._next_message_id, ss_id, message_type, body, statistics=statistics)
        self._next_message_id += 1
        self.queues[ss_id].unacked[envelope.id] = envelope
        self.count("messages_created")
        self._event(
            "message_created",
            scale_set_id=ss_id,
            message_id=envelope.id,
            job_messages=envelope.job_message_types(),
            raw_statistics=statistics is not None,
        )
        return envelope

    def deliver(self, session: Session, envelope: Envelope) -> JSON:
        envelope.deliveries += 1
        self.count("messages_delivered")
        if envelope.deliveries > 1:
            self.count("messages_redelivered")
        session.last_message_id_seen = envelope.id
        body: JSON = {
            "messageId": envelope.id,
            "messageType": envelope.message_type,
            "body": envelope.body,
        }
        # Injected statistics stand in for the computed ones (and for statistics faults), on
        # every delivery, so a client can be shown a shape it does not expect.
        if envelope.statistics is not None:
            stats: JSON | None = envelope.statistics
        else:
            stats = self.statistics(envelope.scale_set_id, "message")
        if stats is not None:
            body["statistics"] = stats
        self._event(
            "message_delivered",
            scale_set_id=envelope.scale_set_id,
            message_id=envelope.id,
            delivery=envelope.deliveries,
        )
        return body

    def ack(self, ss_id: int, message_id: int) -> bool:
        """Acknowledge a message; False when the id is unknown."""
        queue = self.queues.get(ss_id)
        if queue is None:
            return False
        if message_id in queue.unacked:
            del queue.unacked[message_id]
            queue.acked.add(message_id)
            self.count("messages_acked")
            self._event("message_acked", scale_set_id=ss_id, message_id=message_id)
            return True
        if message_id in queue.acked:
            self.count("duplicate_acks")
            self._event("message_acked_again", scale_set_id=ss_id, message_id=message_id)
            return True
        self.count("unknown_acks")
        return False

    def inject_message(
        self,
        ss_id: int,
        message_type: str | None,
        body: str | None,
        job_messages: list[JSON] | None,
        statistics: JSON | None = None,
    ) -> int | None:
        """With message_type, body or statistics: a whole envelope now (its body `body`, else
        the job messages as a batch; `statistics` sent verbatim instead of the computed ones).
        Otherwise the job messages join the pending ones and go out in the next batch."""
        if ss_id not in self.scale_sets:
            raise ControlError(404, f"no scale set {ss_id}")
        if message_type is not None or body is not None or statistics is not None:
            payload = body if body is not None else json.dumps(job_messages or [])
            envelope = self._new_envelope(
                ss_id, message_type or "RunnerScaleSetJobMessages", payload, statistics
            )
            return envelope.id
        self.queues[ss_id].pending.extend(job_messages or [])
        self._event("job_messages_injected", scale_set_id=ss_id, count=len(job_messages or []))
        return None

    # ------------------------------------------------------------------ jobs

    def enqueue_jobs(self, spec: JSON) -> list[int]:
        labels = [str(label) for label in spec.get("labels") or []]
        if not labels:
            raise ControlError(400, "labels are required")
        zero = frozenset(spec.get("zero_fields") or ())
        if not zero <= ZEROABLE:
            raise ControlError(400, f"zero_fields must be within {sorted(ZEROABLE)}")
        runner_behaviour = spec.get("runner_behaviour")
        if runner_behaviour is not None and runner_behaviour not in RUNNER_BEHAVIOURS:
            raise ControlError(
                400, f"runner_behaviour must be null or one of {sorted(RUNNER_BEHAVIOURS)}"
            )
        count = int(spec.get("count", 1))
        owner = str(spec.get("owner", "acme"))
        repository = str(spec.get("repository", "app"))
        run_id = self._next_run_id
        self._next_run_id += 1
        ids: list[int] = []
        for index in range(count):
            job = Job(
                runner_request_id=self._next_request_id,
                job_id=str(uuid.uuid4()),
                labels=labels,
                repository=repository,
                owner=owner,
                workflow_ref=str(
                    spec.get("workflow_ref")
                    or f"{owner}/{repository}/.github/workflows/ci.yml@refs/heads/main"
                ),
                event_name=str(spec.get("event_name", "push")),
                display_name=str(spec.get("display_name") or f"build ({index + 1})"),
                workflow_run_id=run_id,
                duration=spec.get("duration"),
                result=str(spec.get("result", "succeeded")),
                zero_fields=zero,
                queue_time=time.time(),
                runner_behaviour=runner_behaviour,
            )
            self._next_request_id += 1
            self.jobs[job.runner_request_id] = job
            ids.append(job.runner_request_id)
            self.count("jobs_enqueued")
            self._event("job_state", job=job.runner_request_id, state="queued")
        self._schedule()
        return ids

    def job(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ControlError(404, f"no job {job_id}")
        return job

    def _job_message(self, job: Job, message_type: str, **extra: Any) -> JSON:
        message: JSON = {
            "messageType": message_type,
            "runnerRequestId": job.runner_request_id,
            "jobId": job.job_id,
            "repositoryName": job.repository,
            "ownerName": job.owner,
            "jobWorkflowRef": job.workflow_ref,
            "jobDisplayName": job.display_name,
            "workflowRunId": job.workflow_run_id,
            "eventName": job.event_name,
            "requestLabels": list(job.labels),
            "queueTime": wire_time(job.queue_time),
            "scaleSetAssignTime": wire_time(job.scale_set_assign_time),
            "runnerAssignTime": wire_time(job.runner_assign_time),
            "finishTime": wire_time(job.finish_time),
            **extra,
        }
        for name in job.zero_fields:
            message[name] = "" if name == "jobId" else 0
        return message

    def _emit(self, job: Job, message_type: str, **extra: Any) -> None:
        if job.scale_set_id is None or job.scale_set_id not in self.queues:
            return
        self.queues[job.scale_set_id].pending.append(self._job_message(job, message_type, **extra))
        self.waiters.bump()

    def _acquire_url(self, job: Job) -> str:
        return (
            f"{self.tenant_url}_apis/runtime/runnerscalesets/{job.scale_set_id}"
            f"/acquirejob/{job.runner_request_id}"
        )

    def acquirable(self, ss_id: int) -> list[JSON]:
        self.scale_set(ss_id)
        return [
            {
                "acquireJobUrl": self._acquire_url(job),
                "messageType": "JobAvailable",
                "runnerRequestId": job.runner_request_id,
                "repositoryName": job.repository,
                "ownerName": job.owner,
                "jobWorkflowRef": job.workflow_ref,
                "eventName": job.event_name,
                "requestLabels": list(job.labels),
            }
            for job in self.jobs.values()
            if job.scale_set_id == ss_id and job.state == "available"
        ]

    def acquire(self, ss_id: int, ids: Iterable[int]) -> list[int]:
        self.count("acquire_calls")
        acquired: list[int] = []
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is None or job.scale_set_id != ss_id or job.state != "available":
                continue
            job.state = "acquired"
            self._event(
                "job_state", job=job.runner_request_id, state="acquired", scale_set_id=ss_id
            )
            acquired.append(job_id)
            self.count("jobs_acquired")
            self._assign(job, self.scale_sets[ss_id])
        self._event("acquire", scale_set_id=ss_id, acquired=acquired)
        return acquired

    def _in_flight(self, ss_id: int) -> int:
        return sum(
            1 for j in self.jobs.values() if j.scale_set_id == ss_id and j.state in IN_FLIGHT
        )

    def _candidate(self, job: Job) -> ScaleSet | None:
        wanted = {label.lower() for label in job.labels}
        best: tuple[int, int, ScaleSet] | None = None
        for ss in self.scale_sets.values():
            session = self.live_session(ss.id)
            if session is None or session.ghost:
                continue
            if not wanted <= {label.lower() for label in ss.labels} | {ss.name.lower()}:
                continue
            in_flight = self._in_flight(ss.id)
            if ss.max_capacity is not None and in_flight >= ss.max_capacity:
                continue
            key = (in_flight, ss.id, ss)
            if best is None or key[:2] < best[:2]:
                best = key
        return best[2] if best else None

    def _schedule(self) -> None:
        """Move queued jobs to matching scale sets, and let idle runners take work (auto_take)."""
        now = asyncio.get_running_loop().time()
        for job in sorted(self.jobs.values(), key=lambda j: j.runner_request_id):
            if job.state != "queued" or job.parked or job.not_before > now:
                continue
            ss = self._candidate(job)
            if ss is None:
                continue
            job.scale_set_id = ss.id
            if self.config.mode == "ghes":
                job.state = "available"
                self._emit(job, "JobAvailable", acquireJobUrl=self._acquire_url(job))
                self._event(
                    "job_state", job=job.runner_request_id, state="available", scale_set_id=ss.id
                )
            else:
                self._assign(job, ss)
        if self.config.auto_take:
            for runner in sorted(self.runners.values(), key=lambda r: r.id):
                if runner.state == "idle" and self._oldest_assigned(runner.scale_set_id):
                    self.take_job(runner.id, None)

    def _assign(self, job: Job, ss: ScaleSet) -> None:
        job.state = "assigned"
        job.scale_set_id = ss.id
        job.scale_set_assign_time = time.time()
        job.assign_generation += 1
        self._emit(job, "JobAssigned")
        self._event("job_state", job=job.runner_request_id, state="assigned", scale_set_id=ss.id)
        timeout = self.config.assign_timeout
        if timeout is not None:
            generation = job.assign_generation
            self._later(timeout, lambda: self._assign_timed_out(job, generation))

    def _assign_timed_out(self, job: Job, generation: int) -> None:
        if job.state != "assigned" or job.assign_generation != generation:
            return
        job.finish_time = time.time()
        self._emit(job, "JobCompleted", result="canceled", runnerId=0, runnerName="")
        job.withdrawals += 1
        self.count("withdrawals")
        job.state, job.scale_set_id = "queued", None
        job.scale_set_assign_time = job.finish_time = None
        if job.withdrawals > self.config.max_reassignments:
            job.parked = True
        else:
            delay = self.config.reassign_base_delay * 2 ** (job.withdrawals - 1)
            job.not_before = asyncio.get_running_loop().time() + delay
            self._later(delay, self._schedule)
        self._event(
            "job_withdrawn",
            job=job.runner_request_id,
            withdrawals=job.withdrawals,
            parked=job.parked,
        )
        self._event("job_state", job=job.runner_request_id, state="queued")
        self._schedule()

    def _oldest_assigned(self, ss_id: int) -> Job | None:
        assigned = [
            j for j in self.jobs.values() if j.scale_set_id == ss_id and j.state == "assigned"
        ]
        return min(assigned, key=lambda j: j.runner_request_id) if assigned else None

    def take_job(self, runner_id: int, job_id: int | None) -> Job:
        runner = self.runner(runner_id)
        if runner.state != "idle":
            raise ControlError(409, f"runner {runner.name} is {runner.state}, not idle")
        if job_id is None:
            job = self._oldest_assigned(runner.scale_set_id)
            if job is None:
                raise ControlError(409, f"no job assigned to scale set {runner.scale_set_id}")
        else:
            job = self.job(job_id)
            if job.state != "assigned" or job.scale_set_id != runner.scale_set_id:
                raise ControlError(409, f"job {job_id} is {job.state}, not assigned to the set")
        job.state = "running"
        job.runner_id, job.runner_name = runner.id, runner.name
        job.runner_assign_time = time.time()
        runner.state, runner.job = "busy", job.runner_request_id
        self._emit(job, "JobStarted", runnerId=runner.id, runnerName=runner.name)
        self._event(
            "job_state",
            job=job.runner_request_id,
            state="running",
            scale_set_id=job.scale_set_id,
            runner_id=runner.id,
        )
        if self.config.auto_finish and job.duration is not None and job.runner_behaviour != "hang":
            self._later(float(job.duration), lambda: self._auto_finish(job, runner.id))
        return job

    def _auto_finish(self, job: Job, runner_id: int) -> None:
        if job.state == "running" and job.runner_id == runner_id:
            self.finish_job(job.runner_request_id, job.result)

    def finish_job(self, job_id: int, result: str) -> Job:
        job = self.job(job_id)
        if job.state != "running":
            raise ControlError(409, f"job {job_id} is {job.state}, not running")
        self._complete(job, result)
        return job

    def cancel_job(self, job_id: int) -> Job:
        job = self.job(job_id)
        if job.state == "completed":
            raise ControlError(409, f"job {job_id} already completed")
        self._complete(job, "canceled")
        return job

    def _complete(self, job: Job, result: str, emit: bool = True) -> None:
        job.finish_time = time.time()
        job.final_result = result
        runner = self.runners.get(job.runner_id) if job.runner_id is not None else None
        if emit and job.state != "queued":
            self._emit(
                job,
                "JobCompleted",
                result=result,
                runnerId=runner.id if runner else 0,
                runnerName=runner.name if runner else "",
            )
        job.state = "completed"
        self.count("jobs_completed")
        self._event(
            "job_state",
            job=job.runner_request_id,
            state="completed",
            result=result,
            scale_set_id=job.scale_set_id,
        )
        if runner is not None and runner.job == job.runner_request_id:
            # Scale-set runners are ephemeral: one job, then the service forgets them.
            del self.runners[runner.id]
            self._event("runner_removed", runner_id=runner.id, name=runner.name, reason="ephemeral")
        self._schedule()

    # ------------------------------------------------------------------ runner releases

    def releases_newest_first(self) -> list[RunnerRelease]:
        return sorted(self.runner_releases, key=lambda r: r.key, reverse=True)

    def newest_release(self) -> RunnerRelease:
        return max(self.runner_releases, key=lambda r: r.key)

    def runner_release(self, version: str) -> RunnerRelease | None:
        return next((r for r in self.runner_releases if r.version == version), None)

    def add_runner_release(self, version: str, published_at: float) -> RunnerRelease:
        """Publish a release (announcing a newer runner, or back-dating an older one)."""
        try:
            key = parse_version(version)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        release = RunnerRelease(".".join(map(str, key)), published_at)
        if self.runner_release(release.version) is not None:
            raise ControlError(409, f"runner release v{release.version} exists")
        self.runner_releases.append(release)
        self._event("runner_release", version=release.version, published_at=release.published_at)
        return release

    def release_file(self, version: str, filename: str) -> RunnerTarball | None:
        """The bytes behind a release download URL: the stub for a known release's Linux
        files; None for anything else."""
        if self.runner_release(version) is None:
            return None
        linux = {
            f"actions-runner-{os_}-{arch}-{version}.{ext}"
            for os_, arch, ext in RUNNER_PLATFORMS
            if os_ == "linux"
        }
        return build_runner_tarball(version) if filename in linux else None

    def runner_downloads(self) -> list[JSON]:
        """GitHub's `actions/runners/downloads` answer: the newest release's files."""
        version = self.newest_release().version
        entries: list[JSON] = []
        for os_, arch, ext in RUNNER_PLATFORMS:
            filename = f"actions-runner-{os_}-{arch}-{version}.{ext}"
            if os_ == "linux":
                checksum = build_runner_tarball(version).sha256
            else:
                # Not served here; a stable stand-in for the real archive's checksum.
                checksum = hashlib.sha256(filename.encode()).hexdigest()
            entry: JSON = {
                "os": os_,
                "architecture": arch,
                "download_url": (
                    f"{self.base_url}/actions/runner/releases/download/v{version}/{filename}"
                ),
                "filename": filename,
                "sha256_checksum": checksum,
            }
            if self.config.mode == "ghes":
                token = secrets.token_urlsafe(24)
                self.download_tokens.add(token)
                entry["temp_download_token"] = token
            entries.append(entry)
        return entries

    def runner_refusal(self, version: str) -> tuple[int, str, str] | None:
        """Why GitHub would refuse a runner of this version (status, reason, message), or None.
        Below the minimum it cannot register; once a newer release has been out for more than
        `runner_deprecation_days` it gets no messages."""
        key = parse_version(version)
        minimum = self.config.runner_min_version
        if key < parse_version(minimum):
            return (
                400,
                "below_minimum",
                f"Runner version v{version} is older than the minimum v{minimum} and cannot be "
                "registered.",
            )
        cutoff = time.time() - self.config.runner_deprecation_days * DAY
        if any(r.key > key and r.published_at < cutoff for r in self.runner_releases):
            return (
                403,
                "deprecated",
                f"Runner version v{version} is deprecated and cannot receive messages.",
            )
        return None

    # ------------------------------------------------------------------ runners

    def runner(self, runner_id: int) -> Runner:
        runner = self.runners.get(runner_id)
        if runner is None:
            raise ControlError(404, f"no runner {runner_id}")
        return runner

    def generate_jit_config(self, ss_id: int, name: str, work_folder: str) -> tuple[Runner, str]:
        self.scale_set(ss_id)
        if not name:
            raise ServiceError(400, "ArgumentException", "The runner name is required.")
        if any(r.name.lower() == name.lower() for r in self.runners.values()):
            raise ServiceError(
                409, "AgentExistsException", f"A runner with name {name} already exists."
            )
        runner = Runner(
            id=self._next_runner_id,
            name=name,
            scale_set_id=ss_id,
            secret=secrets.token_urlsafe(24),
            work_folder=work_folder,
            created=time.time(),
        )
        self._next_runner_id += 1
        self.runners[runner.id] = runner
        self.count("jit_configs")
        self._event("runner_registered", runner_id=runner.id, name=name, scale_set_id=ss_id)
        document = {
            "runnerId": runner.id,
            "runnerName": name,
            "runnerScaleSetId": ss_id,
            "secret": runner.secret,
            "serverUrl": self.base_url,
            "tenantUrl": self.tenant_url,
            "connectUrl": f"{self.base_url}/_sim/runners/connect",
            "workFolder": work_folder,
        }
        encoded = base64.b64encode(json.dumps(document).encode()).decode()
        return runner, encoded

    def connect_runner(self, jit_config: str, version: str | None = None) -> Runner:
        """The runner started with this JIT config comes online (idle), unless its version is
        refused (ControlError 400/403; it stays registered and offline). `version` None stands
        for the newest release, for tests that drive runners through the control API."""
        try:
            document = json.loads(base64.b64decode(jit_config, validate=True))
            runner_id, secret = int(document["runnerId"]), str(document["secret"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlError(400, f"malformed JIT config: {exc}") from exc
        runner = self.runners.get(runner_id)
        if runner is None or runner.secret != secret:
            raise ControlError(404, f"runner {runner_id} is not registered")
        if runner.jit_used:
            raise ControlError(409, f"the JIT config of runner {runner.name} was already used")
        try:
            key = parse_version(self.newest_release().version if version is None else version)
        except ValueError as exc:
            raise ControlError(400, f"malformed runner version: {exc}") from exc
        runner.version = ".".join(map(str, key))
        refusal = self.runner_refusal(runner.version)
        if refusal is not None:
            status, reason, message = refusal
            runner.refused = message
            self.count("runners_refused")
            self._event(
                "runner_refused",
                runner_id=runner.id,
                name=runner.name,
                version=runner.version,
                reason=reason,
                message=message,
            )
            raise ControlError(status, message)
        runner.refused = None
        runner.jit_used = True
        runner.state = "idle"
        self._event(
            "runner_state",
            runner_id=runner.id,
            name=runner.name,
            state="idle",
            version=runner.version,
        )
        self._schedule()
        return runner

    def runner_dies(self, runner_id: int) -> Runner:
        runner = self.runner(runner_id)
        job = self.jobs.get(runner.job) if runner.job is not None else None
        runner.state, runner.job = "offline", None
        if job is not None and job.state == "running":
            # The runner stays registered (offline); only its job is lost.
            job.finish_time = time.time()
            job.final_result = "failed"
            self._emit(
                job, "JobCompleted", result="failed", runnerId=runner.id, runnerName=runner.name
            )
            job.state = "completed"
            self.count("jobs_completed")
            self._event(
                "job_state",
                job=job.runner_request_id,
                state="completed",
                result="failed",
                scale_set_id=job.scale_set_id,
            )
        self._event("runner_state", runner_id=runner.id, name=runner.name, state="offline")
        self._schedule()
        return runner

    def find_runners(self, name: str | None) -> list[Runner]:
        return [r for r in self.runners.values() if name is None or r.name.lower() == name.lower()]

    def remove_runner(self, runner_id: int) -> None:
        self.count("runner_removal_calls")
        runner = self.runners.get(runner_id)
        if runner is None:
            self._event("runner_remove_unknown", runner_id=runner_id)
            return
        if runner.state == "busy":
            raise ServiceError(
                400,
                "JobStillRunningException",
                f"Runner {runner.name} is currently running a job and cannot be deleted.",
            )
        del self.runners[runner_id]
        self.count("runner_removals")
        self._event("runner_removed", runner_id=runner_id, name=runner.name, reason="api")

    # ------------------------------------------------------------------ control view

    def add_statistics_fault(self, spec: JSON) -> StatisticsFault:
        known = set(StatisticsFault.__dataclass_fields__) - {"fired"}
        unknown = set(spec) - known
        if unknown:
            raise ControlError(400, f"unknown statistics fault fields: {sorted(unknown)}")
        fault = StatisticsFault(**spec)
        if fault.applies_to not in ("all", "session", "message"):
            raise ControlError(400, "applies_to must be all, session or message")
        self.statistics_faults.append(fault)
        self._event("statistics_fault_added")
        return fault

    def state(self) -> JSON:
        scale_sets = []
        for ss in self.scale_sets.values():
            queue = self.queues[ss.id]
            scale_sets.append(
                {
                    "id": ss.id,
                    "name": ss.name,
                    "runner_group_id": ss.runner_group_id,
                    "labels": ss.labels,
                    "runner_setting": ss.runner_setting,
                    "max_capacity": ss.max_capacity,
                    "max_capacity_history": ss.capacity_history,
                    "statistics": self.raw_statistics(ss.id),
                    "pending_job_messages": len(queue.pending),
                    "unacked_message_ids": sorted(queue.unacked),
                    "acked_message_ids": sorted(queue.acked),
                }
            )
        return {
            "version": self.waiters.version,
            "config": self.config.model_dump(mode="json"),
            "runner_groups": [self.group_json(g) for g in self.runner_groups.values()],
            "scale_sets": scale_sets,
            "sessions": [
                {
                    "id": s.id,
                    "scale_set_id": s.scale_set_id,
                    "owner_name": s.owner_name,
                    "ghost": s.ghost,
                    "token_expired": s.token_expired,
                    "polls_in_flight": s.polls_in_flight,
                    "last_message_id": s.last_message_id_seen,
                }
                for s in self.sessions.values()
            ],
            "jobs": [j.to_state() for j in self.jobs.values()],
            "runners": [r.to_state() for r in self.runners.values()],
            "runner_releases": [r.to_control(time.time()) for r in self.releases_newest_first()],
            "counters": dict(self.counters),
            "admin_epoch": self.admin_epoch,
            "last_request_seq": self.request_seq,
            "last_event_seq": self.event_seq,
        }


def _dedupe(labels: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for label in labels:
        seen.setdefault(label.lower(), label)
    return list(seen.values())
