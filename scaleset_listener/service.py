"""Running the service: one supervised listener and scaler per scale set, the health endpoints and
the runner-version checks, until a signal drains it. What runs is built in `wiring`.

Start order (docs/architecture.md#runtime-model): settings -> logging -> auth -> runner version
-> scale set -> (reconcile) -> session -> initial statistics -> poll loop. Root tasks run in one
TaskGroup; nothing is fire-and-forget. The first SIGTERM/SIGINT asks every listener to finish
the message in hand, delete its session and return; a second one cancels at once.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from collections.abc import Callable

import structlog

from provisioners.base import Provisioner
from provisioners.headroom import ProjectHeadroom
from provisioners.openstack import OpenStackProvisioner
from scaleset_listener import wiring
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.config import Settings
from scaleset_listener.errors import ConfigError
from scaleset_listener.health import HealthServer
from scaleset_listener.http import HttpChannel
from scaleset_listener.listener import Listener, ListenerOptions
from scaleset_listener.metrics import CONTENT_TYPE, Metrics, RunnerVersionView, ScaleSetView
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.runner_versions import (
    RunnerVersions,
    RunnerVersionUnavailable,
)
from scaleset_listener.scaler_port import LoggingScaler
from scaleset_listener.supervisor import ScaleSetSupervisor
from scaleset_listener.wiring import CloudProvisioners, ScalerFactory

log = structlog.get_logger(__name__)


def _install_signal_handlers(stop: asyncio.Event, main: asyncio.Task[object]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("shutdown_forced", signal=signal.Signals(signum).name)
            main.cancel()
            return
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def _set_when_done(tasks: list[asyncio.Task[bool]], event: asyncio.Event) -> None:
    await asyncio.wait(tasks)
    event.set()


def _start_health(
    settings: Settings,
    supervisors: list[ScaleSetSupervisor],
    runner_versions: RunnerVersions | None,
    metrics: Metrics,
) -> HealthServer | None:
    """The health and metrics endpoints, when ENABLE_METRICS is on (before the runner is
    resolved, so a probe sees why the service is not ready yet)."""
    if not settings.enable_metrics:
        return None
    if runner_versions is not None:
        versions = runner_versions
        metrics.watch_runner_version(
            RunnerVersionView(version=lambda: versions.version, stale=lambda: versions.stale)
        )
    health = HealthServer(
        [supervisor.health() for supervisor in supervisors],
        settings.metrics_addr,
        [runner_versions.problem] if runner_versions is not None else [],
        (metrics.exposition, CONTENT_TYPE),
    )
    health.start()
    log.info(
        "health_endpoints", addr=settings.metrics_addr, paths=["/healthz", "/readyz", "/metrics"]
    )
    return health


async def _resolve_runner(
    runner_versions: RunnerVersions, settings: Settings, policy: RetryPolicy, stop: asyncio.Event
) -> bool:
    """The runner release new VMs get, resolved before any is created; False when stopped
    meanwhile."""
    release = await runner_versions.start(stop, policy.recovery_backoff())
    if release is None:
        return False
    log.info(
        "runner_version",
        version=release.version,
        source=release.source,
        follows_latest=runner_versions.follows_latest,
        architectures=sorted(release.downloads),
        mirror=bool(settings.runner_download_url),
    )
    return True


# How long the start waits for the cloud's warm-up (authentication, the image, flavor and
# network ids) before it opens its sessions; a cloud that does not answer is the creates' to report.
WARM_UP_WAIT = 30.0


async def _wait_warm(provisioners: list[OpenStackProvisioner]) -> None:
    if not provisioners:
        return
    warm = [asyncio.ensure_future(provisioner.wait_warm()) for provisioner in provisioners]
    await asyncio.wait(warm, timeout=WARM_UP_WAIT)
    for waiting in warm:
        waiting.cancel()


def _start_provisioners(
    settings: Settings, started: list[OpenStackProvisioner]
) -> CloudProvisioners:
    """One provisioner per distinct cloud and placement (wiring.placements), started and added
    to `started` (for the caller to close, whatever fails meanwhile); each scale set's by name.
    Provisioners on one cloud create in one project, so they share its quota headroom."""
    groups = wiring.placements(settings)
    by_scale_set: dict[str, Provisioner] = {}
    headrooms: dict[str | None, ProjectHeadroom] = {}
    for config, names in zip(groups.configs, groups.scale_sets, strict=True):
        headroom = headrooms.setdefault(config.cloud, ProjectHeadroom())
        provisioner = OpenStackProvisioner(config, headroom=headroom)
        started.append(provisioner)
        provisioner.start()
        by_scale_set.update(dict.fromkeys(names, provisioner))
        if len(groups.configs) > 1:
            log.info("cloud_placement", cloud=config.cloud or "OS_CLOUD", scale_sets=list(names))
    return by_scale_set


async def run_service(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    scaler_factory: ScalerFactory | None = None,
    scaler_factory_builder: Callable[
        [ActionsClient, CloudProvisioners, RunnerVersions], ScalerFactory
    ]
    | None = None,
    handle_signals: bool = True,
) -> int:
    """Serve every configured scale set until stopped; the process exit code.

    `stop` and `scaler_factory` (or `scaler_factory_builder`, given the client, each scale
    set's provisioner by name and the runner versions) let an embedding program and the tests
    drive the service without signals.
    Without a cloud configured the scaler only logs its decisions.
    """
    stop = stop or asyncio.Event()
    current = asyncio.current_task()
    if handle_signals and current is not None:
        _install_signal_handlers(stop, current)
    policy = wiring.retry_policy(settings)
    metrics = Metrics(namespace=settings.effective_listener_instance_id)
    http = HttpChannel(policy, observe=metrics.github_request)
    provisioners: list[OpenStackProvisioner] = []
    health: HealthServer | None = None
    versions: RunnerVersions | None = None
    try:
        gh = wiring.github(settings, http)
        target, client = gh.target, gh.client
        metrics.target = target
        log.info(
            "service_starting",
            github_url=target.config_url,
            api_url=target.api_url,
            scope=target.scope.value,
            auth="github_app" if settings.uses_github_app else "pat",
            scale_sets=[spec.name for spec in settings.runners],
            manage_runner_scale_sets=settings.manage_runner_scale_sets,
            dry_run=settings.dry_run,
        )
        make_scaler = scaler_factory
        if make_scaler is None:
            missing = wiring.missing_cloud_settings(settings)
            if missing:
                log.warning(
                    "no_cloud_configured",
                    missing=missing,
                    effect="runners are only logged, never created; set the missing settings "
                    "(and OS_CLOUD or OS_*) to create VMs",
                )
                make_scaler = lambda spec: LoggingScaler(spec.name)  # noqa: E731
            else:
                versions = wiring.runner_versions(settings, gh, http)
                by_scale_set = _start_provisioners(settings, provisioners)
                build = scaler_factory_builder or functools.partial(
                    wiring.vm_scalers, settings, metrics=metrics
                )
                make_scaler = build(client, by_scale_set, versions)
        owner = socket.gethostname()
        supervisors = []
        for spec in settings.runners:
            scaler = make_scaler(spec)
            listener = Listener(
                client,
                http,
                scaler,
                ListenerOptions(
                    spec=spec,
                    manage_scale_set=settings.manage_runner_scale_sets,
                    owner_name=owner,
                    session_conflict_retry_interval=settings.session_conflict_retry_interval,
                    shutdown_timeout=settings.shutdown_timeout,
                ),
                policy,
                metrics.scale_set(spec.name, spec.min_runners, spec.max_runners),
            )
            metrics.watch_scale_set(
                ScaleSetView(spec.name, scaler.phase_counts, listener.announced_capacity)
            )
            supervisors.append(
                ScaleSetSupervisor(
                    listener,
                    scaler,
                    backoff=policy.recovery_backoff(),
                )
            )
        health = _start_health(settings, supervisors, versions, metrics)
        # No VM before the runner release is known (the scalers ask for it at each create).
        if versions is not None and not await _resolve_runner(versions, settings, policy, stop):
            log.info("service_stopped", failed_scale_sets=0)
            return 0
        await _wait_warm(provisioners)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(supervisor.run(stop), name=f"scale-set:{supervisor.name}")
                for supervisor in supervisors
            ]
            if versions is not None:
                # Checked until every scale set is done (stopped, or failed on its own).
                served = asyncio.Event()
                group.create_task(versions.run(served), name="runner-versions")
                group.create_task(_set_when_done(tasks, served), name="runner-versions-stop")
        healthy = [task.result() for task in tasks]
    except ConfigError as failure:
        log.error("service_failed", error=str(failure), error_type=type(failure).__name__)
        exit_code = 2
    except RunnerVersionUnavailable as failure:
        log.error("service_failed", error=str(failure), error_type=type(failure).__name__)
        exit_code = 1
    else:
        exit_code = 0 if all(healthy) else 1
        log.info("service_stopped", failed_scale_sets=healthy.count(False))
    finally:
        if health is not None:
            health.stop()
        await http.aclose()
        for provisioner in provisioners:
            await provisioner.close()
        if handle_signals and current is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(signum)
    return exit_code
