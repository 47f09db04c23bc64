"""The ASGI application: GitHub REST API, Actions service, broker, and the control API.

Routing is a small regex table rather than Starlette's router because every request first needs
its protocol endpoint name (for faults and the request log) before anything else happens.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import QueryParams
from starlette.requests import Request

from simulator.github import control_routes
from simulator.github.faults import Fault
from simulator.github.model import (
    JSON,
    Runner,
    ServiceError,
    Session,
    ci_get,
    type_name,
)
from simulator.github.tokens import RUNNER_ADMIN_PERMISSION, App, AppJwtError, verify_app_jwt
from simulator.github.world import World
from simulator.serving import Receive, Scope, Send, drop_connection

API_VERSION = "6.0-preview"
BOM = b"\xef\xbb\xbf"
LOGGED_HEADERS = ("accept", "x-scalesetmaxcapacity", "content-type", "user-agent")
SETTING_KEYS = {
    "ephemeral": "ephemeral",
    "iselastic": "isElastic",
    "disableupdate": "disableUpdate",
}


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any) -> Reply:
        return cls(status, json.dumps(payload).encode(), "application/json; charset=utf-8")

    @classmethod
    def text(cls, status: int, text: str) -> Reply:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


def service_error(exc: ServiceError) -> Reply:
    if exc.exception is None:
        return Reply.json(exc.status, {"message": exc.message})
    return Reply.json(exc.status, {"typeName": type_name(exc.exception), "message": exc.message})


@dataclass
class Ctx:
    request: Request
    params: dict[str, str]
    body: bytes
    query: QueryParams
    endpoint: str
    token: str
    session: Session | None = None
    app: App | None = None
    scope_path: str = ""

    def json_body(self) -> Any:
        text = self.body.decode("utf-8-sig").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ServiceError(400, "ArgumentException", f"invalid JSON body: {exc}") from exc

    def json_object(self) -> JSON:
        body = self.json_body()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ServiceError(400, "ArgumentException", "the request body must be a JSON object")
        return body


Handler = Callable[["SimulatorApp", Ctx], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str
    surface: str  # api, actions, broker
    # app_jwt, credential, remoteauth, admin, queue; public (anonymous, or a valid credential);
    # none (headers ignored)
    auth: str
    handler: Handler


ROUTES: list[Route] = []


def route(
    method: str, pattern: str, endpoint: str, surface: str, auth: str
) -> Callable[[Handler], Handler]:
    prefix = {
        "api": r"(?:/api/v3)?",
        "actions": r"/pipelines/(?P<tenant>[^/]+)/_apis/",
        "broker": r"/broker/scalesets/(?P<ss>\d+)/message",
    }[surface]

    def register(handler: Handler) -> Handler:
        compiled = re.compile("^" + prefix + pattern + "$")
        ROUTES.append(Route(method, compiled, endpoint, surface, auth, handler))
        return handler

    return register


def _now_iso(offset: float) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ServiceError(400, "ArgumentException", f"{name} must be an integer") from exc


def _envelope(items: list[JSON], duplicate: bool) -> JSON:
    if duplicate and items:
        items = [items[0], items[0]]
    return {"count": len(items), "value": items}


# ---------------------------------------------------------------------------- GitHub REST API


@route(
    "POST",
    r"/app/installations/(?P<installation>\d+)/access_tokens",
    "access_tokens",
    "api",
    "app_jwt",
)
async def access_tokens(sim: SimulatorApp, ctx: Ctx) -> Reply:
    assert ctx.app is not None
    installation = int(ctx.params["installation"])
    if installation not in ctx.app.installation_ids:
        return Reply.json(404, {"message": "Not Found"})
    token = sim.world.credentials.issue_installation_token(installation)
    return Reply.json(
        201,
        {
            "token": token.token,
            "expires_at": _now_iso(sim.world.config.installation_token_ttl),
            "permissions": dict(ctx.app.permissions),
            "repository_selection": "all",
        },
    )


# The scope a classic PAT needs for runner administration, per kind of scope path.
_RUNNER_ADMIN_SCOPES = {
    "org": "admin:org",
    "repo": "repo",
    "enterprise": "manage_runners:enterprise",
}


def _runner_admin_refused(sim: SimulatorApp, ctx: Ctx, kind: str) -> Reply | None:
    """GitHub's answer to a credential that may not administer runners at this scope: a classic
    PAT without the scope (403, its repository-worded message whatever the scope, and the scope
    it would have accepted) or an App installation without the permission (403 "Resource not
    accessible by integration" and the permission it would have accepted)."""
    if ctx.token in sim.world.config.pats_without_runner_admin:
        reply = Reply.json(
            403,
            {
                "message": "Must have admin rights to Repository.",
                "documentation_url": "https://docs.github.com/rest/actions/self-hosted-runners",
            },
        )
        reply.headers["X-Accepted-OAuth-Scopes"] = _RUNNER_ADMIN_SCOPES[kind]
        reply.headers["X-OAuth-Scopes"] = "read:org"
        return reply
    app = sim.world.credentials.installation_app(ctx.token)
    if app is None:
        return None
    # Enterprise runners are not an App's to manage: GitHub takes a classic PAT there.
    needed = RUNNER_ADMIN_PERMISSION.get(kind)
    if needed is not None and app.permissions.get(needed) == "write":
        return None
    reply = Reply.json(
        403,
        {
            "message": "Resource not accessible by integration",
            "documentation_url": "https://docs.github.com/rest/actions/self-hosted-runners",
            "status": "403",
        },
    )
    if needed is not None:
        reply.headers["X-Accepted-GitHub-Permissions"] = f"{needed}=write"
    return reply


async def _registration_token(sim: SimulatorApp, ctx: Ctx, scope_path: str) -> Reply:
    kind = (
        "enterprise"
        if scope_path.startswith("enterprises/")
        else ("repo" if "/" in scope_path else "org")
    )
    refused = _runner_admin_refused(sim, ctx, kind)
    if refused is not None:
        return refused
    token = sim.world.credentials.issue_registration_token(scope_path)
    return Reply.json(
        201, {"token": token.token, "expires_at": _now_iso(sim.world.config.registration_token_ttl)}
    )


@route(
    "POST",
    r"/orgs/(?P<org>[^/]+)/actions/runners/registration-token",
    "registration_token",
    "api",
    "credential",
)
async def org_registration_token(sim: SimulatorApp, ctx: Ctx) -> Reply:
    return await _registration_token(sim, ctx, ctx.params["org"])


@route(
    "POST",
    r"/enterprises/(?P<ent>[^/]+)/actions/runners/registration-token",
    "registration_token",
    "api",
    "credential",
)
async def enterprise_registration_token(sim: SimulatorApp, ctx: Ctx) -> Reply:
    return await _registration_token(sim, ctx, "enterprises/" + ctx.params["ent"])


@route(
    "POST",
    r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/actions/runners/registration-token",
    "registration_token",
    "api",
    "credential",
)
async def repo_registration_token(sim: SimulatorApp, ctx: Ctx) -> Reply:
    return await _registration_token(sim, ctx, f"{ctx.params['owner']}/{ctx.params['repo']}")


# Runner releases. The downloads endpoint exists per scope with the same answer; the release
# files and the release list live where github.com has them (the actions/runner repository),
# on the simulator's base URL so that VMs can reach them.


@route(
    "GET",
    r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/actions/runners/downloads",
    "runner_downloads",
    "api",
    "credential",
)
@route(
    "GET",
    r"/orgs/(?P<org>[^/]+)/actions/runners/downloads",
    "runner_downloads",
    "api",
    "credential",
)
@route(
    "GET",
    r"/enterprises/(?P<ent>[^/]+)/actions/runners/downloads",
    "runner_downloads",
    "api",
    "credential",
)
async def runner_downloads(sim: SimulatorApp, ctx: Ctx) -> Reply:
    kind = "enterprise" if "ent" in ctx.params else ("org" if "org" in ctx.params else "repo")
    refused = _runner_admin_refused(sim, ctx, kind)
    if refused is not None:
        return refused
    return Reply.json(200, sim.world.releases.downloads())


@route(
    "GET",
    r"/actions/runner/releases/download/v(?P<version>[^/]+)/(?P<filename>[^/]+)",
    "runner_release_download",
    "api",
    "none",
)
async def runner_release_download(sim: SimulatorApp, ctx: Ctx) -> Reply:
    tarball = sim.world.releases.file(ctx.params["version"], ctx.params["filename"])
    if tarball is None:
        return Reply.text(404, "Not Found")
    return Reply(200, tarball.data, "application/gzip")


@route("GET", r"/repos/actions/runner/releases", "runner_releases", "api", "public")
async def runner_releases(sim: SimulatorApp, ctx: Ctx) -> Reply:
    if sim.world.config.mode == "ghes":
        # A GHES instance has no actions/runner repository.
        return Reply.json(404, {"message": "Not Found"})
    per_page = min(max(_int_param(ctx.query.get("per_page"), "per_page") or 30, 1), 100)
    page = max(_int_param(ctx.query.get("page"), "page") or 1, 1)
    releases = sim.world.releases.newest_first()
    start = (page - 1) * per_page
    reply = Reply.json(200, [r.to_github() for r in releases[start : start + per_page]])
    if start + per_page < len(releases):
        url = f"{sim.world.base_url}/repos/actions/runner/releases"
        reply.headers["Link"] = f'<{url}?per_page={per_page}&page={page + 1}>; rel="next"'
    return reply


@route("POST", r"/actions/runner-registration", "runner_registration", "api", "remoteauth")
async def runner_registration(sim: SimulatorApp, ctx: Ctx) -> Reply:
    body = ctx.json_object()
    url = ci_get(body, "url")
    if not isinstance(url, str) or not url:
        return Reply.json(400, {"message": "url is required"})
    if ci_get(body, "runner_event") != "register":
        return Reply.json(400, {"message": "runner_event must be 'register'"})
    path = urlsplit(url).path.strip("/").lower()
    if path != ctx.scope_path.strip("/").lower():
        return Reply.json(
            404,
            {"message": f"The registration token is for '{ctx.scope_path}', not for '{url}'."},
        )
    admin = sim.world.credentials.issue_admin_token(ctx.scope_path)
    return Reply.json(
        200, {"url": sim.world.tenant_url, "token": admin, "token_schema": "OAuthAccessToken"}
    )


# ---------------------------------------------------------------------------- Actions service


@route("GET", r"runtime/runnergroups/?", "runner_groups", "actions", "admin")
async def runner_groups(sim: SimulatorApp, ctx: Ctx) -> Reply:
    groups = sim.world.scale_sets.find_groups(ctx.query.get("groupName"))
    items = [sim.world.scale_sets.group_json(g) for g in groups]
    return Reply.json(200, _envelope(items, sim.on_success(ctx, "duplicate_result")))


@route("GET", r"runtime/runnerscalesets/?", "find_scale_set", "actions", "admin")
async def find_scale_set(sim: SimulatorApp, ctx: Ctx) -> Reply:
    group_id = _int_param(ctx.query.get("runnerGroupId"), "runnerGroupId")
    found = sim.world.scale_sets.find(group_id, ctx.query.get("name"))
    items = [sim.world.scale_sets.to_json(s) for s in found]
    return Reply.json(200, _envelope(items, sim.on_success(ctx, "duplicate_result")))


@route("GET", r"runtime/runnerscalesets/(?P<ss>\d+)/?", "get_scale_set", "actions", "admin")
async def get_scale_set(sim: SimulatorApp, ctx: Ctx) -> Reply:
    ss = sim.world.scale_sets.get(int(ctx.params["ss"]))
    return Reply.json(200, sim.world.scale_sets.to_json(ss))


def _labels(body: JSON) -> list[str] | None:
    raw = ci_get(body, "labels")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ServiceError(400, "ArgumentException", "labels must be a list")
    names = []
    for item in raw:
        name = ci_get(item, "name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            raise ServiceError(400, "ArgumentException", "every label needs a name")
        names.append(name)
    return names


def _setting(body: JSON) -> JSON | None:
    raw = ci_get(body, "runnerSetting")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ServiceError(400, "ArgumentException", "runnerSetting must be an object")
    return {SETTING_KEYS.get(str(k).lower()) or str(k): v for k, v in raw.items()}


def _group_id(body: JSON) -> int | None:
    value = ci_get(body, "runnerGroupId")
    if value in (None, 0):
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServiceError(400, "ArgumentException", "runnerGroupId must be an integer")
    return value


@route("POST", r"runtime/runnerscalesets/?", "create_scale_set", "actions", "admin")
async def create_scale_set(sim: SimulatorApp, ctx: Ctx) -> Reply:
    body = ctx.json_object()
    name = ci_get(body, "name")
    ss = sim.world.scale_sets.create(
        name if isinstance(name, str) else "",
        _group_id(body) or 1,
        _labels(body) or [],
        _setting(body) or {},
    )
    return Reply.json(200, sim.world.scale_sets.to_json(ss))


@route("PATCH", r"runtime/runnerscalesets/(?P<ss>\d+)/?", "update_scale_set", "actions", "admin")
async def update_scale_set(sim: SimulatorApp, ctx: Ctx) -> Reply:
    body = ctx.json_object()
    name = ci_get(body, "name")
    ss = sim.world.scale_sets.update(
        int(ctx.params["ss"]),
        name if isinstance(name, str) and name else None,
        _group_id(body),
        _labels(body),
        _setting(body),
    )
    return Reply.json(200, sim.world.scale_sets.to_json(ss))


@route("DELETE", r"runtime/runnerscalesets/(?P<ss>\d+)/?", "delete_scale_set", "actions", "admin")
async def delete_scale_set(sim: SimulatorApp, ctx: Ctx) -> Reply:
    sim.world.scale_sets.delete(int(ctx.params["ss"]))
    return Reply(204)


@route(
    "POST", r"runtime/runnerscalesets/(?P<ss>\d+)/sessions/?", "create_session", "actions", "admin"
)
async def create_session(sim: SimulatorApp, ctx: Ctx) -> Reply:
    body = ctx.json_object()
    owner = ci_get(body, "ownerName")
    session = sim.world.sessions.create(
        int(ctx.params["ss"]), owner if isinstance(owner, str) and owner else "unknown"
    )
    token = sim.world.sessions.new_queue_token(session)
    empty_url = sim.on_success(ctx, "empty_queue_url")
    return Reply.json(200, sim.world.sessions.json(session, token, empty_url))


@route(
    "PATCH",
    r"runtime/runnerscalesets/(?P<ss>\d+)/sessions/(?P<sid>[^/]+)/?",
    "refresh_session",
    "actions",
    "admin",
)
async def refresh_session(sim: SimulatorApp, ctx: Ctx) -> Reply:
    session = sim.world.sessions.refresh(int(ctx.params["ss"]), ctx.params["sid"])
    token = sim.world.sessions.new_queue_token(session)
    empty_url = sim.on_success(ctx, "empty_queue_url")
    return Reply.json(200, sim.world.sessions.json(session, token, empty_url))


@route(
    "DELETE",
    r"runtime/runnerscalesets/(?P<ss>\d+)/sessions/(?P<sid>[^/]+)/?",
    "delete_session",
    "actions",
    "admin",
)
async def delete_session(sim: SimulatorApp, ctx: Ctx) -> Reply:
    sim.world.sessions.delete(int(ctx.params["ss"]), ctx.params["sid"])
    return Reply(204)


@route(
    "GET",
    r"runtime/runnerscalesets/(?P<ss>\d+)/acquirablejobs/?",
    "acquirable_jobs",
    "actions",
    "admin",
)
async def acquirable_jobs(sim: SimulatorApp, ctx: Ctx) -> Reply:
    jobs = sim.world.jobs.acquirable(int(ctx.params["ss"]))
    if not jobs:
        return Reply(204)
    return Reply.json(200, {"count": len(jobs), "value": jobs})


@route(
    "POST", r"runtime/runnerscalesets/(?P<ss>\d+)/acquirejobs/?", "acquire_jobs", "actions", "queue"
)
async def acquire_jobs(sim: SimulatorApp, ctx: Ctx) -> Reply:
    assert ctx.session is not None
    ss_id = int(ctx.params["ss"])
    if ctx.session.scale_set_id != ss_id:
        return Reply(401)
    ids = ctx.json_body()
    if ids is None:
        ids = []
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise ServiceError(400, "ArgumentException", "the body must be a JSON array of ids")
    acquired = sim.world.jobs.acquire(ss_id, ids)
    return Reply.json(200, {"count": len(acquired), "value": acquired})


@route(
    "POST",
    r"runtime/runnerscalesets/(?P<ss>\d+)/generatejitconfig/?",
    "generate_jit_config",
    "actions",
    "admin",
)
async def generate_jit_config(sim: SimulatorApp, ctx: Ctx) -> Reply:
    body = ctx.json_object()
    name, folder = ci_get(body, "name"), ci_get(body, "workFolder", "")
    runner, encoded = sim.world.runners.generate_jit_config(
        int(ctx.params["ss"]),
        name if isinstance(name, str) else "",
        folder if isinstance(folder, str) else "",
    )
    return Reply.json(200, {"runner": runner.reference(), "encodedJITConfig": encoded})


@route(
    "GET",
    r"distributedtask/pools/(?P<pool>\d+)/agents/(?P<rid>\d+)/?",
    "get_runner",
    "actions",
    "admin",
)
async def get_runner(sim: SimulatorApp, ctx: Ctx) -> Reply:
    runner: Runner | None = sim.world.runners.by_id.get(int(ctx.params["rid"]))
    if runner is None:
        raise ServiceError(
            404, "AgentNotFoundException", f"No runner with id {ctx.params['rid']} was found."
        )
    return Reply.json(200, runner.to_wire())


@route("GET", r"distributedtask/pools/(?P<pool>\d+)/agents/?", "find_runner", "actions", "admin")
async def find_runner(sim: SimulatorApp, ctx: Ctx) -> Reply:
    found = sim.world.runners.find(ctx.query.get("agentName"))
    items = [r.to_wire() for r in found]
    return Reply.json(200, _envelope(items, sim.on_success(ctx, "duplicate_result")))


@route(
    "DELETE",
    r"distributedtask/pools/(?P<pool>\d+)/agents/(?P<rid>\d+)/?",
    "remove_runner",
    "actions",
    "admin",
)
async def remove_runner(sim: SimulatorApp, ctx: Ctx) -> Reply:
    sim.world.runners.remove(int(ctx.params["rid"]))
    return Reply(204)


# ---------------------------------------------------------------------------- broker


def _check_queue_url(sim: SimulatorApp, ctx: Ctx) -> Reply | None:
    assert ctx.session is not None
    if ctx.session.scale_set_id != int(ctx.params["ss"]):
        return Reply(401)
    if sim.world.config.strict and ctx.query.get("sessionId") != ctx.session.id:
        return Reply.text(
            400, "The message queue URL lost its query string (sessionId) or it does not match."
        )
    return None


@route("GET", r"/?", "get_message", "broker", "queue")
async def get_message(sim: SimulatorApp, ctx: Ctx) -> Reply:
    bad = _check_queue_url(sim, ctx)
    if bad is not None:
        return bad
    world = sim.world
    accept = ctx.request.headers.get("accept", "").replace(" ", "").lower()
    if world.config.strict and accept != f"application/json;api-version={API_VERSION}":
        return Reply.text(400, f"Accept must be 'application/json; api-version={API_VERSION}'")
    raw_capacity = ctx.request.headers.get("x-scalesetmaxcapacity")
    capacity: int | None = None
    if raw_capacity is not None:
        try:
            capacity = int(raw_capacity)
        except ValueError:
            capacity = -1
        if capacity < 0:
            return Reply.text(400, "X-ScaleSetMaxCapacity must be a non-negative integer")
    try:
        last_id = int(ctx.query.get("lastMessageId") or 0)
    except ValueError:
        return Reply.text(400, "lastMessageId must be an integer")
    session = ctx.session
    assert session is not None
    ss_id = session.scale_set_id
    world.scale_sets.record_capacity(ss_id, capacity)
    # Polling again: the client has read the previous answer.
    session.last_answer_message_id = None
    session.polls_in_flight += 1
    session.last_seen = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + world.config.long_poll_timeout
    try:
        while True:
            if world.sessions.for_queue_token(ctx.token) is not session:
                return Reply(401)
            envelope = world.messages.next_envelope(ss_id, last_id)
            if envelope is not None:
                return Reply.json(200, world.messages.deliver(session, envelope))
            remaining = deadline - loop.time()
            if remaining <= 0 or world.ledger.closing:
                return Reply(202)
            await world.ledger.waiters.wait(remaining)
    finally:
        session.polls_in_flight -= 1
        session.last_seen = time.monotonic()


@route("DELETE", r"/(?P<mid>\d+)", "delete_message", "broker", "queue")
async def delete_message(sim: SimulatorApp, ctx: Ctx) -> Reply:
    bad = _check_queue_url(sim, ctx)
    if bad is not None:
        return bad
    assert ctx.session is not None
    ctx.session.last_seen = time.monotonic()
    known = sim.world.messages.ack(ctx.session.scale_set_id, int(ctx.params["mid"]))
    if not known and sim.world.config.unknown_ack_status == 404:
        return Reply.text(404, f"Message {ctx.params['mid']} was not found.")
    return Reply(204)


# ---------------------------------------------------------------------------- the application


class SimulatorApp:
    def __init__(self, world: World) -> None:
        self.world = world

    def on_success(self, ctx: Ctx, kind: str) -> bool:
        return self.world.faults.take(kind, ctx.endpoint) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.world.ensure_ticker()
        request = Request(scope, receive)
        path: str = scope["path"]
        if path == "/_sim" or path.startswith("/_sim/"):
            status, payload = await control_routes.dispatch(self.world, request)
            await _send(send, Reply.json(status, payload))
            return
        await self._serve(scope, receive, send, request, path)

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for candidate in ROUTES:
            if candidate.method != method:
                continue
            found = candidate.pattern.match(path)
            if found:
                return candidate, {k: v for k, v in found.groupdict().items() if v is not None}
        return None

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, request: Request, path: str
    ) -> None:
        started = time.monotonic()
        body = await request.body()
        matched = self._match(request.method, path)
        authorization = request.headers.get("authorization")
        entry: JSON = {
            "time": time.time(),
            "method": request.method,
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "endpoint": matched[0].endpoint if matched else None,
            "token_kind": self.world.credentials.token_kind(authorization),
            "headers": {k: request.headers[k] for k in LOGGED_HEADERS if k in request.headers},
            "body": _parsed_body(body),
            "fault": None,
        }
        if matched is None:
            reply = Reply.json(404, {"message": "Not Found"})
            surface = "api"
        else:
            found, params = matched
            surface = found.surface
            reply_or_drop = await self._handle(scope, found, params, request, body, entry)
            if reply_or_drop is None:
                entry["status"] = None
                entry["duration"] = time.monotonic() - started
                self.world.ledger.log_request(entry)
                await drop_connection(scope, receive)
                return
            reply = reply_or_drop
        request_id = f"{secrets.token_hex(4).upper()}:{secrets.token_hex(3).upper()}"
        if surface in ("api", "broker"):
            reply.headers.setdefault("X-GitHub-Request-Id", request_id)
        if surface in ("actions", "broker"):
            reply.headers.setdefault("ActivityId", str(uuid.uuid4()))
        entry["status"] = reply.status
        entry["duration"] = time.monotonic() - started
        self.world.ledger.log_request(entry)
        await _send(send, reply)

    async def _handle(
        self,
        scope: Scope,
        found: Route,
        params: dict[str, str],
        request: Request,
        body: bytes,
        entry: JSON,
    ) -> Reply | None:
        """The reply for a matched route, or None when the connection is to be dropped."""
        decision = self.world.faults.decide(found.endpoint)
        if decision.delay:
            await asyncio.sleep(decision.delay)
        fault = decision.terminal
        if fault is not None:
            entry["fault"] = fault.kind
            if fault.kind == "status":
                return _fault_reply(fault)
            if not fault.after_processing:
                return None
        ctx = Ctx(request, params, body, request.query_params, found.endpoint, "")
        try:
            reply = self._precheck(found, ctx) or await found.handler(self, ctx)
        except ServiceError as exc:
            reply = service_error(exc)
        if fault is not None:  # a drop after the request took effect
            return None
        if 200 <= reply.status < 300 and reply.body and self.on_success(ctx, "bom"):
            entry["fault"] = "bom"
            reply.body = BOM + reply.body
        return reply

    def _precheck(self, found: Route, ctx: Ctx) -> Reply | None:
        """Tenant, api-version and Authorization checks; a reply when the request fails them."""
        world = self.world
        if found.surface == "actions":
            if ctx.params.get("tenant") != world.config.tenant_id:
                return Reply.json(404, {"message": "Unknown Actions service tenant"})
            if world.config.strict and ctx.query.get("api-version") != API_VERSION:
                return Reply.json(
                    400,
                    {
                        "typeName": type_name("VssInvalidApiVersionException"),
                        "message": f"The query must carry api-version={API_VERSION}.",
                    },
                )
        return self._authenticate(found, ctx)

    def _authenticate(self, found: Route, ctx: Ctx) -> Reply | None:
        world = self.world
        scheme, _, token = (ctx.request.headers.get("authorization") or "").partition(" ")
        token = token.strip()
        ctx.token = token
        scheme = scheme.lower()
        bearer = scheme in ("bearer", "token") and bool(token)
        if found.auth == "app_jwt":
            if not bearer:
                return _bad_credentials()
            try:
                ctx.app = verify_app_jwt(token, world.credentials.apps, world.config.app_jwt_skew)
            except AppJwtError as exc:
                return Reply.json(401, {"message": str(exc)})
        elif found.auth == "credential":
            if not bearer or not world.credentials.credential_valid(token):
                return _bad_credentials()
        elif found.auth == "public":
            # Anonymous is fine, but a credential that is sent must be good, as on GitHub.
            sent = ctx.request.headers.get("authorization") is not None
            if sent and (not bearer or not world.credentials.credential_valid(token)):
                return _bad_credentials()
        elif found.auth == "remoteauth":
            tokens = world.credentials.registration_tokens
            registration = tokens.get(token) if scheme == "remoteauth" else None
            if registration is None or registration.expires < time.time():
                return _bad_credentials()
            ctx.scope_path = registration.scope_path
        elif found.auth == "admin":
            if not bearer or not world.credentials.admin_token_valid(token):
                return Reply(401)
        elif found.auth == "queue":
            session = world.sessions.for_queue_token(token) if bearer else None
            if session is None:
                return Reply(401)
            ctx.session = session
        return None


def _bad_credentials() -> Reply:
    return Reply.json(
        401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
    )


def _fault_reply(fault: Fault) -> Reply:
    if fault.body == "empty":
        reply = Reply(fault.status)
    elif fault.body == "text":
        reply = Reply.text(fault.status, fault.message or f"injected status {fault.status}")
    elif fault.type_name:
        name = fault.type_name if "," in fault.type_name else type_name(fault.type_name)
        reply = Reply.json(
            fault.status, {"typeName": name, "message": fault.message or "injected fault"}
        )
    else:
        reply = Reply.json(fault.status, {"message": fault.message or "injected fault"})
    if fault.retry_after is not None:
        reply.headers["Retry-After"] = str(fault.retry_after)
    return reply


def _parsed_body(body: bytes) -> Any:
    if not body:
        return None
    text = body.decode("utf-8-sig", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text[:2000]


async def _send(send: Send, reply: Reply) -> None:
    headers = [(b"content-length", str(len(reply.body)).encode())]
    if reply.content_type:
        headers.append((b"content-type", reply.content_type.encode()))
    headers.extend((k.lower().encode(), v.encode()) for k, v in reply.headers.items())
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
