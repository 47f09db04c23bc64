"""A message session: the long poll, acknowledgements and job acquisition on one scale set.

The three queue calls carry the session's own token, never the admin token
(docs/architecture.md#which-token-goes-where). When the queue answers 401 the token expired: the
session is refreshed (PATCH, admin token) once and the call retried once
(docs/architecture.md#the-long-poll). A refresh answered 404 means the broker evicted the
session; that surfaces as SessionNotFound and the listener opens a new one.

A 202, or a 200 whose body is blank, means "no message" (the broker has been seen answering an
empty 200 during incidents; treating it as fatal crash-loops other listeners). A message is
refused only when its messageId cannot be read; any other part this version cannot read is
reported in the envelope's `unparseable` and the message is still handed on, so it can be
acknowledged and the queue moves on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import structlog

from scaleset_listener.actions_client import API_VERSION, ActionsClient, service_url
from scaleset_listener.errors import (
    ActionsError,
    ProtocolError,
    QueueTokenExpired,
    SessionNotFound,
)
from scaleset_listener.http import HttpChannel
from scaleset_listener.wire import (
    MessageEnvelope,
    Session,
    Statistics,
    Unparseable,
    parse_envelope,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

ACCEPT_WITH_API_VERSION = f"application/json; api-version={API_VERSION}"


def validate_session(session: Session) -> Session:
    """Refuse a session we cannot poll: the service has answered 200 with an empty queue URL."""
    parts = urlsplit(session.message_queue_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProtocolError(
            f"session {session.session_id or '?'} has no usable messageQueueUrl "
            f"({session.message_queue_url!r})"
        )
    if not session.message_queue_access_token:
        raise ProtocolError(f"session {session.session_id or '?'} has no messageQueueAccessToken")
    return session


def _message_url(queue_url: str, message_id: int) -> str:
    """`{queue URL path}/{id}`, keeping the queue URL's query string.

    See docs/architecture.md#acknowledgement.
    """
    parts = urlsplit(queue_url)
    path = parts.path.rstrip("/") + f"/{message_id}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class MessageSession:
    """An open session on one scale set. Not shared between tasks."""

    def __init__(
        self,
        client: ActionsClient,
        http: HttpChannel,
        scale_set_id: int,
        session: Session,
    ) -> None:
        self._client = client
        self._http = http
        self.scale_set_id = scale_set_id
        self._session = validate_session(session)

    def __repr__(self) -> str:
        return f"MessageSession(scale_set_id={self.scale_set_id}, session_id={self.session_id!r})"

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def initial_statistics(self) -> Statistics | None:
        """The statistics of the create-session answer; None when missing or unreadable."""
        return self._session.statistics

    @property
    def unparseable(self) -> tuple[Unparseable, ...]:
        """Parts of the create-session answer that could not be read (its statistics)."""
        return self._session.unparseable

    async def refresh(self) -> None:
        try:
            refreshed = await self._client.refresh_session(self.scale_set_id, self.session_id)
        except ActionsError as exc:
            if exc.status == 404 and not isinstance(exc, SessionNotFound):
                # RunnerAdminException "session ID that doesn't exist in redis": evicted.
                raise SessionNotFound(
                    exc.method,
                    exc.url,
                    exc.status,
                    exc.message,
                    type_name=exc.type_name,
                    activity_id=exc.activity_id,
                    request_id=exc.request_id,
                ) from exc
            raise
        self._session = validate_session(refreshed)
        log.info("session_refreshed", session_id=self.session_id)

    async def _with_queue_token(self, what: str, call: Callable[[Session], Awaitable[T]]) -> T:
        try:
            return await call(self._session)
        except QueueTokenExpired:
            log.info("queue_token_expired", request=what, session_id=self.session_id)
        await self.refresh()
        return await call(self._session)

    async def _queue_request(
        self,
        session: Session,
        method: str,
        url: str,
        *,
        expected: set[int],
        what: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Any:
        try:
            return await self._http.request(
                method,
                url,
                expected=expected,
                service=ActionsError,
                headers={"Authorization": f"Bearer {session.message_queue_access_token}"}
                | (headers or {}),
                params=params,
                json_body=json_body,
                what=what,
            )
        except ActionsError as exc:
            if exc.status == 401:
                raise QueueTokenExpired(
                    exc.method, exc.url, exc.status, exc.message, request_id=exc.request_id
                ) from exc
            raise

    async def get_message(self, last_message_id: int, max_capacity: int) -> MessageEnvelope | None:
        """Long-poll for the next message; None when the poll ended without one."""
        what = "get message"

        async def poll(session: Session) -> MessageEnvelope | None:
            params = {"lastMessageId": str(last_message_id)} if last_message_id > 0 else None
            answer = await self._queue_request(
                session,
                "GET",
                session.message_queue_url,
                expected={200, 202},
                what=what,
                headers={
                    "Accept": ACCEPT_WITH_API_VERSION,
                    "X-ScaleSetMaxCapacity": str(max(0, max_capacity)),
                },
                params=params,
            )
            if answer.status == 202 or answer.is_blank:
                return None
            return parse_envelope(answer.json(what), what)

        return await self._with_queue_token(what, poll)

    async def ack(self, message_id: int) -> None:
        what = f"delete message {message_id}"

        async def delete(session: Session) -> None:
            await self._queue_request(
                session,
                "DELETE",
                _message_url(session.message_queue_url, message_id),
                expected={204},
                what=what,
                headers={"Content-Type": "application/json"},
            )

        await self._with_queue_token(what, delete)

    async def acquire_jobs(self, runner_request_ids: Sequence[int]) -> list[int]:
        """Acquire JobAvailable requests; returns the ids the service actually gave us."""
        what = "acquire jobs"
        base = await self._client.service_base()

        async def acquire(session: Session) -> list[int]:
            answer = await self._queue_request(
                session,
                "POST",
                service_url(base, f"_apis/runtime/runnerscalesets/{self.scale_set_id}/acquirejobs"),
                expected={200},
                what=what,
                headers={"Content-Type": "application/json"},
                params={"api-version": API_VERSION},
                json_body=list(runner_request_ids),
            )
            data = answer.json(what)
            folded = {str(k).lower(): v for k, v in data.items()} if isinstance(data, dict) else {}
            value = folded.get("value") or []
            if not isinstance(value, list):
                raise ProtocolError(f"{what}: 'value' is not a list")
            return [int(item) for item in value if isinstance(item, int)]

        return await self._with_queue_token(what, acquire)

    async def close(self) -> None:
        """Delete the session server-side; an already expired or unknown session is fine."""
        try:
            await self._client.delete_session(self.scale_set_id, self.session_id)
        except SessionNotFound:
            log.info("session_already_gone", session_id=self.session_id)
            return
        except ActionsError as exc:
            if exc.status == 404:
                log.info("session_already_gone", session_id=self.session_id)
                return
            raise
        log.info("session_deleted", session_id=self.session_id)
