"""Settings of the simulated cloud; the control API reads and patches them at run time."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Nova's microversion range. openstacksdk caps its Server resource at 2.100, so that is the
# highest version any client of ours negotiates; a real Nova 34 offers up to 2.104.
MIN_MICROVERSION = "2.1"
DEFAULT_MAX_MICROVERSION = "2.100"
_MICROVERSION = re.compile(r"^([1-9][0-9]*)\.(0|[1-9][0-9]*)$")


class ConfigError(ValueError):
    pass


def parse_microversion(text: str) -> tuple[int, int]:
    match = _MICROVERSION.match(text.strip())
    if match is None:
        raise ConfigError(f"invalid microversion {text!r}; expected MAJOR.MINOR such as 2.96")
    return int(match.group(1)), int(match.group(2))


DEFAULT_FIXED_SUBNET = "10.0.0.0/20"


def fixed_subnet_pool(
    cidr: object,
) -> tuple[
    ipaddress.IPv4Network, ipaddress.IPv4Address, ipaddress.IPv4Address, ipaddress.IPv4Address
]:
    """The subnet, its gateway (first host) and allocation pool (second host to last but one),
    as Neutron lays out a subnet created without explicit pools."""
    if not isinstance(cidr, str):
        raise ConfigError("fixed_subnet must be an IPv4 CIDR such as '10.0.0.0/20'")
    try:
        network = ipaddress.IPv4Network(cidr)
    except ValueError as exc:
        raise ConfigError(f"fixed_subnet {cidr!r} is not an IPv4 network: {exc}") from None
    if network.num_addresses < 16:
        raise ConfigError(f"fixed_subnet {cidr!r} is too small (at least a /28)")
    return network, network[1], network[2], network[-2]


def address_range(first: str, last: str) -> tuple[str, ...]:
    start, end = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
    return tuple(str(ipaddress.IPv4Address(n)) for n in range(int(start), int(end) + 1))


@dataclass
class Quotas:
    """Project quotas; the defaults are Nova's, Cinder's and Neutron's own defaults."""

    instances: int = 10
    cores: int = 20
    ram: int = 51200
    key_pairs: int = 100
    metadata_items: int = 128
    volumes: int = 10
    gigabytes: int = 1000
    floatingip: int = 50


@dataclass
class CloudConfig:
    # Seconds from POST /servers to ACTIVE (real fake-driver Nova: 1-8 s).
    build_delay: float = 0.2
    # Seconds from DELETE to the server being gone (real: 0.5-1.1 s).
    delete_delay: float = 0.2
    # Seconds an os-start / os-stop / reboot takes.
    power_delay: float = 0.1
    max_microversion: str = DEFAULT_MAX_MICROVERSION
    quotas: Quotas = field(default_factory=Quotas)
    # Floating IPs allocated to the project at start, unassociated.
    floating_ip_pool: tuple[str, ...] = address_range("203.0.113.10", "203.0.113.19")
    # The tenant subnet servers get their fixed addresses from. A loopback range such as
    # 127.77.0.0/16 lets simulated VMs (simulator.sandbox) listen on the address Nova reports.
    fixed_subnet: str = DEFAULT_FIXED_SUBNET
    region: str = "RegionOne"
    # Base URL written into the catalog; None: the address the server is bound to.
    public_url: str | None = None
    token_ttl: float = 24 * 3600.0
    # Seed for fault probabilities and generated values, for reproducible runs.
    seed: int | None = None
    # Most recent requests kept by GET /_sim/requests.
    request_log_size: int = 2000

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["floating_ip_pool"] = list(self.floating_ip_pool)
        return data

    def patch(self, changes: dict[str, Any]) -> None:  # noqa: C901 - a branch per field
        """Apply a partial update from the control API, validating every field first."""
        known = {f.name for f in fields(self)} - {"public_url", "request_log_size"}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}; known: {sorted(known)}")
        staged: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("build_delay", "delete_delay", "power_delay", "token_ttl"):
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{key} must be a number >= 0")
                staged[key] = float(value)
            elif key == "max_microversion":
                if not isinstance(value, str):
                    raise ConfigError("max_microversion must be a string such as '2.51'")
                if parse_microversion(value) < parse_microversion(MIN_MICROVERSION):
                    raise ConfigError(f"max_microversion must be >= {MIN_MICROVERSION}")
                staged[key] = value
            elif key == "quotas":
                staged[key] = _patched_quotas(self.quotas, value)
            elif key == "floating_ip_pool":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError("floating_ip_pool must be a list of IPv4 addresses")
                for address in value:
                    ipaddress.IPv4Address(address)
                staged[key] = tuple(value)
            elif key == "fixed_subnet":
                staged[key] = str(fixed_subnet_pool(value)[0])
            elif key == "region":
                if not isinstance(value, str) or not value:
                    raise ConfigError("region must be a non-empty string")
                staged[key] = value
            elif key == "seed":
                if value is not None and not isinstance(value, int):
                    raise ConfigError("seed must be an integer or null")
                staged[key] = value
        for key, value in staged.items():
            setattr(self, key, value)

    def copy(self) -> CloudConfig:
        clone = CloudConfig(**{f.name: getattr(self, f.name) for f in fields(self)})
        clone.quotas = Quotas(**asdict(self.quotas))
        return clone


def _patched_quotas(current: Quotas, value: Any) -> Quotas:
    if not isinstance(value, dict):
        raise ConfigError('quotas must be an object such as {"instances": 2}')
    names = {f.name for f in fields(Quotas)}
    unknown = set(value) - names
    if unknown:
        raise ConfigError(f"unknown quotas: {sorted(unknown)}; known: {sorted(names)}")
    merged = asdict(current)
    for key, limit in value.items():
        # -1 is OpenStack's "unlimited".
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < -1:
            raise ConfigError(f"quota {key} must be an integer >= -1")
        merged[key] = limit
    return Quotas(**merged)
