"""Running the simulator: in a daemon thread for tests, or in the foreground for the CLI."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from types import TracebackType

import uvicorn

from simulator.github.app import SimulatorApp
from simulator.github.config import SimulatorConfig
from simulator.github.control import SimulatorControl
from simulator.github.state import World
from simulator.serving import Receive, Scope, Send, ServerThread, bind, uvicorn_server

log = logging.getLogger(__name__)


def build_server(
    config: SimulatorConfig, sock: socket.socket, graceful: int
) -> tuple[uvicorn.Server, World]:
    host, port = sock.getsockname()[:2]
    world = World(config, config.public_url or f"http://{host}:{port}")
    asgi = SimulatorApp(world)

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        await asgi(scope, receive, send)

    return uvicorn_server(entry, graceful, "warning"), world


class RunningSimulator:
    """A simulator serving on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        server, self.world = build_server(config, self._sock, graceful=1)
        self._thread = ServerThread(
            "simulator.github",
            server,
            lambda: server.serve(sockets=[self._sock]),
            on_stop=self.world.shutdown,
        )
        self._thread.start()
        self.control = SimulatorControl(self.base_url)

    def stop(self) -> None:
        if not self._thread.alive:
            return
        self.control.close()
        self._thread.stop()
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
