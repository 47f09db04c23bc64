"""The OpenStack provisioner: the only module that imports openstacksdk.

* Auth is openstacksdk's own: `OS_CLOUD` with clouds.yaml (application credentials recommended)
  or the standard `OS_*` variables, so users configure it the way every OpenStack tool does.
* openstacksdk is blocking and its Connection is not documented as thread-safe: calls run on
  this adapter's own bounded ThreadPoolExecutor and every worker thread holds one long-lived
  Connection of its own. HTTP calls carry the SDK's `api_timeout`; waits (ACTIVE, gone) poll
  from the event loop, so a slow boot does not pin a worker thread.
* The hot paths of a burst (create, get and list servers) send Nova's JSON through the same
  authenticated keystoneauth adapter and read the answer as plain dicts: openstacksdk's Resource
  machinery costs about 1 ms of CPU per server read, which made a listing of 500 booting servers
  cost half a second (bench/README.md, scale_up). They pin compute microversion 2.52.
* One shared observer per tag filter watches booting servers: a listing filtered by our tags
  (FIRST_LOOK after the newest server, then backing off to `poll_interval`) wakes every waiter,
  however many servers boot; a waiter's ACTIVE deadline is its own timer, not a poll's.
* `start()` warms up before the first job: every worker thread's Connection authenticates, the
  microversion is checked, image/flavor/network ids are resolved; they are resolved again every
  `refresh_interval`, and at once after a create the cloud refuses with 400.
* Server tags need compute microversion 2.52; the adapter checks what the cloud offers once and
  says clearly when it is older (listing by tag is how inventory finds our servers, and Nova
  silently ignores metadata filters, so there is no safe fallback).
* `capacity` is the least of the free pool addresses and the project's quota headroom for the
  flavor (provisioners/headroom.py: Nova's GET /limits every `capacity_refresh_interval`, and
  soon after a create was refused for quota, adjusted between reads by this process's own creates
  and deletes, shared by every scale set it serves).
* `preflight` looks everything up that a create will need (read-only: it creates nothing) and
  reports each finding as a CloudCheck instead of raising, so that one run shows every problem.
* Errors are translated once, here: quota -> QuotaExceeded, 404 -> ServerNotFound, 400 and
  unknown image/flavor/network -> PermanentProvisionerError, 409/5xx/timeouts/connection
  failures -> TemporaryProvisionerError, ERROR status -> ServerFailed with Nova's fault message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import openstack
import openstack.connection
import openstack.exceptions
from keystoneauth1 import exceptions as keystone_exceptions

from provisioners.base import (
    ActiveTimeout,
    CloudTooOld,
    PermanentProvisionerError,
    ProvisionerError,
    QuotaExceeded,
    RunnerVM,
    ServerFailed,
    ServerNotFound,
    ServerSpec,
    TemporaryProvisionerError,
)
from provisioners.headroom import ComputeLimits, FlavorSize, ProjectHeadroom

T = TypeVar("T")

log = logging.getLogger(__name__)

TAGS_MICROVERSION = (2, 52)
# What the raw server calls ask for: tags in views, filters and create requests (2.52), and no
# later change of the server view they read.
COMPUTE_MICROVERSION = "2.52"
# How soon the shared observer first lists a newly created server (then twice as far apart, up
# to OpenStackConfig.poll_interval): 0.1 s, and 1 ms more per server waiting, since each listing
# reads them all (500 booting servers: half a second).
FIRST_LOOK = 0.1
FIRST_LOOK_PER_WAITER = 0.001
# Nova's API schema caps `user_data` at 65535 characters of the base64 text it is sent as, not of
# the decoded bytes (tests/real_openstack/README.md: 65536 refused with 400, 65532 accepted).
USER_DATA_LIMIT = 65535


@dataclass(frozen=True)
class OpenStackConfig:
    """Where and how to create runner VMs (the OPENSTACK_* settings)."""

    image: str
    flavor: str
    network: str | None = None
    security_groups: tuple[str, ...] = ()
    keypair: str | None = None
    availability_zone: str | None = None
    boot_volume_size_gb: int = 0
    floating_ips: tuple[str, ...] = ()
    server_metadata: Mapping[str, str] = field(default_factory=dict)
    active_timeout: float = 600.0
    delete_timeout: float = 300.0
    api_timeout: float = 60.0
    # The longest gap between the shared observer's listings of booting servers (and between a
    # delete's looks for gone).
    poll_interval: float = 1.0
    max_workers: int = 8
    # Every image and flavor a create may name (RUNNERS overrides), resolved by `start()`.
    images: tuple[str, ...] = ()
    flavors: tuple[str, ...] = ()
    refresh_interval: float = 600.0
    # How often Nova's /limits (the quota headroom behind `capacity`) is read again.
    capacity_refresh_interval: float = 60.0
    # After Nova refused a create for quota the limits are read again at the next `capacity`,
    # but no sooner than this after the last read: a burst of refusals is one read, not a storm.
    quota_recheck_interval: float = 5.0
    # The clouds.yaml entry; None lets openstacksdk read OS_CLOUD or the OS_* variables.
    cloud: str | None = None


@dataclass(frozen=True)
class CloudCheck:
    """One finding of `OpenStackProvisioner.preflight`.

    `subject` is what was checked: cloud (authentication), microversion, image, flavor,
    network, security_group, keypair, floating_ip, quota; `ref` the name or id looked up (empty
    where there is none); `ok` None when it could not be checked because something it needs
    failed; `detail` what was found, or why it failed."""

    subject: str
    ref: str
    ok: bool | None
    detail: str


def quota_shortfalls(
    limits: ComputeLimits, demand: Collection[tuple[FlavorSize, int]]
) -> tuple[str, list[str]]:
    """What `demand` (servers of each flavor at once) needs against the headroom the project has
    left: a summary, and one sentence per resource that does not fit (empty: it fits)."""
    needed = {
        "instances": sum(count for _, count in demand),
        "cores": sum(size.vcpus * count for size, count in demand),
        "ram": sum(size.ram_mb * count for size, count in demand),
    }
    quotas = {
        "instances": (limits.max_instances, limits.used_instances, ""),
        "cores": (limits.max_cores, limits.used_cores, " vCPUs"),
        "ram": (limits.max_ram_mb, limits.used_ram_mb, " MiB"),
    }
    parts, short = [], []
    for name, (limit, used, unit) in quotas.items():
        need = needed[name]
        if limit < 0:
            parts.append(f"{name} {need}{unit} of unlimited")
            continue
        free = max(0, limit - used)
        parts.append(f"{name} {need}{unit} of {free} free")
        if need > free:
            short.append(f"{name}: {need}{unit} needed, {free} free ({used} of {limit} in use)")
    return ", ".join(parts), short


def _translate(exc: BaseException, what: str) -> ProvisionerError:
    """One place that maps SDK and transport exceptions to our tree."""
    if isinstance(exc, ProvisionerError):
        return exc
    if isinstance(exc, openstack.exceptions.HttpException):
        status = exc.status_code or 0
        detail = str(exc.details or exc.message or exc)
        text = f"{what}: {detail}"
        if status == 403 and "quota" in detail.lower():
            return QuotaExceeded(text)
        if status == 413 or (status == 403 and "limit" in detail.lower()):
            return QuotaExceeded(text)
        if status == 404:
            return ServerNotFound(text)
        if status == 409 or status >= 500 or status == 429:
            return TemporaryProvisionerError(text)
        if 400 <= status < 500:
            return PermanentProvisionerError(text)
        return TemporaryProvisionerError(text)
    if isinstance(exc, openstack.exceptions.ResourceNotFound):
        return ServerNotFound(f"{what}: {exc}")
    if isinstance(exc, keystone_exceptions.Unauthorized | keystone_exceptions.Forbidden):
        return PermanentProvisionerError(f"{what}: OpenStack refused the credentials: {exc}")
    if isinstance(
        exc,
        keystone_exceptions.ConnectionError
        | keystone_exceptions.RetriableConnectionFailure
        | keystone_exceptions.http.HttpServerError
        | openstack.exceptions.SDKException
        | TimeoutError
        | OSError,
    ):
        return TemporaryProvisionerError(f"{what}: {type(exc).__name__}: {exc}")
    return ProvisionerError(f"{what}: {type(exc).__name__}: {exc}")


def _addresses(server: Mapping[str, Any]) -> tuple[tuple[str, ...], str | None]:
    fixed: list[str] = []
    floating: str | None = None
    for entries in (server.get("addresses") or {}).values():
        for entry in entries:
            address = entry.get("addr")
            if not address:
                continue
            if entry.get("OS-EXT-IPS:type") == "floating":
                floating = floating or address
            else:
                fixed.append(address)
    return tuple(fixed), floating


def _created_at(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _to_vm(server: Mapping[str, Any]) -> RunnerVM:
    """A server of Nova's JSON view (microversion 2.52) as a RunnerVM."""
    fixed, floating = _addresses(server)
    fault = server.get("fault")
    return RunnerVM(
        id=str(server["id"]),
        name=str(server.get("name", "")),
        status=str(server.get("status") or "UNKNOWN").upper(),
        created_at=_created_at(server.get("created")),
        tags=tuple(server.get("tags") or ()),
        metadata={str(k): str(v) for k, v in (server.get("metadata") or {}).items()},
        addresses=fixed,
        floating_ip=floating,
        fault=fault.get("message") if isinstance(fault, dict) else None,
    )


def _compute(
    conn: openstack.connection.Connection,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    body: object = None,
) -> Any:
    """One compute API call at COMPUTE_MICROVERSION, its JSON answer (None when empty); an error
    answer raises openstacksdk's HttpException subclass, as its own calls do."""
    base = _compute_endpoints.get(conn)
    if base is None:
        base = _compute_endpoints[conn] = str(conn.compute.get_endpoint()).rstrip("/")
    response = conn.compute.request(
        # Absolute: keystoneauth then skips its service catalog look-up, which deep-copies the
        # catalog on every request (a quarter of a create's CPU).
        base + path,
        method,
        params=dict(params or {}),
        json=body,
        microversion=COMPUTE_MICROVERSION,
        raise_exc=False,
    )
    openstack.exceptions.raise_from_response(response)
    return response.json() if response.content else None


def _environment_matters_to_requests() -> bool:
    """Whether requests, trusting the environment, would find something there: a proxy
    variable, a CA bundle variable or a netrc file (what its `trust_env` reads)."""
    if urllib.request.getproxies():
        return True
    if any(os.environ.get(name) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC")):
        return True
    return any(os.path.exists(os.path.expanduser(f"~/{name}")) for name in (".netrc", "_netrc"))


# Each Connection's compute endpoint, looked up on its first call (a Connection belongs to one
# worker thread; the endpoint does not change while the token lives).
_compute_endpoints: weakref.WeakKeyDictionary[openstack.connection.Connection, str] = (
    weakref.WeakKeyDictionary()
)


def _list_servers(
    conn: openstack.connection.Connection, tags: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Every server carrying all of `tags`, page after page (Nova pages at its max_limit)."""
    params = {"tags": ",".join(tags)}
    servers: list[dict[str, Any]] = []
    while True:
        answer = _compute(conn, "GET", "/servers/detail", params=params)
        page = answer.get("servers") or []
        servers.extend(page)
        more = any(link.get("rel") == "next" for link in answer.get("servers_links") or ())
        if not page or not more:
            return servers
        params = {**params, "marker": str(page[-1]["id"])}


def _get_server(conn: openstack.connection.Connection, server_id: str) -> RunnerVM | None:
    try:
        answer = _compute(conn, "GET", f"/servers/{server_id}")
    except openstack.exceptions.NotFoundException:
        return None
    return _to_vm(answer["server"])


@dataclass
class _Waiter:
    """One server waiting to leave BUILD; `since`: when it began to wait (monotonic)."""

    since: float
    found: asyncio.Future[RunnerVM | None]


class OpenStackProvisioner:
    """Creates, lists and deletes runner VMs through openstacksdk."""

    def __init__(
        self,
        config: OpenStackConfig,
        connect: Callable[[], openstack.connection.Connection] | None = None,
        *,
        headroom: ProjectHeadroom | None = None,
    ) -> None:
        """`headroom`: the project's quota view, when other provisioners create in the same
        project (scale sets with different placements on one cloud); a view of its own
        otherwise."""
        self._config = config
        self._connect = connect or functools.partial(
            openstack.connect, cloud=config.cloud, api_timeout=config.api_timeout
        )
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="openstack"
        )
        self._local = threading.local()
        self._connections: list[openstack.connection.Connection] = []
        self._connections_lock = threading.Lock()
        # Serialises picking a free floating IP, so two creates never take the same address.
        self._floating_ip_lock = asyncio.Lock()
        self._checked_microversion = False
        self._resolved: dict[tuple[str, str], str] = {}
        self._resolved_lock = threading.Lock()
        # The shared observers: per tag filter, the servers waiting to leave BUILD, and the task
        # that lists them once per poll_interval while any wait.
        self._waiters: dict[tuple[str, ...], dict[str, _Waiter]] = {}
        self._observers: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._observer_errors: dict[tuple[str, ...], ProvisionerError] = {}
        self._arrivals: dict[tuple[str, ...], asyncio.Event] = {}
        self._warmer: asyncio.Task[None] | None = None
        self._warmed = asyncio.Event()
        # The project's quota as this process sees it; one view for every scale set.
        self._headroom = headroom if headroom is not None else ProjectHeadroom()
        self._limits_lock = asyncio.Lock()
        self._limits_read_at = -math.inf
        self._flavor_sizes: dict[str, FlavorSize] = {}
        self._flavor_misses: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"OpenStackProvisioner(cloud={self._config.cloud!r})"

    # Threads -------------------------------------------------------------------------------

    def _connection(self) -> openstack.connection.Connection:
        connection: openstack.connection.Connection | None = getattr(self._local, "conn", None)
        if connection is None:
            connection = self._connect()
            if not _environment_matters_to_requests():
                # requests otherwise searches the environment for proxies, CA bundles and a
                # netrc file on every request: a quarter of a create's CPU (bench/README.md).
                connection.session.session.trust_env = False
            self._local.conn = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    async def _call(self, what: str, function: Callable[[openstack.connection.Connection], T]) -> T:
        """Run `function(connection)` on a worker thread; translate whatever it raises."""
        context = contextvars.copy_context()

        def work() -> T:
            return function(self._connection())

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, context.run, work)
        try:
            # A thread cannot be cancelled: if we are, let it finish rather than orphan it.
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait({future})
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    async def close(self) -> None:
        background = [*self._observers.values(), *([self._warmer] if self._warmer else [])]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    # Warm-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin keeping warm what every create needs, in the background: the first job does not
        pay for authentication, the microversion or the image, flavor and network look-ups."""
        if self._warmer is None:
            self._warmer = asyncio.get_running_loop().create_task(
                self._keep_warm(), name="openstack-warm-up"
            )

    async def wait_warm(self) -> None:
        """Until the first warm-up has ended (whether or not the cloud answered); at once when
        `start` was not called."""
        if self._warmer is not None:
            waiter = asyncio.ensure_future(self._warmed.wait())
            await asyncio.wait({waiter, self._warmer}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def _keep_warm(self) -> None:
        await self._open_connections()
        while True:
            # Failures are the creates' to report (they look up what is missing themselves).
            config = self._config
            flavors = dict.fromkeys(ref for ref in (config.flavor, *config.flavors) if ref)
            await asyncio.gather(
                self.check_microversion(),
                self._refresh_resolved(),
                # The sizes the quota headroom claims by (flavors never change size).
                *(self._flavor_size(flavor) for flavor in flavors),
                return_exceptions=True,
            )
            self._warmed.set()
            await asyncio.sleep(self._config.refresh_interval)

    async def _open_connections(self) -> None:
        """Authenticate every worker thread's Connection and discover its compute endpoint: the
        pool's threads are started together (each task waits for the others), one per task."""
        workers = self._config.max_workers
        everyone = threading.Barrier(workers)

        def open_connection(conn: openstack.connection.Connection) -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                everyone.wait(timeout=self._config.api_timeout)
            conn.authorize()
            conn.compute.get_endpoint_data()

        await asyncio.gather(
            *(self._call("authenticate", open_connection) for _ in range(workers)),
            return_exceptions=True,
        )

    async def _refresh_resolved(self) -> None:
        """Resolve every configured image, flavor and network again; one that is gone is dropped
        so that the next create looks it up and reports it."""
        config = self._config
        wanted: list[tuple[str, str]] = [
            *(("image", ref) for ref in dict.fromkeys((config.image, *config.images)) if ref),
            *(("flavor", ref) for ref in dict.fromkeys((config.flavor, *config.flavors)) if ref),
            *([("network", config.network)] if config.network else []),
        ]

        def resolve(kind: str, ref: str, conn: openstack.connection.Connection) -> str:
            return str(_FINDERS[kind](conn, ref).id)

        answers = await asyncio.gather(
            *(
                self._call(f"look up {kind} {ref!r}", functools.partial(resolve, kind, ref))
                for kind, ref in wanted
            ),
            return_exceptions=True,
        )
        with self._resolved_lock:
            for key, answer in zip(wanted, answers, strict=True):
                if isinstance(answer, str):
                    self._resolved[key] = answer
                elif isinstance(answer, ServerNotFound | PermanentProvisionerError):
                    # Gone (404 is translated to ServerNotFound): the create looks it up again.
                    self._resolved.pop(key, None)

    # Checks --------------------------------------------------------------------------------

    async def _max_microversion(self) -> tuple[int, int] | None:
        def max_version(conn: openstack.connection.Connection) -> tuple[int, int] | None:
            data = conn.compute.get_endpoint_data()
            version = getattr(data, "max_microversion", None)
            return (int(version[0]), int(version[1])) if version else None

        return await self._call("read compute API versions", max_version)

    async def check_microversion(self) -> None:
        """Fail clearly when the compute API is older than tags need (2.52)."""
        if self._checked_microversion:
            return
        offered = await self._max_microversion()
        if offered is None or offered < TAGS_MICROVERSION:
            shown = "none" if offered is None else f"{offered[0]}.{offered[1]}"
            raise CloudTooOld(
                f"the compute API offers microversion {shown}; scaleset-listener needs 2.52 or "
                "newer (server tags, used to find its servers again after a restart). Nova "
                "has offered 2.52 since the Queens release (2018)."
            )
        self._checked_microversion = True

    # Pre-flight ----------------------------------------------------------------------------

    async def preflight(
        self, images: Collection[str], flavor_demand: Mapping[str, int]
    ) -> list[CloudCheck]:
        """Everything a create needs, looked up and changed nothing: authentication, the compute
        microversion, each of `images` and of the flavors in `flavor_demand`, the configured
        network, security groups, key pair and floating IPs, and whether the project's quota
        has room for `flavor_demand` (flavor -> servers at once) on top of what is in use."""
        try:
            project = await self._call("authenticate", _authenticate)
        except ProvisionerError as exc:
            # Nothing else can be looked up without a token; each would repeat this failure.
            return [CloudCheck("cloud", self._config.cloud or "", False, str(exc))]
        checks = [CloudCheck("cloud", self._config.cloud or "", True, project)]
        checks.append(await self._check_microversion_finding())
        for image in images:
            checks.append(await self._finding("image", image, _find_image))
        sizes: list[tuple[FlavorSize, int]] = []
        for flavor, count in flavor_demand.items():
            try:
                size, detail = await self._call(
                    f"look up flavor {flavor!r}", functools.partial(_find_flavor, flavor)
                )
            except ProvisionerError as exc:
                checks.append(CloudCheck("flavor", flavor, False, str(exc)))
                continue
            checks.append(CloudCheck("flavor", flavor, True, detail))
            sizes.append((size, count))
        config = self._config
        if config.network:
            checks.append(await self._finding("network", config.network, _find_network))
        for group in config.security_groups:
            checks.append(await self._finding("security_group", group, _find_security_group))
        if config.keypair:
            checks.append(await self._finding("keypair", config.keypair, _find_keypair))
        for address in config.floating_ips:
            checks.append(await self._finding("floating_ip", address, _find_floating_ip))
        if len(sizes) == len(flavor_demand):
            checks.append(await self._quota_finding(sizes))
        else:
            checks.append(CloudCheck("quota", "", None, "not checked: a flavor is unknown"))
        return checks

    async def _finding(
        self,
        subject: str,
        ref: str,
        find: Callable[[str, openstack.connection.Connection], str],
    ) -> CloudCheck:
        label = subject.replace("_", " ")
        try:
            detail = await self._call(f"look up {label} {ref!r}", functools.partial(find, ref))
        except ProvisionerError as exc:
            return CloudCheck(subject, ref, False, str(exc))
        return CloudCheck(subject, ref, True, detail)

    async def _check_microversion_finding(self) -> CloudCheck:
        try:
            offered = await self._max_microversion()
        except ProvisionerError as exc:
            return CloudCheck("microversion", "", False, str(exc))
        needed = ".".join(map(str, TAGS_MICROVERSION))
        if offered is None or offered < TAGS_MICROVERSION:
            shown = "none" if offered is None else f"{offered[0]}.{offered[1]}"
            return CloudCheck(
                "microversion", "", False, f"the compute API offers {shown}; {needed} is needed"
            )
        return CloudCheck(
            "microversion", "", True, f"{offered[0]}.{offered[1]} offered, {needed} needed"
        )

    async def _quota_finding(self, demand: list[tuple[FlavorSize, int]]) -> CloudCheck:
        try:
            limits = await self._call("read compute limits", _compute_limits)
        except ProvisionerError as exc:
            return CloudCheck("quota", "", False, str(exc))
        summary, short = quota_shortfalls(limits, demand)
        if short:
            return CloudCheck("quota", "", False, "; ".join(short))
        return CloudCheck("quota", "", True, summary)

    # Provisioner protocol ------------------------------------------------------------------

    async def capacity(self, flavor: str | None = None, owner: tuple[str, ...] = ()) -> int | None:
        """How many more servers of `flavor` (default: the configured one) the cloud takes now:
        the least of the free pool addresses (with a pool) and the servers the project's quota
        headroom holds (instances, cores and RAM); None when nothing limits them. The creates in
        flight of `owner` (their ownership tags) are counted as not having taken theirs yet, as
        the caller counts them itself (scaleset_listener/demand.py)."""
        limits: list[int] = []
        if self._config.floating_ips:
            limits.append(len(await self._free_floating_ips()))
        await self._read_limits_when_due()
        # A flavor that cannot be looked up now limits by instances only (its create will fail
        # and say why).
        size = await self._flavor_size(flavor or self._config.flavor) or FlavorSize(0, 0)
        quota = self._headroom.free_servers(size, owner)
        if quota is not None:
            limits.append(quota)
        return min(limits) if limits else None

    async def create(self, spec: ServerSpec) -> RunnerVM:
        return await self.finish_create(await self.submit(spec), spec.name, spec.tags)

    async def submit(self, spec: ServerSpec) -> str:
        """Send the create request; the server id. The boot itself is `finish_create`'s."""
        # A create during the first warm-up waits for it rather than repeat its look-ups.
        await self.wait_warm()
        await self.check_microversion()
        encoded = base64.b64encode(spec.user_data)
        if len(encoded) > USER_DATA_LIMIT:
            raise PermanentProvisionerError(
                f"user_data of {spec.name} is {len(encoded)} bytes base64-encoded; "
                f"Nova takes at most {USER_DATA_LIMIT}"
            )
        claim = await self._claim(spec)
        try:
            server_id = await self._call(
                f"create server {spec.name}", functools.partial(self._create_server, spec, encoded)
            )
        except BaseException as exc:
            self._headroom.refused(claim)
            if isinstance(exc, QuotaExceeded):
                self._quota_refused()
            raise
        self._headroom.accepted(claim, server_id)
        return server_id

    async def finish_create(
        self, server_id: str, name: str, tags: tuple[str, ...] = ()
    ) -> RunnerVM:
        """Wait until the server is ACTIVE (and has its floating IP); delete it on failure.

        `tags` (the server's ownership tags) let every waiter share one list call per interval
        instead of one GET per booting server.
        """
        try:
            vm = await self._wait_active(server_id, name, tags)
            if self._config.floating_ips:
                vm = await self._attach_floating_ip(vm)
        except BaseException:
            # Never leak a half-made server: whatever went wrong, take it away again.
            await asyncio.shield(self._delete_quietly(server_id))
            raise
        finally:
            self._headroom.settled(server_id)
        return vm

    def _create_server(
        self, spec: ServerSpec, encoded_user_data: bytes, conn: openstack.connection.Connection
    ) -> str:
        config = self._config
        image_id = self._resolve("image", spec.image or config.image, conn)
        flavor_id = self._resolve("flavor", spec.flavor or config.flavor, conn)
        server: dict[str, Any] = {
            "name": spec.name,
            "flavorRef": flavor_id,
            "user_data": encoded_user_data.decode("ascii"),
            "metadata": {**config.server_metadata, **spec.metadata},
            "tags": list(spec.tags),
        }
        if config.network:
            server["networks"] = [{"uuid": self._resolve("network", config.network, conn)}]
        else:
            server["networks"] = "auto"
        if config.security_groups:
            server["security_groups"] = [{"name": group} for group in config.security_groups]
        if config.keypair:
            server["key_name"] = config.keypair
        if config.availability_zone:
            server["availability_zone"] = config.availability_zone
        if config.boot_volume_size_gb > 0:
            server["block_device_mapping_v2"] = [
                {
                    "boot_index": 0,
                    "uuid": image_id,
                    "source_type": "image",
                    "destination_type": "volume",
                    "volume_size": config.boot_volume_size_gb,
                    "delete_on_termination": True,
                }
            ]
            server["imageRef"] = ""
        else:
            server["imageRef"] = image_id
        try:
            answer = _compute(conn, "POST", "/servers", body={"server": server})
        except openstack.exceptions.BadRequestException:
            # Perhaps an image or flavor we resolved earlier was replaced: look them up again.
            with self._resolved_lock:
                self._resolved.clear()
            raise
        return str(answer["server"]["id"])

    def _resolve(self, kind: str, ref: str, conn: openstack.connection.Connection) -> str:
        """The id of an image, flavor or network by name or id, looked up once (the warm-up
        does it ahead and keeps it fresh): at 100 ms per API call, four look-ups per create
        would dominate a burst."""
        with self._resolved_lock:
            cached = self._resolved.get((kind, ref))
        if cached is not None:
            return cached
        try:
            found = _FINDERS[kind](conn, ref)
        except openstack.exceptions.ResourceNotFound as exc:
            raise PermanentProvisionerError(f"{kind} {ref!r} not found") from exc
        with self._resolved_lock:
            self._resolved[(kind, ref)] = str(found.id)
        return str(found.id)

    # The shared observer -------------------------------------------------------------------

    async def _wait_active(self, server_id: str, name: str, tags: tuple[str, ...]) -> RunnerVM:
        """Wait for the server to leave BUILD, told by the observer of `tags`; the deadline is a
        timer of its own, so an ACTIVE timeout fires on time whatever the listing interval."""
        timeout = self._config.active_timeout
        if not tags:
            vm = await self._poll_until_built(server_id, name)
        else:
            waiter = _Waiter(time.monotonic(), asyncio.get_running_loop().create_future())
            self._waiters.setdefault(tags, {})[server_id] = waiter
            self._arrivals.setdefault(tags, asyncio.Event()).set()
            self._ensure_observer(tags)
            try:
                vm = await asyncio.wait_for(asyncio.shield(waiter.found), timeout)
            except TimeoutError:
                last_error = self._observer_errors.get(tags)
                seen = f" (last look: {last_error})" if last_error else ""
                raise ActiveTimeout(
                    f"server {name} still BUILD after {timeout:g} s{seen}"
                ) from None
            finally:
                waiting = self._waiters.get(tags, {})
                if waiting.get(server_id) is waiter:
                    del waiting[server_id]
        if vm is None:
            raise ServerFailed(name, "the server disappeared while booting")
        if vm.status == "ERROR":
            raise ServerFailed(name, vm.fault or "ERROR without a fault message")
        # ACTIVE, or already past it (a fast job can power the VM off before we look).
        return vm

    def _ensure_observer(self, tags: tuple[str, ...]) -> None:
        running = self._observers.get(tags)
        if running is None or running.done():
            self._observers[tags] = asyncio.get_running_loop().create_task(
                self._observe(tags), name=f"openstack-observer:{','.join(tags)}"
            )

    async def _observe(self, tags: tuple[str, ...]) -> None:
        """While servers with `tags` wait: one listing at a time, each waiter woken when its
        server has left BUILD or is gone. The listing's cost is one request and a dict per
        server, however many boot.

        Listings follow the newest waiter: its first look soon after it arrives (a fast cloud is
        ACTIVE within a second, and a runner that starts its job before we have seen its
        server ACTIVE skips `booting`), then twice as far apart up to `poll_interval`. In a
        burst that is one listing per first look, never one per server, and the first look
        moves out as the waiters grow: each listing reads every server of the burst."""
        waiting = self._waiters.setdefault(tags, {})
        arrived = self._arrivals.setdefault(tags, asyncio.Event())

        def first_look() -> float:
            soon = FIRST_LOOK + FIRST_LOOK_PER_WAITER * len(waiting)
            return min(soon, self._config.poll_interval)

        gap = first_look()
        listed_at = time.monotonic()
        while waiting:
            if arrived.is_set():
                arrived.clear()
                gap = first_look()
            left = listed_at + gap - time.monotonic()
            if left > 0:
                # Woken early by a new waiter (its first look may be due sooner), or at time.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), left)
                continue
            started = listed_at = time.monotonic()
            gap = min(gap * 2, self._config.poll_interval)
            try:
                servers = await self._call(
                    "list booting servers", functools.partial(_list_servers, tags=tags)
                )
            except ProvisionerError as exc:
                # One failed look is not a failed boot; each waiter's deadline still holds.
                self._observer_errors[tags] = exc
                continue
            self._observer_errors.pop(tags, None)
            seen = {str(server["id"]): server for server in servers}
            missing: list[tuple[str, _Waiter]] = []
            for server_id, waiter in list(waiting.items()):
                server = seen.get(server_id)
                if server is None:
                    # Not in a listing begun after it was created: gone, or a cloud that
                    # ignored the tags it was created with. One GET tells which.
                    if waiter.since < started:
                        missing.append((server_id, waiter))
                elif server.get("status") != "BUILD" and not waiter.found.done():
                    waiter.found.set_result(_to_vm(server))
            for server_id, waiter in missing:
                with contextlib.suppress(ProvisionerError):
                    vm = await self.get(server_id)
                    if (vm is None or vm.status != "BUILD") and not waiter.found.done():
                        waiter.found.set_result(vm)

    async def _poll_until_built(self, server_id: str, name: str) -> RunnerVM | None:
        """Without ownership tags there is no listing to share: this server alone, polled."""
        timeout = self._config.active_timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                vm = await self.get(server_id)
            except TemporaryProvisionerError as exc:
                # One failed look is not a failed boot; the deadline still holds.
                if time.monotonic() >= deadline:
                    raise ActiveTimeout(f"server {name}: {exc}") from exc
            else:
                if vm is None or vm.status != "BUILD":
                    return vm
                if time.monotonic() >= deadline:
                    raise ActiveTimeout(f"server {name} still BUILD after {timeout:g} s")
            left = max(0.0, deadline - time.monotonic())
            await asyncio.sleep(min(self._config.poll_interval, left))

    async def _delete_quietly(self, server_id: str) -> None:
        # The caller's error is the one worth raising; the sweep deletes any leftover.
        with contextlib.suppress(ProvisionerError):
            await self.delete(server_id)

    async def delete(self, server_id: str) -> None:
        if self._config.floating_ips:
            await self.release_floating_ips(server_id)

        def delete_server(conn: openstack.connection.Connection) -> None:
            # Raw, like the listings: openstacksdk's delete builds a Server resource twice (the
            # request and its answer), most of a delete's CPU in a reconcile pass.
            with contextlib.suppress(openstack.exceptions.NotFoundException):
                _compute(conn, "DELETE", f"/servers/{server_id}")

        await self._call(f"delete server {server_id}", delete_server)
        deadline = time.monotonic() + self._config.delete_timeout
        interval = min(0.1, self._config.poll_interval)
        while await self.get(server_id) is not None:
            if time.monotonic() >= deadline:
                raise TemporaryProvisionerError(
                    f"server {server_id} still present {self._config.delete_timeout:g} s "
                    "after delete"
                )
            await asyncio.sleep(interval)
            interval = min(interval * 2, self._config.poll_interval)
        self._headroom.released(server_id)

    async def get(self, server_id: str) -> RunnerVM | None:
        return await self._call(
            f"get server {server_id}", functools.partial(_get_server, server_id=server_id)
        )

    async def list_owned(self, tags: tuple[str, ...]) -> list[RunnerVM]:
        if not tags:
            raise ValueError("refusing to list servers without an ownership tag filter")
        await self.check_microversion()
        wanted = set(tags)

        def list_servers(conn: openstack.connection.Connection) -> list[RunnerVM]:
            servers = map(_to_vm, _list_servers(conn, tags))
            # Filter again: a cloud that ignored the filter must not hand us foreign servers.
            return [vm for vm in servers if wanted.issubset(vm.tags)]

        return await self._call("list owned servers", list_servers)

    async def add_tag(self, server_id: str, tag: str) -> None:
        def add(conn: openstack.connection.Connection) -> None:
            conn.compute.get_server(server_id).add_tag(conn.compute, tag)

        await self._call(f"tag server {server_id}", add)

    async def set_metadata(self, server_id: str, metadata: Mapping[str, str]) -> None:
        # Nova's POST /servers/{id}/metadata merges; PUT would drop the ownership metadata.
        items = dict(metadata)

        def update(conn: openstack.connection.Connection) -> None:
            conn.compute.set_server_metadata(server_id, **items)

        await self._call(f"set metadata of server {server_id}", update)

    async def console_output(self, server_id: str, lines: int = 200) -> str:
        def console(conn: openstack.connection.Connection) -> str:
            # Raw, as openstacksdk sends it without its Server resource (built per call).
            answer = _compute(
                conn,
                "POST",
                f"/servers/{server_id}/action",
                body={"os-getConsoleOutput": {"length": lines}},
            )
            return str((answer or {}).get("output") or "")

        return await self._call(f"console output of {server_id}", console)

    # Quota headroom ------------------------------------------------------------------------

    async def _read_limits_when_due(self) -> None:
        """Read Nova's /limits when the last read is CAPACITY_REFRESH_INTERVAL old, or when a
        create was refused for quota since (but not within `quota_recheck_interval` of the last
        read). One read at a time: concurrent callers take its answer. A failed read
        keeps the last answer (and waits for the next turn, not the next caller)."""
        async with self._limits_lock:
            interval = self._config.capacity_refresh_interval
            age = time.monotonic() - self._limits_read_at
            # Refused for quota, here or by a provisioner sharing the headroom.
            recheck = self._headroom.is_exhausted and age >= min(
                self._config.quota_recheck_interval, interval
            )
            if age < interval and not recheck:
                return
            self._limits_read_at = time.monotonic()
            began = self._headroom.begin_read()
            try:
                limits = await self._call("read compute limits", _compute_limits)
            except ProvisionerError as exc:
                log.warning("compute limits unreadable, keeping the last: %s", exc)
                return
            self._headroom.apply(limits, began)

    def _quota_refused(self) -> None:
        """Nova refused a create for quota: no room until /limits is read again, soon."""
        self._headroom.exhausted()

    async def _flavor_size(self, ref: str) -> FlavorSize | None:
        """The flavor's vCPUs and RAM (flavors never change size); None while it cannot be looked
        up, tried again once per CAPACITY_REFRESH_INTERVAL."""
        known = self._flavor_sizes.get(ref)
        if known is not None or not ref:
            return known
        missed = self._flavor_misses.get(ref)
        retry_after = self._config.capacity_refresh_interval
        if missed is not None and time.monotonic() - missed < retry_after:
            return None
        try:
            size, _ = await self._call(
                f"look up flavor {ref!r}", functools.partial(_find_flavor, ref)
            )
        except ProvisionerError:
            self._flavor_misses[ref] = time.monotonic()
            return None
        self._flavor_sizes[ref] = size
        return size

    async def _claim(self, spec: ServerSpec) -> int:
        """The create's share of the quota headroom, taken before its request is sent; refused
        here (Nova is not asked) when the headroom is gone, e.g. another scale set of this
        process took the last of it."""
        size = await self._flavor_size(spec.flavor or self._config.flavor) or FlavorSize(0, 0)
        claim = self._headroom.claim(size, spec.tags)
        if claim is None:
            raise QuotaExceeded(
                f"create server {spec.name}: no quota headroom left in the project for another "
                f"{size.vcpus}-vCPU, {size.ram_mb} MiB server (Nova's last limits less the "
                "servers created since; not sent)"
            )
        return claim

    # Floating IPs --------------------------------------------------------------------------

    async def _free_floating_ips(self) -> list[str]:
        pool = self._config.floating_ips

        def free(conn: openstack.connection.Connection) -> list[str]:
            unassociated = {ip.floating_ip_address for ip in conn.network.ips() if not ip.port_id}
            # Pool order is the user's order: take the first free address of it.
            return [address for address in pool if address in unassociated]

        return await self._call("list floating IPs", free)

    async def _attach_floating_ip(self, vm: RunnerVM) -> RunnerVM:
        async with self._floating_ip_lock:
            free = await self._free_floating_ips()
            if not free:
                raise QuotaExceeded(f"no free floating IP in the pool for {vm.name}")
            address = free[0]

            def associate(conn: openstack.connection.Connection) -> None:
                ip = next(iter(conn.network.ips(floating_ip_address=address)))
                port = next(iter(conn.network.ports(device_id=vm.id)), None)
                if port is None:
                    raise TemporaryProvisionerError(f"server {vm.name} has no port yet")
                conn.network.update_ip(ip, port_id=port.id)

            await self._call(f"associate {address} with {vm.name}", associate)
        return dataclasses.replace(vm, floating_ip=address)

    async def release_floating_ips(self, server_id: str) -> None:
        """Give the server's pool addresses back: before the server goes (not only when Neutron
        deletes its port), so the next create can take them at once, and when a failed VM is
        kept for debugging."""
        if not self._config.floating_ips:
            return
        pool = set(self._config.floating_ips)

        def release(conn: openstack.connection.Connection) -> None:
            for port in conn.network.ports(device_id=server_id):
                for ip in conn.network.ips(port_id=port.id):
                    if ip.floating_ip_address in pool:
                        conn.network.update_ip(ip, port_id=None)

        await self._call(f"release floating IPs of {server_id}", release)


# The pre-flight's look-ups: each runs on a worker thread, returns what it found as one line, and
# raises (translated by `_call`) when the thing is not there.


# What a create resolves by name or id (raising ResourceNotFound when there is none).
_FINDERS: dict[str, Callable[[openstack.connection.Connection, str], Any]] = {
    "image": lambda conn, ref: conn.image.find_image(ref, ignore_missing=False),
    "flavor": lambda conn, ref: conn.compute.find_flavor(ref, ignore_missing=False),
    "network": lambda conn, ref: conn.network.find_network(ref, ignore_missing=False),
}


def _missing(kind: str, ref: str) -> PermanentProvisionerError:
    return PermanentProvisionerError(f"no {kind} named {ref!r} (nor with that id)")


def _authenticate(conn: openstack.connection.Connection) -> str:
    conn.authorize()
    return f"authenticated, project {conn.current_project_id}"


def _find_image(ref: str, conn: openstack.connection.Connection) -> str:
    image = conn.image.find_image(ref, ignore_missing=True)
    if image is None:
        raise _missing("image", ref)
    status = str(image.status or "unknown")
    if status != "active":
        raise PermanentProvisionerError(f"image {ref!r} (id {image.id}) is {status}, not active")
    return f"{image.name} (id {image.id})"


def _find_flavor(ref: str, conn: openstack.connection.Connection) -> tuple[FlavorSize, str]:
    flavor = conn.compute.find_flavor(ref, ignore_missing=True)
    if flavor is None:
        raise _missing("flavor", ref)
    size = FlavorSize(vcpus=int(flavor.vcpus or 0), ram_mb=int(flavor.ram or 0))
    return size, f"{flavor.name} (id {flavor.id}, {size.vcpus} vCPUs, {size.ram_mb} MiB RAM)"


def _find_network(ref: str, conn: openstack.connection.Connection) -> str:
    network = conn.network.find_network(ref, ignore_missing=True)
    if network is None:
        raise _missing("network", ref)
    return f"{network.name} (id {network.id})"


def _find_security_group(ref: str, conn: openstack.connection.Connection) -> str:
    group = conn.network.find_security_group(ref, ignore_missing=True)
    if group is None:
        raise _missing("security group", ref)
    return f"{group.name} (id {group.id})"


def _find_keypair(ref: str, conn: openstack.connection.Connection) -> str:
    keypair = conn.compute.find_keypair(ref, ignore_missing=True)
    if keypair is None:
        raise PermanentProvisionerError(f"no key pair named {ref!r}")
    return f"{keypair.name} ({keypair.type or 'ssh'})"


def _find_floating_ip(address: str, conn: openstack.connection.Connection) -> str:
    found = next(iter(conn.network.ips(floating_ip_address=address)), None)
    if found is None:
        raise PermanentProvisionerError(f"no floating IP {address} in the project")
    state = f"in use by port {found.port_id}" if found.port_id else "free"
    return f"{address} (id {found.id}, {state})"


def _compute_limits(conn: openstack.connection.Connection) -> ComputeLimits:
    # The raw document rather than the SDK's Limits resource, which warns about fields Nova
    # still sends below microversion 2.57 (maxPersonality) on every read.
    response = conn.compute.get("/limits", raise_exc=False)
    openstack.exceptions.raise_from_response(response)
    absolute = response.json().get("limits", {}).get("absolute", {})

    def number(key: str) -> int:
        value = absolute.get(key)
        # Absent means Nova does not limit it; -1 is Nova's own "unlimited".
        return int(value) if isinstance(value, int | float) else -1

    return ComputeLimits(
        max_instances=number("maxTotalInstances"),
        max_cores=number("maxTotalCores"),
        max_ram_mb=number("maxTotalRAMSize"),
        used_instances=max(0, number("totalInstancesUsed")),
        used_cores=max(0, number("totalCoresUsed")),
        used_ram_mb=max(0, number("totalRAMUsed")),
    )
