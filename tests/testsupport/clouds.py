"""What a provisioner test needs to know about the cloud it runs against.

The same contract tests run against the simulator's cloud and a real Nova; each side's fixture
yields one of these (tests/openstack/conftest.py). A behaviour that differs between the two
clouds is a bug in the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class CloudTarget:
    kind: Literal["simulator", "real"]
    # A clouds.yaml with an application-credential cloud, and that cloud's name (OS_CLOUD).
    clouds_yaml: Path
    cloud_name: str
    # Resources that exist in the project and that a server create can use.
    image: str
    flavor: str
    network: str
    security_group: str | None = None
    keypair: str | None = None
    # What this cloud can show (the fake-driver Nova has no Cinder and no L3 agent).
    supports_boot_from_volume: bool = False
    supports_floating_ips: bool = False
    floating_ip_pool: tuple[str, ...] = ()
    # Environment for openstacksdk: OS_CLIENT_CONFIG_FILE and OS_CLOUD.
    env: dict[str, str] = field(default_factory=dict)
    # Base URL of the simulator's control API (fault injection); None on a real cloud.
    control_url: str | None = None
