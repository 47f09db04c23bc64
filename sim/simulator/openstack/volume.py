"""Cinder v3, as far as boot-from-volume needs: the boot volume Nova creates from a block
device mapping, visible under /volume/v3/{project_id}/volumes, deleted with its server when
delete_on_termination is set."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from simulator.openstack.model import JSON, ApiError, Volume, iso_micro, utcnow
from simulator.openstack.state import AVAILABILITY_ZONE, Cloud
from simulator.openstack.web import Ctx, Reply, Route, route

if TYPE_CHECKING:
    from simulator.openstack.model import Server

MAX_MICROVERSION = "3.71"


def create_boot_volume(cloud: Cloud, server: Server, bdm: JSON) -> str | None:
    """Create the boot volume; return a build-abort reason instead when Cinder would refuse."""
    size = int(bdm["volume_size"])
    quotas = cloud.config.quotas
    usage = cloud.usage()
    if 0 <= quotas.volumes < usage["volumes"] + 1:
        return (
            f"VolumeLimitExceeded: Maximum number of volumes allowed ({quotas.volumes}) "
            "exceeded for quota 'volumes'."
        )
    if 0 <= quotas.gigabytes < usage["gigabytes"] + size:
        return (
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
            f"gigabytes quota. Requested {size}G, quota is {quotas.gigabytes}G and "
            f"{usage['gigabytes']}G has been consumed."
        )
    delete = bdm.get("delete_on_termination", False)
    volume = Volume(
        id=str(uuid.uuid4()),
        size=size,
        project_id=server.project_id,
        user_id=server.user_id,
        image_id=str(bdm["uuid"]),
        delete_on_termination=delete is True or str(delete).lower() == "true",
    )
    cloud.volumes[volume.id] = volume
    server.volume_ids.append(volume.id)
    # Nova waits for the volume to become available, then attaches it during spawn.
    cloud.schedule(cloud.config.build_delay / 4, lambda: _available(volume))
    return None


def _available(volume: Volume) -> None:
    if volume.status == "creating":
        volume.status = "available"
        volume.updated_at = utcnow()


def attach_boot_volumes(cloud: Cloud, server: Server) -> None:
    for volume_id in server.volume_ids:
        volume = cloud.volumes.get(volume_id)
        if volume is None:
            continue
        now = utcnow()
        volume.status = "in-use"
        volume.server_id = server.id
        volume.attachment_id = str(uuid.uuid4())
        volume.device = "/dev/vda"
        volume.attached_at = now
        volume.updated_at = now


def release_server_volumes(cloud: Cloud, server: Server) -> None:
    for volume_id in server.volume_ids:
        volume = cloud.volumes.get(volume_id)
        if volume is None:
            continue
        if volume.delete_on_termination:
            del cloud.volumes[volume_id]
        else:
            volume.status = "available"
            volume.server_id = None
            volume.attachment_id = None
            volume.device = None
            volume.attached_at = None
            volume.updated_at = utcnow()


def _version_doc(cloud: Cloud) -> JSON:
    return {
        "id": "v3.0",
        "status": "CURRENT",
        "version": MAX_MICROVERSION,
        "min_version": "3.0",
        "updated": "2023-08-31T00:00:00Z",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": f"{cloud.base_url}/volume/v3/"},
        ],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}
        ],
    }


def versions(ctx: Ctx) -> Reply:
    return Reply.json(300, {"versions": [_version_doc(ctx.cloud)]})


def version(ctx: Ctx) -> Reply:
    return Reply.json(200, {"versions": [_version_doc(ctx.cloud)]})


def volume_view(ctx: Ctx, volume: Volume, detail: bool = True) -> JSON:
    base = f"{ctx.base}/volume/v3/{volume.project_id}/volumes/{volume.id}"
    links = [
        {"rel": "self", "href": base},
        {"rel": "bookmark", "href": f"{ctx.base}/volume/{volume.project_id}/volumes/{volume.id}"},
    ]
    if not detail:
        return {"id": volume.id, "name": volume.name, "links": links}
    attachments: list[JSON] = []
    if volume.server_id is not None:
        attachments.append(
            {
                "id": volume.id,
                "attachment_id": volume.attachment_id,
                "volume_id": volume.id,
                "server_id": volume.server_id,
                "host_name": None,
                "device": volume.device,
                "attached_at": iso_micro(volume.attached_at),
            }
        )
    image_meta: Any = None
    if volume.image_id is not None:
        image = ctx.cloud.images.get(volume.image_id)
        image_meta = {
            "image_id": volume.image_id,
            "image_name": image.name if image else "",
            "min_disk": str(image.min_disk) if image else "0",
            "min_ram": str(image.min_ram) if image else "0",
            "disk_format": image.disk_format if image else "qcow2",
            "container_format": image.container_format if image else "bare",
            "size": str(image.size) if image else "0",
        }
    return {
        "id": volume.id,
        "name": volume.name,
        "status": volume.status,
        "size": volume.size,
        "availability_zone": AVAILABILITY_ZONE,
        "created_at": iso_micro(volume.created_at),
        "updated_at": iso_micro(volume.updated_at),
        "attachments": attachments,
        "bootable": "true" if volume.bootable else "false",
        "description": None,
        "volume_type": "__DEFAULT__",
        "volume_type_id": None,
        "snapshot_id": None,
        "source_volid": None,
        "metadata": {},
        "links": links,
        "user_id": volume.user_id,
        "encrypted": False,
        "multiattach": False,
        "replication_status": None,
        "consistencygroup_id": None,
        "group_id": None,
        "provider_id": None,
        "service_uuid": None,
        "shared_targets": True,
        "cluster_name": None,
        "consumes_quota": True,
        "os-vol-tenant-attr:tenant_id": volume.project_id,
        "volume_image_metadata": image_meta,
    }


def _volumes(ctx: Ctx) -> list[Volume]:
    found = sorted(ctx.cloud.volumes.values(), key=lambda v: v.created_at, reverse=True)
    for key in ("status", "name"):
        if key in ctx.query:
            found = [v for v in found if getattr(v, key) == ctx.query[key]]
    return found


def list_volumes(ctx: Ctx) -> Reply:
    return Reply.json(200, {"volumes": [volume_view(ctx, v, False) for v in _volumes(ctx)]})


def list_volumes_detail(ctx: Ctx) -> Reply:
    return Reply.json(200, {"volumes": [volume_view(ctx, v) for v in _volumes(ctx)]})


def _get(ctx: Ctx) -> Volume:
    volume = ctx.cloud.volumes.get(ctx.params["volume_id"])
    if volume is None:
        raise ApiError(404, f"Volume {ctx.params['volume_id']} could not be found.")
    return volume


def show_volume(ctx: Ctx) -> Reply:
    return Reply.json(200, {"volume": volume_view(ctx, _get(ctx))})


def delete_volume(ctx: Ctx) -> Reply:
    volume = _get(ctx)
    if volume.status not in ("available", "error"):
        raise ApiError(
            400,
            "Invalid volume: Volume status must be available or error or error_restoring or "
            "error_extending or error_managing and must not be migrating, attached, belong to "
            "a group, have snapshots, awaiting a transfer, or be disassociated from snapshots "
            "after volume transfer.",
        )
    del ctx.cloud.volumes[volume.id]
    return Reply.empty(202)


def routes() -> list[Route]:
    s = "volume"
    v = "/volume/v3/{project_id}"
    return [
        route("GET", "/volume", "volume.versions", versions, s, auth=False),
        route("GET", "/volume/v3", "volume.version", version, s, auth=False),
        route("GET", f"{v}/volumes", "volume.volumes", list_volumes, s),
        route("GET", f"{v}/volumes/detail", "volume.volumes", list_volumes_detail, s),
        route("GET", f"{v}/volumes/{{volume_id}}", "volume.volumes", show_volume, s),
        route("DELETE", f"{v}/volumes/{{volume_id}}", "volume.volumes", delete_volume, s),
    ]
