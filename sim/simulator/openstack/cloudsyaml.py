"""clouds.yaml for the simulated cloud: `sim` (application credential) and `sim-password`."""

from __future__ import annotations

import json

from simulator.openstack.state import (
    APP_CREDENTIAL_ID,
    APP_CREDENTIAL_SECRET,
    PROJECT_NAME,
    USER_NAME,
    USER_PASSWORD,
)

APP_CREDENTIAL_CLOUD = "sim"
PASSWORD_CLOUD = f"{APP_CREDENTIAL_CLOUD}-password"


def clouds_yaml_text(base_url: str, region: str = "RegionOne") -> str:
    """YAML written by hand (every scalar JSON-quoted, which YAML reads as a string)."""
    return "\n".join(
        [
            "# Written by simulator.openstack; the cloud is gone when the simulator stops.",
            "clouds:",
            clouds_yaml_entries(base_url, APP_CREDENTIAL_CLOUD, region),
        ]
    )


def clouds_yaml_entries(base_url: str, name: str, region: str = "RegionOne") -> str:
    """The two entries of the cloud at `base_url`, named `name` (application credential) and
    `<name>-password`, as lines under `clouds:`: a second cloud added to a clouds.yaml."""
    auth_url = json.dumps(f"{base_url.rstrip('/')}/identity/v3")
    q = json.dumps
    return "\n".join(
        [
            f"  {name}:",
            "    auth_type: v3applicationcredential",
            "    auth:",
            f"      auth_url: {auth_url}",
            f"      application_credential_id: {q(APP_CREDENTIAL_ID)}",
            f"      application_credential_secret: {q(APP_CREDENTIAL_SECRET)}",
            f"    region_name: {q(region)}",
            "    interface: public",
            '    identity_api_version: "3"',
            f"  {name}-password:",
            "    auth_type: password",
            "    auth:",
            f"      auth_url: {auth_url}",
            f"      username: {q(USER_NAME)}",
            f"      password: {q(USER_PASSWORD)}",
            f"      project_name: {q(PROJECT_NAME)}",
            '      user_domain_name: "Default"',
            '      project_domain_name: "Default"',
            f"    region_name: {q(region)}",
            "    interface: public",
            '    identity_api_version: "3"',
            "",
        ]
    )
