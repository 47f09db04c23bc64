"""Running the simulated cloud: in a daemon thread for tests, or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from pathlib import Path
from types import TracebackType

import uvicorn

from simulator.openstack.app import CloudApp
from simulator.openstack.cloudsyaml import clouds_yaml_text
from simulator.openstack.config import CloudConfig
from simulator.openstack.control import CloudControl
from simulator.openstack.state import Cloud
from simulator.serving import Receive, Scope, Send, ServerThread, bind, uvicorn_server

TICK_INTERVAL = 0.05


def build_server(
    config: CloudConfig, sock: socket.socket, graceful: int
) -> tuple[uvicorn.Server, Cloud]:
    host, port = sock.getsockname()[:2]
    cloud = Cloud(config, config.public_url or f"http://{host}:{port}")
    asgi = CloudApp(cloud)

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        await asgi(scope, receive, send)

    # log level  # a dropped connection makes uvicorn log an error; it is ours
    # A dropped connection (a fault we inject) makes uvicorn log an error: it is ours.
    return uvicorn_server(entry, graceful, "critical"), cloud


async def _ticker(cloud: Cloud) -> None:
    """Move timed transitions along even while nobody asks (requests tick too)."""
    while True:
        await asyncio.sleep(TICK_INTERVAL)
        cloud.tick()


async def _serve(server: uvicorn.Server, cloud: Cloud, sock: socket.socket) -> None:
    ticker = asyncio.create_task(_ticker(cloud))
    try:
        await server.serve(sockets=[sock])
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


class RunningCloud:
    """A simulated cloud serving on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, config: CloudConfig) -> None:
        self.config = config
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        server, self.cloud = build_server(config, self._sock, graceful=1)
        self._thread = ServerThread(
            "simulator.openstack", server, lambda: _serve(server, self.cloud, self._sock)
        )
        self._thread.start()
        self.control = CloudControl(self.base_url)

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity/v3"

    def clouds_yaml(self) -> str:
        return clouds_yaml_text(self.base_url, self.config.region)

    def write_clouds_yaml(self, path: Path | str) -> Path:
        target = Path(path)
        target.write_text(self.clouds_yaml(), encoding="utf-8")
        return target

    def stop(self) -> None:
        if not self._thread.alive:
            return
        self.control.close()
        self._thread.stop()
        self._sock.close()

    def __enter__(self) -> RunningCloud:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_thread(config: CloudConfig | None = None) -> RunningCloud:
    return RunningCloud(config or CloudConfig())


async def serve_forever(
    config: CloudConfig, host: str, port: int, clouds_yaml: Path | None = None
) -> None:
    """Serve in the foreground until SIGTERM/SIGINT (uvicorn handles both in the main thread)."""
    sock = bind(host, port)
    server, cloud = build_server(config, sock, graceful=1)
    task = asyncio.create_task(_serve(server, cloud, sock))
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
        await asyncio.sleep(0.01)
    if server.started:
        if clouds_yaml is not None:
            text = clouds_yaml_text(cloud.base_url, config.region)
            await asyncio.to_thread(clouds_yaml.write_text, text, "utf-8")
        sys.stdout.write(f"simulator.openstack listening on {cloud.base_url}\n")
        sys.stdout.flush()
    try:
        await task
    finally:
        sock.close()
