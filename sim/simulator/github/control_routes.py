"""The control API under `/_sim/`: JSON in, JSON out, no auth. Documented in sim/README.md."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Reversible
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from simulator.faults import FaultSpecError
from simulator.github.model import DAY, JSON, ControlError, ServiceError
from simulator.github.tokens import App
from simulator.github.world import World

Result = tuple[int, Any]
Handler = Callable[[World, dict[str, str], JSON, Request], Awaitable[Result]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []
MAX_WAIT = 30.0


def _route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _ROUTES.append((method, re.compile("^/_sim" + pattern + "/?$"), handler))
        return handler

    return register


async def dispatch(world: World, request: Request) -> Result:
    for method, pattern, handler in _ROUTES:
        found = pattern.match(request.url.path)
        if found is None or method != request.method:
            continue
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        if not isinstance(body, dict):
            return 400, {"error": "the body must be a JSON object"}
        try:
            return await handler(world, found.groupdict(), body, request)
        except ControlError as exc:
            return exc.status, {"error": exc.message}
        except ServiceError as exc:
            return exc.status, {"error": exc.message}
        except (FaultSpecError, ValidationError, ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
    return 404, {"error": f"no control route {request.method} {request.url.path}"}


def _float(request: Request, name: str, default: float) -> float:
    value = request.query_params.get(name)
    return default if value in (None, "") else float(value)


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    return default if value in (None, "") else int(value)


# ---------------------------------------------------------------------------- configuration


@_route("GET", "/config")
async def get_config(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 200, world.config.model_dump(mode="json")


@_route("PATCH", "/config")
async def patch_config(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    world.config = world.config.patched(body)
    world.credentials.pats.update(world.config.pats)
    world.ledger.waiters.bump()
    return 200, world.config.model_dump(mode="json")


@_route("POST", "/reset")
async def reset(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    if body:
        world.config = world.config.patched(body)
    world.reset()
    return 200, world.config.model_dump(mode="json")


@_route("POST", "/pats")
async def add_pat(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise ControlError(400, "token is required")
    world.credentials.pats.add(token)
    return 201, {"token": token}


@_route("POST", "/apps")
async def add_app(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    app_id = str(body.get("app_id") or "")
    pem = body.get("public_key_pem")
    if not app_id or not isinstance(pem, str):
        raise ControlError(400, "app_id and public_key_pem are required")
    installations = list(body.get("installation_ids") or [])
    if body.get("installation_id") is not None:
        installations.append(body["installation_id"])
    client_id = body.get("client_id")
    permissions = body.get("permissions")
    if permissions is not None and not (
        isinstance(permissions, dict)
        and all(isinstance(k, str) and v in ("read", "write") for k, v in permissions.items())
    ):
        raise ControlError(400, "permissions maps permission names to 'read' or 'write'")
    world.credentials.apps[app_id] = App(
        app_id=app_id,
        client_id=str(client_id) if client_id else None,
        installation_ids=frozenset(int(i) for i in installations),
        public_key_pem=pem,
        **({} if permissions is None else {"permissions": dict(permissions)}),
    )
    return 201, {"app_id": app_id, "installation_ids": sorted(int(i) for i in installations)}


@_route("POST", "/tokens/expire_admin")
async def expire_admin(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    world.credentials.expire_admin_tokens()
    return 200, {"admin_epoch": world.credentials.admin_epoch}


# ---------------------------------------------------------------------------- sets, sessions


@_route("POST", "/runner_groups")
async def add_runner_group(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    group = world.scale_sets.add_group(str(body.get("name") or ""))
    return 201, world.scale_sets.group_json(group)


@_route("POST", "/scalesets")
async def add_scale_set(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    ss = world.scale_sets.create(
        str(body.get("name") or ""),
        int(body.get("runner_group_id") or 1),
        [str(label) for label in body.get("labels") or []],
        dict(body.get("runner_setting") or {}),
    )
    return 201, world.scale_sets.to_json(ss)


@_route("DELETE", r"/scalesets/(?P<ss>\d+)")
async def service_deletes_scale_set(
    world: World, p: dict[str, str], body: JSON, r: Request
) -> Result:
    world.scale_sets.delete(int(p["ss"]), force=True)
    return 200, {"deleted": int(p["ss"])}


@_route("POST", r"/scalesets/(?P<ss>\d+)/ghost_session")
async def ghost_session(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    session = world.sessions.ghost(
        int(p["ss"]),
        float(body.get("expires_after", 60.0)),
        str(body.get("owner_name") or "someone-else"),
    )
    return 201, {"session_id": session.id, "owner_name": session.owner_name}


@_route("POST", r"/scalesets/(?P<ss>\d+)/messages")
async def inject_message(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    job_messages = body.get("job_messages")
    if job_messages is not None and not isinstance(job_messages, list):
        raise ControlError(400, "job_messages must be a list")
    statistics = body.get("statistics")
    if statistics is not None and not isinstance(statistics, dict):
        raise ControlError(400, "statistics must be a JSON object (sent verbatim) or null")
    message_id = world.messages.inject(
        int(p["ss"]), body.get("message_type"), body.get("body"), job_messages, statistics
    )
    return 201, {"message_id": message_id}


@_route("POST", r"/sessions/(?P<sid>[^/]+)/evict")
async def evict_session(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    world.sessions.evict(p["sid"])
    return 200, {"evicted": p["sid"]}


@_route("POST", r"/sessions/(?P<sid>[^/]+)/expire_token")
async def expire_queue_token(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    world.sessions.expire_queue_token(p["sid"])
    return 200, {"expired": p["sid"]}


# ---------------------------------------------------------------------------- jobs and runners


@_route("POST", "/jobs")
async def enqueue_jobs(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 201, {"ids": world.jobs.enqueue(body)}


@_route("GET", r"/jobs/(?P<job>\d+)/event")
async def job_event_payload(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    """The webhook payload the runner writes to GITHUB_EVENT_PATH for this job."""
    return 200, world.jobs.get(int(p["job"])).event_payload


@_route("POST", r"/jobs/(?P<job>\d+)/finish")
async def finish_job(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    job = world.jobs.finish(int(p["job"]), str(body.get("result", "succeeded")))
    return 200, job.to_state()


@_route("POST", "/jobs/finish")
async def finish_jobs(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    """Finish many running jobs at once (a bench churning thousands); the others are named."""
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ControlError(400, "ids must be a list of job ids")
    result = str(body.get("result", "succeeded"))
    finished, refused = [], []
    for job_id in ids:
        try:
            world.jobs.finish(job_id, result)
        except ControlError:
            refused.append(job_id)
        else:
            finished.append(job_id)
    return 200, {"finished": finished, "refused": refused}


@_route("POST", r"/jobs/(?P<job>\d+)/cancel")
async def cancel_job(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 200, world.jobs.cancel(int(p["job"])).to_state()


@_route("POST", "/runners/connect")
async def connect_runner(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    jit = body.get("jit_config")
    if not isinstance(jit, str):
        raise ControlError(400, "jit_config is required")
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise ControlError(400, "version must be a string like 2.331.0, or null")
    return 200, world.runners.connect(jit, version).to_state()


@_route("POST", r"/runners/(?P<rid>\d+)/take")
async def take_job(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    job_id = body.get("job_id")
    job = world.jobs.take(int(p["rid"]), int(job_id) if job_id is not None else None)
    return 200, job.to_state()


@_route("POST", r"/runners/(?P<rid>\d+)/die")
async def runner_dies(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 200, world.runners.dies(int(p["rid"])).to_state()


# ---------------------------------------------------------------------------- runner releases


@_route("GET", "/runner_releases")
async def list_runner_releases(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    now = time.time()
    return 200, {"releases": [rel.to_control(now) for rel in world.releases.newest_first()]}


@_route("POST", "/runner_releases")
async def add_runner_release(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    version = body.get("version")
    if not isinstance(version, str):
        raise ControlError(400, "version is required (a string like 2.332.0)")
    published_at = body.get("published_at")
    age_days = body.get("age_days")
    if published_at is not None and age_days is not None:
        raise ControlError(400, "give age_days or published_at, not both")
    if published_at is None:
        days = _number(age_days if age_days is not None else 0.0, "age_days")
        when = time.time() - days * DAY
    elif isinstance(published_at, str):
        try:
            parsed = datetime.fromisoformat(published_at)
        except ValueError as exc:
            raise ControlError(400, f"published_at: {exc}") from exc
        # GitHub's times are UTC; a time without a zone must not depend on the host's.
        when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        when = _number(published_at, "published_at")
    release = world.releases.add(version, when)
    return 201, release.to_control(time.time())


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{name} must be a number")
    return float(value)


# ---------------------------------------------------------------------------- faults


@_route("GET", "/faults")
async def list_faults(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 200, {
        "faults": [f.to_json() for f in world.faults.faults],
        "statistics_faults": [f.to_json() for f in world.statistics.faults],
    }


@_route("POST", "/faults")
async def add_fault(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 201, world.faults.add(body).to_json()


@_route("DELETE", "/faults")
async def clear_faults(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    world.faults.clear()
    world.statistics.faults.clear()
    return 200, {"cleared": True}


@_route("POST", "/statistics_faults")
async def add_statistics_fault(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    return 201, world.statistics.add_fault(body).to_json()


@_route("DELETE", "/statistics_faults")
async def clear_statistics_faults(
    world: World, p: dict[str, str], body: JSON, r: Request
) -> Result:
    world.statistics.faults.clear()
    return 200, {"cleared": True}


# ---------------------------------------------------------------------------- observation


@_route("GET", "/state")
async def state(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    after = _int(r, "after_version", -1)
    ledger = world.ledger
    await ledger.wait_until(lambda: ledger.waiters.version > after, _float(r, "wait", 0.0))
    parts = r.query_params.get("parts")
    within = r.query_params.get("completed_within")
    return 200, world.state(
        parts.split(",") if parts else None, float(within) if within is not None else None
    )


@_route("GET", "/request_counts")
async def request_counts(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    counts = world.ledger.request_counts
    return 200, {"total": sum(counts.values()), "by_endpoint": dict(sorted(counts.items()))}


def _any_after(log: Reversible[JSON], after: int, keep: Callable[[JSON], bool]) -> bool:
    # Newest first, stopping at `after`: waiting must not rescan the whole log on every wake.
    for entry in reversed(log):
        if entry["seq"] <= after:
            return False
        if keep(entry):
            return True
    return False


def _log_query(r: Request) -> tuple[int, float, Callable[[JSON], bool]]:
    after = _int(r, "after", 0)
    wanted = {k: v for k, v in r.query_params.items() if k in ("endpoint", "type", "method")}

    def keep(entry: JSON) -> bool:
        return entry["seq"] > after and all(str(entry.get(k)) == v for k, v in wanted.items())

    return after, min(_float(r, "wait", 0.0), MAX_WAIT), keep


@_route("GET", "/requests")
async def requests(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    after, wait, keep = _log_query(r)
    ledger = world.ledger
    await ledger.wait_until(lambda: _any_after(ledger.requests, after, keep), wait)
    return 200, {"requests": [e for e in ledger.requests if keep(e)], "last": ledger.request_seq}


@_route("GET", "/events")
async def events(world: World, p: dict[str, str], body: JSON, r: Request) -> Result:
    after, wait, keep = _log_query(r)
    ledger = world.ledger
    await ledger.wait_until(lambda: _any_after(ledger.events, after, keep), wait)
    return 200, {"events": [e for e in ledger.events if keep(e)], "last": ledger.event_seq}
