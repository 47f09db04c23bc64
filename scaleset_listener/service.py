"""The composition root: builds the clients, starts one listener per scale set, drains on signals.

Start order (DESIGN.md section 3): settings -> logging -> auth -> scale set -> (reconcile) ->
session -> initial statistics -> poll loop. Root tasks run in one TaskGroup; nothing is
fire-and-forget. The first SIGTERM/SIGINT asks every listener to finish the message in hand,
delete its session and return; a second one cancels at once.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

import structlog

from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, build_credential
from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.errors import ListenerError
from scaleset_listener.http import HttpChannel
from scaleset_listener.listener import Listener, ListenerOptions
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.scaling import LoggingScaler, Scaler

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


async def run_service(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    scaler_factory: ScalerFactory | None = None,
    handle_signals: bool = True,
) -> int:
    """Serve every configured scale set until stopped; the process exit code.

    `stop` and `scaler_factory` let an embedding program (and the tests) drive the service
    without signals; the default scaler only logs its decisions.
    """
    stop = stop or asyncio.Event()
    current = asyncio.current_task()
    if handle_signals and current is not None:
        _install_signal_handlers(stop, current)
    make_scaler: ScalerFactory = scaler_factory or (lambda spec: LoggingScaler(spec.name))
    policy = retry_policy(settings)
    http = HttpChannel(policy)
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
        )
        if settings.enable_reconciliation:
            log.info("reconciliation_skipped", reason="no provisioner configured yet")
        owner = socket.gethostname()
        listeners = [
            Listener(
                client,
                http,
                make_scaler(spec),
                ListenerOptions(
                    spec=spec,
                    manage_scale_set=settings.manage_runner_scale_sets,
                    owner_name=owner,
                    session_conflict_retry_interval=settings.session_conflict_retry_interval,
                    shutdown_timeout=settings.shutdown_timeout,
                ),
                policy,
            )
            for spec in settings.runners
        ]
        async with asyncio.TaskGroup() as group:
            for spec, listener in zip(settings.runners, listeners, strict=True):
                group.create_task(listener.run(stop), name=f"listener:{spec.name}")
    except* ListenerError as failures:
        for failure in failures.exceptions:
            log.error("service_failed", error=str(failure), error_type=type(failure).__name__)
        exit_code = 1
    else:
        log.info("service_stopped")
        exit_code = 0
    finally:
        await http.aclose()
        if handle_signals and current is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(signum)
    return exit_code
