"""What both simulators need to serve ASGI with uvicorn on a socket they bound themselves.

The one non-standard part: the "drop" fault must reset a TCP connection, and ASGI gives an
application no handle on it, so uvicorn's h11 protocol is extended to put the connection's
transport into the scope under TRANSPORT_KEY.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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
