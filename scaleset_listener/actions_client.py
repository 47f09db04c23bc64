"""The Actions service's admin API: runner groups, scale sets, sessions, jobs, JIT configs, runners.

Every call here carries the admin token (docs/architecture.md#which-token-goes-where) and the
`api-version=6.0-preview` query parameter (docs/architecture.md#request-conventions). An admin
token the service rejects with 401 is dropped and the call replayed once with a fresh one: a
token can be revoked before its `exp`. The three message-queue calls carry the session's own
token and live in `session.py`.

The runner pool is listed for every scale set of the process at once: GitHub's listing
(`pools/0/agents`) returns every runner of the organization whatever set asks, so the scalers
of 50 sets asking together share one request (`Coalesced`), and each gets its own set's runners.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import structlog

from scaleset_listener.auth import ActionsAdminAuth
from scaleset_listener.errors import (
    ActionsError,
    ProtocolError,
    RunnerGroupNotFound,
    RunnerNotFound,
)
from scaleset_listener.http import Answer, HttpChannel
from scaleset_listener.wire import (
    JitConfig,
    JobAvailable,
    Label,
    RunnerGroup,
    RunnerReference,
    RunnerSetting,
    ScaleSet,
    Session,
    parse_job_items,
    parse_model,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

API_VERSION = "6.0-preview"
DEFAULT_RUNNER_GROUP_ID = 1


def service_url(base: str, path: str) -> str:
    """Join the service base and `path` with exactly one slash; keep a query already on `base`."""
    parts = urlsplit(base)
    joined = parts.path.rstrip("/") + "/" + path.lstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, joined, parts.query, ""))


def _list_value(data: Any, what: str) -> list[Any]:
    """The `value` of a `{"count": N, "value": [...]}` envelope, keys matched in any case."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: expected a list envelope")
    folded = {str(key).lower(): value for key, value in data.items()}
    value = folded.get("value") or []
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: 'value' is not a list")
    return value


class Coalesced(Generic[T]):
    """One `fetch` at a time for any number of callers, each answered by a fetch that started
    after it asked (never an older answer): callers that arrive while a fetch runs share the
    next one, which starts when the running one ends. A failure reaches every caller that
    shared the fetch; a caller cancelled while waiting leaves the fetch to the others."""

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._running: asyncio.Task[T] | None = None
        self._next: asyncio.Task[T] | None = None
        self.fetches = 0

    async def get(self) -> T:
        if self._next is None:
            self._next = asyncio.create_task(self._after(self._running))
            # Read here so a fetch nobody waits for any more does not warn of its failure.
            self._next.add_done_callback(_retrieve)
        return await asyncio.shield(self._next)

    async def _after(self, running: asyncio.Task[T] | None) -> T:
        if running is not None:
            await asyncio.wait({running})
        # From here on this fetch is under way: later callers queue for the next one.
        self._running, self._next = self._next, None
        self.fetches += 1
        return await self._fetch()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class ActionsClient:
    """Typed admin calls against the Actions service. One instance per process."""

    def __init__(self, auth: ActionsAdminAuth, http: HttpChannel) -> None:
        self._auth = auth
        self._http = http
        self._runner_pool = Coalesced(self._list_runner_pool)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        expected: Collection[int],
        what: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Answer:
        query = {**(params or {}), "api-version": API_VERSION}
        for attempt in (1, 2):
            connection = await self._auth.connection()
            try:
                return await self._http.request(
                    method,
                    service_url(connection.service_url, path),
                    expected=expected,
                    service=ActionsError,
                    headers={
                        "Authorization": f"Bearer {connection.token}",
                        "Content-Type": "application/json",
                    },
                    params=query,
                    json_body=json_body,
                    what=what,
                )
            except ActionsError as exc:
                if exc.status != 401 or attempt == 2:
                    raise
                log.warning("admin_token_rejected", request=what)
                self._auth.invalidate(connection)
        raise AssertionError("unreachable")  # pragma: no cover

    async def service_base(self) -> str:
        """The Actions service URL (acquirejobs is sent there with the queue token)."""
        return (await self._auth.connection()).service_url

    # Runner groups -------------------------------------------------------------------------

    async def get_runner_group_by_name(self, name: str) -> RunnerGroup:
        if name.strip().lower() == "default":
            # The default group is always id 1; no call needed (as actions/scaleset does).
            return RunnerGroup(id=DEFAULT_RUNNER_GROUP_ID, name="Default", is_default_group=True)
        what = f"get runner group {name!r}"
        answer = await self._call(
            "GET",
            "_apis/runtime/runnergroups/",
            expected={200},
            what=what,
            params={"groupName": name},
        )
        groups = _list_value(answer.json(what), what)
        if len(groups) != 1:
            raise RunnerGroupNotFound(
                "GET",
                "_apis/runtime/runnergroups/",
                answer.status,
                f"{len(groups)} runner groups named {name!r} (need exactly one)",
            )
        return parse_model(RunnerGroup, groups[0], what)

    # Scale sets ----------------------------------------------------------------------------

    async def find_scale_set(self, name: str, runner_group_id: int) -> ScaleSet | None:
        what = f"find scale set {name!r}"
        answer = await self._call(
            "GET",
            "_apis/runtime/runnerscalesets",
            expected={200},
            what=what,
            params={"runnerGroupId": str(runner_group_id), "name": name},
        )
        sets = _list_value(answer.json(what), what)
        if not sets:
            return None
        if len(sets) > 1:
            raise ProtocolError(f"{what}: {len(sets)} scale sets share that name")
        return parse_model(ScaleSet, sets[0], what)

    async def get_scale_set(self, scale_set_id: int) -> ScaleSet | None:
        what = f"get scale set {scale_set_id}"
        answer = await self._call(
            "GET", f"_apis/runtime/runnerscalesets/{scale_set_id}", expected={200}, what=what
        )
        data = answer.json(what)
        return None if data is None else parse_model(ScaleSet, data, what)

    async def create_scale_set(
        self, name: str, runner_group_id: int, labels: Sequence[str]
    ) -> ScaleSet:
        what = f"create scale set {name!r}"
        body = ScaleSet(
            name=name,
            runner_group_id=runner_group_id,
            labels=tuple(Label(name=label) for label in labels),
            runner_setting=RunnerSetting(disable_update=True),
        ).to_wire()
        for server_filled in ("id", "runnerGroupName", "runnerJitConfigUrl"):
            body.pop(server_filled, None)
        answer = await self._call(
            "POST", "_apis/runtime/runnerscalesets", expected={200}, what=what, json_body=body
        )
        return parse_model(ScaleSet, answer.json(what), what)

    async def update_scale_set(self, scale_set_id: int, changes: Mapping[str, Any]) -> ScaleSet:
        what = f"update scale set {scale_set_id}"  # noqa: S608 (a log label, not SQL)
        answer = await self._call(
            "PATCH",
            f"_apis/runtime/runnerscalesets/{scale_set_id}",
            expected={200},
            what=what,
            json_body=dict(changes),
        )
        return parse_model(ScaleSet, answer.json(what), what)

    async def delete_scale_set(self, scale_set_id: int) -> None:
        await self._call(
            "DELETE",
            f"_apis/runtime/runnerscalesets/{scale_set_id}",
            expected={204},
            what=f"delete scale set {scale_set_id}",
        )

    # Sessions ------------------------------------------------------------------------------

    async def create_session(self, scale_set_id: int, owner_name: str) -> Session:
        what = f"create session on scale set {scale_set_id}"
        answer = await self._call(
            "POST",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/sessions",
            expected={200},
            what=what,
            json_body={"ownerName": owner_name},
        )
        return parse_model(Session, answer.json(what), what)

    async def refresh_session(self, scale_set_id: int, session_id: str) -> Session:
        what = f"refresh session on scale set {scale_set_id}"
        answer = await self._call(
            "PATCH",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/sessions/{session_id}",
            expected={200},
            what=what,
        )
        return parse_model(Session, answer.json(what), what)

    async def delete_session(self, scale_set_id: int, session_id: str) -> None:
        await self._call(
            "DELETE",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/sessions/{session_id}",
            expected={204},
            what=f"delete session on scale set {scale_set_id}",
        )

    # Jobs ----------------------------------------------------------------------------------

    async def get_acquirable_jobs(self, scale_set_id: int) -> list[JobAvailable]:
        what = f"acquirable jobs of scale set {scale_set_id}"
        answer = await self._call(
            "GET",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/acquirablejobs",
            expected={200, 204},
            what=what,
        )
        if answer.status == 204 or answer.is_blank:
            return []
        jobs = parse_job_items(_list_value(answer.json(what), what))
        return [job for job in jobs if isinstance(job, JobAvailable)]

    # Runners -------------------------------------------------------------------------------

    async def generate_jit_config(
        self, scale_set_id: int, runner_name: str, work_folder: str = ""
    ) -> JitConfig:
        what = f"generate JIT config for {runner_name!r}"
        answer = await self._call(
            "POST",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/generatejitconfig",
            expected={200},
            what=what,
            json_body={"name": runner_name, "workFolder": work_folder},
        )
        return parse_model(JitConfig, answer.json(what), what)

    async def get_runner(self, runner_id: int) -> RunnerReference | None:
        what = f"get runner {runner_id}"
        try:
            answer = await self._call(
                "GET",
                f"_apis/distributedtask/pools/0/agents/{runner_id}",
                expected={200},
                what=what,
            )
        except RunnerNotFound:
            return None
        return parse_model(RunnerReference, answer.json(what), what)

    async def get_runner_by_name(self, runner_name: str) -> RunnerReference | None:
        what = f"find runner {runner_name!r}"
        answer = await self._call(
            "GET",
            "_apis/distributedtask/pools/0/agents",
            expected={200},
            what=what,
            params={"agentName": runner_name},
        )
        runners = _list_value(answer.json(what), what)
        if not runners:
            return None
        if len(runners) > 1:
            raise ProtocolError(f"{what}: {len(runners)} runners share that name")
        return parse_model(RunnerReference, runners[0], what)

    async def list_runners(self, scale_set_id: int) -> list[RunnerReference]:
        """Every runner registered in the scale set, as listed after this call began (the
        pool lists all: one listing serves every set asking meanwhile, filtered here)."""
        by_set = await self._runner_pool.get()
        return list(by_set.get(scale_set_id, ()))

    @property
    def runner_pool_listings(self) -> int:
        """How many times the runner pool was listed (every scale set's share included)."""
        return self._runner_pool.fetches

    async def _list_runner_pool(self) -> dict[int, list[RunnerReference]]:
        what = "list runners"
        answer = await self._call(
            "GET", "_apis/distributedtask/pools/0/agents", expected={200}, what=what
        )
        by_set: dict[int, list[RunnerReference]] = {}
        for item in _list_value(answer.json(what), what):
            runner = parse_model(RunnerReference, item, what)
            by_set.setdefault(runner.runner_scale_set_id, []).append(runner)
        return by_set

    async def remove_runner(self, runner_id: int) -> None:
        """Deregister a runner; already gone is success. JobStillRunning propagates."""
        try:
            await self._call(
                "DELETE",
                f"_apis/distributedtask/pools/0/agents/{runner_id}",
                expected={204},
                what=f"remove runner {runner_id}",
            )
        except RunnerNotFound:
            return
