"""One HTTP request with the protocol's conventions: retries, BOM stripping, typed errors.

Everything that leaves the process for GitHub goes through `HttpChannel.request`. It owns the
httpx client, applies the per-request retry policy, strips a leading UTF-8 BOM, decodes JSON, and
turns every unexpected answer into one of our exceptions carrying method, URL, status and the
correlation ids (`ActivityId`, `X-GitHub-Request-Id`). Tokens travel only in headers, and headers
never reach an error or a log line.
"""

from __future__ import annotations

import email.utils
import json
import select
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from scaleset_listener import __version__
from scaleset_listener.errors import (
    ActionsError,
    AuthenticationFailed,
    GitHubAPIError,
    HTTPStatusError,
    ProtocolError,
    TransportFailure,
    classify_actions_error,
)
from scaleset_listener.retrying import RetryPolicy

USER_AGENT = f"scaleset-listener/{__version__}"
BOM = b"\xef\xbb\xbf"
MAX_ERROR_BODY = 256

# The long poll holds a request for about 50 s; reads get a generous margin
# (docs/architecture.md#the-long-poll).
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0)
# httpx's own default (its constant is private). A pool at least as large as the provisioning
# concurrency was measured no cheaper (bench/README.md).
HTTPX_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(repr=False)

    @property
    def is_blank(self) -> bool:
        return not self.body.strip()

    def json(self, what: str) -> Any:
        if self.is_blank:
            raise ProtocolError(f"{what}: empty response body")
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{what}: response is not JSON") from exc


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def _error_text(body: bytes, content_type: str) -> tuple[str, str]:
    """(type_name, message) of an error body: JSON `typeName`/`message`, or plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return "", "unknown error (empty body)"
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            folded = {str(key).lower(): value for key, value in data.items()}
            type_name = str(folded.get("typename") or "")
            message = str(folded.get("message") or text)
            return type_name, message[:MAX_ERROR_BODY]
    return "", text[:MAX_ERROR_BODY]


class _PollOnlyStream(httpcore.AsyncNetworkStream):
    """A connection whose "is it readable?" costs one poll(2), not a getpeername(2) too.

    httpcore asks that of every idle connection each time it places a request (a server that
    closed a kept-alive connection leaves it readable); anyio answers it by building the socket's
    whole attribute table, a getpeername(2) included, every time. At 32 JIT config requests in
    flight that was tens of thousands of system calls per burst (bench/README.md).
    """

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket | None = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> httpcore.AsyncNetworkStream:
        return _PollOnlyStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _is_readable(self._socket)
        return self._stream.get_extra_info(info)


def _is_readable(sock: socket.socket | None) -> bool:
    # httpcore's own test, on the socket looked up once: unknown or closed counts as readable.
    if sock is None or sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _PollOnlyBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return _PollOnlyStream(
            await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return _PollOnlyStream(
            await self._backend.connect_unix_socket(path, timeout, socket_options)
        )

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class PollOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (same TLS, limits and errors) on connections from `_PollOnlyBackend`.

    Used only when no proxy is set in the environment (see `HttpChannel`).
    """

    def __init__(self, limits: httpx.Limits = HTTPX_DEFAULT_LIMITS) -> None:
        super().__init__(limits=limits)
        # httpx offers no way to hand its pool a network backend; the pool it just built is
        # replaced by the same one on ours (tests/scaleset_listener/test_http_channel.py checks
        # that the readability test still retires a connection the server closed). An httpx
        # whose transport keeps its pool otherwise keeps it: slower, never wrong.
        if type(getattr(self, "_pool", None)) is not httpcore.AsyncConnectionPool:
            return
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PollOnlyBackend(),
        )


# Told of every attempt: method, URL path, status (None: no answer) and seconds taken.
RequestObserver = Callable[[str, str, int | None, float], None]


class HttpChannel:
    """An httpx client plus the policies every GitHub-facing request shares."""

    def __init__(
        self,
        policy: RetryPolicy,
        client: httpx.AsyncClient | None = None,
        observe: RequestObserver | None = None,
    ) -> None:
        self.policy = policy
        self.observe = observe
        self._client = client or httpx.AsyncClient(
            timeout=DEFAULT_TIMEOUT,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            # httpx honours the environment's proxies only when given no transport, so with any
            # proxy variable set the client keeps httpx's own transport, proxies and all.
            transport=None if urllib.request.getproxies() else PollOnlyTransport(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        expected: Collection[int],
        service: type[HTTPStatusError],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        what: str,
        also_retry: Callable[[BaseException], bool] | None = None,
        retry: bool = True,
    ) -> Answer:
        """Send with bounded retries; return the answer if its status is in `expected`.

        `service` picks the error family: ActionsError (classified by `typeName`) or
        GitHubAPIError (401/403 become AuthenticationFailed).
        """
        if not retry:
            return await self._send_once(method, url, expected, service, headers, params, json_body)
        async for attempt in self.policy.requests(what, also_retry):
            with attempt:
                return await self._send_once(
                    method, url, expected, service, headers, params, json_body
                )
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _send_once(
        self,
        method: str,
        url: str,
        expected: Collection[int],
        service: type[HTTPStatusError],
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        json_body: Any,
    ) -> Answer:
        request_headers = dict(headers or {})
        content: bytes | None = None
        if json_body is not None:
            # Literal &, < and > as the Go clients send them (HTML escaping disabled).
            content = json.dumps(json_body, separators=(",", ":")).encode()
        target = httpx.URL(url)
        if params:
            # Merge, never replace: the message queue URL carries a query of its own.
            target = target.copy_merge_params(dict(params))
        started = time.monotonic()
        try:
            response = await self._client.request(
                method, target, headers=request_headers, content=content
            )
        except httpx.TransportError as exc:
            if self.observe is not None:
                self.observe(method, target.path, None, time.monotonic() - started)
            raise TransportFailure(method, url, type(exc).__name__ + _detail(exc)) from exc
        if self.observe is not None:
            self.observe(method, target.path, response.status_code, time.monotonic() - started)
        body = response.content.removeprefix(BOM)
        if response.status_code in expected:
            return Answer(response.status_code, body, response.headers)
        raise _status_error(method, str(response.request.url), response, body, service)


def _detail(exc: Exception) -> str:
    text = str(exc)
    return f": {text}" if text else ""


def _status_error(
    method: str,
    url: str,
    response: httpx.Response,
    body: bytes,
    service: type[HTTPStatusError],
) -> HTTPStatusError:
    type_name, message = _error_text(body, response.headers.get("content-type", ""))
    cls: type[HTTPStatusError] = service
    if issubclass(service, ActionsError):
        cls = classify_actions_error(type_name)
    elif issubclass(service, GitHubAPIError) and response.status_code in (401, 403):
        cls = AuthenticationFailed
    return cls(
        method,
        url,
        response.status_code,
        message,
        type_name=type_name,
        activity_id=response.headers.get("activityid", ""),
        request_id=response.headers.get("x-github-request-id", ""),
        retry_after=_retry_after_seconds(response.headers.get("retry-after"))
        if response.status_code in (429, 503)
        else None,
    )
