"""The cloud's state: seeded resources, the lifecycle timers, quotas, and the state dump.

Everything runs on the server's event loop thread, so no locking is needed. Timed transitions
(BUILD -> ACTIVE, deletes, power actions) are kept in a queue and applied by `tick()`, which
every request calls first; a background task also ticks so that the state moves on even when
nobody is asking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import ipaddress
import itertools
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from simulator.openstack.config import CloudConfig, fixed_subnet_pool
from simulator.openstack.faults import FaultBook
from simulator.openstack.model import (
    JSON,
    ApiError,
    AppCredential,
    Domain,
    Flavor,
    FloatingIp,
    Image,
    Keypair,
    Network,
    Port,
    Project,
    Router,
    SecurityGroup,
    Server,
    Subnet,
    Token,
    User,
    Volume,
    iso_micro,
    iso_z,
    stable_hex,
    stable_uuid,
    utcnow,
)

HOST = "sim-compute1"
# The seeded identity; clouds.yaml written by RunningCloud.write_clouds_yaml uses these.
PROJECT_NAME = "runners"
USER_NAME = "runner"
USER_PASSWORD = "runner-secret"
APP_CREDENTIAL_NAME = "runners-appcred"
APP_CREDENTIAL_SECRET = "sim-appcred-secret"
APP_CREDENTIAL_ID = stable_hex("appcred:" + APP_CREDENTIAL_NAME)
IMAGE_NAME = "ubuntu-24.04"
NETWORK_NAME = "runners-net"
SUBNET_NAME = "runners-subnet"
EXTERNAL_NETWORK_NAME = "public"
SECURITY_GROUP_NAME = "default"
KEYPAIR_NAME = "runner-key"
AVAILABILITY_ZONE = "nova"
FLAVOR_NAMES = ("m1.small", "m1.large", "g1.gpu")
RUNNER_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq6oVHY8RkUbbnk7rA7VSKbqWcGWQxL0QWL0nKo0Bfx runner-key"
)
BOOT_CONSOLE = (
    "[    0.000000] Linux version 6.8.0-45-generic (buildd@sim) #45-Ubuntu SMP",
    "[    1.204312] Run /init as init process",
    "cloud-init[512]: Cloud-init v. 24.4 running 'init-local'. Up 4.02 seconds.",
    "cloud-init[601]: Cloud-init v. 24.4 running 'init'. Up 5.31 seconds.",
    "ci-info: ++++++++++++++++++++++++Net device info+++++++++++++++++++++++++",
    "cloud-init[733]: Cloud-init v. 24.4 running 'modules:config'. Up 7.90 seconds.",
    "cloud-init[771]: Cloud-init v. 24.4 running 'modules:final'. Up 8.42 seconds.",
)


def fingerprint(public_key: str) -> str:
    """Nova's fingerprint: MD5 of the key blob, as colon-separated hex."""
    parts = public_key.split()
    try:
        blob = base64.b64decode(parts[1]) if len(parts) > 1 else public_key.encode()
    except (binascii.Error, ValueError):
        blob = public_key.encode()
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class Cloud:
    def __init__(self, config: CloudConfig, base_url: str) -> None:
        self.initial_config = config.copy()
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.rng = random.Random(config.seed)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._sequence = itertools.count(1)
        self.request_log: deque[JSON] = deque(maxlen=config.request_log_size)
        self.request_seq = itertools.count(1)
        # Requests by endpoint since the last reset or clear: the log keeps only the newest.
        self.request_counts: Counter[str] = Counter()
        self.tokens: dict[str, Token] = {}
        self._seed_identity()
        self.endpoints: tuple[str, ...] = ()  # filled in by the app from its route table
        self.faults = FaultBook(self.rng, ())
        self.reset()

    # ----- seeding ---------------------------------------------------------------------

    def _seed_identity(self) -> None:
        self.domain = Domain(id="default", name="Default")
        self.project = Project(stable_hex("project:" + PROJECT_NAME), PROJECT_NAME, self.domain)
        self.user = User(
            id=stable_hex("user:" + USER_NAME),
            name=USER_NAME,
            password=USER_PASSWORD,
            domain=self.domain,
            project=self.project,
            roles=["member", "reader"],
        )
        self.app_credential = AppCredential(
            id=APP_CREDENTIAL_ID,
            name=APP_CREDENTIAL_NAME,
            secret=APP_CREDENTIAL_SECRET,
            user=self.user,
            project=self.project,
            roles=["member", "reader"],
        )

    def set_endpoints(self, endpoints: tuple[str, ...]) -> None:
        self.endpoints = endpoints
        self.faults = FaultBook(self.rng, endpoints)

    def reset(self) -> None:
        """Back to the seeded world: resources, faults, request log and config."""
        self.config.patch(
            {
                k: v
                for k, v in self.initial_config.to_json().items()
                if k not in ("public_url", "request_log_size")
            }
        )
        self._timers.clear()
        self.faults = FaultBook(self.rng, self.endpoints)
        self.request_log.clear()
        self.request_counts.clear()
        pid = self.project.id
        self.flavors: dict[str, Flavor] = {}
        for flavor_id, name, vcpus, ram, disk, specs in (
            ("1", "m1.small", 1, 2048, 20, {}),
            ("2", "m1.large", 4, 8192, 80, {}),
            ("3", "g1.gpu", 8, 32768, 160, {"resources:VGPU": "1"}),
        ):
            self.flavors[flavor_id] = Flavor(flavor_id, name, vcpus, ram, disk, extra_specs=specs)
        ubuntu = Image(
            id=stable_uuid("image:" + IMAGE_NAME),
            name=IMAGE_NAME,
            size=3_221_225_472 // 6,
            min_disk=10,
            min_ram=0,
            owner=stable_hex("project:admin"),
            checksum=hashlib.md5(IMAGE_NAME.encode(), usedforsecurity=False).hexdigest(),
            os_hash_value=hashlib.sha512(IMAGE_NAME.encode()).hexdigest(),
            properties={"os_distro": "ubuntu", "os_version": "24.04"},
        )
        self.images: dict[str, Image] = {ubuntu.id: ubuntu}
        self.keypairs: dict[str, Keypair] = {
            KEYPAIR_NAME: Keypair(
                id=1,
                name=KEYPAIR_NAME,
                public_key=RUNNER_PUBLIC_KEY,
                fingerprint=fingerprint(RUNNER_PUBLIC_KEY),
                type="ssh",
                user_id=self.user.id,
            )
        }
        self._keypair_ids = itertools.count(2)
        net = Network(stable_uuid("network:" + NETWORK_NAME), NETWORK_NAME, pid)
        subnet = Subnet(
            id=stable_uuid("subnet:" + SUBNET_NAME),
            name=SUBNET_NAME,
            network_id=net.id,
            project_id=pid,
            cidr="",
            gateway_ip="",
            pool_start="",
            pool_end="",
        )
        self.lay_out_subnet(subnet)
        net.subnet_ids.append(subnet.id)
        admin_project = stable_hex("project:admin")
        public = Network(
            stable_uuid("network:" + EXTERNAL_NETWORK_NAME),
            EXTERNAL_NETWORK_NAME,
            admin_project,
            external=True,
            mtu=1500,
        )
        public_subnet = Subnet(
            id=stable_uuid("subnet:public-subnet"),
            name="public-subnet",
            network_id=public.id,
            project_id=admin_project,
            cidr="203.0.113.0/24",
            gateway_ip="203.0.113.1",
            pool_start="203.0.113.2",
            pool_end="203.0.113.254",
        )
        public.subnet_ids.append(public_subnet.id)
        self.networks: dict[str, Network] = {net.id: net, public.id: public}
        self.subnets: dict[str, Subnet] = {subnet.id: subnet, public_subnet.id: public_subnet}
        self.router = Router(
            id=stable_uuid("router:runners-router"),
            name="runners-router",
            project_id=pid,
            external_network_id=public.id,
            subnet_ids=[subnet.id],
        )
        sg_id = stable_uuid("secgroup:default")
        self.security_groups: dict[str, SecurityGroup] = {
            sg_id: SecurityGroup(
                id=sg_id,
                name=SECURITY_GROUP_NAME,
                description="Default security group",
                project_id=pid,
                rules=_default_rules(sg_id, pid),
            )
        }
        self.ports: dict[str, Port] = {}
        self.floating_ips: dict[str, FloatingIp] = {}
        for address in self.config.floating_ip_pool:
            self.add_floating_ip(address)
        self.volumes: dict[str, Volume] = {}
        self.servers: dict[str, Server] = {}
        self._instance_numbers = itertools.count(1)

    def add_floating_ip(self, address: str) -> FloatingIp:
        fip = FloatingIp(
            id=stable_uuid("fip:" + address),
            address=address,
            network_id=stable_uuid("network:" + EXTERNAL_NETWORK_NAME),
            project_id=self.project.id,
        )
        self.floating_ips[fip.id] = fip
        return fip

    # ----- time ------------------------------------------------------------------------

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), action))

    def tick(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, action = heapq.heappop(self._timers)
            action()

    def next_sequence(self) -> int:
        return next(self._sequence)

    def next_instance_number(self) -> int:
        return next(self._instance_numbers)

    # ----- identity --------------------------------------------------------------------

    def issue_token(
        self,
        user: User,
        project: Project | None,
        methods: list[str],
        app_credential: AppCredential | None = None,
    ) -> Token:
        now = utcnow()
        token = Token(
            id="gAAAAAB" + secrets.token_urlsafe(96),
            user=user,
            project=project,
            methods=methods,
            roles=list(app_credential.roles if app_credential else user.roles),
            issued_at=now,
            expires_at=now + timedelta(seconds=self.config.token_ttl),
            audit_id=secrets.token_urlsafe(16)[:22],
            app_credential=app_credential,
        )
        self.tokens[token.id] = token
        return token

    def valid_token(self, token_id: str | None) -> Token | None:
        if not token_id:
            return None
        token = self.tokens.get(token_id)
        if token is None or token.expires_at <= utcnow():
            return None
        return token

    # ----- compute helpers -------------------------------------------------------------

    def live_servers(self) -> list[Server]:
        return list(self.servers.values())

    def usage(self) -> dict[str, int]:
        servers = self.live_servers()
        volumes = list(self.volumes.values())
        return {
            "instances": len(servers),
            "cores": sum(s.flavor.vcpus for s in servers),
            "ram": sum(s.flavor.ram for s in servers),
            "key_pairs": len(self.keypairs),
            "volumes": len(volumes),
            "gigabytes": sum(v.size for v in volumes),
            "floatingip": len(self.floating_ips),
        }

    def lay_out_subnet(self, subnet: Subnet) -> None:
        """Give the tenant subnet the configured range (default 10.0.0.0/20: room for a
        1,000-VM benchmark). Ports already made keep their addresses."""
        network, gateway, first, last = fixed_subnet_pool(self.config.fixed_subnet)
        subnet.cidr, subnet.gateway_ip = str(network), str(gateway)
        subnet.pool_start, subnet.pool_end = str(first), str(last)

    def tenant_subnet(self) -> Subnet:
        return self.subnets[stable_uuid("subnet:" + SUBNET_NAME)]

    def find_flavor(self, ref: str) -> Flavor | None:
        # flavorRef may be an id or a link ending in the id.
        key = ref.rstrip("/").rsplit("/", 1)[-1]
        return self.flavors.get(key)

    def network_by_id(self, network_id: str) -> Network | None:
        return self.networks.get(network_id)

    def allocate_port(self, server: Server, network: Network, sg_names: list[str]) -> Port:
        subnet = self.subnets[network.subnet_ids[0]]
        used = {ip["ip_address"] for p in self.ports.values() for ip in p.fixed_ips}
        start = int(ipaddress.IPv4Address(subnet.pool_start))
        end = int(ipaddress.IPv4Address(subnet.pool_end))
        address = next(
            (
                str(ipaddress.IPv4Address(n))
                for n in range(start + 8, end + 1)
                if str(ipaddress.IPv4Address(n)) not in used
            ),
            None,
        )
        if address is None:
            # Neutron's answer, relayed by Nova as a failed build; not a simulator crash.
            raise ApiError(409, f"No more IP addresses available on network {network.id}.")
        groups = [g.id for g in self.security_groups.values() if g.name in sg_names]
        mac = "fa:16:3e:" + ":".join(f"{self.rng.randrange(256):02x}" for _ in range(3))
        port = Port(
            id=stable_uuid(f"port:{server.id}:{network.id}"),
            network_id=network.id,
            project_id=server.project_id,
            mac_address=mac,
            fixed_ips=[{"subnet_id": subnet.id, "ip_address": address}],
            device_id=server.id,
            device_owner=f"compute:{server.availability_zone}",
            security_group_ids=groups,
        )
        self.ports[port.id] = port
        return port

    def floating_ip_of_port(self, port_id: str) -> FloatingIp | None:
        return next((f for f in self.floating_ips.values() if f.port_id == port_id), None)

    def release_port(self, port_id: str) -> None:
        port = self.ports.pop(port_id, None)
        if port is None:
            return
        fip = self.floating_ip_of_port(port_id)
        if fip is not None:
            # Neutron disassociates a floating IP whose port goes away.
            fip.port_id = None
            fip.fixed_ip_address = None
            fip.router_id = None
            fip.status = "DOWN"
            fip.updated_at = utcnow()
            fip.revision_number += 1

    # ----- dumps -----------------------------------------------------------------------

    def dump(self) -> JSON:
        return {
            "servers": [self.dump_server(s) for s in self._servers_oldest_first()],
            "volumes": [_dump_volume(v) for v in self.volumes.values()],
            "ports": [
                {
                    "id": p.id,
                    "network_id": p.network_id,
                    "device_id": p.device_id,
                    "status": p.status,
                    "mac_address": p.mac_address,
                    "fixed_ips": p.fixed_ips,
                }
                for p in self.ports.values()
            ],
            "floating_ips": [self._dump_fip(f) for f in self.floating_ips.values()],
            "keypairs": [k.name for k in self.keypairs.values()],
            "quotas": {
                "limits": self.config.to_json()["quotas"],
                "usage": self.usage(),
            },
            "faults": [f.to_json() for f in self.faults.faults],
            "config": self.config.to_json(),
        }

    def server_briefs(self, user_data_after: int) -> list[JSON]:
        """Every server in a few fields, oldest first; user_data only for servers created after
        sequence `user_data_after` (a watcher that has seen the older ones needs no more)."""
        briefs = []
        for server in self._servers_oldest_first():
            brief: JSON = {
                "id": server.id,
                "name": server.name,
                "status": server.status,
                "task_state": server.task_state,
                "deleting": server.deleting,
                "sequence": server.sequence,
            }
            if server.sequence > user_data_after:
                brief["user_data"] = decode_user_data(server.user_data)
            briefs.append(brief)
        return briefs

    def _servers_oldest_first(self) -> list[Server]:
        return sorted(self.servers.values(), key=lambda s: s.sequence)

    def _dump_fip(self, fip: FloatingIp) -> JSON:
        port = self.ports.get(fip.port_id) if fip.port_id else None
        return {
            "id": fip.id,
            "floating_ip_address": fip.address,
            "status": fip.status,
            "port_id": fip.port_id,
            "fixed_ip_address": fip.fixed_ip_address,
            "server_id": port.device_id if port else None,
        }

    def dump_server(self, server: Server) -> JSON:
        return {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "vm_state": server.vm_state,
            "task_state": server.task_state,
            "power_state": server.power_state,
            "deleting": server.deleting,
            "tags": list(server.tags),
            "metadata": dict(server.metadata),
            "user_data": decode_user_data(server.user_data),
            "flavor": server.flavor.name,
            "image_id": server.image_id,
            "key_name": server.key_name,
            "availability_zone": server.availability_zone,
            "security_groups": list(server.security_groups),
            "networks": [self.networks[n].name for n in server.networks if n in self.networks],
            "ports": list(server.port_ids),
            "addresses": [
                ip["ip_address"]
                for pid in server.port_ids
                if pid in self.ports
                for ip in self.ports[pid].fixed_ips
            ],
            "floating_ips": [
                f.address
                for pid in server.port_ids
                if (f := self.floating_ip_of_port(pid)) is not None
            ],
            "volumes": list(server.volume_ids),
            "fault": server.fault,
            "console_lines": len(server.console),
            "created": iso_z(server.created),
            "launched_at": iso_micro(server.launched_at),
        }


def decode_user_data(user_data: str | None) -> str | None:
    """The user_data as text when it is UTF-8, else the base64 as sent."""
    if user_data is None:
        return None
    try:
        return base64.b64decode(user_data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return user_data


def _dump_volume(volume: Volume) -> JSON:
    return {
        "id": volume.id,
        "status": volume.status,
        "size": volume.size,
        "image_id": volume.image_id,
        "server_id": volume.server_id,
        "delete_on_termination": volume.delete_on_termination,
    }


def _default_rules(sg_id: str, project_id: str) -> list[JSON]:
    rules: list[JSON] = []
    for direction, ethertype, remote in (
        ("egress", "IPv4", None),
        ("egress", "IPv6", None),
        ("ingress", "IPv4", sg_id),
        ("ingress", "IPv6", sg_id),
    ):
        rules.append(
            {
                "id": stable_uuid(f"sgrule:{sg_id}:{direction}:{ethertype}"),
                "security_group_id": sg_id,
                "direction": direction,
                "ethertype": ethertype,
                "protocol": None,
                "port_range_min": None,
                "port_range_max": None,
                "remote_ip_prefix": None,
                "remote_group_id": remote,
                "remote_address_group_id": None,
                "normalized_cidr": None,
                "description": None,
                "tenant_id": project_id,
                "project_id": project_id,
                "tags": [],
                "revision_number": 0,
                "belongs_to_default_sg": True,
            }
        )
    return rules


def quota_usage_json(cloud: Cloud) -> dict[str, Any]:
    return {"limits": cloud.config.to_json()["quotas"], "usage": cloud.usage()}
