"""The sandbox's pieces that need no namespaces: reading the bootstrap, the stub runner's
tarball and the server that hands it out."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import httpx
import pytest

from provisioners.bootstrap import BootstrapSpec, generate_host_key, render_user_data
from simulator.sandbox.downloads import DownloadServer
from simulator.sandbox.fleet import SandboxConfig, shell_assignment, user_data_text
from simulator.sandbox.runner_stub import build_runner_tarball


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


def test_the_runner_tarball_has_run_sh_and_the_listener_and_a_stable_digest() -> None:
    tarball = build_runner_tarball()
    assert tarball.sha256 == hashlib.sha256(tarball.data).hexdigest()
    assert build_runner_tarball().sha256 == tarball.sha256
    with tarfile.open(fileobj=io.BytesIO(tarball.data), mode="r:gz") as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert set(members) == {"run.sh", "bin/Runner.Listener"}
    assert all(m.mode == 0o755 for m in members.values())


def test_the_download_server_serves_the_tarball_for_any_version_and_arch() -> None:
    tarball = build_runner_tarball()
    server = DownloadServer(tarball)
    server.start()
    try:
        url = server.runner_url.format(version="2.330.0", arch="arm64")
        response = httpx.get(url)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == tarball.sha256
        assert httpx.get(server.url + "/etc/passwd").status_code == 404
        assert server.downloads == [url.removeprefix(server.url)]
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
