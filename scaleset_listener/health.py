"""The HTTP endpoints on METRICS_ADDR: `/healthz` (the process is up), `/readyz`, and
`/metrics` (Prometheus text format, docs/monitoring.md).

Ready means: every scale set's listener got an answer from the message queue recently (within
two long polls: the broker holds a poll for about 50 s), no scaler is stuck on a configuration
error (an unknown image, say) and nothing service-wide is about to stop every job (a runner
version GitHub will soon refuse). `/readyz` answers 503 with the reasons otherwise,
so a Kubernetes readiness probe or a load balancer sees what an operator would grep for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

POLL_STALE_AFTER = 120.0


@dataclass(frozen=True)
class ScaleSetHealth:
    name: str
    last_poll_at: Callable[[], float | None]
    problem: Callable[[], str | None]


Problem = Callable[[], str | None]
# The metrics in Prometheus' text format, and its content type.
Exposition = tuple[Callable[[], bytes], str]


def readiness(
    sets: Sequence[ScaleSetHealth], now: float, service_problems: Sequence[Problem] = ()
) -> list[str]:
    """Why the service is not ready (empty: ready)."""
    reasons = [problem for check in service_problems if (problem := check())]
    for health in sets:
        polled = health.last_poll_at()
        if polled is None:
            reasons.append(f"{health.name}: no message-queue poll answered yet")
        elif now - polled > POLL_STALE_AFTER:
            reasons.append(f"{health.name}: last poll answered {now - polled:.0f} s ago")
        problem = health.problem()
        if problem:
            reasons.append(f"{health.name}: {problem}")
    return reasons


def health_app(
    sets: Sequence[ScaleSetHealth],
    service_problems: Sequence[Problem] = (),
    metrics: Exposition | None = None,
) -> Starlette:
    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> JSONResponse:
        reasons = readiness(sets, time.monotonic(), service_problems)
        return JSONResponse(
            {"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200
        )

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if metrics is not None:
        render, content_type = metrics

        async def exposition(_: Request) -> Response:
            return Response(render(), media_type=content_type)

        routes.append(Route("/metrics", exposition))
    return Starlette(routes=routes)


class HealthServer:
    """The endpoints on a thread of their own: uvicorn then leaves the process's signal
    handling to the service, and a busy event loop never delays a probe."""

    def __init__(
        self,
        sets: Sequence[ScaleSetHealth],
        addr: str,
        service_problems: Sequence[Problem] = (),
        metrics: Exposition | None = None,
    ) -> None:
        self._server = _uvicorn_server(health_app(sets, service_problems, metrics), addr)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._server.serve(),), name="health", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def _uvicorn_server(app: Starlette, addr: str) -> uvicorn.Server:
    host, _, port = addr.rpartition(":")
    config = uvicorn.Config(
        app,
        host=host or "0.0.0.0",  # noqa: S104 (":port" means every interface, as documented)
        port=int(port),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return uvicorn.Server(config)
