"""The composition root: builds the clients, starts one listener per scale set, drains on signals.

Start order (DESIGN.md section 3): settings -> logging -> auth -> scale set -> (reconcile) ->
session -> initial statistics -> poll loop. Root tasks run in one TaskGroup; nothing is
fire-and-forget. The first SIGTERM/SIGINT asks every listener to finish the message in hand,
delete its session and return; a second one cancels at once.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from collections.abc import Callable
from datetime import datetime

import structlog

from provisioners.base import Provisioner, ProvisionerError, ServerSpec
from provisioners.bootstrap import HostKey
from provisioners.naming import Ownership
from provisioners.openstack import OpenStackProvisioner
from reconciler.reconcile import ReconcileReport
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, build_credential
from scaleset_listener.cloud import missing_cloud_settings, openstack_config, server_spec
from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.errors import ConfigError, ListenerError
from scaleset_listener.health import HealthServer
from scaleset_listener.http import HttpChannel
from scaleset_listener.listener import Listener, ListenerOptions
from scaleset_listener.reconciling import (
    adoptions,
    reconcile_deleted_scale_sets,
    reconcile_scale_set,
)
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.runner_versions import (
    GitHubReleaseSource,
    RunnerVersions,
    RunnerVersionUnavailable,
)
from scaleset_listener.scaler import Adoption, Lifecycle, VMScaler
from scaleset_listener.scaling import LoggingScaler, Scaler
from scaleset_listener.supervisor import ScaleSetSupervisor

log = structlog.get_logger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        max_wait=settings.retry_max_wait,
        recovery_max_wait=settings.recovery_backoff_max,
    )


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


ScalerFactory = Callable[[ScaleSetSpec], Scaler]


def lifecycle(settings: Settings) -> Lifecycle:
    return Lifecycle(
        boot_timeout=settings.boot_timeout,
        idle_runner_timeout=settings.idle_runner_timeout,
        max_runner_lifetime=settings.max_runner_lifetime,
        deregistration_timeout=settings.runner_deregistration_timeout,
        sweep_interval=settings.vm_tracker_interval,
        keep_failed_vms=settings.keep_failed_vms,
    )


def vm_scalers(
    settings: Settings,
    client: ActionsClient,
    provisioner: Provisioner,
    runner_versions: RunnerVersions,
) -> Callable[[ScaleSetSpec], VMScaler]:
    """One VMScaler per scale set, all sharing the provisioning slots; each new VM gets the
    runner release current at its creation."""
    slots = asyncio.Semaphore(settings.provision_concurrency)
    # One pass at a time over deleted scale sets' VMs, however many sets this process serves.
    deleted_sets_gate = asyncio.Lock()

    def make(spec: ScaleSetSpec) -> VMScaler:
        async def reconcile(scale_set_id: int) -> list[Adoption]:
            async with deleted_sets_gate:
                try:
                    await reconcile_deleted_scale_sets(
                        settings,
                        client,
                        provisioner,
                        skip={scale_set_id},
                        dry_run=settings.dry_run,
                    )
                except (ListenerError, ProvisionerError) as exc:
                    # Not this set's own pass: that one still runs; the next start retries.
                    log.warning(
                        "reconcile_deleted_scale_sets_failed", scale_set=spec.name, error=str(exc)
                    )
            report = await reconcile_scale_set(
                settings, client, provisioner, scale_set_id, dry_run=settings.dry_run
            )
            return adoptions(report)

        def server_spec_for(
            ownership: Ownership, name: str, jit: str, host_key: HostKey, now: datetime
        ) -> ServerSpec:
            return server_spec(
                settings, spec, ownership, name, jit, host_key, now, runner_versions.current()
            )

        return VMScaler(
            spec,
            client,
            provisioner,
            server_spec_for,
            settings.effective_listener_instance_id,
            lifecycle(settings),
            slots,
            dry_run=settings.dry_run,
            reconcile=reconcile if settings.enable_reconciliation else None,
        )

    return make


async def _set_when_done(tasks: list[asyncio.Task[bool]], event: asyncio.Event) -> None:
    await asyncio.wait(tasks)
    event.set()


def _start_health(
    settings: Settings,
    supervisors: list[ScaleSetSupervisor],
    runner_versions: RunnerVersions | None,
) -> HealthServer | None:
    """The health endpoints, when ENABLE_METRICS is on (before the runner is resolved, so a
    probe sees why the service is not ready yet)."""
    if not settings.enable_metrics:
        return None
    health = HealthServer(
        [supervisor.health() for supervisor in supervisors],
        settings.metrics_addr,
        [runner_versions.problem] if runner_versions is not None else [],
    )
    health.start()
    log.info("health_endpoints", addr=settings.metrics_addr, paths=["/healthz", "/readyz"])
    return health


async def _resolve_runner(
    runner_versions: RunnerVersions, settings: Settings, stop: asyncio.Event
) -> bool:
    """The runner release new VMs get, resolved before any is created; False when stopped
    meanwhile."""
    release = await runner_versions.start(stop, settings.recovery_backoff_max)
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


async def run_service(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    scaler_factory: ScalerFactory | None = None,
    scaler_factory_builder: Callable[[ActionsClient, Provisioner, RunnerVersions], ScalerFactory]
    | None = None,
    handle_signals: bool = True,
) -> int:
    """Serve every configured scale set until stopped; the process exit code.

    `stop` and `scaler_factory` (or `scaler_factory_builder`, given the client, the
    provisioner and the runner versions) let an embedding program and the tests drive the
    service without signals.
    Without a cloud configured the scaler only logs its decisions.
    """
    stop = stop or asyncio.Event()
    current = asyncio.current_task()
    if handle_signals and current is not None:
        _install_signal_handlers(stop, current)
    policy = retry_policy(settings)
    http = HttpChannel(policy)
    provisioner: OpenStackProvisioner | None = None
    health: HealthServer | None = None
    runner_versions: RunnerVersions | None = None
    try:
        target = settings.github_target
        credential = build_credential(
            target=target,
            http=http,
            pat=settings.github_token.get_secret_value() if settings.github_token else None,
            app_id=settings.github_app_id,
            installation_id=settings.github_app_installation_id,
            private_key_pem=settings.app_private_key_pem() if settings.uses_github_app else None,
        )
        client = ActionsClient(ActionsAdminAuth(target, credential, http), http)
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
            missing = missing_cloud_settings(settings)
            if missing:
                log.warning(
                    "no_cloud_configured",
                    missing=missing,
                    effect="runners are only logged, never created; set the missing settings "
                    "(and OS_CLOUD or OS_*) to create VMs",
                )
                make_scaler = lambda spec: LoggingScaler(spec.name)  # noqa: E731
            else:
                runner_versions = RunnerVersions(
                    settings.github_runner_version,
                    GitHubReleaseSource(target, credential, http),
                    mirror_url=settings.runner_download_url,
                    pinned_sha256=settings.runner_sha256,
                    check_interval=settings.runner_version_check_interval,
                )
                provisioner = OpenStackProvisioner(openstack_config(settings))
                build = scaler_factory_builder or functools.partial(vm_scalers, settings)
                make_scaler = build(client, provisioner, runner_versions)
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
            )
            supervisors.append(
                ScaleSetSupervisor(
                    listener,
                    scaler,
                    first_wait=policy.first_wait,
                    max_wait=settings.recovery_backoff_max,
                )
            )
        health = _start_health(settings, supervisors, runner_versions)
        # No VM before the runner release is known (the scalers ask for it at each create).
        if runner_versions is not None and not await _resolve_runner(
            runner_versions, settings, stop
        ):
            log.info("service_stopped", failed_scale_sets=0)
            return 0
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(supervisor.run(stop), name=f"scale-set:{supervisor.name}")
                for supervisor in supervisors
            ]
            if runner_versions is not None:
                # Checked until every scale set is done (stopped, or failed on its own).
                served = asyncio.Event()
                group.create_task(runner_versions.run(served), name="runner-versions")
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
        if provisioner is not None:
            await provisioner.close()
        if handle_signals and current is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(signum)
    return exit_code


async def reconcile_once(settings: Settings, *, dry_run: bool, out: Callable[[str], None]) -> int:
    """`scaleset-listener reconcile`: one reconciliation pass per configured scale set, its
    decision table written to `out`; with `dry_run` nothing is changed. The exit code."""
    missing = missing_cloud_settings(settings)
    if missing:
        raise ConfigError(f"reconcile needs the cloud settings: {', '.join(missing)}")
    http = HttpChannel(retry_policy(settings))
    provisioner: OpenStackProvisioner | None = None
    failed = False
    try:
        target = settings.github_target
        credential = build_credential(
            target=target,
            http=http,
            pat=settings.github_token.get_secret_value() if settings.github_token else None,
            app_id=settings.github_app_id,
            installation_id=settings.github_app_installation_id,
            private_key_pem=settings.app_private_key_pem() if settings.uses_github_app else None,
        )
        client = ActionsClient(ActionsAdminAuth(target, credential, http), http)
        provisioner = OpenStackProvisioner(openstack_config(settings))
        mode = "dry run, nothing changed" if dry_run else "acted"
        reports: list[ReconcileReport] = []
        served: set[int] = set()
        for spec in settings.runners:
            group_id = spec.runner_group_id
            if group_id is None:
                group_id = (await client.get_runner_group_by_name(spec.runner_group)).id
            scale_set = await client.find_scale_set(spec.name, group_id)
            if scale_set is None:
                out(f"# scale set {spec.name}: not registered at GitHub, nothing to reconcile")
                continue
            served.add(scale_set.id)
            report = await reconcile_scale_set(
                settings, client, provisioner, scale_set.id, dry_run=dry_run
            )
            out(f"# scale set {spec.name} (id {scale_set.id}): {mode}")
            out(report.table())
            reports.append(report)
        for scale_set_id, report in await reconcile_deleted_scale_sets(
            settings, client, provisioner, skip=served, dry_run=dry_run
        ):
            out(f"# scale set {scale_set_id} (deleted at GitHub, its VMs remain): {mode}")
            out(report.table())
            reports.append(report)
        failed = any(row.error for report in reports for row in report.rows) or any(
            orphan.error for report in reports for orphan in report.orphans
        )
    finally:
        await http.aclose()
        if provisioner is not None:
            await provisioner.close()
    return 1 if failed else 0
