"""From settings to the service's parts: the GitHub client, the runner versions, the clouds'
provisioners (one per cloud and placement) and the bootstrap's specs, the SSH prober, the
reconciler's passes and one VMScaler per scale set. With DRY_RUN the clouds and GitHub are
wrapped here (dry_run.py), once, so that no part downstream has a dry-run branch.

This is the one module that reads settings to build things; the parts themselves know nothing of
the settings (`provisioners` and `reconciler` not even of this package). `service` runs what is
built here, `cli` offers it as commands.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from provisioners.base import Provisioner, ProvisionerError, ServerSpec
from provisioners.bootstrap import BootstrapSpec, HostKey, JobPolicy, render_user_data
from provisioners.naming import Ownership, ownership_metadata, runner_name
from provisioners.openstack import OpenStackConfig
from provisioners.sentinels import authorized_keys_entry
from provisioners.ssh import (
    SSHProbeConfig,
    SSHProbeConfigError,
    SSHProber,
    parse_public_key,
    public_key_of,
)
from reconciler.ports import RunnerRegistrations
from reconciler.reconcile import ReconcileReport, deleted_scale_sets, run_once
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, Credential, build_credential
from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.dry_run import DryRunProvisioner, DryRunRegistry
from scaleset_listener.errors import ConfigError, ListenerError, ScaleSetNotFound
from scaleset_listener.github_urls import GitHubTarget
from scaleset_listener.http import HttpChannel
from scaleset_listener.metrics import Metrics
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.runner_versions import (
    GitHubReleaseSource,
    RunnerRelease,
    RunnerVersions,
    pinned_release,
)
from scaleset_listener.scaler_port import Scaler
from scaleset_listener.usage import UsageLog
from scaleset_listener.vm_scaler.execute import Accounting, RunnerRegistry
from scaleset_listener.vm_scaler.ledger import Adoption, adoptions
from scaleset_listener.vm_scaler.loop import VMScaler, record_decisions
from scaleset_listener.vm_scaler.plan import Lifecycle

log = structlog.get_logger(__name__)


# GitHub ------------------------------------------------------------------------------------


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        max_wait=settings.retry_max_wait,
        recovery_max_wait=settings.recovery_backoff_max,
    )


@dataclass(frozen=True)
class GitHub:
    """What talks to GitHub: the parsed GITHUB_URL, the credential and the Actions client."""

    target: GitHubTarget
    credential: Credential
    client: ActionsClient


def github(settings: Settings, http: HttpChannel) -> GitHub:
    """The PAT or GitHub App credential and the Actions client over `http`."""
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
    return GitHub(target, credential, client)


def runner_versions(settings: Settings, gh: GitHub, http: HttpChannel) -> RunnerVersions:
    """The runner release new VMs get (GITHUB_RUNNER_VERSION, resolved or pinned)."""
    return RunnerVersions(
        settings.github_runner_version,
        GitHubReleaseSource(gh.target, gh.credential, http),
        mirror_url=settings.runner_download_url,
        pinned_sha256=settings.runner_sha256,
        check_interval=settings.runner_version_check_interval,
    )


# The cloud and the bootstrap ---------------------------------------------------------------


def missing_cloud_settings(settings: Settings) -> list[str]:
    """The settings a cloud needs that are not set (empty: the cloud is configured)."""
    missing = []
    if not settings.openstack_image and not all(spec.image for spec in settings.runners):
        missing.append("OPENSTACK_IMAGE")
    if not settings.openstack_flavor and not all(spec.flavor for spec in settings.runners):
        missing.append("OPENSTACK_FLAVOR")
    return missing


def openstack_config(settings: Settings) -> OpenStackConfig:
    """The global OPENSTACK_* settings, with every RUNNERS entry's image and flavor to warm up
    (what a single cloud serving every scale set needs)."""
    return OpenStackConfig(
        image=settings.openstack_image,
        flavor=settings.openstack_flavor,
        network=settings.openstack_network or None,
        security_groups=settings.openstack_security_groups,
        keypair=settings.openstack_keypair or None,
        availability_zone=settings.openstack_availability_zone or None,
        boot_volume_size_gb=settings.openstack_boot_volume_size_gb,
        floating_ips=settings.openstack_floating_ips,
        server_metadata=dict(settings.openstack_server_metadata),
        active_timeout=settings.openstack_server_active_timeout,
        max_workers=settings.provision_concurrency,
        capacity_refresh_interval=settings.capacity_refresh_interval,
        # Resolved at start (the warm-up), so no scale set's first job pays for the look-ups.
        images=tuple(spec.image for spec in settings.runners if spec.image),
        flavors=tuple(spec.flavor for spec in settings.runners if spec.flavor),
    )


def placement(settings: Settings, scale_set: ScaleSetSpec) -> OpenStackConfig:
    """The effective OpenStackConfig of `scale_set`: each placement key of its RUNNERS entry
    replaces the OPENSTACK_* setting; server_metadata's keys are added to the global ones.
    Its own image and flavor are the ones warmed up (None: the global ones)."""
    base = openstack_config(settings)

    def own(name: str, default: Any) -> Any:
        value = getattr(scale_set, name)
        return default if value is None else value

    return replace(
        base,
        cloud=scale_set.cloud,
        network=own("network", base.network),
        security_groups=tuple(own("security_groups", base.security_groups)),
        keypair=own("keypair", base.keypair),
        availability_zone=own("availability_zone", base.availability_zone),
        boot_volume_size_gb=own("boot_volume_size_gb", base.boot_volume_size_gb),
        floating_ips=tuple(own("floating_ips", base.floating_ips)),
        server_metadata={**base.server_metadata, **(scale_set.server_metadata or {})},
        images=(scale_set.image,) if scale_set.image else (),
        flavors=(scale_set.flavor,) if scale_set.flavor else (),
    )


def _placement_key(config: OpenStackConfig) -> tuple[Any, ...]:
    """What makes two scale sets' provisioners different: everything but what to warm up."""
    return (
        config.cloud,
        config.network,
        config.security_groups,
        config.keypair,
        config.availability_zone,
        config.boot_volume_size_gb,
        config.floating_ips,
        tuple(sorted(config.server_metadata.items())),
    )


@dataclass(frozen=True)
class Placements:
    """The provisioners' configs: one per distinct cloud and placement, and the scale sets
    (by name) each serves.

    A provisioner holds its placement (network, security groups, availability zone, key pair,
    boot volume, metadata, floating-IP pool) in its config, and a create names only the image and
    flavor, so sets whose placement differs need provisioners of their own; sets with equal
    placement share one, and with it its workers, its observer and its view of the quota."""

    configs: tuple[OpenStackConfig, ...]
    scale_sets: tuple[tuple[str, ...], ...]

    def scale_sets_by_cloud(self) -> dict[str | None, list[str]]:
        """Every scale set on each cloud in use, whatever its placement: a cloud is one
        project, whose quota and leftover VMs they share."""
        by_cloud: dict[str | None, list[str]] = {}
        for config, names in zip(self.configs, self.scale_sets, strict=True):
            by_cloud.setdefault(config.cloud, []).extend(names)
        return by_cloud

    def index_of(self, scale_set: str) -> int:
        for index, names in enumerate(self.scale_sets):
            if scale_set in names:
                return index
        raise KeyError(scale_set)


def placements(settings: Settings) -> Placements:
    """Every scale set's effective placement, grouped: scale sets with equal cloud and placement
    share one provisioner, which warms up the images and flavors of all of them."""
    groups: dict[tuple[Any, ...], tuple[OpenStackConfig, list[str]]] = {}
    for spec in settings.runners:
        config = placement(settings, spec)
        key = _placement_key(config)
        if key in groups:
            first, names = groups[key]
            merged = replace(
                first,
                images=tuple(dict.fromkeys((*first.images, *config.images))),
                flavors=tuple(dict.fromkeys((*first.flavors, *config.flavors))),
            )
            groups[key] = (merged, [*names, spec.name])
        else:
            groups[key] = (config, [spec.name])
    return Placements(
        configs=tuple(config for config, _ in groups.values()),
        scale_sets=tuple(tuple(names) for _, names in groups.values()),
    )


# A scale set's provisioner: one for all, or one per scale set name.
CloudProvisioners = Provisioner | Mapping[str, Provisioner]


def provisioner_of(provisioners: CloudProvisioners, scale_set: str) -> Provisioner:
    if isinstance(provisioners, Mapping):
        return provisioners[scale_set]
    return provisioners


def probe_public_key(settings: Settings) -> str | None:
    """The probe key's public line (`<type> <base64>`) the bootstrap authorizes on each VM:
    VM_SSH_PUBLIC_KEY, or derived from VM_SSH_PRIVATE_KEY_PATH; None without either. A key
    that cannot work is a ConfigError naming the variable."""
    given = settings.vm_ssh_public_key
    if given:
        try:
            key = parse_public_key(given)
            authorized_keys_entry(given, settings.sentinel_dir)
        except ValueError as exc:
            raise ConfigError(f"VM_SSH_PUBLIC_KEY: {exc}") from None
        given = f"{key.get_name()} {key.get_base64()}"
    if settings.vm_ssh_private_key_path is None:
        return given or None
    try:
        derived = public_key_of(settings.vm_ssh_private_key_path)
    except SSHProbeConfigError as exc:
        raise ConfigError(f"VM_SSH_PRIVATE_KEY_PATH: {exc}") from None
    if given and given != derived:
        raise ConfigError(
            "VM_SSH_PUBLIC_KEY: not the public half of VM_SSH_PRIVATE_KEY_PATH "
            "(the VMs would refuse the probe)"
        )
    return derived


def server_spec(
    settings: Settings,
    scale_set: ScaleSetSpec,
    ownership: Ownership,
    runner_name: str,
    jit_config: str,
    host_key: HostKey,
    now: datetime,
    runner: RunnerRelease,
    probe_key: str | None = None,
) -> ServerSpec:
    """Everything Nova needs to boot one runner: user_data, ownership marks, per-set overrides.

    With SSH_HOST_KEY_POLICY=accept-new the image keeps its own host key: none is injected or
    recorded, and the reconciler records the key the VM presents on first contact."""
    injected: HostKey | None = host_key if settings.ssh_host_key_policy == "pinned" else None
    bootstrap = BootstrapSpec(
        runner_name=runner_name,
        jit_config=jit_config,
        runner_version=runner.version,
        runner_download_url=runner.url_template,
        runner_sha256=runner.common_sha256,
        runner_downloads=runner.downloads,
        sentinel_dir=settings.sentinel_dir,
        labels=scale_set.effective_labels,
        ssh_host_key_private=injected.private_openssh if injected else None,
        ssh_host_key_public=injected.public_openssh if injected else None,
        vm_idle_shutdown=math.ceil(settings.effective_vm_idle_shutdown),
        vm_lifetime_shutdown=math.ceil(settings.vm_lifetime_shutdown),
        probe_public_key=probe_key,
        probe_user=settings.vm_ssh_user,
        **_bootstrap_extras(settings, scale_set),
    )
    return ServerSpec(
        name=runner_name,
        user_data=render_user_data(bootstrap, settings.cloud_init_template),
        tags=ownership.tags(),
        metadata=ownership_metadata(
            runner_name,
            scale_set.name,
            now,
            host_public_key=injected.public_openssh if injected else None,
        ),
        image=scale_set.image,
        flavor=scale_set.flavor,
    )


def _bootstrap_extras(settings: Settings, scale_set: ScaleSetSpec) -> dict[str, Any]:
    """The BootstrapSpec fields of the bootstrap extras and the job policy: a RUNNERS entry's
    value replaces the global one; runner_env's keys are added to RUNNER_ENV's."""

    def pick(name: str) -> Any:
        own = getattr(scale_set, name)
        return own if own is not None else getattr(settings, name)

    def secret(name: str) -> str:
        value = pick(name)
        return value.get_secret_value() if value is not None else ""

    def text(name: str) -> str:
        file = pick(name)
        return file.text if file is not None else ""

    policy = scale_set.job_policy
    return {
        "scale_set": scale_set.name,
        "runner_user": pick("runner_user"),
        "runner_dir": pick("runner_dir"),
        "runner_sudo": pick("runner_sudo"),
        "runner_env": {**settings.runner_env, **(scale_set.runner_env or {})},
        "vm_packages": tuple(pick("vm_packages")),
        "vm_setup_script": text("vm_setup_script"),
        "vm_http_proxy": secret("vm_http_proxy"),
        "vm_https_proxy": secret("vm_https_proxy"),
        "vm_no_proxy": pick("vm_no_proxy") or "",
        "vm_ca_certificates": text("vm_ca_certificates"),
        "job_policy": (
            JobPolicy(
                events=policy.events,
                repositories=policy.repositories,
                refs=policy.refs,
                fork_pull_requests=policy.fork_pull_requests,
            )
            if policy is not None
            else None
        ),
    }


# Placeholders `user-data` prints where a VM gets a secret of its own.
JIT_CONFIG_PLACEHOLDER = "<JIT_CONFIG>"
HOST_KEY_PLACEHOLDER = HostKey(
    private_openssh="<SSH_HOST_KEY_PRIVATE: generated for each VM>",
    public_openssh="<SSH_HOST_KEY_PUBLIC: generated for each VM>",
    fingerprint_sha256="",
)


def preview_user_data(settings: Settings, scale_set: ScaleSetSpec, runner_version: str) -> bytes:
    """The user_data a VM of `scale_set` would get, rendered as the scaler renders it, with
    placeholders for the JIT config and the VM's host key, and `runner_version` (with
    RUNNER_DOWNLOAD_URL, RUNNER_SHA256) standing for the resolved runner release."""
    release = pinned_release(
        runner_version,
        settings.runner_download_url,
        settings.runner_sha256 if settings.github_runner_version == runner_version else "",
    )
    spec = server_spec(
        settings,
        scale_set,
        Ownership(settings.effective_listener_instance_id, 0),
        runner_name(scale_set.name),
        JIT_CONFIG_PLACEHOLDER,
        HOST_KEY_PLACEHOLDER,
        datetime.now().astimezone(),
        release,
        probe_public_key(settings),
    )
    return spec.user_data


# The reconciler ----------------------------------------------------------------------------


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
            worker_processes=probe_processes(settings),
        )
    )


# "auto" never starts more workers than this: a container often sees every core of its host.
AUTO_PROBE_PROCESSES_MAX = 8


def probe_processes(settings: Settings) -> int:
    """SSH_PROBE_PROCESSES resolved: "auto" is one worker process per core this process may run
    on (the handshakes are CPU-bound Python), at most AUTO_PROBE_PROCESSES_MAX, and none on a
    single core."""
    if settings.ssh_probe_processes != "auto":
        return settings.ssh_probe_processes
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return min(cores, AUTO_PROBE_PROCESSES_MAX) if cores > 1 else 0


async def reconcile_scale_set(
    settings: Settings,
    registry: RunnerRegistrations,
    provisioner: Provisioner,
    scale_set_id: int,
    *,
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
            max_lifetime=timedelta(seconds=settings.max_runner_lifetime),
            failed_retention=timedelta(seconds=settings.failed_vm_retention),
            concurrency=settings.reconcile_concurrency,
        )
    finally:
        if own_prober and probe is not None:
            await probe.close()


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
    registry: RunnerRegistrations | None = None,
    skip: Collection[int],
) -> list[tuple[int, ReconcileReport]]:
    """One pass over the VMs of each scale set of this deployment that GitHub deleted. Their
    runners went with the set, so the table deletes them (clean_up when run-complete or powered
    off) whatever a probe would say: they are not probed. Nothing of them is adopted. Sets in
    `skip` are not asked about. `registry` is the one to act on (the client unless wrapped);
    the client itself is asked which sets exist."""
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
                settings, registry or client, provisioner, scale_set_id, probe_vms=False
            ),
        )
        for scale_set_id in gone
    ]


# The scalers -------------------------------------------------------------------------------


ScalerFactory = Callable[[ScaleSetSpec], Scaler]


def lifecycle(settings: Settings) -> Lifecycle:
    return Lifecycle(
        boot_timeout=settings.boot_timeout,
        idle_runner_timeout=settings.idle_runner_timeout,
        max_runner_lifetime=settings.max_runner_lifetime,
        deregistration_timeout=settings.runner_deregistration_timeout,
        sweep_interval=settings.vm_tracker_interval,
        keep_failed_vms=settings.keep_failed_vms,
        failed_vm_retention=settings.failed_vm_retention,
    )


def acting_on(
    provisioner: Provisioner, registry: RunnerRegistry, *, dry_run: bool
) -> tuple[Provisioner, RunnerRegistry]:
    """The cloud and GitHub as the scaler and the reconciler change them: as they are, or with
    DRY_RUN (or `reconcile --dry-run`) wrapped to log what would change."""
    if not dry_run:
        return provisioner, registry
    return DryRunProvisioner(provisioner), DryRunRegistry(registry)


def vm_scalers(
    settings: Settings,
    client: ActionsClient,
    provisioners: CloudProvisioners,
    runner_versions: RunnerVersions,
    metrics: Metrics | None = None,
) -> Callable[[ScaleSetSpec], VMScaler]:
    """One VMScaler per scale set, each on its set's provisioner (`provisioners`: one for all,
    or one per scale set name), all sharing the provisioning slots; each new VM gets the runner
    release current at its creation."""
    service_metrics = metrics or Metrics()
    usage_log = UsageLog(settings.usage_log_path) if settings.usage_log_path else None
    registry: RunnerRegistry = client
    # Each provisioner wrapped once (DRY_RUN), whichever sets share it.
    acting: dict[int, Provisioner] = {}
    for spec in settings.runners:
        own = provisioner_of(provisioners, spec.name)
        if id(own) not in acting:
            acting[id(own)], registry = acting_on(own, client, dry_run=settings.dry_run)
    acting_for = {
        spec.name: acting[id(provisioner_of(provisioners, spec.name))] for spec in settings.runners
    }
    # Deleted scale sets' VMs are looked for once on each cloud in use: sets that share a cloud
    # but not a placement have provisioners listing the same servers.
    clouds: dict[str | None, Provisioner] = {}
    for spec in settings.runners:
        clouds.setdefault(spec.cloud, acting_for[spec.name])
    slots = asyncio.Semaphore(settings.provision_concurrency)
    probe_key = probe_public_key(settings)
    # One pass at a time over deleted scale sets' VMs, however many sets this process serves.
    deleted_sets_gate = asyncio.Lock()

    def make(spec: ScaleSetSpec) -> VMScaler:
        provisioner = acting_for[spec.name]
        accounting = Accounting(
            spec.name,
            spec.flavor or settings.openstack_flavor,
            service_metrics.scale_set(spec.name, spec.min_runners, spec.max_runners),
            usage_log,
        )

        async def reconcile(scale_set_id: int) -> list[Adoption]:
            async with deleted_sets_gate:
                for cloud, cloud_provisioner in clouds.items():
                    try:
                        await reconcile_deleted_scale_sets(
                            settings,
                            client,
                            cloud_provisioner,
                            registry=registry,
                            skip={scale_set_id},
                        )
                    except (ListenerError, ProvisionerError) as exc:
                        # Not this set's own pass: that one still runs; the next start retries.
                        log.warning(
                            "reconcile_deleted_scale_sets_failed",
                            scale_set=spec.name,
                            cloud=cloud,
                            error=str(exc),
                        )
            report = await reconcile_scale_set(settings, registry, provisioner, scale_set_id)
            record_decisions(accounting.metrics, "startup", report.rows, report.orphans)
            for row in report.rows:
                if row.probe is not None:
                    accounting.metrics.probe(row.probe.outcome.value, row.probe.elapsed_seconds)
            return adoptions(report.rows)

        def server_spec_for(
            ownership: Ownership, name: str, jit: str, host_key: HostKey, now: datetime
        ) -> ServerSpec:
            return server_spec(
                settings,
                spec,
                ownership,
                name,
                jit,
                host_key,
                now,
                runner_versions.current(),
                probe_key,
            )

        return VMScaler(
            spec,
            registry,
            provisioner,
            server_spec_for,
            settings.effective_listener_instance_id,
            lifecycle(settings),
            slots,
            reconcile=reconcile if settings.enable_reconciliation else None,
            accounting=accounting,
        )

    return make
