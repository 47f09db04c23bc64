"""How both simulators serve: ASGI with uvicorn on a socket they bound themselves, either in a
daemon thread (`RunningServer`: tests, the demo) or in the foreground until SIGTERM/SIGINT
(`serve_forever`: `python -m simulator.github`, `python -m simulator.openstack`).

A simulator describes itself once as a `Service` (its ASGI app, background work such as the
cloud's ticker, what ends its long polls); the ways of running it are the same for both.

The one non-standard part: the "drop" fault must reset a TCP connection, and ASGI gives an
application no handle on it, so uvicorn's h11 protocol is extended to put the connection's
transport into the scope under TRANSPORT_KEY (`drop_connection` uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TRANSPORT_KEY = "simulator.transport"


class TransportExposingH11(H11Protocol):
    """uvicorn's h11 protocol, plus the connection's transport in the ASGI scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        inner = self.app

        async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
            scope[TRANSPORT_KEY] = transport
            await inner(scope, receive, send)

        self.app = app


async def drop_connection(scope: Scope, receive: Receive) -> None:
    """The "drop" fault: reset the request's TCP connection, so the client sees a transport
    error instead of an HTTP answer. Returns once the server has seen the connection go, so
    that it does not answer a 500 in place of the missing response."""
    transport = scope.get(TRANSPORT_KEY)
    if transport is None:
        raise ConnectionAbortedError("simulator: drop fault without a transport to abort")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close into an RST, the closest thing to a connection reset by a peer.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    while (await receive())["type"] != "http.disconnect":
        pass


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def uvicorn_server(app: ASGIApp, graceful: int, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        # Said, not guessed: uvicorn takes a bound method or a callable object for ASGI2.
        interface="asgi3",
        http=TransportExposingH11,
        ws="none",
        lifespan="off",
        log_config=None,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=graceful,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


class ServerThread:
    """A uvicorn server on an event loop of its own in a daemon thread (tests, the demo).

    `start` returns once the server accepts connections (uvicorn exposes that only as a flag,
    so the starting thread watches it); `stop` asks it to exit, runs `on_stop` on its loop
    first (to end long polls and timers) and joins the thread.
    """

    def __init__(
        self,
        name: str,
        server: uvicorn.Server,
        main: Callable[[], Awaitable[None]],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self._server = server
        self._main = main
        self._on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._main()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._failure = exc

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"{self._name} failed to start") from self._failure
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self._name} did not start within {timeout:g} s")
            time.sleep(0.002)  # startup handshake with the server thread, not test sync

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._server.should_exit = True
        loop = self._loop
        if self._on_stop is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._on_stop)
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class Service:
    """One simulator, ready to serve.

    app: its ASGI application.
    log_level: uvicorn's (a simulator may silence errors its own faults cause).
    background: runs as a task while the server serves (the cloud's ticker); cancelled after.
    on_stop: ends what would hold a stop up (long polls, timers): run on the server's loop
        when a thread is stopped, after serving in the foreground.
    """

    app: ASGIApp
    log_level: str = "warning"
    background: Callable[[], Coroutine[Any, Any, None]] | None = None
    on_stop: Callable[[], None] | None = None


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


async def _serve(server: uvicorn.Server, sock: socket.socket, service: Service) -> None:
    background: asyncio.Task[None] | None = None
    if service.background is not None:
        background = asyncio.create_task(service.background())
    try:
        await server.serve(sockets=[sock])
    finally:
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background


class RunningServer:
    """A simulator serving on 127.0.0.1 in a daemon thread; a context manager. A subclass binds
    (`super().__init__`), builds its `Service` for `base_url`, then `_start`s it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread: ServerThread | None = None

    def _start(self, service: Service) -> None:
        server = uvicorn_server(service.app, graceful=1, log_level=service.log_level)
        sock = self._sock
        self._thread = ServerThread(
            self._name, server, lambda: _serve(server, sock, service), on_stop=service.on_stop
        )
        self._thread.start()

    def _closing(self) -> None:
        """Before the server stops (a subclass closes its control client)."""

    def stop(self) -> None:
        if self._thread is None or not self._thread.alive:
            return
        self._closing()
        self._thread.stop()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve_forever(
    name: str,
    sock: socket.socket,
    service: Service,
    url: str,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve on `sock` in the foreground until SIGTERM/SIGINT (uvicorn handles both in the main
    thread). Once the server accepts connections: `on_ready`, then `<name> listening on <url>`
    (flushed) on stdout."""
    server = uvicorn_server(service.app, graceful=1, log_level=service.log_level)
    task = asyncio.create_task(_serve(server, sock, service))
    # uvicorn exposes readiness only as a flag, so it is polled.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if server.started:
        if on_ready is not None:
            await on_ready()
        sys.stdout.write(f"{name} listening on {url}\n")
        sys.stdout.flush()
    try:
        await task
    finally:
        if service.on_stop is not None:
            service.on_stop()
        sock.close()
