"""The sandbox's pieces that need no namespaces: reading the bootstrap, the stub runner (its
tarball, its version, what it says when the service refuses it) and the mirror that hands it
out."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from provisioners.bootstrap import BootstrapSpec, generate_host_key, render_user_data
from simulator.runner_stub import build_runner_tarball
from simulator.sandbox.downloads import DownloadServer
from simulator.sandbox.fleet import SandboxConfig, shell_assignment, user_data_text
from tests.conftest import GitHubSimFactory
from tests.simulator.helpers import Actions


def _bootstrap() -> tuple[bytes, str, str]:
    key = generate_host_key("vm")
    script = render_user_data(
        BootstrapSpec(
            runner_name="linux-0001",
            jit_config="eyJydW5uZXJJZCI6IDF9",
            runner_version="2.330.0",
            runner_download_url="http://127.0.0.1:1/r-{version}-{arch}.tar.gz",
            ssh_host_key_private=key.private_openssh,
            ssh_host_key_public=key.public_openssh,
        )
    )
    return script, key.private_openssh, key.public_openssh


def test_the_bootstraps_values_are_read_back_including_the_multi_line_host_key() -> None:
    script, private, public = _bootstrap()
    text = user_data_text(script.decode())
    assert text is not None
    assert shell_assignment(text, "RUNNER_NAME") == "linux-0001"
    assert shell_assignment(text, "JIT_CONFIG") == "eyJydW5uZXJJZCI6IDF9"
    assert shell_assignment(text, "HOST_KEY") == private.strip()
    assert shell_assignment(text, "HOST_KEY_PUB") == public.strip()
    assert shell_assignment(text, "NO_SUCH_NAME") is None


def test_base64_user_data_is_decoded_and_foreign_user_data_is_not_a_bootstrap() -> None:
    script, _, _ = _bootstrap()
    assert user_data_text(base64.b64encode(script).decode()) == script.decode()
    assert user_data_text("#!/bin/sh\necho hello\n") is None
    assert user_data_text(None) is None


def _unpack(data: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    return into


def _listener(
    runner_dir: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """The stub's Runner.Listener run with this Python (as `env python3` would on a VM)."""
    return subprocess.run(
        [sys.executable, str(runner_dir / "bin" / "Runner.Listener"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # No behaviour file: the host's /etc must not decide how the stub behaves.
        env={**os.environ, "SCALESET_GUEST_ROOT": str(runner_dir)},
    )


def test_the_runner_tarball_has_run_sh_and_the_listener_and_a_stable_digest() -> None:
    tarball = build_runner_tarball("2.331.0")
    assert tarball.sha256 == hashlib.sha256(tarball.data).hexdigest()
    assert build_runner_tarball("2.331.0") == tarball
    with tarfile.open(fileobj=io.BytesIO(tarball.data), mode="r:gz") as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert set(members) == {"run.sh", "bin/Runner.Listener"}
    assert all(m.mode == 0o755 for m in members.values())


def test_each_version_is_its_own_tarball_and_the_stub_reports_it(tmp_path: Path) -> None:
    old, new = build_runner_tarball("2.330.0"), build_runner_tarball("2.331.0")
    assert old.sha256 != new.sha256
    for version, tarball in (("2.330.0", old), ("2.331.0", new)):
        done = _listener(_unpack(tarball.data, tmp_path / version), "--version")
        assert (done.returncode, done.stdout) == (0, f"{version}\n"), done.stderr


@pytest.mark.parametrize("version", ["latest", "v2.331.0", "2.331", ""])
def test_a_tarball_needs_a_plain_release_number(version: str) -> None:
    with pytest.raises(ValueError, match=r"not like 2\.331\.0"):
        build_runner_tarball(version)


def test_the_stub_logs_the_services_refusal_verbatim_and_exits_1(
    github_sim_factory: GitHubSimFactory, tmp_path: Path
) -> None:
    # 2.331.0 has been out for 31 days: 2.330.0 is deprecated.
    github = github_sim_factory(runner_version_age_days=31)
    actions = Actions(github)
    try:
        scale_set_id = actions.create_scale_set("linux")
        response = actions.generate_jit(scale_set_id, "runner-1")
        assert response.status_code == 200, response.text
        jit = str(response.json()["encodedJITConfig"])
    finally:
        actions.close()
    runner_dir = _unpack(build_runner_tarball("2.330.0").data, tmp_path / "runner")

    done = _listener(runner_dir, "run", "--jitconfig", jit)

    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    assert line.endswith(
        " Runner.Listener: An error occurred: Runner version v2.330.0 is deprecated and cannot "
        "receive messages."
    ), line
    [runner] = github.control.state()["runners"]
    assert (runner["name"], runner["state"], runner["version"]) == (
        "runner-1",
        "offline",
        "2.330.0",
    )


def test_the_mirror_serves_each_versions_tarball_for_any_arch() -> None:
    server = DownloadServer()
    server.start()
    try:
        digests = {}
        for version, arch in (("2.330.0", "arm64"), ("2.331.0", "x64")):
            url = server.runner_url.format(version=version, arch=arch)
            response = httpx.get(url)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/gzip"
            digests[version] = hashlib.sha256(response.content).hexdigest()
            assert digests[version] == server.tarball(version).sha256
            assert server.tarball(version) == build_runner_tarball(version)
        assert digests["2.330.0"] != digests["2.331.0"]
        assert httpx.get(server.url + "/etc/passwd").status_code == 404
        assert httpx.get(server.url + "/actions-runner-linux-x64-latest.tar.gz").status_code == 404
        assert server.downloads == [
            "/actions-runner/actions-runner-linux-arm64-2.330.0.tar.gz",
            "/actions-runner/actions-runner-linux-x64-2.331.0.tar.gz",
        ]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"subnet": "10.0.0.0/16"}, "subnet"),
        ({"ssh_port": 0}, "ssh_port"),
        ({"poll_interval": -1}, "poll_interval"),
    ],
)
def test_bad_sandbox_settings_are_refused_naming_the_setting(
    changes: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        SandboxConfig(**changes)  # type: ignore[arg-type]
