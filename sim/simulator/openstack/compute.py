"""Nova v2.1: versions, servers (lifecycle, tags, metadata, actions), flavors, keypairs,
availability zones, limits and quota sets.

Messages and status codes follow nova/api/openstack/compute (JSON-schema errors read
"Invalid input for field/attribute X. Value: V. REASON"; faults are {"<name>": {code, message}}).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import uuid
from typing import Any

from simulator.openstack import volume as volumes
from simulator.openstack.model import (
    JSON,
    ApiError,
    Flavor,
    Keypair,
    Server,
    iso_micro,
    iso_z,
    utcnow,
)
from simulator.openstack.state import BOOT_CONSOLE, HOST, Cloud, fingerprint
from simulator.openstack.web import Ctx, Reply, Route, route

USER_DATA_MAX = 65535
MAX_TAGS = 50
TAG_PATTERN = re.compile(r"^[^,/]*$")
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9 _.@-]+$")
# nova/api/validation/parameter_types.py `metadata`: keys and values of 1-255 and 0-255 chars.
METADATA_KEY_PATTERN = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}\Z")
# vm_states in which tags and metadata may change (nova/api/openstack/compute/server_tags.py
# and compute/api.py update_instance_metadata); BUILD is not among them, which is why 2.52
# added tags to the create request.
TAG_STATES = (
    "active",
    "paused",
    "rescued",
    "resized",
    "shelved",
    "shelved_offloaded",
    "stopped",
    "suspended",
)
METADATA_STATES = ("active", "paused", "suspended", "stopped")
# status filter values -> vm_state (nova/api/openstack/common.py)
STATUS_FILTERS = {
    "ACTIVE",
    "BUILD",
    "DELETED",
    "ERROR",
    "HARD_REBOOT",
    "MIGRATING",
    "PAUSED",
    "REBOOT",
    "RESCUE",
    "RESIZE",
    "REVERT_RESIZE",
    "SHELVED",
    "SHELVED_OFFLOADED",
    "SHUTOFF",
    "SOFT_DELETED",
    "SUSPENDED",
    "UNKNOWN",
    "VERIFY_RESIZE",
}


# ----- versions ------------------------------------------------------------------------


def _v21_doc(cloud: Cloud) -> JSON:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": cloud.config.max_microversion,
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [
            {"rel": "self", "href": f"{cloud.base_url}/compute/v2.1/"},
            {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
        ],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }


def versions(ctx: Ctx) -> Reply:
    v20 = {
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": f"{ctx.base}/compute/v2/"}],
    }
    return Reply.json(200, {"versions": [v20, _v21_doc(ctx.cloud)]})


def version(ctx: Ctx) -> Reply:
    return Reply.json(200, {"version": _v21_doc(ctx.cloud)})


# ----- helpers -------------------------------------------------------------------------


def schema_error(field: str, value: Any, reason: str) -> ApiError:
    return ApiError(400, f"Invalid input for field/attribute {field}. Value: {value}. {reason}")


def not_found(server_id: str) -> ApiError:
    return ApiError(404, f"Instance {server_id} could not be found.")


def invalid_state(action: str, server: Server, vm_states: tuple[str, ...] = ()) -> ApiError:
    """Nova checks vm_state first, then task_state, and names the one that failed."""
    if server.vm_state not in vm_states or server.task_state is None:
        attr, state = "vm_state", server.vm_state
    else:
        attr, state = "task_state", server.task_state
    return ApiError(409, f"Cannot '{action}' instance {server.id} while it is in {attr} {state}")


def get_server(ctx: Ctx) -> Server:
    server = ctx.cloud.servers.get(ctx.params["server_id"])
    if server is None:
        raise not_found(ctx.params["server_id"])
    return server


def require_version(ctx: Ctx, major: int, minor: int) -> None:
    """Nova answers a route that the requested microversion lacks with a plain 404."""
    if not ctx.at_least(major, minor):
        raise ApiError(404, "The resource could not be found.")


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def server_links(ctx: Ctx, server_id: str) -> list[JSON]:
    return [
        {"rel": "self", "href": f"{ctx.base}/compute/v2.1/servers/{server_id}"},
        {"rel": "bookmark", "href": f"{ctx.base}/compute/servers/{server_id}"},
    ]


def addresses(cloud: Cloud, server: Server) -> JSON:
    result: JSON = {}
    for port_id in server.port_ids:
        port = cloud.ports.get(port_id)
        if port is None:
            continue
        network = cloud.networks.get(port.network_id)
        entries = result.setdefault(network.name if network else port.network_id, [])
        for ip in port.fixed_ips:
            entries.append(
                {
                    "version": 4,
                    "addr": ip["ip_address"],
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                }
            )
        fip = cloud.floating_ip_of_port(port_id)
        if fip is not None:
            entries.append(
                {
                    "version": 4,
                    "addr": fip.address,
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                }
            )
    return result


def flavor_in_server(ctx: Ctx, flavor: Flavor) -> JSON:
    if not ctx.at_least(2, 47):
        return {
            "id": flavor.id,
            "links": [{"rel": "bookmark", "href": f"{ctx.base}/compute/flavors/{flavor.id}"}],
        }
    return {
        "vcpus": flavor.vcpus,
        "ram": flavor.ram,
        "disk": flavor.disk,
        "ephemeral": flavor.ephemeral,
        "swap": flavor.swap,
        "original_name": flavor.name,
        "extra_specs": dict(flavor.extra_specs),
    }


def hostname_of(name: str) -> str:
    """Nova's sanitized hostname (utils.sanitize_hostname), roughly."""
    host = re.sub(r"[ _]", "-", name.lower())
    host = re.sub(r"[^\w.-]+", "", host).strip(".-")
    return host[:63] or "server"


def server_view(ctx: Ctx, server: Server) -> JSON:
    cloud = ctx.cloud
    if server.image_id is None:
        image: Any = ""
    else:
        image = {
            "id": server.image_id,
            "links": [{"rel": "bookmark", "href": f"{ctx.base}/compute/images/{server.image_id}"}],
        }
        if ctx.at_least(2, 98):
            known = cloud.images.get(server.image_id)
            image["properties"] = dict(known.properties) if known else {}
    host_id = (
        hashlib.sha224((server.project_id + server.host).encode()).hexdigest()
        if server.host
        else ""
    )
    view: JSON = {
        "id": server.id,
        "name": server.name,
        "status": server.status,
        "tenant_id": server.project_id,
        "user_id": server.user_id,
        "metadata": dict(server.metadata),
        "hostId": host_id,
        "image": image,
        "flavor": flavor_in_server(ctx, server.flavor),
        "created": iso_z(server.created),
        "updated": iso_z(server.updated),
        "addresses": addresses(cloud, server),
        "accessIPv4": "",
        "accessIPv6": "",
        "links": server_links(ctx, server.id),
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": server.availability_zone if server.host else "",
        "config_drive": server.config_drive,
        "key_name": server.key_name,
        "OS-SRV-USG:launched_at": iso_micro(server.launched_at),
        "OS-SRV-USG:terminated_at": None,
        "OS-EXT-STS:task_state": server.task_state,
        "OS-EXT-STS:vm_state": server.vm_state,
        "OS-EXT-STS:power_state": server.power_state,
        "os-extended-volumes:volumes_attached": [
            _attached(ctx, cloud, vid) for vid in server.volume_ids if vid in cloud.volumes
        ],
    }
    if server.status in ("ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING"):
        view["progress"] = 0
    if server.security_groups:
        view["security_groups"] = [{"name": name} for name in server.security_groups]
    if server.fault is not None and server.status in ("ERROR", "DELETED"):
        fault = dict(server.fault)
        # Nova shows a 500 fault's details to admins only.
        if fault.get("code") == 500:
            fault.pop("details", None)
        view["fault"] = fault
    view.update(_versioned_fields(ctx, server))
    return view


def _versioned_fields(ctx: Ctx, server: Server) -> JSON:
    """Fields that later microversions added to the server view."""
    extra: JSON = {}
    if ctx.at_least(2, 9):
        extra["locked"] = False
    if ctx.at_least(2, 19):
        extra["description"] = server.description
    if ctx.at_least(2, 26):
        extra["tags"] = list(server.tags)
    if ctx.at_least(2, 63):
        extra["trusted_image_certificates"] = None
    if ctx.at_least(2, 71):
        extra["server_groups"] = []
    if ctx.at_least(2, 73):
        extra["locked_reason"] = None
    if ctx.at_least(2, 90):
        extra["OS-EXT-SRV-ATTR:hostname"] = hostname_of(server.name)
    if ctx.at_least(2, 96):
        extra["pinned_availability_zone"] = server.extra.get("requested_az")
    if ctx.at_least(2, 100):
        extra["scheduler_hints"] = {}
    return extra


def _attached(ctx: Ctx, cloud: Cloud, volume_id: str) -> JSON:
    entry: JSON = {"id": volume_id}
    if ctx.at_least(2, 3):
        entry["delete_on_termination"] = cloud.volumes[volume_id].delete_on_termination
    return entry


# ----- listing -------------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [t for t in value.split(",") if t]


def _filtered(ctx: Ctx) -> list[Server]:
    query = ctx.query
    servers = sorted(ctx.cloud.servers.values(), key=lambda s: (s.created, s.sequence))
    servers.reverse()  # Nova's default sort: created_at desc
    statuses = [s.upper() for s in query.getlist("status")]
    if statuses:
        if not all(s in STATUS_FILTERS for s in statuses):
            if ctx.at_least(2, 38):
                raise ApiError(400, "Invalid status value")
            return []
        servers = [s for s in servers if s.status in statuses]
    if "name" in query:
        pattern = query["name"]
        try:
            regex = re.compile(pattern)
            servers = [s for s in servers if regex.search(s.name)]
        except re.error:
            servers = [s for s in servers if pattern in s.name]
    if "ip" in query:
        try:
            ip_regex = re.compile(query["ip"])
        except re.error:
            ip_regex = re.compile(re.escape(query["ip"]))
        servers = [
            s
            for s in servers
            if any(ip_regex.search(a["addr"]) for v in addresses(ctx.cloud, s).values() for a in v)
        ]
    for key, attr in (("image", "image_id"), ("key_name", "key_name"), ("uuid", "id")):
        if key in query:
            servers = [s for s in servers if getattr(s, attr) == query[key]]
    if "flavor" in query:
        servers = [s for s in servers if s.flavor.id == query["flavor"]]
    # Tag filters exist from 2.26; below that Nova drops them like any unknown parameter.
    # (`metadata` is always dropped: Nova ignores it as a "joined table" parameter.)
    if ctx.at_least(2, 26):
        for key in ("tags", "tags-any", "not-tags", "not-tags-any"):
            if key in query:
                wanted = set(_split(query[key]))
                servers = [s for s in servers if _tags_match(key, wanted, set(s.tags))]
    return servers


def _tags_match(key: str, wanted: set[str], have: set[str]) -> bool:
    if key == "tags":
        return wanted <= have
    if key == "tags-any":
        return bool(wanted & have)
    if key == "not-tags":
        return not wanted <= have
    return not wanted & have


def _paginate(ctx: Ctx, servers: list[Server], path: str) -> tuple[list[Server], list[JSON]]:
    if "marker" in ctx.query:
        marker = ctx.query["marker"]
        ids = [s.id for s in servers]
        if marker not in ids:
            raise ApiError(400, f"marker [{marker}] not found")
        servers = servers[ids.index(marker) + 1 :]
    limit = 1000
    if "limit" in ctx.query:
        try:
            limit = int(ctx.query["limit"])
        except ValueError:
            raise schema_error("limit", ctx.query["limit"], "Invalid limit") from None
        if limit < 0:
            raise ApiError(400, "limit param must be positive")
        limit = min(limit, 1000)
    page = servers[:limit]
    links: list[JSON] = []
    if len(servers) > limit and page:
        links.append(
            {
                "rel": "next",
                "href": f"{ctx.base}/compute/v2.1/{path}?limit={limit}&marker={page[-1].id}",
            }
        )
    return page, links


def list_servers(ctx: Ctx) -> Reply:
    page, links = _paginate(ctx, _filtered(ctx), "servers")
    body: JSON = {
        "servers": [{"id": s.id, "name": s.name, "links": server_links(ctx, s.id)} for s in page]
    }
    if links:
        body["servers_links"] = links
    return Reply.json(200, body)


def list_servers_detail(ctx: Ctx) -> Reply:
    page, links = _paginate(ctx, _filtered(ctx), "servers/detail")
    body: JSON = {"servers": [server_view(ctx, s) for s in page]}
    if links:
        body["servers_links"] = links
    return Reply.json(200, body)


def show_server(ctx: Ctx) -> Reply:
    return Reply.json(200, {"server": server_view(ctx, get_server(ctx))})


def update_server(ctx: Ctx) -> Reply:
    server = get_server(ctx)
    body = ctx.json_object("server")
    allowed = {"name", "description"} if ctx.at_least(2, 19) else {"name"}
    for key in body:
        if key not in allowed and key not in ("accessIPv4", "accessIPv6", "OS-DCF:diskConfig"):
            raise schema_error(
                "server", body, f"Additional properties are not allowed ('{key}' was unexpected)"
            )
    if "name" in body:
        _check_name(body["name"])
        server.name = body["name"]
    if "description" in body:
        server.description = body["description"]
    server.updated = utcnow()
    return Reply.json(200, {"server": server_view(ctx, server)})


# ----- create --------------------------------------------------------------------------


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise schema_error("name", name, f"{name!r} is not of type 'string'")
    if not 1 <= len(name) <= 255:
        reason = "is too short" if not name else "is too long"
        raise schema_error("name", name, f"{name!r} {reason}")
    if name != name.strip():
        raise schema_error("name", name, f"{name!r} does not match '^(?! )[\\x20-\\x7e]*[^ ]$'")


def check_tags(tags: Any, field: str = "tags") -> list[str]:
    if not isinstance(tags, list):
        raise schema_error(field, tags, f"{tags!r} is not of type 'array'")
    if len(tags) > MAX_TAGS:
        raise schema_error(field, tags, f"{tags!r} is too long")
    for index, tag in enumerate(tags):
        # Nova names the failing element by the last part of its JSON path: the list index.
        check_tag(tag, str(index))
    return list(dict.fromkeys(tags))


def check_tag(tag: Any, field: str = "tags") -> None:
    if not isinstance(tag, str):
        raise schema_error(field, tag, f"{tag!r} is not of type 'string'")
    if not 1 <= len(tag) <= 60:
        raise schema_error(field, tag, f"{tag!r} is {'too short' if not tag else 'too long'}")
    if not TAG_PATTERN.match(tag):
        raise schema_error(field, tag, f"{tag!r} does not match '^[^,/]*$'")


def check_metadata(metadata: Any, limit: int, field: str = "metadata") -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise schema_error(field, metadata, f"{metadata!r} is not of type 'object'")
    for key, value in metadata.items():
        if not METADATA_KEY_PATTERN.match(key):
            raise schema_error(
                field,
                metadata,
                f"{key!r} does not match any of the regexes: '^[a-zA-Z0-9-_:. ]{{1,255}}$'",
            )
        if not isinstance(value, str):
            raise schema_error(key, value, f"{value!r} is not of type 'string'")
        if len(value) > 255:
            raise schema_error(key, value, f"{value!r} is too long")
    if limit >= 0 and len(metadata) > limit:
        raise ApiError(403, f"Maximum number of metadata items exceeds {limit}")
    return dict(metadata)


def _check_user_data(user_data: Any) -> str | None:
    if user_data is None:
        return None
    if not isinstance(user_data, str):
        raise schema_error("user_data", user_data, f"{user_data!r} is not of type 'string'")
    if len(user_data) > USER_DATA_MAX:
        raise schema_error("user_data", user_data, f"{user_data!r} is too long")
    try:
        base64.b64decode(user_data, validate=True)
    except (binascii.Error, ValueError):
        raise schema_error("user_data", user_data, f"{user_data!r} is not a 'base64'") from None
    return user_data


def _networks(ctx: Ctx, body: JSON) -> list[JSON] | None:
    """Requested networks as [{"uuid"}|{"port"}], or None for none."""
    cloud = ctx.cloud
    if "networks" not in body:
        if ctx.at_least(2, 37):
            raise schema_error("server", body, "'networks' is a required property")
        return _auto_network(cloud)
    requested = body["networks"]
    if isinstance(requested, str):
        if not ctx.at_least(2, 37):
            raise schema_error("networks", requested, f"{requested!r} is not of type 'array'")
        if requested == "none":
            return None
        if requested == "auto":
            return _auto_network(cloud)
        raise schema_error("networks", requested, f"{requested!r} is not one of ['none', 'auto']")
    if not isinstance(requested, list):
        raise schema_error("networks", requested, f"{requested!r} is not of type 'array'")
    result = [_network_request(cloud, entry) for entry in requested]
    return result


def _network_request(cloud: Cloud, entry: Any) -> JSON:
    if not isinstance(entry, dict):
        raise schema_error("networks", entry, f"{entry!r} is not of type 'object'")
    if entry.get("port") is not None:
        port = cloud.ports.get(str(entry["port"]))
        if port is None:
            raise ApiError(400, f"Port id {entry['port']} could not be found.")
        if port.device_id:
            raise ApiError(409, f"Port {port.id} is still in use.")
        return {"port": port.id}
    net_id = entry.get("uuid")
    if not is_uuid(net_id):
        raise schema_error("uuid", net_id, f"{net_id!r} is not a 'uuid'")
    network = cloud.network_by_id(str(net_id))
    if network is None or (network.external and not network.shared):
        raise ApiError(400, f"Network {net_id} could not be found.")
    return {"uuid": network.id}


def _auto_network(cloud: Cloud) -> list[JSON]:
    candidates = [
        n for n in cloud.networks.values() if n.project_id == cloud.project.id and not n.external
    ]
    if len(candidates) > 1:
        raise ApiError(
            409, "Multiple possible networks found, use a Network ID to be more specific."
        )
    if not candidates:
        raise ApiError(400, "Unable to automatically allocate a network for project")
    return [{"uuid": candidates[0].id}]


def _boot_volume(ctx: Ctx, body: JSON) -> JSON | None:
    bdms = body.get("block_device_mapping_v2")
    if bdms is None:
        return None
    if not isinstance(bdms, list):
        raise schema_error("block_device_mapping_v2", bdms, f"{bdms!r} is not of type 'array'")
    boot: JSON | None = None
    for bdm in bdms:
        if not isinstance(bdm, dict):
            raise schema_error("block_device_mapping_v2", bdm, f"{bdm!r} is not of type 'object'")
        source = bdm.get("source_type")
        dest = bdm.get("destination_type", "volume" if source == "volume" else "local")
        if source not in ("image", "volume", "snapshot", "blank"):
            raise schema_error(
                "source_type",
                source,
                f"{source!r} is not one of ['volume', 'image', 'snapshot', 'blank']",
            )
        index = bdm.get("boot_index")
        if str(index) == "0":
            boot = bdm
        if source == "image" and dest == "volume":
            size = bdm.get("volume_size")
            if not size or int(size) <= 0:
                raise ApiError(
                    400,
                    "Block Device Mapping is Invalid: Images with destination_type 'volume' "
                    "need to have a non-zero size specified",
                )
        elif not (source == "image" and dest == "local"):
            # Only what boot-from-volume needs is modelled.
            raise ApiError(
                400,
                "Block Device Mapping is Invalid: the simulator supports image -> volume "
                "mappings only",
            )
    return boot


def create_server(ctx: Ctx) -> Reply:  # noqa: C901 - one validation pass, in Nova's order
    cloud = ctx.cloud
    body = ctx.json_object("server")
    token = ctx.require_token()
    if "tags" in body and not ctx.at_least(2, 52):
        raise schema_error(
            "server", body, "Additional properties are not allowed ('tags' was unexpected)"
        )
    if "name" not in body:
        raise schema_error("server", body, "'name' is a required property")
    if "flavorRef" not in body:
        raise schema_error("server", body, "'flavorRef' is a required property")
    _check_name(body["name"])
    user_data = _check_user_data(body.get("user_data"))
    metadata = check_metadata(body.get("metadata", {}), cloud.config.quotas.metadata_items)
    tags = check_tags(body["tags"]) if "tags" in body else []
    sg_refs = body.get("security_groups", [{"name": "default"}])
    if not isinstance(sg_refs, list) or not all(
        isinstance(g, dict) and isinstance(g.get("name"), str) for g in sg_refs
    ):
        raise schema_error(
            "security_groups", sg_refs, "is not valid under any of the given schemas"
        )
    min_count, max_count = int(body.get("min_count", 1)), int(body.get("max_count", 1))
    if min_count < 1 or max_count < min_count:
        raise ApiError(400, "min_count must be <= max_count")
    boot = _boot_volume(ctx, body)
    networks = _networks(ctx, body)

    flavor = cloud.find_flavor(str(body["flavorRef"]))
    if flavor is None:
        raise ApiError(400, f"Flavor {body['flavorRef']} could not be found.")
    image_ref = body.get("imageRef") or None
    boot_image_id: str | None = None
    if (
        boot is not None
        and boot.get("source_type") == "image"
        and boot.get("destination_type") == "volume"
    ):
        boot_image_id = str(boot.get("uuid"))
        image_ref = None
    elif image_ref is None:
        raise ApiError(400, "Missing imageRef attribute")
    image_id = image_ref or boot_image_id
    assert image_id is not None
    image = cloud.images.get(str(image_id).rstrip("/").rsplit("/", 1)[-1])
    if image is None:
        # Measured on Nova 34 (tests/real_openstack/README.md).
        raise ApiError(400, "Can not find requested image")
    if image.status != "active":
        raise ApiError(400, f"Image {image.id} is not active.")
    gib = 1024**3
    if boot_image_id is not None:
        assert boot is not None
        volume_size = int(boot["volume_size"])
        if volume_size < image.min_disk:
            raise ApiError(
                400,
                "Volume is smaller than the minimum size specified in image metadata. "
                f"Volume size is {volume_size * gib} bytes, minimum size is "
                f"{image.min_disk * gib} bytes.",
            )
    elif flavor.disk and flavor.disk < image.min_disk:
        raise ApiError(
            400,
            "Flavor's disk is smaller than the minimum size specified in image metadata. "
            f"Flavor disk is {flavor.disk * gib} bytes, minimum size is "
            f"{image.min_disk * gib} bytes.",
        )
    key_name = body.get("key_name")
    if key_name is not None and key_name not in cloud.keypairs:
        raise ApiError(400, "Invalid key_name provided.")
    az = body.get("availability_zone")
    if az is not None and az.split(":", 1)[0] != "nova":
        raise ApiError(400, "The requested availability zone is not available")
    sg_names = [g["name"] for g in sg_refs]
    known_groups = {g.name for g in cloud.security_groups.values()} | set(cloud.security_groups)
    for name in sg_names:
        if name not in known_groups:
            raise ApiError(400, f"Unable to find security_group with name or id '{name}'")
    sg_names = [
        cloud.security_groups[n].name if n in cloud.security_groups else n for n in sg_names
    ]

    count = _check_quota(cloud, flavor, min_count, max_count)
    servers = []
    for index in range(count):
        name = body["name"] if count == 1 else f"{body['name']}-{index + 1}"
        server = Server(
            id=str(uuid.uuid4()),
            name=name,
            project_id=token.project.id if token.project else cloud.project.id,
            user_id=token.user.id,
            flavor=flavor,
            image_id=None if boot_image_id else image.id,
            key_name=key_name,
            availability_zone="nova",
            user_data=user_data,
            metadata=dict(metadata),
            tags=list(tags),
            security_groups=list(dict.fromkeys(sg_names)),
            networks=[],
            port_ids=[],
            volume_ids=[],
            description=body.get("description"),
            config_drive="True" if body.get("config_drive") else "",
            admin_pass=secrets.token_urlsafe(9),
            sequence=cloud.next_sequence(),
            instance_number=cloud.next_instance_number(),
        )
        if az is not None:
            server.extra["requested_az"] = az
        cloud.servers[server.id] = server
        _start_build(cloud, server, networks, boot)
        servers.append(server)
    first = servers[0]
    response: JSON = {
        "id": first.id,
        "links": server_links(ctx, first.id),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": n} for n in first.security_groups],
        "adminPass": first.admin_pass,
    }
    location = f"{ctx.base}/compute/v2.1/servers/{first.id}"
    return Reply.json(202, {"server": response}, {"Location": location})


def _check_quota(cloud: Cloud, flavor: Flavor, min_count: int, max_count: int) -> int:
    """How many servers fit (max_count if possible), or Nova's 403 when not even min_count."""
    forced = cloud.faults.take("quota_exceeded")
    quotas = cloud.config.quotas
    usage = cloud.usage()
    limits = {"instances": quotas.instances, "cores": quotas.cores, "ram": quotas.ram}
    per = {"instances": 1, "cores": flavor.vcpus, "ram": flavor.ram}
    if forced is not None:
        # The fault pretends the named quota is exactly used up.
        limits[forced.resource] = usage[forced.resource]
    for count in range(max_count, min_count - 1, -1):
        if all(
            limits[r] < 0 or usage[r] + per[r] * count <= limits[r]
            for r in ("instances", "cores", "ram")
        ):
            return count
    overs = sorted(r for r in per if limits[r] >= 0 and usage[r] + per[r] * min_count > limits[r])
    requested = ", ".join(str(per[r] * min_count) for r in overs)
    used = ", ".join(str(usage[r]) for r in overs)
    allowed = ", ".join(str(limits[r]) for r in overs)
    names = ", ".join(overs)
    raise ApiError(
        403,
        f"Quota exceeded for {names}: Requested {requested}, but already used {used} of "
        f"{allowed} {names}",
    )


def _start_build(
    cloud: Cloud, server: Server, networks: list[JSON] | None, boot: JSON | None
) -> None:
    planned = cloud.faults.take("server_error")
    if planned is not None:
        # Like NoValidHost: the scheduler fails, no port or volume is ever made.
        server.planned_fault = {
            "code": planned.code,
            "message": planned.message or "No valid host was found. ",
            "details": "Traceback (most recent call last): simulated scheduling failure",
        }
    elif cloud.faults.take("never_active") is not None:
        server.never_active = True
    volume_fault: str | None = None
    if planned is None:
        for request in networks or []:
            if "port" in request:
                port = cloud.ports[request["port"]]
                port.device_id = server.id
                port.device_owner = "compute:nova"
            else:
                port = cloud.allocate_port(
                    server, cloud.networks[request["uuid"]], server.security_groups
                )
            server.port_ids.append(port.id)
            if port.network_id not in server.networks:
                server.networks.append(port.network_id)
        if boot is not None:
            volume_fault = volumes.create_boot_volume(cloud, server, boot)
    build_delay = cloud.config.build_delay
    cloud.schedule(build_delay / 2, lambda: _scheduled(cloud, server))
    cloud.schedule(build_delay, lambda: _finish_build(cloud, server, volume_fault))


def _alive(cloud: Cloud, server: Server) -> bool:
    return cloud.servers.get(server.id) is server and not server.deleting


def _scheduled(cloud: Cloud, server: Server) -> None:
    if not _alive(cloud, server) or server.status != "BUILD" or server.planned_fault:
        return
    server.host = HOST
    server.task_state = "spawning"
    server.updated = utcnow()


def _finish_build(cloud: Cloud, server: Server, volume_fault: str | None) -> None:
    if not _alive(cloud, server) or server.status != "BUILD":
        return
    if server.planned_fault is not None:
        set_error(server, server.planned_fault)
        return
    if volume_fault is not None:
        for port_id in list(server.port_ids):
            cloud.release_port(port_id)
        server.port_ids.clear()
        set_error(
            server,
            {
                "code": 500,
                "message": f"Build of instance {server.id} aborted: {volume_fault}",
                "details": "BuildAbortException",
            },
        )
        return
    if server.never_active:
        return
    now = utcnow()
    server.host = HOST
    server.status, server.vm_state, server.task_state, server.power_state = (
        "ACTIVE",
        "active",
        None,
        1,
    )
    server.launched_at = now
    server.updated = now
    server.console.extend(BOOT_CONSOLE)
    server.console.append(f"{hostname_of(server.name)} login: ")
    for port_id in server.port_ids:
        port = cloud.ports.get(port_id)
        if port is not None:
            port.status = "ACTIVE"
            port.updated_at = now
    volumes.attach_boot_volumes(cloud, server)


def set_error(server: Server, fault: JSON) -> None:
    now = utcnow()
    server.status, server.vm_state, server.task_state, server.power_state = (
        "ERROR",
        "error",
        None,
        0,
    )
    server.fault = {**fault, "created": iso_z(now)}
    server.updated = now


# ----- delete --------------------------------------------------------------------------


def delete_server(ctx: Ctx) -> Reply:
    cloud = ctx.cloud
    server = get_server(ctx)
    if server.deleting:
        return Reply.empty(204)
    failing = cloud.faults.take("delete_error")
    server.deleting = True
    server.task_state = "deleting"
    server.updated = utcnow()
    if failing is not None:
        message = failing.message or f"Failed to terminate instance {server.id}"

        def fail() -> None:
            if cloud.servers.get(server.id) is server:
                server.deleting = False
                set_error(server, {"code": 500, "message": message, "details": "simulated"})

        cloud.schedule(cloud.config.delete_delay, fail)
    else:
        cloud.schedule(cloud.config.delete_delay, lambda: _remove(cloud, server))
    return Reply.empty(204)


def _remove(cloud: Cloud, server: Server) -> None:
    if cloud.servers.get(server.id) is not server:
        return
    del cloud.servers[server.id]
    for port_id in server.port_ids:
        cloud.release_port(port_id)
    volumes.release_server_volumes(cloud, server)


# ----- actions -------------------------------------------------------------------------


def action(ctx: Ctx) -> Reply:
    server = get_server(ctx)
    body = ctx.json_object()
    if len(body) != 1:
        raise ApiError(400, "There is no such action: " + ",".join(body) if body else "")
    ((name, args),) = body.items()
    if name == "os-getConsoleOutput":
        return _console_output(ctx, server, args)
    if name == "os-stop":
        return _power(ctx, server, "stop", ("active", "error"), "powering-off", "SHUTOFF")
    if name == "os-start":
        return _power(ctx, server, "start", ("stopped",), "powering-on", "ACTIVE")
    if name == "reboot":
        return _reboot(ctx, server, args)
    raise ApiError(400, f"There is no such action: {name}")


def _reboot(ctx: Ctx, server: Server, args: Any) -> Reply:
    kind = args.get("type", "SOFT") if isinstance(args, dict) else "SOFT"
    kind = str(kind).upper()
    if kind not in ("SOFT", "HARD"):
        raise schema_error(
            "type", kind, f"{kind!r} is not one of ['HARD', 'Hard', 'hard', 'SOFT', 'Soft', 'soft']"
        )
    if kind == "SOFT":
        return _power(ctx, server, "reboot", ("active",), "rebooting", "ACTIVE", interim="REBOOT")
    states = ("active", "stopped", "error")
    return _power(
        ctx, server, "reboot", states, "reboot_started_hard", "ACTIVE", interim="HARD_REBOOT"
    )


def _power(
    ctx: Ctx,
    server: Server,
    verb: str,
    from_states: tuple[str, ...],
    task_state: str,
    target: str,
    interim: str | None = None,
) -> Reply:
    if server.task_state is not None or server.vm_state not in from_states:
        raise invalid_state(verb, server, from_states)
    cloud = ctx.cloud
    server.task_state = task_state
    if interim is not None:
        server.status = interim
    server.updated = utcnow()

    def done() -> None:
        if not _alive(cloud, server) or server.task_state != task_state:
            return
        server.task_state = None
        server.status = target
        if target == "SHUTOFF":
            server.vm_state, server.power_state = "stopped", 4
        else:
            server.vm_state, server.power_state = "active", 1
            server.fault = None
        server.updated = utcnow()

    cloud.schedule(cloud.config.power_delay, done)
    return Reply.empty(202)


def _console_output(ctx: Ctx, server: Server, args: Any) -> Reply:
    length: Any = args.get("length") if isinstance(args, dict) else None
    if length is not None:
        if isinstance(length, bool) or not re.fullmatch(r"-?[0-9]+", str(length)):
            raise schema_error(
                "length", length, f"{length!r} is not valid under any of the given schemas"
            )
        length = int(length)
        if length < -1:
            raise schema_error("length", length, f"{length} is less than the minimum of -1")
        if length == -1:
            length = None
    if server.task_state == "deleting":
        raise invalid_state("get_console_output", server, (server.vm_state,))
    if server.host is None:
        raise ApiError(409, f"Instance {server.id} is not ready")
    # Like the fake driver's text: lines joined by newlines, none after the last one.
    raw = "\n".join(server.console)
    if length is not None:
        # nova.compute.manager._tail_log: the last `length` pieces split on newlines.
        raw = "" if length == 0 else "\n".join(raw.split("\n")[-length:])
    output = raw.encode("utf-8").decode("ascii", "replace")
    return Reply.json(200, {"output": output})


# ----- tags ----------------------------------------------------------------------------


def _tag_target(ctx: Ctx, verb: str) -> Server:
    require_version(ctx, 2, 26)
    server = get_server(ctx)
    if verb and (server.vm_state not in TAG_STATES or server.task_state == "deleting"):
        raise invalid_state(verb, server, TAG_STATES)
    return server


def list_tags(ctx: Ctx) -> Reply:
    return Reply.json(200, {"tags": list(_tag_target(ctx, "").tags)})


def replace_tags(ctx: Ctx) -> Reply:
    server = _tag_target(ctx, "update tags")
    body = ctx.json_object()
    if "tags" not in body:
        raise schema_error("tags", body, "'tags' is a required property")
    server.tags = check_tags(body["tags"])
    server.updated = utcnow()
    return Reply.json(200, {"tags": list(server.tags)})


def delete_tags(ctx: Ctx) -> Reply:
    server = _tag_target(ctx, "delete tags")
    server.tags = []
    return Reply.empty(204)


def check_server_tag(ctx: Ctx) -> Reply:
    server = _tag_target(ctx, "")
    tag = ctx.params["tag"]
    if tag not in server.tags:
        raise ApiError(404, f"Instance {server.id} has no tag '{tag}'")
    return Reply.empty(204)


def add_tag(ctx: Ctx) -> Reply:
    server = _tag_target(ctx, "update tag")
    tag = ctx.params["tag"]
    check_tag(tag, "tag")
    if tag in server.tags:
        return Reply.empty(204)
    if len(server.tags) >= MAX_TAGS:
        raise ApiError(400, f"The number of tags exceeded the per-server limit {MAX_TAGS}")
    server.tags.append(tag)
    location = f"{ctx.base}/compute/v2.1/servers/{server.id}/tags/{tag}"
    return Reply.empty(201, {"Location": location})


def delete_tag(ctx: Ctx) -> Reply:
    server = _tag_target(ctx, "delete tag")
    tag = ctx.params["tag"]
    if tag not in server.tags:
        raise ApiError(404, f"Instance {server.id} has no tag '{tag}'")
    server.tags.remove(tag)
    return Reply.empty(204)


# ----- metadata ------------------------------------------------------------------------


def _metadata_target(ctx: Ctx, verb: str) -> Server:
    server = get_server(ctx)
    if verb and (server.vm_state not in METADATA_STATES or server.task_state is not None):
        raise invalid_state(verb, server, METADATA_STATES)
    return server


def show_metadata(ctx: Ctx) -> Reply:
    return Reply.json(200, {"metadata": dict(_metadata_target(ctx, "").metadata)})


def update_metadata(ctx: Ctx) -> Reply:
    """POST merges, PUT replaces; both answer with the whole resulting set."""
    server = _metadata_target(ctx, "update metadata")
    body = ctx.json_object()
    if "metadata" not in body:
        raise schema_error("metadata", body, "'metadata' is a required property")
    limit = ctx.cloud.config.quotas.metadata_items
    changes = check_metadata(body["metadata"], -1)
    merged = changes if ctx.method == "PUT" else {**server.metadata, **changes}
    check_metadata(merged, limit)
    server.metadata = merged
    server.updated = utcnow()
    return Reply.json(200, {"metadata": dict(server.metadata)})


def show_metadata_item(ctx: Ctx) -> Reply:
    server = _metadata_target(ctx, "")
    key = ctx.params["key"]
    if key not in server.metadata:
        raise ApiError(404, "Metadata item was not found")
    return Reply.json(200, {"meta": {key: server.metadata[key]}})


def set_metadata_item(ctx: Ctx) -> Reply:
    server = _metadata_target(ctx, "update metadata")
    key = ctx.params["key"]
    body = ctx.json_object()
    meta = body.get("meta")
    if not isinstance(meta, dict) or len(meta) != 1:
        raise schema_error("meta", meta, "is not valid under any of the given schemas")
    if key not in meta:
        raise ApiError(400, "Request body and URI mismatch")
    merged = {**server.metadata, **check_metadata(meta, -1, "meta")}
    check_metadata(merged, ctx.cloud.config.quotas.metadata_items)
    server.metadata = merged
    return Reply.json(200, {"meta": {key: meta[key]}})


def delete_metadata_item(ctx: Ctx) -> Reply:
    server = _metadata_target(ctx, "delete metadata")
    key = ctx.params["key"]
    if key not in server.metadata:
        raise ApiError(404, "Metadata item was not found")
    del server.metadata[key]
    return Reply.empty(204)


def server_ips(ctx: Ctx) -> Reply:
    return Reply.json(200, {"addresses": addresses(ctx.cloud, get_server(ctx))})


# ----- flavors -------------------------------------------------------------------------


def _flavor_links(ctx: Ctx, flavor: Flavor) -> list[JSON]:
    return [
        {"rel": "self", "href": f"{ctx.base}/compute/v2.1/flavors/{flavor.id}"},
        {"rel": "bookmark", "href": f"{ctx.base}/compute/flavors/{flavor.id}"},
    ]


def flavor_view(ctx: Ctx, flavor: Flavor, detail: bool) -> JSON:
    view: JSON = {"id": flavor.id, "name": flavor.name, "links": _flavor_links(ctx, flavor)}
    if ctx.at_least(2, 55):
        view["description"] = flavor.description
    if not detail:
        return view
    view.update(
        {
            "ram": flavor.ram,
            "disk": flavor.disk,
            "vcpus": flavor.vcpus,
            "OS-FLV-EXT-DATA:ephemeral": flavor.ephemeral,
            "OS-FLV-DISABLED:disabled": False,
            "swap": flavor.swap if ctx.at_least(2, 75) else (flavor.swap or ""),
            "rxtx_factor": 1.0,
            "os-flavor-access:is_public": flavor.is_public,
        }
    )
    if ctx.at_least(2, 61):
        view["extra_specs"] = dict(flavor.extra_specs)
    return view


def _flavors(ctx: Ctx) -> list[Flavor]:
    flavors = sorted(ctx.cloud.flavors.values(), key=lambda f: f.id)
    if "minDisk" in ctx.query:
        flavors = [f for f in flavors if f.disk >= int(ctx.query["minDisk"])]
    if "minRam" in ctx.query:
        flavors = [f for f in flavors if f.ram >= int(ctx.query["minRam"])]
    return flavors


def list_flavors(ctx: Ctx) -> Reply:
    return Reply.json(200, {"flavors": [flavor_view(ctx, f, False) for f in _flavors(ctx)]})


def list_flavors_detail(ctx: Ctx) -> Reply:
    return Reply.json(200, {"flavors": [flavor_view(ctx, f, True) for f in _flavors(ctx)]})


def _get_flavor(ctx: Ctx) -> Flavor:
    flavor = ctx.cloud.flavors.get(ctx.params["flavor_id"])
    if flavor is None:
        raise ApiError(404, f"Flavor {ctx.params['flavor_id']} could not be found.")
    return flavor


def show_flavor(ctx: Ctx) -> Reply:
    return Reply.json(200, {"flavor": flavor_view(ctx, _get_flavor(ctx), True)})


def flavor_extra_specs(ctx: Ctx) -> Reply:
    return Reply.json(200, {"extra_specs": dict(_get_flavor(ctx).extra_specs)})


# ----- keypairs ------------------------------------------------------------------------


def _keypair_view(ctx: Ctx, name: str, full: bool) -> JSON:
    kp = ctx.cloud.keypairs[name]
    view: JSON = {"name": kp.name, "public_key": kp.public_key, "fingerprint": kp.fingerprint}
    if ctx.at_least(2, 2):
        view["type"] = kp.type
    if full:
        view.update(
            {
                "user_id": kp.user_id,
                "deleted": False,
                "created_at": iso_micro(kp.created_at),
                "updated_at": None,
                "deleted_at": None,
                "id": kp.id,
            }
        )
    return view


def list_keypairs(ctx: Ctx) -> Reply:
    return Reply.json(
        200,
        {"keypairs": [{"keypair": _keypair_view(ctx, n, False)} for n in ctx.cloud.keypairs]},
    )


def _get_keypair_name(ctx: Ctx) -> str:
    name = ctx.params["name"]
    if name not in ctx.cloud.keypairs:
        raise ApiError(404, f"Keypair {name} not found for user {ctx.require_token().user.id}")
    return name


def show_keypair(ctx: Ctx) -> Reply:
    return Reply.json(200, {"keypair": _keypair_view(ctx, _get_keypair_name(ctx), True)})


def create_keypair(ctx: Ctx) -> Reply:
    cloud = ctx.cloud
    body = ctx.json_object("keypair")
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or not NAME_PATTERN.match(name):
        raise schema_error("name", name, f"{name!r} does not match '^[a-zA-Z0-9 _.@-]+$'")
    public_key = body.get("public_key")
    private_key: str | None = None
    if public_key is None:
        if ctx.at_least(2, 92):
            raise schema_error("keypair", body, "'public_key' is a required property")
        blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + secrets.token_bytes(36))
        public_key = f"ssh-ed25519 {blob.decode()} Generated-by-Nova"
        private_key = (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nsimulated\n-----END OPENSSH PRIVATE KEY-----\n"
        )
    if name in cloud.keypairs:
        raise ApiError(409, f"Key pair '{name}' already exists.")
    limit = cloud.config.quotas.key_pairs
    if 0 <= limit <= len(cloud.keypairs):
        raise ApiError(403, "Quota exceeded, too many key pairs.")
    kp_type = body.get("type", "ssh") if ctx.at_least(2, 2) else "ssh"
    cloud.keypairs[name] = Keypair(
        id=len(cloud.keypairs) + 100,
        name=name,
        public_key=public_key,
        fingerprint=fingerprint(public_key),
        type=kp_type,
        user_id=ctx.require_token().user.id,
    )
    view = _keypair_view(ctx, name, False)
    view["user_id"] = ctx.require_token().user.id
    if private_key is not None:
        view["private_key"] = private_key
    return Reply.json(201 if ctx.at_least(2, 2) else 200, {"keypair": view})


def delete_keypair(ctx: Ctx) -> Reply:
    del ctx.cloud.keypairs[_get_keypair_name(ctx)]
    return Reply.empty(204 if ctx.at_least(2, 2) else 202)


# ----- zones, limits, quotas -----------------------------------------------------------


def availability_zones(ctx: Ctx) -> Reply:
    return Reply.json(
        200,
        {
            "availabilityZoneInfo": [
                {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}
            ]
        },
    )


def limits(ctx: Ctx) -> Reply:
    # As Nova 34 answers (tests/real_openstack/README.md): -1 is unlimited, usage counts every
    # server of the project from its create request until it is gone.
    quotas = ctx.cloud.config.quotas
    usage = ctx.cloud.usage()
    absolute: JSON = {
        "maxServerMeta": quotas.metadata_items,
        "maxServerGroupMembers": 10,
        "maxServerGroups": 10,
        "maxTotalCores": quotas.cores,
        "maxTotalInstances": quotas.instances,
        "maxTotalKeypairs": quotas.key_pairs,
        "maxTotalRAMSize": quotas.ram,
        "totalCoresUsed": usage["cores"],
        "totalInstancesUsed": usage["instances"],
        "totalRAMUsed": usage["ram"],
        "totalServerGroupsUsed": 0,
    }
    if not ctx.at_least(2, 57):
        absolute.update({"maxPersonality": 5, "maxPersonalitySize": 10240})
    if not ctx.at_least(2, 39):
        absolute["maxImageMeta"] = 128
    if not ctx.at_least(2, 36):
        # The nova-network quotas, unlimited since Neutron owns them.
        absolute.update(
            {
                "maxSecurityGroupRules": -1,
                "maxSecurityGroups": -1,
                "maxTotalFloatingIps": -1,
                "totalFloatingIpsUsed": 0,
                "totalSecurityGroupsUsed": 0,
            }
        )
    return Reply.json(200, {"limits": {"rate": [], "absolute": absolute}})


def quota_set(ctx: Ctx) -> Reply:
    quotas = ctx.cloud.config.quotas
    usage = ctx.cloud.usage()
    values = {
        "cores": quotas.cores,
        "instances": quotas.instances,
        "ram": quotas.ram,
        "key_pairs": quotas.key_pairs,
        "metadata_items": quotas.metadata_items,
        "server_groups": 10,
        "server_group_members": 10,
    }
    body: JSON = {"id": ctx.params["project_id"]}
    if ctx.path.rstrip("/").endswith("/detail"):
        for key, limit in values.items():
            body[key] = {"in_use": usage.get(key, 0), "limit": limit, "reserved": 0}
    else:
        body.update(values)
    return Reply.json(200, {"quota_set": body})


def routes() -> list[Route]:
    s = "compute"
    v = "/compute/v2.1"
    srv = f"{v}/servers/{{server_id}}"
    return [
        route("GET", "/compute", "compute.versions", versions, s, auth=False),
        route("GET", v, "compute.version", version, s, auth=False),
        route("GET", f"{v}/servers", "compute.servers.list", list_servers, s),
        route("GET", f"{v}/servers/detail", "compute.servers.list", list_servers_detail, s),
        route("POST", f"{v}/servers", "compute.servers.create", create_server, s),
        route("GET", srv, "compute.servers.get", show_server, s),
        route("PUT", srv, "compute.servers.update", update_server, s),
        route("DELETE", srv, "compute.servers.delete", delete_server, s),
        route("POST", f"{srv}/action", "compute.servers.action", action, s),
        route("GET", f"{srv}/ips", "compute.servers.ips", server_ips, s),
        route("GET", f"{srv}/tags", "compute.servers.tags", list_tags, s),
        route("PUT", f"{srv}/tags", "compute.servers.tags", replace_tags, s),
        route("DELETE", f"{srv}/tags", "compute.servers.tags", delete_tags, s),
        route("GET", f"{srv}/tags/{{tag}}", "compute.servers.tags", check_server_tag, s),
        route("PUT", f"{srv}/tags/{{tag}}", "compute.servers.tags", add_tag, s),
        route("DELETE", f"{srv}/tags/{{tag}}", "compute.servers.tags", delete_tag, s),
        route("GET", f"{srv}/metadata", "compute.servers.metadata", show_metadata, s),
        route("POST", f"{srv}/metadata", "compute.servers.metadata", update_metadata, s),
        route("PUT", f"{srv}/metadata", "compute.servers.metadata", update_metadata, s),
        route("GET", f"{srv}/metadata/{{key}}", "compute.servers.metadata", show_metadata_item, s),
        route("PUT", f"{srv}/metadata/{{key}}", "compute.servers.metadata", set_metadata_item, s),
        route(
            "DELETE", f"{srv}/metadata/{{key}}", "compute.servers.metadata", delete_metadata_item, s
        ),
        route("GET", f"{v}/flavors", "compute.flavors", list_flavors, s),
        route("GET", f"{v}/flavors/detail", "compute.flavors", list_flavors_detail, s),
        route("GET", f"{v}/flavors/{{flavor_id}}", "compute.flavors", show_flavor, s),
        route(
            "GET",
            f"{v}/flavors/{{flavor_id}}/os-extra_specs",
            "compute.flavors",
            flavor_extra_specs,
            s,
        ),
        route("GET", f"{v}/os-keypairs", "compute.keypairs", list_keypairs, s),
        route("POST", f"{v}/os-keypairs", "compute.keypairs", create_keypair, s),
        route("GET", f"{v}/os-keypairs/{{name}}", "compute.keypairs", show_keypair, s),
        route("DELETE", f"{v}/os-keypairs/{{name}}", "compute.keypairs", delete_keypair, s),
        route(
            "GET", f"{v}/os-availability-zone", "compute.availability_zones", availability_zones, s
        ),
        route("GET", f"{v}/limits", "compute.limits", limits, s),
        route("GET", f"{v}/os-quota-sets/{{project_id}}", "compute.quotas", quota_set, s),
        route("GET", f"{v}/os-quota-sets/{{project_id}}/detail", "compute.quotas", quota_set, s),
    ]
