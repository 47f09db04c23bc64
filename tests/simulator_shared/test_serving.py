"""How both simulators serve (simulator.serving), with a small ASGI app on a real socket: the
thread starts and stops, background work runs while serving, stopping ends long polls, and a
dropped connection is a transport error for the client."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from simulator.serving import Receive, RunningServer, Scope, Send, Service, drop_connection


class Echo(RunningServer):
    """`GET /` answers; `GET /wait` waits until the server stops; `GET /drop` resets the
    connection. A background task counts while the server serves."""

    def __init__(self) -> None:
        super().__init__("test.echo")
        self.background_started = threading.Event()
        self.background_cancelled = threading.Event()
        self.stopped_on_loop: list[bool] = []
        self.waiting = threading.Event()
        self._release: asyncio.Event | None = None
        self._start(Service(self._app, background=self._background, on_stop=self._on_stop))

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/drop":
            await drop_connection(scope, receive)
            return
        if scope["path"] == "/wait":
            self._release = asyncio.Event()
            self.waiting.set()
            await self._release.wait()
        body = json.dumps({"path": scope["path"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def _background(self) -> None:
        self.background_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.background_cancelled.set()
            raise

    def _on_stop(self) -> None:
        # Runs on the server's loop, where a long poll can be ended.
        self.stopped_on_loop.append(asyncio.get_running_loop().is_running())
        if self._release is not None:
            self._release.set()


def test_a_running_server_answers_on_its_port_and_is_gone_after_stop() -> None:
    with Echo() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        answer = httpx.get(server.base_url + "/hello", timeout=5)
        assert answer.json() == {"path": "/hello"}
        assert server.background_started.wait(5)
    assert server.background_cancelled.wait(5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url, timeout=5)
    server.stop()  # a second stop is harmless


def test_stopping_ends_a_long_poll_on_the_servers_loop() -> None:
    server = Echo()
    answers: list[int] = []
    client = threading.Thread(
        target=lambda: answers.append(httpx.get(server.base_url + "/wait", timeout=10).status_code)
    )
    client.start()
    assert server.waiting.wait(5)  # the poll is in the server before the stop
    server.stop()
    client.join(10)
    assert answers == [200]
    assert server.stopped_on_loop == [True]


def test_a_dropped_connection_is_a_transport_error_and_the_server_goes_on() -> None:
    with Echo() as server:
        with pytest.raises(httpx.TransportError):
            httpx.get(server.base_url + "/drop", timeout=5)
        assert httpx.get(server.base_url + "/after", timeout=5).json() == {"path": "/after"}
