"""The ASGI application: one port for Keystone, Nova, Glance, Neutron, Cinder and /_sim/.

Routing is a regex table rather than Starlette's router because every request first needs its
endpoint name (for faults and the request log) and its service (for the error format).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from starlette.requests import Request

from simulator.openstack import compute, control_routes, identity, image, network, volume
from simulator.openstack.config import ConfigError, parse_microversion
from simulator.openstack.faults import Fault
from simulator.openstack.model import JSON, ApiError
from simulator.openstack.state import Cloud
from simulator.openstack.web import (
    Ctx,
    Reply,
    Route,
    error_reply,
    injected_error,
    unauthorized,
)
from simulator.serving import Receive, Scope, Send, drop_connection

SERVICE_PREFIXES = (
    ("/identity", "identity"),
    ("/compute", "compute"),
    ("/image", "image"),
    ("/network", "network"),
    ("/volume", "volume"),
)
BODY_LOG_LIMIT = 70_000


def all_routes() -> list[Route]:
    return [
        *identity.routes(),
        *compute.routes(),
        *image.routes(),
        *network.routes(),
        *volume.routes(),
    ]


def endpoint_names(routes: list[Route]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.endpoint for r in routes))


def _service_of(path: str) -> str:
    for prefix, service in SERVICE_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return service
    return "control"


def _negotiate(ctx: Ctx, service: str, headers: dict[str, str]) -> None:
    """Pick the request's microversion (Nova, Cinder) and echo it like the services do."""
    if service == "compute":
        name, minimum = "compute", (2, 1)
        maximum = parse_microversion(ctx.cloud.config.max_microversion)
        legacy = ctx.headers.get("x-openstack-nova-api-version")
    else:
        name, minimum = "volume", (3, 0)
        maximum = parse_microversion(volume.MAX_MICROVERSION)
        legacy = None
    requested: str | None = None
    for part in ctx.headers.get("openstack-api-version", "").split(","):
        service_name, _, value = part.strip().partition(" ")
        if service_name.lower() == name and value.strip():
            requested = value.strip()
    if requested is None:
        requested = legacy
    if requested is None:
        chosen = minimum
    elif requested.lower() == "latest":
        chosen = maximum
    else:
        try:
            chosen = parse_microversion(requested)
        except ConfigError:
            raise ApiError(
                400,
                f"API Version String {requested} is of invalid format. Must be of format "
                "MajorNum.MinorNum.",
            ) from None
        if not minimum <= chosen <= maximum:
            lo = f"{minimum[0]}.{minimum[1]}"
            hi = f"{maximum[0]}.{maximum[1]}"
            raise ApiError(
                406,
                f"Version {requested} is not supported by the API. Minimum is {lo} and "
                f"maximum is {hi}.",
                kind="computeFault",
            )
    ctx.version = chosen
    text = f"{chosen[0]}.{chosen[1]}"
    headers["OpenStack-API-Version"] = f"{name} {text}"
    if service == "compute":
        headers["X-OpenStack-Nova-API-Version"] = text
        headers["Vary"] = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    else:
        headers["Vary"] = "OpenStack-API-Version"


class CloudApp:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.routes = all_routes()
        cloud.set_endpoints(endpoint_names(self.routes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        path = request.url.path
        if path.startswith("/_sim"):
            reply = control_routes.dispatch(self.cloud, request.method, path, request, body)
            await self._send(send, reply)
            return
        await self._serve_api(scope, receive, request, body, send)

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        path_matched = False
        for candidate in self.routes:
            found = candidate.pattern.match(path)
            if found is None:
                continue
            path_matched = True
            if candidate.method == method or (method == "HEAD" and candidate.method == "GET"):
                return candidate, found.groupdict(), True
        return None, {}, path_matched

    async def _serve_api(
        self, scope: Scope, receive: Receive, request: Request, body: bytes, send: Send
    ) -> None:
        cloud = self.cloud
        started = time.monotonic()
        method, path = request.method, request.url.path
        route, params, path_matched = self._match(method, path)
        service = route.service if route else _service_of(path)
        endpoint = route.endpoint if route else f"{service}.unknown"
        decision = cloud.faults.decide(endpoint) if route else None
        if decision is not None and decision.delay:
            await asyncio.sleep(decision.delay)
        cloud.tick()
        terminal: Fault | None = decision.terminal if decision else None
        ctx = Ctx(
            cloud=cloud,
            method=method,
            path=path,
            params=params,
            query=request.query_params,
            headers=request.headers,
            raw_body=body,
            service=service,
        )
        headers: dict[str, str] = {"x-openstack-request-id": f"req-{uuid.uuid4()}"}
        if service == "compute":
            headers["x-compute-request-id"] = headers["x-openstack-request-id"]
        dropped = False
        try:
            if route is None:
                if path_matched:
                    raise ApiError(405, "The method is not allowed for the requested URL.")
                raise ApiError(404, "The resource could not be found.")
            if route.auth:
                token = cloud.valid_token(request.headers.get("x-auth-token"))
                if token is None:
                    raise unauthorized(cloud)
                ctx.token = token
                if service in ("compute", "volume"):
                    _negotiate(ctx, service, headers)
            if terminal is not None and terminal.kind == "drop" and not terminal.after_processing:
                dropped = True
                reply = Reply.empty(0)
            elif terminal is not None and terminal.kind == "status":
                raise injected_error(service, terminal.status, terminal.message)
            else:
                reply = route.handler(ctx)
                if terminal is not None and terminal.kind == "drop":
                    dropped = True
        except ApiError as error:
            reply = error_reply(service, error)
        reply.headers = {**headers, **reply.headers}
        self._log(ctx, endpoint, reply, terminal, dropped, started)
        if dropped:
            await drop_connection(scope, receive)
            return
        await self._send(send, reply, head=method == "HEAD")

    def _log(
        self,
        ctx: Ctx,
        endpoint: str,
        reply: Reply,
        fault: Fault | None,
        dropped: bool,
        started: float,
    ) -> None:
        body: Any = None
        if ctx.raw_body and ctx.service != "identity" and len(ctx.raw_body) <= BODY_LOG_LIMIT:
            try:
                body = json.loads(ctx.raw_body)
            except ValueError:
                body = ctx.raw_body.decode("utf-8", "replace")
        version = f"{ctx.version[0]}.{ctx.version[1]}" if ctx.version != (0, 0) else None
        entry: JSON = {
            "id": next(self.cloud.request_seq),
            "time": time.time(),
            "method": ctx.method,
            "path": ctx.path,
            "query": str(ctx.query),
            "service": ctx.service,
            "endpoint": endpoint,
            "status": None if dropped else reply.status,
            "microversion": version,
            "fault_id": fault.id if fault else None,
            "dropped": dropped,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "body": body,
        }
        self.cloud.request_log.append(entry)
        self.cloud.request_counts[endpoint] += 1

    @staticmethod
    async def _send(send: Send, reply: Reply, head: bool = False) -> None:
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        if reply.content_type:
            raw_headers.append((b"content-type", reply.content_type.encode()))
        raw_headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": b"" if head else reply.body})
