"""Bootstrap extras and the job policy from settings: validation naming the variable, RUNNERS
entries overriding the global values, check-config masking proxies, `user-data` showing the
result; and the listener's own HTTP client honouring the standard proxy variables and
SSL_CERT_FILE (httpx's trust_env)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scaleset_listener.config import load_settings
from scaleset_listener.errors import ConfigError, GitHubAPIError
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy
from tests.scaleset_listener.test_cli import cli, offline_env
from tests.testsupport.forward_proxy import forward_proxy

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZmFrZQ==\n-----END CERTIFICATE-----\n"
PROXY = "http://proxyuser:hunter2@proxy.example:3128"


def env_file(tmp_path: Path, lines: str, runners: list[dict[str, Any]] | None = None) -> Path:
    path = tmp_path / "extras.env"
    entries = runners or [{"name": "cpu"}]
    path.write_text(
        "GITHUB_URL=https://github.com/acme\nGITHUB_TOKEN=ghp_not_used\n"
        f"RUNNERS={json.dumps(entries)}\n" + lines
    )
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    setup = tmp_path / "gpu-setup.sh"
    setup.write_text("#!/bin/bash\nnvidia-ctk runtime configure --runtime=docker\n")
    ca = tmp_path / "corp-ca.pem"
    ca.write_text(CA_PEM)
    return {"setup": setup, "ca": ca}


def test_globals_apply_and_a_runners_entry_overrides_them(
    tmp_path: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    runners: list[dict[str, Any]] = [
        {"name": "cpu"},
        {
            "name": "gpu",
            "vm_packages": ["nvidia-container-toolkit"],
            "vm_setup_script": str(files["setup"]),
            "runner_env": {"GPU": "1"},
            "runner_user": "gpu-runner",
            "job_policy": {"events": ["push"], "fork_pull_requests": False},
        },
    ]
    path = env_file(
        tmp_path,
        f"VM_PACKAGES=docker.io, jq\nVM_HTTPS_PROXY={PROXY}\nVM_NO_PROXY=.internal,10.0.0.0/8\n"
        f"VM_CA_CERTIFICATES={files['ca']}\nRUNNER_ENV=TZ=UTC,GPU=0\nRUNNER_SUDO=false\n",
        runners,
    )
    for name in ("VM_PACKAGES", "RUNNER_ENV", "VM_HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)

    settings = load_settings(path)

    assert settings.vm_packages == ("docker.io", "jq")
    assert settings.vm_ca_certificates is not None
    assert settings.vm_ca_certificates.text == CA_PEM
    cpu, gpu = settings.runners
    assert gpu.vm_setup_script is not None
    assert gpu.vm_setup_script.text.startswith("#!/bin/bash\nnvidia-ctk")
    assert gpu.job_policy is not None
    assert gpu.job_policy.fork_pull_requests is False
    assert cpu.job_policy is None


@pytest.mark.parametrize(
    ("lines", "runners", "message"),
    [
        ("VM_PACKAGES=-oDebug=1\n", None, "VM_PACKAGES: '-oDebug=1' is not a package name"),
        ("VM_HTTP_PROXY=proxy:3128\n", None, "VM_HTTP_PROXY: expected a URL"),
        ("VM_SETUP_SCRIPT=/nonexistent/setup.sh\n", None, "VM_SETUP_SCRIPT: cannot read"),
        ("RUNNER_USER=root\n", None, "RUNNER_USER: a user name other than root"),
        ("RUNNER_DIR=opt/runner\n", None, "RUNNER_DIR: an absolute path"),
        ("RUNNER_ENV=ACTIONS_RUNNER_HOOK_JOB_STARTED=/x.sh\n", None, "RUNNER_ENV: ACTIONS_"),
        ("", [{"name": "gpu", "job_policy": {"event": ["push"]}}], "RUNNERS[gpu].job_policy.event"),
        ("", [{"name": "gpu", "job_policy": {"refs": ["a b"]}}], "RUNNERS[gpu].job_policy.refs"),
    ],
)
def test_bad_extras_fail_at_start_naming_the_variable(
    tmp_path: Path, lines: str, runners: list[dict[str, Any]] | None, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env_file(tmp_path, lines, runners))
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"VM_CA_CERTIFICATES: .* holds no PEM certificate"):
        load_settings(env_file(tmp_path, f"VM_CA_CERTIFICATES={not_pem}\n"))


def test_check_config_masks_proxies_and_shows_files_by_path(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    runners = [{"name": "gpu", "vm_http_proxy": PROXY, "vm_setup_script": str(files["setup"])}]
    path = env_file(
        tmp_path, f"VM_HTTPS_PROXY={PROXY}\nVM_CA_CERTIFICATES={files['ca']}\n", runners
    )

    result = cli("check-config", "--env-file", str(path))

    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "VM_HTTPS_PROXY=**********" in result.stdout.splitlines()
    assert f"VM_CA_CERTIFICATES={files['ca']}" in result.stdout.splitlines()
    assert '"vm_http_proxy":"**********"' in result.stdout
    assert f'"vm_setup_script":"{files["setup"]}"' in result.stdout
    assert "BEGIN CERTIFICATE" not in result.stdout


def test_user_data_carries_the_entrys_extras_and_policy(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    runners: list[dict[str, Any]] = [
        {
            "name": "gpu",
            "vm_packages": ["nvidia-container-toolkit"],
            "vm_setup_script": str(files["setup"]),
            "runner_env": {"GPU": "1"},
            "runner_dir": "/srv/runner",
            "job_policy": {"events": ["push", "pull_request"], "fork_pull_requests": False},
        },
        {"name": "cpu"},
    ]
    path = env_file(
        tmp_path,
        f"GITHUB_RUNNER_VERSION=2.331.0\nVM_PACKAGES=jq\nRUNNER_ENV=TZ=UTC\n"
        f"VM_CA_CERTIFICATES={files['ca']}\nRUNNER_USER=ci\nRUNNER_SUDO=false\n",
        runners,
    )

    gpu = cli("user-data", "--env-file", str(path), "--scale-set", "gpu")
    cpu = cli("user-data", "--env-file", str(path), "--scale-set", "cpu")

    assert gpu.returncode == 0, gpu.stderr
    assert "VM_PACKAGES=nvidia-container-toolkit\n" in gpu.stdout
    assert "nvidia-ctk runtime configure" in gpu.stdout
    assert "RUNNER_ENV='TZ=UTC\nGPU=1'\n" in gpu.stdout
    assert 'RUNNER_DIR="$ROOT"/srv/runner\n' in gpu.stdout
    assert "RUNNER_USER=ci\n" in gpu.stdout
    assert "RUNNER_SUDO=''\n" in gpu.stdout
    assert "job_policy_check()" in gpu.stdout
    assert "POLICY_SCALE_SET=%q" in gpu.stdout
    assert cpu.returncode == 0, cpu.stderr
    assert "VM_PACKAGES=jq\n" in cpu.stdout
    assert "job_policy_check()" not in cpu.stdout
    assert "MIIBszCCAVmgAwIBAgIUZmFrZQ==" in cpu.stdout
    for script in (gpu.stdout, cpu.stdout):
        syntax = subprocess.run(
            ["bash", "-n"], input=script, capture_output=True, text=True, timeout=10, check=False
        )
        assert syntax.returncode == 0, syntax.stderr


def test_the_example_env_file_still_loads(tmp_path: Path) -> None:
    result = cli("check-config", "--env-file", str(offline_env(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "RUNNER_USER=runner" in result.stdout.splitlines()


# The listener's own traffic: httpx reads HTTP(S)_PROXY and NO_PROXY (trust_env)


@pytest.mark.timeout(30)
async def test_the_listeners_http_client_goes_through_http_proxy_unless_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with forward_proxy() as (proxy_url, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
        for name in ("http_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        channel = HttpChannel(RetryPolicy(max_attempts=1, max_wait=0.01))

        async def get(url: str) -> Any:
            answer = await channel.request(
                "GET", url, expected={200}, service=GitHubAPIError, what="meta", retry=False
            )
            return answer.json("meta")

        try:
            assert await get("http://api.github.invalid/meta") == {"via": "proxy"}
            assert seen == ["http://api.github.invalid/meta"]
            # NO_PROXY: straight to a host that does not exist, never through the proxy.
            with pytest.raises(Exception):  # noqa: B017,PT011
                await get("http://bypassed.invalid/meta")
            assert seen == ["http://api.github.invalid/meta"]
        finally:
            await channel.aclose()


def _ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA (its PEM file) and a certificate it signed for 127.0.0.1 (cert, key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp test CA")])
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=1))
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.timeout(30)
async def test_the_listeners_http_client_trusts_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _ca_and_server_cert(tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"tls": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/meta"
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)

    async def get() -> Any:
        channel = HttpChannel(RetryPolicy(max_attempts=1, max_wait=0.01))
        try:
            answer = await channel.request(
                "GET", url, expected={200}, service=GitHubAPIError, what="meta", retry=False
            )
            return answer.json("meta")
        finally:
            await channel.aclose()

    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            await get()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        assert await get() == {"tls": "ok"}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
