"""What both simulators need to serve ASGI with uvicorn on a socket they bound themselves.

The one non-standard part: the "drop" fault must reset a TCP connection, and ASGI gives an
application no handle on it, so uvicorn's h11 protocol is extended to put the connection's
transport into the scope under TRANSPORT_KEY.
"""

from __future__ import annotations

import asyncio
import socket
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
