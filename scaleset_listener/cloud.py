"""From settings to the provisioner's and the bootstrap's own configuration (composition only).

`provisioners` knows nothing of our settings; this module is where OPENSTACK_*, RUNNERS overrides
and the runner/bootstrap variables become an OpenStackConfig, a ServerSpec and a BootstrapSpec.
"""

from __future__ import annotations

from datetime import datetime

from provisioners.base import ServerSpec
from provisioners.bootstrap import BootstrapSpec, HostKey, render_user_data
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackConfig
from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.runner_versions import RunnerRelease


def missing_cloud_settings(settings: Settings) -> list[str]:
    """The settings a cloud needs that are not set (empty: the cloud is configured)."""
    missing = []
    if not settings.openstack_image and not all(spec.image for spec in settings.runners):
        missing.append("OPENSTACK_IMAGE")
    if not settings.openstack_flavor and not all(spec.flavor for spec in settings.runners):
        missing.append("OPENSTACK_FLAVOR")
    return missing


def openstack_config(settings: Settings) -> OpenStackConfig:
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
    )


def server_spec(
    settings: Settings,
    scale_set: ScaleSetSpec,
    ownership: Ownership,
    runner_name: str,
    jit_config: str,
    host_key: HostKey,
    now: datetime,
    runner: RunnerRelease,
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
