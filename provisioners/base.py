"""What the rest of the service knows about VMs: a small Protocol, frozen values, one error tree.

    ProvisionerError
    ├── TemporaryProvisionerError   worth retrying later (5xx, timeouts, conflicts, quota)
    │   ├── QuotaExceeded           the project's quota is used up (frees up as VMs go away)
    │   └── ActiveTimeout           the server did not become ACTIVE in time (it was deleted)
    ├── PermanentProvisionerError   retrying the same request cannot help (bad image, flavor...)
    │   └── CloudTooOld             the compute API lacks a microversion we need (tags: 2.52)
    ├── ServerFailed                the server went to ERROR (Nova's fault message; deleted)
    └── ServerNotFound              no such server (delete treats it as success)

Adapters (provisioners.openstack) translate their SDK's exceptions into these once, at the edge;
callers branch on the type, never on message text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class ProvisionerError(Exception):
    """Base of every error a provisioner raises."""


class TemporaryProvisionerError(ProvisionerError):
    """A later identical request may succeed."""


class QuotaExceeded(TemporaryProvisionerError):
    """The cloud refused for quota; capacity returns as other servers are deleted."""


class ActiveTimeout(TemporaryProvisionerError):
    """The server did not reach ACTIVE within the configured time and was deleted."""


class PermanentProvisionerError(ProvisionerError):
    """The request itself is wrong (unknown image or flavor, bad parameters)."""


class CloudTooOld(PermanentProvisionerError):
    """The compute API does not offer a microversion this provisioner relies on."""


class ServerFailed(ProvisionerError):
    """The server went to ERROR; `fault` is the cloud's own explanation."""

    def __init__(self, name: str, fault: str) -> None:
        self.name = name
        self.fault = fault
        super().__init__(f"server {name} failed: {fault}")


class ServerNotFound(ProvisionerError):
    """No server with that id."""


@dataclass(frozen=True)
class ServerSpec:
    """One runner VM to create. `image`/`flavor` override the provisioner's defaults."""

    name: str
    user_data: bytes = field(repr=False)
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    flavor: str | None = None


@dataclass(frozen=True)
class RunnerVM:
    """A server as the cloud reports it."""

    id: str
    name: str
    status: str
    created_at: datetime | None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    floating_ip: str | None = None
    fault: str | None = None

    @property
    def address(self) -> str | None:
        """Where to reach the VM: its floating IP when it has one, else its first address."""
        return self.floating_ip or (self.addresses[0] if self.addresses else None)


class Provisioner(Protocol):
    """The VM backend the scaler and the reconciler drive."""

    async def submit(self, spec: ServerSpec) -> str:
        """The create request alone (the part worth bounding); returns the server id."""
        ...

    async def finish_create(
        self, server_id: str, name: str, tags: tuple[str, ...] = ()
    ) -> RunnerVM:
        """Wait for a submitted server to be ACTIVE, deleting it again on failure."""
        ...

    async def delete(self, server_id: str) -> None:
        """Delete the server and wait until it is gone; an unknown id is success."""
        ...

    async def get(self, server_id: str) -> RunnerVM | None: ...

    async def list_owned(self, tags: tuple[str, ...]) -> list[RunnerVM]:
        """Servers carrying every one of `tags` (a server-side filter)."""
        ...

    async def console_output(self, server_id: str, lines: int = 200) -> str: ...

    async def add_tag(self, server_id: str, tag: str) -> None: ...

    async def set_metadata(self, server_id: str, metadata: Mapping[str, str]) -> None:
        """Merge `metadata` into the server's metadata (keys not named are kept); an unknown id
        raises ServerNotFound, a value the cloud refuses (Nova: over 255 characters) raises
        PermanentProvisionerError."""
        ...

    async def capacity(self, flavor: str | None = None, owner: tuple[str, ...] = ()) -> int | None:
        """How many more servers of `flavor` (None: the provisioner's default) the cloud can take
        now; None when nothing limits them. The creates in flight of `owner` (servers carrying
        exactly these ownership tags) count as not having taken theirs yet: the caller counts
        its own creates in flight (scaleset_listener/demand.py)."""
        ...

    async def release_floating_ips(self, server_id: str) -> None:
        """Give the server's floating IPs back to the pool (a failed VM kept for debugging
        needs none); no pool configured, or none attached, is success."""
        ...

    async def close(self) -> None: ...


class HostKeyPolicy(enum.StrEnum):
    """`SSH_HOST_KEY_POLICY`: what to do about the server's host key.

    `pinned`: the key recorded for the server (generated by us, handed to the bootstrap) is
    required. A server without a recorded key is not contacted (`host_key_unknown`).
    `accept-new`: a recorded key is required exactly as with `pinned`; a server without one is
    probed and the key it presented is returned in `ProbeResult.host_key`, so the caller can
    record it (trust on first use). For images that cannot take an injected host key.
    There is deliberately no "accept anything": a recorded key that does not match means another
    machine (a reused address) or a VM whose bootstrap has not installed its key yet, and
    neither one's answer may decide the fate of our VM.
    """

    PINNED = "pinned"
    ACCEPT_NEW = "accept-new"


class ProbeOutcome(enum.StrEnum):
    """How a probe ended. Only `ok` carries facts about the VM."""

    OK = "ok"
    UNREACHABLE = "unreachable"  # refused, no route, host unreachable: at once
    TIMEOUT = "timeout"  # a stage's timeout or the hard deadline cut the probe off
    NO_BANNER = "no_banner"  # TCP accepted, no SSH banner within banner_timeout (or closed)
    AUTH_FAILED = "auth_failed"  # the server refused our key for VM_SSH_USER
    HOST_KEY_MISMATCH = "host_key_mismatch"  # not the recorded key: refused before auth
    HOST_KEY_UNKNOWN = "host_key_unknown"  # no usable recorded key and the policy needs one
    COMMAND_FAILED = "command_failed"  # the command ran, but its report is missing or garbage
    PROTOCOL_ERROR = "protocol_error"  # any other SSH-level failure (no common algorithm...)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found. Every VM fact is None unless `outcome` is `ok`; `runner_alive` may
    be None even then (the VM hides other users' processes: /proc mounted with hidepid)."""

    address: str
    outcome: ProbeOutcome
    setup_complete: bool | None = None
    setup_failed_reason: str | None = None
    run_complete_exit_code: int | None = None
    runner_alive: bool | None = None
    elapsed_seconds: float = 0.0
    detail: str = ""
    # The key the server presented, `<type> <base64>`, once the key exchange got that far.
    host_key: str | None = None

    @property
    def reachable(self) -> bool:
        return self.outcome is ProbeOutcome.OK
