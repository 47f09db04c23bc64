"""Wiring of the startup reconciler (reconciler.run_once) from the settings: the prober, the
ownership of a scale set, the adoptions a VMScaler takes over, and the VMs left by scale sets
that GitHub deleted (the listener re-creates a deleted set under a new id)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from provisioners.base import Provisioner
from provisioners.naming import Ownership
from provisioners.ssh import SSHProbeConfig, SSHProber
from reconciler.policy import Action
from reconciler.ports import RunnerRegistry
from reconciler.reconcile import ReconcileReport, deleted_scale_sets, run_once
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.config import Settings
from scaleset_listener.errors import ScaleSetNotFound
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
            port=settings.vm_ssh_port,
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
    probe_vms: bool = True,
) -> ReconcileReport:
    """One pass over the VMs this listener deployment owns in `scale_set_id`; without
    `probe_vms` GitHub and the console decide alone."""
    own_prober = prober is None and probe_vms
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


class GitHubScaleSets:
    """`reconciler.ports.ScaleSetDirectory` over the Actions client: only a 404 means gone."""

    def __init__(self, client: ActionsClient) -> None:
        self._client = client

    async def scale_set_exists(self, scale_set_id: int) -> bool:
        try:
            await self._client.get_scale_set(scale_set_id)
        except ScaleSetNotFound:
            return False
        return True


async def reconcile_deleted_scale_sets(
    settings: Settings,
    client: ActionsClient,
    provisioner: Provisioner,
    *,
    skip: Collection[int],
    dry_run: bool,
) -> list[tuple[int, ReconcileReport]]:
    """One pass over the VMs of each scale set of this deployment that GitHub deleted. Their
    runners went with the set, so the table deletes them (clean_up when run-complete or powered
    off) whatever a probe would say: they are not probed. Nothing of them is adopted. Sets in
    `skip` are not asked about."""
    gone = await deleted_scale_sets(
        provisioner=provisioner,
        directory=GitHubScaleSets(client),
        listener_instance=settings.effective_listener_instance_id,
        skip=skip,
    )
    return [
        (
            scale_set_id,
            await reconcile_scale_set(
                settings, client, provisioner, scale_set_id, dry_run=dry_run, probe_vms=False
            ),
        )
        for scale_set_id in gone
    ]
