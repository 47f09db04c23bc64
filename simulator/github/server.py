"""Running the simulator: in a daemon thread for tests, or in the foreground for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from simulator.github.app import TRANSPORT_KEY, Receive, Scope, Send, SimulatorApp
from simulator.github.config import SimulatorConfig
from simulator.github.control import SimulatorControl
from simulator.github.state import World

log = logging.getLogger(__name__)


class _TransportExposingH11(H11Protocol):
    """uvicorn's h11 protocol, plus the connection's transport in the ASGI scope.

    ASGI gives an application no way to reset a connection; the "drop" fault needs one so that
    clients see a genuine transport error rather than an HTTP status.
    """

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


def build_server(
    config: SimulatorConfig, sock: socket.socket, graceful: int
) -> tuple[uvicorn.Server, World]:
    host, port = sock.getsockname()[:2]
    world = World(config, config.public_url or f"http://{host}:{port}")
    asgi = SimulatorApp(world)

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        await asgi(scope, receive, send)

    uv_config = uvicorn.Config(
        entry,
        http=_TransportExposingH11,
        ws="none",
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=graceful,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(uv_config), world


class RunningSimulator:
    """A simulator serving on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server, self.world = build_server(config, self._sock, graceful=1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulator.github", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError("simulator.github failed to start") from self._failure
            if time.monotonic() > deadline:
                raise RuntimeError("simulator.github did not start within 10 s")
            time.sleep(0.002)
        self.control = SimulatorControl(self.base_url)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._sock])

        try:
            asyncio.run(main())
        except Exception as exc:
            log.exception("simulator.github server thread failed")
            self._failure = exc

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.control.close()
        self._server.should_exit = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self.world.shutdown)
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_thread(config: SimulatorConfig | None = None) -> RunningSimulator:
    return RunningSimulator(config or SimulatorConfig())


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve in the foreground until SIGTERM/SIGINT (uvicorn handles both in the main thread)."""
    sock = bind(host, port)
    server, world = build_server(config, sock, graceful=1)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn exposes readiness only as a flag, so it is polled.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if server.started:
        bound_host, bound_port = sock.getsockname()[:2]
        sys.stdout.write(f"simulator.github listening on http://{bound_host}:{bound_port}\n")
        sys.stdout.flush()
    try:
        await task
    finally:
        world.shutdown()
        sock.close()
