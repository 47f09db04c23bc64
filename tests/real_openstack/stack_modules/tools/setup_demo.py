"""Seed the demo project and write the osk-demo cloud: setup_demo.py SCRATCH.

As osk-admin: project ``demo`` with user ``demo`` (role ``member``), the public flavor
``osk.small``, the public image ``osk-fake-image`` and the shared network ``osk-net``. Its
subnet lies in the loopback range and has no DHCP and no gateway: it is bookkeeping only, no
packet is ever sent on it, and an address that a test might try to reach stays on loopback.

As demo: an application credential, written into etc/clouds.yaml as cloud ``osk-demo``; then,
through that credential, the security group ``osk-sg`` and the key pair ``osk-key`` (ed25519;
the private key is written to etc/osk-key). The names are written to etc/real_cloud.json for
the test fixture (tests/testsupport/real_cloud.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import openstack
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

AUTH_URL = "http://127.0.0.1:5000/v3"
REGION = "RegionOne"
DEMO_CLOUD = "osk-demo"
NAMES = {
    "project": "demo",
    "user": "demo",
    "flavor": "osk.small",
    "image": "osk-fake-image",
    "network": "osk-net",
    "subnet": "osk-subnet",
    "subnet_cidr": "127.99.0.0/24",
    "security_group": "osk-sg",
    "keypair": "osk-key",
}

T0 = time.monotonic()


def step(text: str) -> None:
    print(f"  {time.monotonic() - T0:5.1f}s {text}", flush=True)


def seed_admin_objects(admin: openstack.connection.Connection, scratch: Path) -> None:
    idn = admin.identity
    domain = idn.find_domain("default", ignore_missing=False)
    project = idn.find_project(NAMES["project"], domain_id=domain.id) or idn.create_project(
        name=NAMES["project"], domain_id=domain.id, description="scaleset-listener tests"
    )
    user = idn.find_user(NAMES["user"], domain_id=domain.id) or idn.create_user(
        name=NAMES["user"],
        password="demo-secret",
        domain_id=domain.id,
        default_project_id=project.id,
    )
    member = idn.find_role("member", ignore_missing=False)
    idn.assign_project_role_to_user(project, user, member)
    step("project demo, user demo")

    if admin.compute.find_flavor(NAMES["flavor"]) is None:
        admin.compute.create_flavor(name=NAMES["flavor"], vcpus=1, ram=512, disk=1, is_public=True)
    step(f"flavor {NAMES['flavor']}")

    if admin.image.find_image(NAMES["image"]) is None:
        blob = scratch / "data" / "osk-fake-image.raw"
        blob.write_bytes(os.urandom(1024 * 1024))
        admin.create_image(
            NAMES["image"],
            filename=str(blob),
            disk_format="raw",
            container_format="bare",
            visibility="public",
            wait=True,
        )
        blob.unlink()
    # create_image(wait=True) may return while the image is still queued.
    deadline = time.monotonic() + 60
    while admin.image.find_image(NAMES["image"], ignore_missing=False).status != "active":
        if time.monotonic() > deadline:
            sys.exit("image did not become active")
        time.sleep(0.3)
    step(f"image {NAMES['image']}")

    net = admin.network.find_network(NAMES["network"])
    if net is None:
        net = admin.network.create_network(
            name=NAMES["network"],
            shared=True,
            provider_network_type="flat",
            provider_physical_network="physnet1",
        )
    if admin.network.find_subnet(NAMES["subnet"]) is None:
        admin.network.create_subnet(
            name=NAMES["subnet"],
            network_id=net.id,
            ip_version=4,
            cidr=NAMES["subnet_cidr"],
            enable_dhcp=False,
            gateway_ip=None,
        )
    step(f"network {NAMES['network']}, subnet {NAMES['subnet']} {NAMES['subnet_cidr']}")


def demo_password_connection() -> openstack.connection.Connection:
    # An explicit session: openstack.connect(username=...) with OS_CLIENT_CONFIG_FILE set
    # silently used the admin cloud instead.
    auth = v3.Password(
        auth_url=AUTH_URL,
        username=NAMES["user"],
        password="demo-secret",
        project_name=NAMES["project"],
        user_domain_name="Default",
        project_domain_name="Default",
    )
    return openstack.connection.Connection(
        session=ks_session.Session(auth=auth), region_name=REGION
    )


def write_demo_cloud(clouds_yaml: Path, cred_id: str, secret: str) -> None:
    doc = yaml.safe_load(clouds_yaml.read_text()) or {}
    doc.setdefault("clouds", {})[DEMO_CLOUD] = {
        "auth_type": "v3applicationcredential",
        "auth": {
            "auth_url": AUTH_URL,
            "application_credential_id": cred_id,
            "application_credential_secret": secret,
        },
        "region_name": REGION,
        "identity_api_version": 3,
    }
    tmp = clouds_yaml.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(clouds_yaml)


def seed_demo_objects(demo: openstack.connection.Connection, scratch: Path) -> None:
    sg = demo.network.find_security_group(NAMES["security_group"])
    if sg is None:
        sg = demo.network.create_security_group(
            name=NAMES["security_group"], description="SSH from loopback"
        )
        demo.network.create_security_group_rule(
            security_group_id=sg.id,
            direction="ingress",
            ethertype="IPv4",
            protocol="tcp",
            port_range_min=22,
            port_range_max=22,
            remote_ip_prefix="127.0.0.0/8",
        )
    step(f"security group {NAMES['security_group']}")

    if demo.compute.find_keypair(NAMES["keypair"]) is None:
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        key_file = scratch / "etc" / NAMES["keypair"]
        key_file.write_bytes(private)
        key_file.chmod(0o600)
        # Since microversion 2.92 Nova no longer generates key pairs: send a public key.
        demo.compute.create_keypair(name=NAMES["keypair"], public_key=public.decode())
    step(f"keypair {NAMES['keypair']}")


def main() -> None:
    scratch = Path(sys.argv[1])
    clouds_yaml = scratch / "etc" / "clouds.yaml"
    admin = openstack.connect(cloud="osk-admin")
    seed_admin_objects(admin, scratch)

    demo_pw = demo_password_connection()
    user_id = demo_pw.session.get_user_id()
    cred = demo_pw.identity.create_application_credential(
        user=user_id, name=f"osk-appcred-{int(time.time())}", description="scaleset tests"
    )
    write_demo_cloud(clouds_yaml, cred.id, cred.secret)
    step(f"application credential {cred.name} -> cloud {DEMO_CLOUD}")

    demo = openstack.connect(cloud=DEMO_CLOUD)
    seed_demo_objects(demo, scratch)
    target = dict(NAMES, cloud=DEMO_CLOUD, admin_cloud="osk-admin", clouds_yaml=str(clouds_yaml))
    (scratch / "etc" / "real_cloud.json").write_text(json.dumps(target, indent=2) + "\n")
    step("demo project seeded")


if __name__ == "__main__":
    main()
