"""The cloud's resources as plain records; the service modules render them as each API does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]
# Seeded objects get stable ids (uuid5 of their name) so that a clouds.yaml written before a
# /_sim/reset, and ids remembered by a test, stay valid.
_NAMESPACE = uuid.UUID("6f1d3c1e-6a1b-4f3e-9a55-5c1b1e0c0a11")


def stable_uuid(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


def stable_hex(name: str) -> str:
    """Keystone ids are 32 hex digits without dashes."""
    return uuid.uuid5(_NAMESPACE, name).hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_z(when: datetime | None) -> str | None:
    """Nova/Neutron/Glance style: 2026-01-02T03:04:05Z."""
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(when: datetime | None) -> str | None:
    """Nova's launched_at and Cinder's timestamps: 2026-01-02T03:04:05.000000."""
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%S.%f")


def iso_micro_z(when: datetime) -> str:
    """Keystone's expires_at/issued_at: 2026-01-02T03:04:05.000000Z."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    """An error answer; each service renders it in its own error format.

    `kind` is the Nova/Cinder fault name (itemNotFound, badRequest, ...) or the Neutron error
    type (NetworkNotFound, ...); None picks the service's default for the status.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers or {}


@dataclass
class Domain:
    id: str
    name: str


@dataclass
class Project:
    id: str
    name: str
    domain: Domain


@dataclass
class User:
    id: str
    name: str
    password: str
    domain: Domain
    project: Project
    roles: list[str]


@dataclass
class AppCredential:
    id: str
    name: str
    secret: str
    user: User
    project: Project
    roles: list[str]


@dataclass
class Token:
    id: str
    user: User
    project: Project | None
    methods: list[str]
    roles: list[str]
    issued_at: datetime
    expires_at: datetime
    audit_id: str
    app_credential: AppCredential | None = None


@dataclass
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int
    ephemeral: int = 0
    swap: int = 0
    is_public: bool = True
    description: str | None = None
    extra_specs: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    id: str
    name: str
    size: int
    min_disk: int = 0
    min_ram: int = 0
    status: str = "active"
    disk_format: str = "qcow2"
    container_format: str = "bare"
    visibility: str = "public"
    owner: str = ""
    checksum: str = ""
    os_hash_value: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Keypair:
    id: int
    name: str
    public_key: str
    fingerprint: str
    type: str
    user_id: str
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Network:
    id: str
    name: str
    project_id: str
    subnet_ids: list[str] = field(default_factory=list)
    external: bool = False
    shared: bool = False
    mtu: int = 1450
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Subnet:
    id: str
    name: str
    network_id: str
    project_id: str
    cidr: str
    gateway_ip: str | None
    pool_start: str
    pool_end: str
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class SecurityGroup:
    id: str
    name: str
    description: str
    project_id: str
    rules: list[JSON] = field(default_factory=list)
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Port:
    id: str
    network_id: str
    project_id: str
    mac_address: str
    fixed_ips: list[JSON]
    device_id: str
    device_owner: str
    security_group_ids: list[str]
    status: str = "DOWN"
    name: str = ""
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    revision_number: int = 1


@dataclass
class FloatingIp:
    id: str
    address: str
    network_id: str
    project_id: str
    router_id: str | None = None
    port_id: str | None = None
    fixed_ip_address: str | None = None
    status: str = "DOWN"
    description: str = ""
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    revision_number: int = 0


@dataclass
class Router:
    id: str
    name: str
    project_id: str
    external_network_id: str
    subnet_ids: list[str]


@dataclass
class Volume:
    id: str
    size: int
    project_id: str
    user_id: str
    image_id: str | None
    status: str = "creating"
    name: str = ""
    server_id: str | None = None
    attachment_id: str | None = None
    device: str | None = None
    delete_on_termination: bool = False
    bootable: bool = True
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    attached_at: datetime | None = None


@dataclass
class Server:
    id: str
    name: str
    project_id: str
    user_id: str
    flavor: Flavor
    image_id: str | None  # None: booted from volume (Nova shows image as "")
    key_name: str | None
    availability_zone: str
    user_data: str | None  # base64, exactly as sent
    metadata: dict[str, str]
    tags: list[str]
    security_groups: list[str]  # names, as Nova shows them
    networks: list[str]  # network ids with a port on them
    port_ids: list[str]
    volume_ids: list[str]
    description: str | None
    config_drive: str
    admin_pass: str
    status: str = "BUILD"
    vm_state: str = "building"
    task_state: str | None = "scheduling"
    power_state: int = 0
    host: str | None = None
    fault: JSON | None = None
    console: list[str] = field(default_factory=list)
    created: datetime = field(default_factory=utcnow)
    updated: datetime = field(default_factory=utcnow)
    launched_at: datetime | None = None
    # Set by semantic faults at create time.
    planned_fault: JSON | None = None
    never_active: bool = False
    deleting: bool = False
    instance_number: int = 0
    # Monotonic ordering for "newest first" listings when timestamps tie.
    sequence: int = 0
    extra: JSON = field(default_factory=dict)
