"""`check-config --online` against the simulated GitHub and the simulated cloud, over sockets.

A good configuration passes every check and changes nothing (no scale set, no server); each bad
setting fails its own line, named, and the others still run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scaleset_listener.preflight import Check, exit_code, preflight
from simulator.github.config import DEFAULT_PAT
from tests.testsupport.world import World, simulated_world

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]

LIMITED_PAT = "ghp_read_org_only"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    github = {"pats": (DEFAULT_PAT, LIMITED_PAT), "pats_without_runner_admin": (LIMITED_PAT,)}
    with simulated_world(tmp_path, monkeypatch, github=github) as running:
        yield running


def by_setting(checks: list[Check]) -> dict[str, Check]:
    return {check.setting: check for check in checks}


def failed(checks: list[Check]) -> dict[str, str]:
    return {check.setting: check.detail for check in checks if check.status == "FAIL"}


async def run(world: World, **overrides: Any) -> list[Check]:
    return await preflight(world.settings(**overrides))


async def test_a_good_configuration_passes_and_changes_nothing(world: World) -> None:
    checks = await run(
        world,
        openstack_security_groups=(world.cloud.security_group,),
        openstack_keypair=world.cloud.keypair,
        openstack_floating_ips=world.cloud.floating_ip_pool[:1],
    )
    assert failed(checks) == {}
    assert exit_code(checks) == 0
    found = by_setting(checks)
    assert found["GITHUB_TOKEN"].status == "ok"
    assert found["RUNNERS[linux].runner_group"].detail == "Default (id 1)"
    assert found["RUNNERS[linux]"].detail.startswith("not registered: would create it")
    assert (
        found["GITHUB_RUNNER_VERSION"].detail == "2.331.0 (latest from GitHub's downloads endpoint)"
    )
    assert found["OPENSTACK_IMAGE"].detail.startswith(f"{world.cloud.image} (id ")
    assert found["OPENSTACK_NETWORK"].detail.startswith(f"{world.cloud.network} (id ")
    assert found["OPENSTACK_SECURITY_GROUPS"].status == "ok"
    assert found["OPENSTACK_KEYPAIR"].status == "ok"
    assert found["OPENSTACK_FLOATING_IPS"].detail.endswith("free)")
    assert "instances 3 of" in found["RUNNERS (max_runners)"].detail
    assert "bytes base64-encoded" in found["CLOUD_INIT_TEMPLATE"].detail
    assert "compute API" in found["OS_CLOUD"].detail
    # Read-only: nothing was created on either side.
    assert world.github.control.state()["scale_sets"] == []
    assert world.servers() == []


async def test_an_existing_scale_set_is_found(world: World) -> None:
    created = world.github.control.create_scale_set("linux", labels=["linux"])
    checks = await run(world)
    assert by_setting(checks)["RUNNERS[linux]"].detail == f"scale set id {created['id']} exists"


async def test_a_bad_image_fails_naming_the_setting(world: World) -> None:
    checks = await run(world, openstack_image="no-such-image")
    assert failed(checks) == {
        "OPENSTACK_IMAGE": "no image named 'no-such-image' (nor with that id)"
    }
    assert exit_code(checks) == 2


async def test_a_per_scale_set_image_is_named_by_its_entry(world: World) -> None:
    checks = await run(world, runners=[{"name": "linux", "image": "gone", "max_runners": 1}])
    assert list(failed(checks)) == ["RUNNERS[linux].image"]


async def test_a_missing_network_fails_naming_the_setting(world: World) -> None:
    checks = await run(world, openstack_network="no-such-net")
    assert list(failed(checks)) == ["OPENSTACK_NETWORK"]
    assert "no network named 'no-such-net'" in failed(checks)["OPENSTACK_NETWORK"]


async def test_a_tight_quota_fails_naming_max_runners(world: World) -> None:
    world.control.set_quotas(instances=2)
    checks = await run(world, runners=[{"name": "linux", "max_runners": 3}])
    assert failed(checks) == {
        "RUNNERS (max_runners)": "max_runners of every scale set do not fit: instances: 3 "
        "needed, 2 free (0 of 2 in use)"
    }


async def test_the_quota_counts_every_scale_set_of_the_flavor(world: World) -> None:
    world.control.set_quotas(instances=4)
    checks = await run(
        world, runners=[{"name": "a", "max_runners": 2}, {"name": "b", "max_runners": 3}]
    )
    assert "instances: 5 needed, 4 free" in failed(checks)["RUNNERS (max_runners)"]


async def test_a_token_without_the_runner_admin_scope_says_what_is_missing(world: World) -> None:
    checks = await run(world, github_token=LIMITED_PAT)
    problems = failed(checks)
    assert "the token lacks the 'admin:org' scope (classic PAT)" in problems["GITHUB_TOKEN"]
    assert "403" in problems["GITHUB_TOKEN"]
    assert LIMITED_PAT not in "\n".join(check.line() for check in checks)
    # The scale sets cannot be looked at without a token; the cloud still is.
    assert by_setting(checks)["RUNNERS[linux]"].status == "skip"
    assert by_setting(checks)["OPENSTACK_IMAGE"].status == "ok"


@pytest.mark.parametrize(
    ("path", "granted", "missing"),
    [
        (
            "acme",
            {"organization_self_hosted_runners": "read"},
            "the GitHub App lacks the organization permission 'Self-hosted runners: read and",
        ),
        (
            "acme/app",
            {"organization_self_hosted_runners": "write"},
            "the GitHub App lacks the repository permission 'Administration: read and write'",
        ),
    ],
)
async def test_an_app_without_the_runner_permission_says_which_one(
    world: World, path: str, granted: dict[str, str], missing: str
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    world.github.control.add_app(4242, 77, public_pem.decode(), permissions=granted)
    checks = await run(
        world,
        github_url=f"{world.github.base_url}/{path}",
        github_token="",
        github_app_id="4242",
        github_app_installation_id=77,
        github_app_private_key=private_pem,
    )
    problem = failed(checks)["GITHUB_APP_ID"]
    assert missing in problem
    assert "403" in problem
    assert "PRIVATE KEY" not in "\n".join(check.line() for check in checks)
    assert by_setting(checks)["RUNNERS[linux]"].status == "skip"


async def test_an_unknown_runner_group_fails(world: World) -> None:
    checks = await run(world, runners=[{"name": "linux", "runner_group": "nope"}])
    assert "no runner group named 'nope'" in failed(checks)["RUNNERS[linux].runner_group"]


async def test_an_unknown_pinned_runner_version_fails(world: World) -> None:
    checks = await run(world, github_runner_version="2.300.0")
    assert "no such runner release" in failed(checks)["GITHUB_RUNNER_VERSION"]


async def test_a_pin_older_than_a_full_page_of_releases_is_called_too_old(world: World) -> None:
    # GitHub lists a page of 100: a pin older than all of them may exist, but is long refused.
    for minor in range(400, 500):
        world.github.control.announce_runner_release(f"2.{minor}.0", age_days=(500 - minor) * 7)
    checks = await run(world, github_runner_version="2.320.0")
    problem = failed(checks)["GITHUB_RUNNER_VERSION"]
    assert "is older than 2.400.0, the oldest of GitHub's newest 100 runner releases" in problem
    assert "GitHub refuses runners 30 days after a newer release" in problem
    # Within the page, a version GitHub does not list is still "no such release".
    checks = await run(world, github_runner_version="2.450.1")
    assert "no such runner release" in failed(checks)["GITHUB_RUNNER_VERSION"]


async def test_an_unreachable_github_is_reported_and_the_cloud_still_checked(
    world: World,
) -> None:
    world.github.stop()
    checks = await run(world)
    assert failed(checks)["GITHUB_TOKEN"].startswith("GitHub unreachable")
    assert "GITHUB_RUNNER_VERSION" in failed(checks)
    assert by_setting(checks)["OPENSTACK_FLAVOR"].status == "ok"


def test_the_command_prints_one_line_per_check_and_exits_2(world: World, tmp_path: Path) -> None:
    env_file = tmp_path / "listener.env"
    env_file.write_text(
        f"GITHUB_URL={world.github.base_url}/acme\n"
        f"GITHUB_TOKEN={world.github.config.pats[0]}\n"
        'RUNNERS=[{"name": "linux", "max_runners": 2}]\n'
        f"OPENSTACK_IMAGE={world.cloud.image}\n"
        f"OPENSTACK_FLAVOR={world.cloud.flavor}\n"
        "OPENSTACK_NETWORK=no-such-net\n"
        + "".join(f"{name}={value}\n" for name, value in world.cloud.env.items())
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleset_listener",
            "check-config",
            "--online",
            "--env-file",
            str(env_file),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAIL  OPENSTACK_NETWORK") for line in lines), done.stdout
    assert any(line.startswith("ok    OPENSTACK_IMAGE") for line in lines), done.stdout
    assert all(line.split()[0] in ("ok", "warn", "FAIL", "skip") for line in lines), done.stdout
    assert world.github.config.pats[0] not in done.stdout + done.stderr


async def test_an_unknown_flavor_fails_and_the_quota_is_skipped(world: World) -> None:
    checks = await run(world, openstack_flavor="no-such-flavor")
    assert list(failed(checks)) == ["OPENSTACK_FLAVOR"]
    assert by_setting(checks)["RUNNERS (max_runners)"].status == "skip"


async def test_a_template_too_large_for_nova_fails(world: World, tmp_path: Path) -> None:
    template = tmp_path / "big.sh.j2"
    template.write_text("#!/bin/sh\n# " + "x" * 60000 + "\n{{ jit_config }}\n")
    checks = await run(world, cloud_init_template=template)
    assert "Nova takes at most 65535" in failed(checks)["CLOUD_INIT_TEMPLATE"]
