"""Message sessions: one live session per scale set, its message-queue token, refresh, delete,
eviction, ghost sessions left by someone else, and sessions abandoned by a vanished client."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from simulator.github.model import JSON, ControlError, ServiceError, Session
from simulator.github.tokens import QUEUE

if TYPE_CHECKING:
    from simulator.github.world import World


class Sessions:
    def __init__(self, world: World) -> None:
        self._world = world
        self._ledger = world.ledger
        self.by_id: dict[str, Session] = {}

    def live(self, ss_id: int) -> Session | None:
        return next(
            (s for s in self.by_id.values() if s.scale_set_id == ss_id and not s.evicted), None
        )

    def create(self, ss_id: int, owner: str, ghost: bool = False) -> Session:
        ss = self._world.scale_sets.get(ss_id)
        existing = self.live(ss_id)
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
        self.by_id[session.id] = session
        if not ghost:
            self._ledger.count("sessions_created")
        self._ledger.event(
            "session_created", session_id=session.id, scale_set_id=ss_id, ghost=ghost
        )
        self._world.jobs.schedule()
        return session

    def new_queue_token(self, session: Session) -> str:
        """A fresh message-queue token for the session; the previous one stops working."""
        token, jti = self._world.issuer.issue(
            QUEUE,
            self._world.config.queue_token_ttl,
            sid=session.id,
            scaleSetId=session.scale_set_id,
        )
        session.token_jti = jti
        session.token_expired = False
        self._ledger.count("queue_tokens_issued")
        return token

    def for_queue_token(self, token: str) -> Session | None:
        """The session a message-queue token is good for, or None."""
        claims = self._world.issuer.decode(token)
        if claims is None or claims.get("typ") != QUEUE:
            return None
        session = self.by_id.get(str(claims.get("sid")))
        if (
            session is None
            or session.evicted
            or session.ghost
            or session.token_expired
            or session.token_jti != claims.get("jti")
        ):
            return None
        return session

    def refresh(self, ss_id: int, session_id: str) -> Session:
        session = self.by_id.get(session_id)
        if session is None or session.evicted or session.scale_set_id != ss_id or session.ghost:
            raise ServiceError(
                404,
                "RunnerAdminException",
                "runner referenced a session ID that doesn't exist in redis",
            )
        session.last_seen = time.monotonic()
        self._ledger.count("sessions_refreshed")
        self._ledger.event("session_refreshed", session_id=session_id, scale_set_id=ss_id)
        return session

    def delete(self, ss_id: int, session_id: str) -> None:
        session = self.by_id.get(session_id)
        if session is None or session.evicted or session.scale_set_id != ss_id or session.ghost:
            raise ServiceError(
                400,
                "RunnerScaleSetSessionExpiredException",
                f"The session identifier {session_id} is not valid.",
            )
        del self.by_id[session_id]
        self._world.messages.session_ended(session)
        self._ledger.count("sessions_deleted")
        self._ledger.event("session_deleted", session_id=session_id, scale_set_id=ss_id)

    def evict(self, session_id: str) -> None:
        session = self._control_session(session_id)
        # The broker forgot it: it no longer blocks a new session and cannot be refreshed.
        session.evicted = True
        del self.by_id[session_id]
        self._ledger.count("sessions_evicted")
        self._ledger.event(
            "session_evicted", session_id=session_id, scale_set_id=session.scale_set_id
        )

    def expire_queue_token(self, session_id: str) -> None:
        session = self._control_session(session_id)
        session.token_expired = True
        self._ledger.event("queue_token_expired", session_id=session_id)

    def ghost(self, ss_id: int, expires_after: float, owner: str) -> Session:
        """A session someone else holds (a crashed listener's), gone after `expires_after`."""
        try:
            session = self.create(ss_id, owner, ghost=True)
        except ServiceError as exc:
            raise ControlError(exc.status, exc.message) from exc

        def expire() -> None:
            if self.by_id.get(session.id) is session:
                del self.by_id[session.id]
                self._ledger.event(
                    "ghost_session_expired", session_id=session.id, scale_set_id=ss_id
                )
                self._world.jobs.schedule()

        self._ledger.later(expires_after, expire)
        return session

    def sweep_abandoned(self) -> None:
        """Drop sessions whose client has not been seen for `session_abandon_timeout`."""
        limit = self._world.config.session_abandon_timeout
        if limit is None:
            return
        now = time.monotonic()
        for session in list(self.by_id.values()):
            if session.ghost or session.polls_in_flight:
                continue
            if now - session.last_seen > limit:
                del self.by_id[session.id]
                self._ledger.count("sessions_abandoned")
                self._ledger.event(
                    "session_abandoned", session_id=session.id, scale_set_id=session.scale_set_id
                )

    def drop_scale_set(self, ss_id: int) -> None:
        """The scale set is being deleted: its sessions go, silently."""
        for session in [s for s in self.by_id.values() if s.scale_set_id == ss_id]:
            del self.by_id[session.id]

    def json(self, session: Session, token: str, empty_queue_url: bool) -> JSON:
        world = self._world
        ss = world.scale_sets.by_id[session.scale_set_id]
        body: JSON = {
            "sessionId": session.id,
            "ownerName": session.owner_name,
            "runnerScaleSet": world.scale_sets.to_json(ss),
            "messageQueueUrl": "" if empty_queue_url else self.queue_url(session),
            "messageQueueAccessToken": token,
        }
        stats = world.statistics.as_sent(ss.id, "session")
        if stats is not None:
            body["statistics"] = stats
        return body

    def queue_url(self, session: Session) -> str:
        # The query string is deliberate: clients must keep it when polling and acknowledging.
        path = f"/broker/scalesets/{session.scale_set_id}/message"
        return f"{self._world.base_url}{path}?sessionId={session.id}"

    def state(self) -> list[JSON]:
        return [
            {
                "id": s.id,
                "scale_set_id": s.scale_set_id,
                "owner_name": s.owner_name,
                "ghost": s.ghost,
                "token_expired": s.token_expired,
                "polls_in_flight": s.polls_in_flight,
                "last_message_id": s.last_message_id_seen,
            }
            for s in self.by_id.values()
        ]

    def _control_session(self, session_id: str) -> Session:
        session = self.by_id.get(session_id)
        if session is None:
            raise ControlError(404, f"no session {session_id}")
        return session
