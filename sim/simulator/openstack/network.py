"""Neutron v2.0: networks, subnets, ports, security groups, routers and floating IPs.

Filters follow Neutron with filter validation on (its default): equality on any attribute,
repeated parameters OR-ed, an unknown attribute is a 400; `fields` projects.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from simulator.openstack.model import (
    JSON,
    ApiError,
    FloatingIp,
    Network,
    Port,
    SecurityGroup,
    Subnet,
    iso_z,
    utcnow,
)
from simulator.openstack.state import AVAILABILITY_ZONE, Cloud
from simulator.openstack.web import Ctx, Reply, Route, route

PAGING_PARAMS = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"}
TAG_PARAMS = {"tags", "tags-any", "not-tags", "not-tags-any"}
EXTENSIONS = (
    ("agent", "agent"),
    ("binding", "Port Binding"),
    ("external-net", "Neutron external network"),
    ("fip-port-details", "Floating IP Port Details Extension"),
    ("filter-validation", "Filter parameters validation"),
    ("network_availability_zone", "Network Availability Zone"),
    ("port-security", "Port Security"),
    ("quotas", "Quota management support"),
    ("router", "Neutron L3 Router"),
    ("security-group", "security-group"),
    ("standard-attr-description", "standard-attr-description"),
    ("standard-attr-revisions", "Resource revision numbers"),
    ("standard-attr-tag", "Tag support for resources with standard attribute: ..."),
    ("standard-attr-timestamp", "Resource timestamps"),
)


def _std(project_id: str, created: Any, updated: Any, revision: int) -> JSON:
    return {
        "tenant_id": project_id,
        "project_id": project_id,
        "description": "",
        "tags": [],
        "created_at": iso_z(created),
        "updated_at": iso_z(updated),
        "revision_number": revision,
    }


def network_view(network: Network) -> JSON:
    return {
        "id": network.id,
        "name": network.name,
        "status": "ACTIVE",
        "admin_state_up": True,
        "shared": network.shared,
        "subnets": list(network.subnet_ids),
        "mtu": network.mtu,
        "router:external": network.external,
        "port_security_enabled": True,
        "availability_zone_hints": [],
        "availability_zones": [AVAILABILITY_ZONE],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "is_default": network.external,
        "l2_adjacency": True,
        "qos_policy_id": None,
        **_std(network.project_id, network.created_at, network.created_at, 1),
    }


def subnet_view(subnet: Subnet) -> JSON:
    return {
        "id": subnet.id,
        "name": subnet.name,
        "network_id": subnet.network_id,
        "ip_version": 4,
        "cidr": subnet.cidr,
        "gateway_ip": subnet.gateway_ip,
        "allocation_pools": [{"start": subnet.pool_start, "end": subnet.pool_end}],
        "enable_dhcp": True,
        "dns_nameservers": [],
        "host_routes": [],
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "service_types": [],
        "dns_publish_fixed_ip": False,
        **_std(subnet.project_id, subnet.created_at, subnet.created_at, 0),
    }


def port_view(port: Port) -> JSON:
    return {
        "id": port.id,
        "name": port.name,
        "network_id": port.network_id,
        "mac_address": port.mac_address,
        "fixed_ips": [dict(ip) for ip in port.fixed_ips],
        "device_id": port.device_id,
        "device_owner": port.device_owner,
        "status": port.status,
        "admin_state_up": True,
        "security_groups": list(port.security_group_ids),
        "port_security_enabled": True,
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
        "binding:vnic_type": "normal",
        "dns_name": "",
        "propagate_uplink_status": False,
        "qos_policy_id": None,
        "qos_network_policy_id": None,
        **_std(port.project_id, port.created_at, port.updated_at, port.revision_number),
    }


def security_group_view(group: SecurityGroup) -> JSON:
    return {
        "id": group.id,
        "name": group.name,
        "stateful": True,
        "shared": False,
        "security_group_rules": [dict(r) for r in group.rules],
        **_std(group.project_id, group.created_at, group.created_at, 1),
        "description": group.description,
    }


def floating_ip_view(cloud: Cloud, fip: FloatingIp) -> JSON:
    port = cloud.ports.get(fip.port_id) if fip.port_id else None
    details: JSON | None = None
    if port is not None:
        details = {
            "name": port.name,
            "network_id": port.network_id,
            "mac_address": port.mac_address,
            "admin_state_up": True,
            "status": port.status,
            "device_id": port.device_id,
            "device_owner": port.device_owner,
        }
    return {
        "id": fip.id,
        "floating_ip_address": fip.address,
        "floating_network_id": fip.network_id,
        "router_id": fip.router_id,
        "port_id": fip.port_id,
        "fixed_ip_address": fip.fixed_ip_address,
        "status": fip.status,
        "port_details": details,
        "port_forwardings": [],
        "qos_policy_id": None,
        "qos_network_policy_id": None,
        "dns_domain": "",
        "dns_name": "",
        **_std(fip.project_id, fip.created_at, fip.updated_at, fip.revision_number),
        "description": fip.description,
    }


def router_view(cloud: Cloud) -> JSON:
    router = cloud.router
    return {
        "id": router.id,
        "name": router.name,
        "status": "ACTIVE",
        "admin_state_up": True,
        "external_gateway_info": {
            "network_id": router.external_network_id,
            "enable_snat": True,
            "external_fixed_ips": [
                {
                    "subnet_id": cloud.networks[router.external_network_id].subnet_ids[0],
                    "ip_address": "203.0.113.2",
                }
            ],
        },
        "routes": [],
        "distributed": False,
        "ha": False,
        "availability_zone_hints": [],
        "availability_zones": [AVAILABILITY_ZONE],
        "flavor_id": None,
        **_std(router.project_id, None, None, 1),
    }


# ----- generic listing -----------------------------------------------------------------


def _matches(value: Any, wanted: list[str]) -> bool:
    if isinstance(value, bool):
        return str(value).lower() in [w.lower() for w in wanted]
    if isinstance(value, list):
        return any(str(v) in wanted for v in value if not isinstance(v, dict))
    return ("" if value is None else str(value)) in wanted


def _tags_match(key: str, tags: set[str], have: set[str]) -> bool:
    if key == "tags":
        return tags <= have
    if key == "tags-any":
        return bool(tags & have)
    if key == "not-tags":
        return not tags <= have
    return not tags & have


def filtered(ctx: Ctx, items: list[JSON]) -> list[JSON]:
    if not items:
        sample_keys: set[str] = set()
    else:
        sample_keys = set(items[0])
    for key in ctx.query:
        if key in PAGING_PARAMS:
            continue
        wanted = ctx.query.getlist(key)
        if key in TAG_PARAMS:
            tags = {t for w in wanted for t in w.split(",") if t}
            items = [i for i in items if _tags_match(key, tags, set(i.get("tags", [])))]
            continue
        if items and key not in sample_keys:
            raise ApiError(400, f"[{key!r}] is invalid attribute for filtering")
        items = [i for i in items if _matches(i.get(key), wanted)]
    if "fields" in ctx.query:
        fields = [f for value in ctx.query.getlist("fields") for f in value.split(",") if f]
        items = [{k: v for k, v in i.items() if k in fields} for i in items]
    return items


def list_reply(ctx: Ctx, collection: str, items: list[JSON]) -> Reply:
    return Reply.json(200, {collection: filtered(ctx, items)})


def _one(ctx: Ctx, resource: str, item: JSON | None, kind: str, label: str) -> Reply:
    if item is None:
        object_id = ctx.params["id"]
        raise ApiError(404, f"{label} {object_id} could not be found.", kind=kind)
    if "fields" in ctx.query:
        fields = [f for value in ctx.query.getlist("fields") for f in value.split(",") if f]
        item = {k: v for k, v in item.items() if k in fields}
    return Reply.json(200, {resource: item})


# ----- handlers ------------------------------------------------------------------------


def versions(ctx: Ctx) -> Reply:
    return Reply.json(
        200,
        {
            "versions": [
                {
                    "id": "v2.0",
                    "status": "CURRENT",
                    "links": [{"rel": "self", "href": f"{ctx.base}/network/v2.0/"}],
                }
            ]
        },
    )


def resources(ctx: Ctx) -> Reply:
    names = (
        ("network", "networks"),
        ("subnet", "subnets"),
        ("port", "ports"),
        ("security_group", "security-groups"),
        ("router", "routers"),
        ("floatingip", "floatingips"),
    )
    return Reply.json(
        200,
        {
            "resources": [
                {
                    "name": name,
                    "collection": collection,
                    "links": [{"rel": "self", "href": f"{ctx.base}/network/v2.0/{collection}"}],
                }
                for name, collection in names
            ]
        },
    )


def extensions(ctx: Ctx) -> Reply:
    return Reply.json(
        200,
        {
            "extensions": [
                {
                    "alias": alias,
                    "name": name,
                    "description": name,
                    "links": [],
                    "updated": "2013-02-03T10:00:00-00:00",
                }
                for alias, name in EXTENSIONS
            ]
        },
    )


def _visible_networks(cloud: Cloud) -> list[Network]:
    return [
        n
        for n in cloud.networks.values()
        if n.project_id == cloud.project.id or n.external or n.shared
    ]


def list_networks(ctx: Ctx) -> Reply:
    return list_reply(ctx, "networks", [network_view(n) for n in _visible_networks(ctx.cloud)])


def show_network(ctx: Ctx) -> Reply:
    network = ctx.cloud.networks.get(ctx.params["id"])
    view = network_view(network) if network else None
    return _one(ctx, "network", view, "NetworkNotFound", "Network")


def list_subnets(ctx: Ctx) -> Reply:
    visible = {n.id for n in _visible_networks(ctx.cloud)}
    items = [subnet_view(s) for s in ctx.cloud.subnets.values() if s.network_id in visible]
    return list_reply(ctx, "subnets", items)


def show_subnet(ctx: Ctx) -> Reply:
    subnet = ctx.cloud.subnets.get(ctx.params["id"])
    return _one(ctx, "subnet", subnet_view(subnet) if subnet else None, "SubnetNotFound", "Subnet")


def list_ports(ctx: Ctx) -> Reply:
    return list_reply(ctx, "ports", [port_view(p) for p in ctx.cloud.ports.values()])


def show_port(ctx: Ctx) -> Reply:
    port = ctx.cloud.ports.get(ctx.params["id"])
    return _one(ctx, "port", port_view(port) if port else None, "PortNotFound", "Port")


def list_security_groups(ctx: Ctx) -> Reply:
    items = [security_group_view(g) for g in ctx.cloud.security_groups.values()]
    return list_reply(ctx, "security_groups", items)


def show_security_group(ctx: Ctx) -> Reply:
    group = ctx.cloud.security_groups.get(ctx.params["id"])
    if group is None:
        raise ApiError(
            404, f"Security group {ctx.params['id']} does not exist", kind="SecurityGroupNotFound"
        )
    return Reply.json(200, {"security_group": security_group_view(group)})


def list_routers(ctx: Ctx) -> Reply:
    return list_reply(ctx, "routers", [router_view(ctx.cloud)])


def show_router(ctx: Ctx) -> Reply:
    found = router_view(ctx.cloud) if ctx.params["id"] == ctx.cloud.router.id else None
    return _one(ctx, "router", found, "RouterNotFound", "Router")


def list_floating_ips(ctx: Ctx) -> Reply:
    cloud = ctx.cloud
    items = [floating_ip_view(cloud, f) for f in cloud.floating_ips.values()]
    return list_reply(ctx, "floatingips", items)


def _get_fip(ctx: Ctx) -> FloatingIp:
    fip = ctx.cloud.floating_ips.get(ctx.params["id"])
    if fip is None:
        # Neutron's FloatingIPNotFound message has no final period.
        raise ApiError(
            404, f"Floating IP {ctx.params['id']} could not be found", kind="FloatingIPNotFound"
        )
    return fip


def show_floating_ip(ctx: Ctx) -> Reply:
    return Reply.json(200, {"floatingip": floating_ip_view(ctx.cloud, _get_fip(ctx))})


def _associate(cloud: Cloud, fip: FloatingIp, port_id: Any, fixed_ip: Any) -> None:
    if port_id is None:
        fip.port_id = fip.fixed_ip_address = fip.router_id = None
        fip.status = "DOWN"
        return
    port = cloud.ports.get(str(port_id))
    if port is None:
        raise ApiError(404, f"Port {port_id} could not be found.", kind="PortNotFound")
    addresses = [ip["ip_address"] for ip in port.fixed_ips]
    if not addresses:
        raise ApiError(
            400,
            f"Bad floatingip request: Port {port.id} does not have any IPv4 address.",
            kind="BadRequest",
        )
    address = fixed_ip if fixed_ip is not None else addresses[0]
    if address not in addresses:
        raise ApiError(
            400,
            f"Bad floatingip request: Port {port.id} does not have fixed ip {address}.",
            kind="BadRequest",
        )
    other = cloud.floating_ip_of_port(port.id)
    if other is not None and other.id != fip.id:
        raise ApiError(
            409,
            f"Cannot associate floating IP {fip.address} ({fip.id}) with port {port.id} using "
            f"fixed IP {address}, as that fixed IP already has a floating IP on external "
            f"network {fip.network_id}.",
            kind="FloatingIPPortAlreadyAssociated",
        )
    subnet_ids = [ip["subnet_id"] for ip in port.fixed_ips]
    if not set(subnet_ids) & set(cloud.router.subnet_ids):
        raise ApiError(
            404,
            f"External network {fip.network_id} is not reachable from subnet {subnet_ids[0]}. "
            f"Therefore, cannot associate Port {port.id} with a Floating IP.",
            kind="ExternalGatewayForFloatingIPNotFound",
        )
    fip.port_id = port.id
    fip.fixed_ip_address = address
    fip.router_id = cloud.router.id
    # With an L3 agent the status turns ACTIVE once the agent has wired it; here at once.
    fip.status = "ACTIVE"


def update_floating_ip(ctx: Ctx) -> Reply:
    cloud = ctx.cloud
    fip = _get_fip(ctx)
    body = ctx.json_object("floatingip")
    unknown = set(body) - {"port_id", "fixed_ip_address", "description", "qos_policy_id"}
    if unknown:
        key = sorted(unknown)[0]
        raise ApiError(400, f"Cannot update read-only attribute {key}", kind="HTTPBadRequest")
    if "port_id" in body:
        _associate(cloud, fip, body["port_id"], body.get("fixed_ip_address"))
    if "description" in body:
        fip.description = str(body["description"])
    fip.updated_at = utcnow()
    fip.revision_number += 1
    return Reply.json(200, {"floatingip": floating_ip_view(cloud, fip)})


def create_floating_ip(ctx: Ctx) -> Reply:
    cloud = ctx.cloud
    body = ctx.json_object("floatingip")
    network = cloud.networks.get(str(body.get("floating_network_id")))
    if network is None:
        raise ApiError(
            404,
            f"Network {body.get('floating_network_id')} could not be found.",
            kind="NetworkNotFound",
        )
    if not network.external:
        raise ApiError(
            400,
            f"Bad floatingip request: Network {network.id} is not a valid external network.",
            kind="BadRequest",
        )
    limit = cloud.config.quotas.floatingip
    if 0 <= limit <= len(cloud.floating_ips):
        raise ApiError(409, "Quota exceeded for resources: ['floatingip'].", kind="OverQuota")
    used = {f.address for f in cloud.floating_ips.values()}
    subnet = cloud.subnets[network.subnet_ids[0]]
    wanted = body.get("floating_ip_address")
    if wanted is not None:
        if wanted in used:
            raise ApiError(
                409,
                f"Unable to complete operation for network {network.id}. The IP address "
                f"{wanted} is in use.",
                kind="IpAddressInUse",
            )
        address = str(wanted)
    else:
        start = int(ipaddress.IPv4Address(subnet.pool_start))
        end = int(ipaddress.IPv4Address(subnet.pool_end))
        candidates = (str(ipaddress.IPv4Address(n)) for n in range(start + 1, end + 1))
        free = next((a for a in candidates if a not in used), None)
        if free is None:
            raise ApiError(
                409,
                f"No more IP addresses available on network {network.id}.",
                kind="IpAddressGenerationFailure",
            )
        address = free
    fip = FloatingIp(
        id=str(uuid.uuid4()),
        address=address,
        network_id=network.id,
        project_id=cloud.project.id,
        description=str(body.get("description", "")),
    )
    if body.get("port_id") is not None:
        _associate(cloud, fip, body["port_id"], body.get("fixed_ip_address"))
    cloud.floating_ips[fip.id] = fip
    return Reply.json(201, {"floatingip": floating_ip_view(cloud, fip)})


def delete_floating_ip(ctx: Ctx) -> Reply:
    fip = _get_fip(ctx)
    del ctx.cloud.floating_ips[fip.id]
    return Reply.empty(204)


def routes() -> list[Route]:
    s = "network"
    v = "/network/v2.0"
    return [
        route("GET", "/network", "network.versions", versions, s, auth=False),
        route("GET", v, "network.resources", resources, s),
        route("GET", f"{v}/extensions", "network.extensions", extensions, s),
        route("GET", f"{v}/networks", "network.networks", list_networks, s),
        route("GET", f"{v}/networks/{{id}}", "network.networks", show_network, s),
        route("GET", f"{v}/subnets", "network.subnets", list_subnets, s),
        route("GET", f"{v}/subnets/{{id}}", "network.subnets", show_subnet, s),
        route("GET", f"{v}/ports", "network.ports", list_ports, s),
        route("GET", f"{v}/ports/{{id}}", "network.ports", show_port, s),
        route("GET", f"{v}/security-groups", "network.security_groups", list_security_groups, s),
        route(
            "GET", f"{v}/security-groups/{{id}}", "network.security_groups", show_security_group, s
        ),
        route("GET", f"{v}/routers", "network.routers", list_routers, s),
        route("GET", f"{v}/routers/{{id}}", "network.routers", show_router, s),
        route("GET", f"{v}/floatingips", "network.floatingips.list", list_floating_ips, s),
        route("POST", f"{v}/floatingips", "network.floatingips.create", create_floating_ip, s),
        route("GET", f"{v}/floatingips/{{id}}", "network.floatingips.get", show_floating_ip, s),
        route(
            "PUT", f"{v}/floatingips/{{id}}", "network.floatingips.update", update_floating_ip, s
        ),
        route(
            "DELETE", f"{v}/floatingips/{{id}}", "network.floatingips.delete", delete_floating_ip, s
        ),
    ]
