"""Create the service project, the service users and the catalog (idempotent), as osk-admin.

Each of nova, placement, glance and neutron gets password ``<user>-secret`` and the ``admin`` and
``service`` roles on project ``service``. No volume endpoint is registered: there is no Cinder.
"""

from __future__ import annotations

import time

import openstack

REGION = "RegionOne"
SERVICE_USERS = ("nova", "placement", "glance", "neutron")
CATALOG = (
    ("nova", "compute", "http://127.0.0.1:8774/v2.1"),
    ("placement", "placement", "http://127.0.0.1:8778"),
    ("glance", "image", "http://127.0.0.1:9292"),
    ("neutron", "network", "http://127.0.0.1:9696"),
)


def main() -> None:
    t0 = time.monotonic()
    conn = openstack.connect(cloud="osk-admin")
    idn = conn.identity
    domain = idn.find_domain("default", ignore_missing=False)
    project = idn.find_project("service", domain_id=domain.id) or idn.create_project(
        name="service", domain_id=domain.id, description="OpenStack services"
    )
    roles = {}
    for role_name in ("admin", "service"):
        roles[role_name] = idn.find_role(role_name) or idn.create_role(name=role_name)
    for user_name in SERVICE_USERS:
        user = idn.find_user(user_name, domain_id=domain.id) or idn.create_user(
            name=user_name,
            password=f"{user_name}-secret",
            domain_id=domain.id,
            default_project_id=project.id,
        )
        for role in roles.values():
            idn.assign_project_role_to_user(project, user, role)
    region = idn.find_region(REGION) or idn.create_region(id=REGION)
    for name, service_type, url in CATALOG:
        service = idn.find_service(name) or idn.create_service(
            name=name, type=service_type, enabled=True
        )
        have = {ep.interface for ep in idn.endpoints(service_id=service.id)}
        for interface in ("public", "internal", "admin"):
            if interface not in have:
                idn.create_endpoint(
                    service_id=service.id, interface=interface, url=url, region_id=region.id
                )
    print(f"service users and catalog ready ({time.monotonic() - t0:.1f}s)")


if __name__ == "__main__":
    main()
