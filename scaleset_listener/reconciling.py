"""Wiring of the startup reconciler (reconciler.run_once) from the settings: the prober, the
ownership of a scale set, and the adoptions a VMScaler takes over."""

from __future__ import annotations

from datetime import timedelta

from provisioners.base import Provisioner
from provisioners.naming import Ownership
from provisioners.ssh import SSHProbeConfig, SSHProber
from reconciler.policy import Action
from reconciler.ports import RunnerRegistry
from reconciler.reconcile import ReconcileReport, run_once
from scaleset_listener.config import Settings
from scaleset_listener.scaler import Adoption, Phase

_PHASES = {
    Action.ADOPT_IDLE: Phase.IDLE,
    Action.ADOPT_BUSY: Phase.BUSY,
    Action.ADOPT_BOOTING: Phase.BOOTING,
}


def make_prober(settings: Settings) -> SSHProber | None:
    """The SSH prober, or None without VM_SSH_PRIVATE_KEY_PATH (console and GitHub decide)."""
    if settings.vm_ssh_private_key_path is None:
        return None
    return SSHProber(
        SSHProbeConfig.from_timeout(
            settings.ssh_probe_timeout,
            user=settings.vm_ssh_user,
            private_key_path=settings.vm_ssh_private_key_path,
            host_key_policy=settings.ssh_host_key_policy,
            sentinel_dir=settings.sentinel_dir,
            max_workers=min(4096, settings.reconcile_concurrency),
        )
    )


async def reconcile_scale_set(
    settings: Settings,
    registry: RunnerRegistry,
    provisioner: Provisioner,
    scale_set_id: int,
    *,
    dry_run: bool,
    prober: SSHProber | None = None,
) -> ReconcileReport:
    """One pass over the VMs this listener deployment owns in `scale_set_id`."""
    own_prober = prober is None
    probe = make_prober(settings) if own_prober else prober
    try:
        return await run_once(
            provisioner=provisioner,
            registry=registry,
            prober=probe,
            ownership=Ownership(settings.effective_listener_instance_id, scale_set_id),
            boot_timeout=timedelta(seconds=settings.boot_timeout),
            concurrency=settings.reconcile_concurrency,
            dry_run=dry_run,
        )
    finally:
        if own_prober and probe is not None:
            await probe.close()


def adoptions(report: ReconcileReport) -> list[Adoption]:
    """What the scaler owns after the pass: adopted VMs, in their phases."""
    return [
        Adoption(
            name=row.runner_name,
            server_id=row.vm.id,
            phase=_PHASES[row.decision.action],
            runner_id=None if row.registration is None else row.registration.id,
            age_seconds=row.age_seconds,
        )
        for row in report.rows
        if row.decision.action in _PHASES
    ]
