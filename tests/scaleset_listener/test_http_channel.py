"""Narrow odd-status cases of the HTTP layer, through httpx.MockTransport (no server needed),
and the channel's own transport against a socket on 127.0.0.1."""

import asyncio
from collections.abc import Callable

import httpx
import pytest
from structlog.testing import capture_logs

from scaleset_listener.errors import (
    ActionsError,
    AuthenticationFailed,
    GitHubAPIError,
    JobStillRunning,
    SessionConflict,
    TransportFailure,
)
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy

URL = "http://actions.test/_apis/x"
FAST = RetryPolicy(max_attempts=4, max_wait=0.01)


def channel(handler: Callable[[httpx.Request], httpx.Response]) -> HttpChannel:
    return HttpChannel(FAST, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def test_a_utf8_bom_is_stripped_before_json_decoding() -> None:
    http = channel(lambda _: httpx.Response(200, content=b'\xef\xbb\xbf{"count": 0}'))
    answer = await http.request("GET", URL, expected={200}, service=ActionsError, what="t")
    assert answer.json("t") == {"count": 0}


@pytest.mark.parametrize(
    ("status", "type_name", "error_class"),
    [
        (
            409,
            "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, X",
            SessionConflict,
        ),
        (400, "GitHub.DistributedTask.WebApi.JobStillRunningException, X", JobStillRunning),
        (400, "Something.Else", ActionsError),
    ],
)
async def test_error_bodies_are_classified_by_type_name(
    status: int, type_name: str, error_class: type[ActionsError]
) -> None:
    http = channel(
        lambda _: httpx.Response(
            status,
            json={"typeName": type_name, "message": "nope"},
            headers={"ActivityId": "act-1"},
        )
    )
    with pytest.raises(ActionsError) as caught:
        await http.request("GET", URL, expected={200}, service=ActionsError, what="t")
    assert type(caught.value) is error_class
    assert caught.value.status == status
    assert caught.value.activity_id == "act-1"
    assert "GET http://actions.test/_apis/x" in str(caught.value)
    assert "nope" in str(caught.value)


async def test_plain_text_and_empty_error_bodies_still_make_readable_errors() -> None:
    http = channel(lambda _: httpx.Response(403, text="Forbidden for you"))
    with pytest.raises(AuthenticationFailed, match="Forbidden for you"):
        await http.request("POST", URL, expected={201}, service=GitHubAPIError, what="t")
    http = channel(lambda _: httpx.Response(404))
    with pytest.raises(GitHubAPIError, match="unknown error"):
        await http.request("POST", URL, expected={201}, service=GitHubAPIError, what="t")


async def test_501_is_not_retried() -> None:
    calls: list[int] = []

    def handler(_: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(501)

    with pytest.raises(ActionsError):
        await channel(handler).request("GET", URL, expected={200}, service=ActionsError, what="t")
    assert len(calls) == 1


async def test_429_waits_as_long_as_retry_after_says_within_the_cap() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "0.02"}), httpx.Response(200)])
    http = HttpChannel(
        RetryPolicy(max_attempts=3, max_wait=0.05),
        httpx.AsyncClient(transport=httpx.MockTransport(lambda _: next(answers))),
    )
    with capture_logs() as logs:
        answer = await http.request("GET", URL, expected={200}, service=ActionsError, what="t")
    assert answer.status == 200
    assert [entry["wait_seconds"] for entry in logs if entry["event"] == "request_retry"] == [0.02]


async def test_transport_errors_are_retried_then_surface_typed() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransportFailure, match="ConnectError"):
        await channel(handler).request("GET", URL, expected={200}, service=ActionsError, what="t")
    assert len(calls) == FAST.max_attempts


async def test_errors_never_carry_the_authorization_header() -> None:
    http = channel(lambda _: httpx.Response(400, json={"message": "bad"}))
    with pytest.raises(ActionsError) as caught:
        await http.request(
            "GET",
            URL,
            expected={200},
            service=ActionsError,
            headers={"Authorization": "Bearer super-secret-token"},
            what="t",
        )
    assert "super-secret-token" not in str(caught.value)
    assert "super-secret-token" not in repr(caught.value.__dict__)


@pytest.mark.timeout(10)
async def test_a_kept_alive_connection_the_server_closed_is_not_reused() -> None:
    # The channel's transport answers httpcore's "is this idle connection readable?" with one
    # poll(2) of its own; a server's close of a kept-alive connection must still retire it, or
    # the next request would be written into a dead connection and fail.
    connections = 0
    first_closed = asyncio.Event()
    second_done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if connections > 1:
            await reader.read()  # until the client lets go
        writer.close()
        await writer.wait_closed()
        (second_done if connections > 1 else first_closed).set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    http = HttpChannel(FAST)
    try:
        first = await http.request("GET", url, expected={200}, service=ActionsError, what="t")
        await first_closed.wait()
        second = await http.request(
            "GET", url, expected={200}, service=ActionsError, what="t", retry=False
        )
    finally:
        await http.aclose()
        if connections > 1:
            await second_done.wait()  # no handler outlives the test (its writer's warning would)
        server.close()
        await server.wait_closed()
    assert (first.body, second.body) == (b"ok", b"ok")
    assert connections == 2
