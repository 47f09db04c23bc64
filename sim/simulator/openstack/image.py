"""Glance v2: version discovery and read-only images (the seeded ones)."""

from __future__ import annotations

from simulator.openstack.model import JSON, ApiError, Image, iso_z
from simulator.openstack.web import Ctx, Reply, Route, route


def _versions_doc(ctx: Ctx) -> JSON:
    entries = []
    for number, status in (("2.16", "CURRENT"), ("2.15", "SUPPORTED"), ("2.9", "SUPPORTED")):
        entries.append(
            {
                "id": f"v{number}",
                "status": status,
                "links": [{"rel": "self", "href": f"{ctx.base}/image/v2/"}],
            }
        )
    return {"versions": entries}


def versions(ctx: Ctx) -> Reply:
    # Glance answers its root with 300 Multiple Choices and /versions with 200.
    status = 200 if ctx.path.rstrip("/").endswith("/versions") else 300
    return Reply.json(status, _versions_doc(ctx))


def image_view(image: Image) -> JSON:
    view: JSON = {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": image.visibility,
        "protected": False,
        "os_hidden": False,
        "checksum": image.checksum,
        "os_hash_algo": "sha512",
        "os_hash_value": image.os_hash_value,
        "owner": image.owner,
        "size": image.size,
        "virtual_size": image.size * 3,
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "created_at": iso_z(image.created_at),
        "updated_at": iso_z(image.created_at),
        "tags": [],
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
        "stores": "file",
    }
    # Glance puts custom properties at the top level of the image.
    view.update(image.properties)
    return view


def list_images(ctx: Ctx) -> Reply:
    images = sorted(ctx.cloud.images.values(), key=lambda i: (i.created_at, i.id), reverse=True)
    for key in ("name", "status", "visibility", "id", "owner"):
        if key in ctx.query:
            images = [i for i in images if getattr(i, key) == ctx.query[key]]
    if "marker" in ctx.query:
        ids = [i.id for i in images]
        if ctx.query["marker"] not in ids:
            raise ApiError(400, f"Invalid marker. Image {ctx.query['marker']} could not be found.")
        images = images[ids.index(ctx.query["marker"]) + 1 :]
    limit = 25  # Glance's limit_param_default
    if "limit" in ctx.query:
        try:
            limit = min(int(ctx.query["limit"]), 1000)
        except ValueError:
            raise ApiError(400, "limit param must be an integer") from None
    page = images[:limit]
    body: JSON = {"images": [image_view(i) for i in page], "first": "/v2/images"}
    body["schema"] = "/v2/schemas/images"
    if len(images) > limit and page:
        body["next"] = f"/v2/images?limit={limit}&marker={page[-1].id}"
    return Reply.json(200, body)


def show_image(ctx: Ctx) -> Reply:
    image = ctx.cloud.images.get(ctx.params["image_id"])
    if image is None:
        raise ApiError(404, f"No image found with ID {ctx.params['image_id']}")
    return Reply.json(200, image_view(image))


def routes() -> list[Route]:
    s = "image"
    return [
        route("GET", "/image", "image.versions", versions, s, auth=False),
        route("GET", "/image/versions", "image.versions", versions, s, auth=False),
        route("GET", "/image/v2/images", "image.images", list_images, s),
        route("GET", "/image/v2/images/{image_id}", "image.images", show_image, s),
    ]
