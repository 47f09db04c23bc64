"""Bootstrap extras: packages, a setup script, proxies, extra CA certificates and runner
environment, rendered and run for real in a sandbox root (stub package managers on PATH)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioners.bootstrap import BootstrapError, render_user_data
from tests.provisioners.sandbox import (
    RunnerServer,
    RunResult,
    Sandbox,
    clean_env,
    make_sandbox,
    path_without,
    serve_runner,
    sha256_hex,
    stub_runner_tarball,
)
from tests.provisioners.test_bootstrap import spec

NAME = "linux-x64-abc123"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZmFrZQ==\n-----END CERTIFICATE-----\n"
# A package manager that records its arguments and fails for a package named `broken`.
STUB_PACKAGE_MANAGER = """#!/bin/sh
echo "$(basename "$0") $*" >>{log}
case " $* " in *" broken "*) echo "E: Unable to locate package broken" >&2; exit 100 ;; esac
exit 0
"""


@pytest.fixture
def server() -> Iterator[RunnerServer]:
    with serve_runner() as running:
        running.tarball = stub_runner_tarball(0)
        yield running


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


def run(
    sandbox: Sandbox, server: RunnerServer, env: dict[str, str] | None = None, **overrides: object
) -> RunResult:
    the_spec = sandbox.spec(server.base_url, runner_sha256=sha256_hex(server.tarball), **overrides)
    return sandbox.run(render_user_data(the_spec), env)


def with_package_manager(tmp_path: Path, name: str) -> tuple[dict[str, str], Path]:
    """An environment whose PATH finds a stub `name` first, and the stub's log."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "package-manager.log"
    (stubs / name).write_text(STUB_PACKAGE_MANAGER.format(log=shlex.quote(str(log))))
    (stubs / name).chmod(0o755)
    hidden = [pm for pm in ("apt-get", "dnf", "yum", "zypper") if pm != name]
    env = clean_env()
    env["PATH"] = f"{stubs}:{path_without(tmp_path / 'bin', *hidden)}"
    return env, log


# Rendering and validation


def test_nothing_is_rendered_for_extras_not_asked_for() -> None:
    text = render_user_data(spec()).decode()
    for absent in ("install_packages", "update-ca-certificates", "/etc/environment", ".setup-"):
        assert absent not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vm_packages": ("-oAPT::x=1",)}, "vm_packages"),
        ({"vm_packages": ("two words",)}, "vm_packages"),
        ({"vm_http_proxy": "proxy:3128"}, "vm_http_proxy is not a URL"),
        ({"vm_https_proxy": "http://user:pw@proxy:3128 x"}, "vm_https_proxy is not a URL"),
        ({"vm_no_proxy": "a, b"}, "vm_no_proxy"),
        ({"vm_ca_certificates": "not a certificate"}, "vm_ca_certificates"),
        ({"runner_env": {"1X": "y"}}, "runner_env"),
        ({"runner_env": {"ACTIONS_RUNNER_HOOK_JOB_STARTED": "/x.sh"}}, "job hooks"),
        ({"runner_env": {"X": "a\nb"}}, "line break"),
    ],
)
def test_extras_that_cannot_work_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(BootstrapError, match=message) as raised:
        spec(**overrides)
    assert "pw@" not in str(raised.value)


def test_a_proxy_url_stays_out_of_the_repr() -> None:
    assert "secret" not in repr(spec(vm_http_proxy="http://u:secret@proxy.example:3128"))


# Run


@pytest.mark.parametrize("manager", ["apt-get", "dnf", "zypper"])
def test_packages_are_installed_with_the_images_package_manager(
    tmp_path: Path, sandbox: Sandbox, server: RunnerServer, manager: str
) -> None:
    env, log = with_package_manager(tmp_path, manager)

    result = run(sandbox, server, env, vm_packages=("docker.io", "jq=1.6*"))

    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert calls[-1].startswith(f"{manager} ")
    assert calls[-1].endswith(" docker.io jq=1.6*")
    assert f"installing docker.io jq=1.6* with {manager}" in result.stdout
    assert sandbox.stub_calls() == 1


def test_a_package_that_fails_to_install_is_a_setup_failure_with_the_reason(
    tmp_path: Path, sandbox: Sandbox, server: RunnerServer
) -> None:
    env, _log = with_package_manager(tmp_path, "apt-get")

    result = run(sandbox, server, env, vm_packages=("jq", "broken"))

    assert result.returncode == 1
    reason = "installing jq broken with apt-get failed with exit 100"
    assert (sandbox.sentinels / "setup-failed").read_text() == reason + "\n"
    assert f"SCALESET-RUNNER setup-failed runner={NAME} reason={reason}" in result.stdout
    assert sandbox.stub_calls() == 0
    assert sandbox.poweroff_calls() == 1


def test_without_a_package_manager_setup_fails_saying_so(
    tmp_path: Path, sandbox: Sandbox, server: RunnerServer
) -> None:
    env = clean_env()
    env["PATH"] = path_without(tmp_path / "bin", "apt-get", "dnf", "yum", "zypper")

    result = run(sandbox, server, env, vm_packages=("jq",))

    assert result.returncode == 1
    assert "no package manager (apt-get, dnf, yum or zypper) to install jq" in result.stdout


def test_the_setup_script_runs_as_root_before_the_runner_and_its_failure_stops_setup(
    tmp_path: Path, sandbox: Sandbox, server: RunnerServer
) -> None:
    seen = tmp_path / "seen"
    script = f'echo "$RUNNER_USER $RUNNER_DIR $(cat "$RUNNER_DIR/.env")" >{seen}\n'

    ok = run(sandbox, server, vm_setup_script=script, runner_env={"FOO": "bar"})

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert seen.read_text().split() == [
        sandbox.spec("").runner_user,
        str(sandbox.runner_dir),
        "FOO=bar",
    ]
    assert not list(sandbox.sentinels.glob(".setup-script*"))

    failing = make_sandbox(tmp_path / "second")
    result = run(failing, server, vm_setup_script="#!/bin/sh\necho nvidia-smi: not found\nexit 3\n")
    assert result.returncode == 1
    reason = "the setup script failed with exit 3"
    assert (failing.sentinels / "setup-failed").read_text() == reason + "\n"
    assert "nvidia-smi: not found" in result.stdout
    assert failing.stub_calls() == 0


def test_proxies_reach_the_runner_env_and_etc_environment_and_no_proxy_is_honoured(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    # A proxy nobody listens on: the download from 127.0.0.1 works only through no_proxy.
    proxy = "http://user:secret@127.0.0.1:9"
    baked = sandbox.runner_dir
    baked.mkdir(parents=True)
    (baked / ".env").write_text("LANG=C.UTF-8\nhttp_proxy=http://old.example:80\n")

    result = run(
        sandbox,
        server,
        vm_http_proxy=proxy,
        vm_https_proxy=proxy,
        vm_no_proxy="127.0.0.1,localhost",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "secret" not in result.stdout + result.stderr
    env = (sandbox.runner_dir / ".env").read_text().splitlines()
    assert env == [
        "LANG=C.UTF-8",
        f"http_proxy={proxy}",
        f"HTTP_PROXY={proxy}",
        f"https_proxy={proxy}",
        f"HTTPS_PROXY={proxy}",
        "no_proxy=127.0.0.1,localhost",
        "NO_PROXY=127.0.0.1,localhost",
    ]
    etc = (sandbox.root / "etc" / "environment").read_text().splitlines()
    assert f"https_proxy={proxy}" in etc
    assert oct((sandbox.root / "etc" / "environment").stat().st_mode & 0o777) == "0o644"


def test_extra_ca_certificates_are_installed_and_named_for_node(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    result = run(sandbox, server, vm_ca_certificates=CA_PEM + CA_PEM)

    assert result.returncode == 0, result.stdout + result.stderr
    debian = sandbox.root / "usr/local/share/ca-certificates/scaleset-listener.crt"
    redhat = sandbox.root / "etc/pki/ca-trust/source/anchors/scaleset-listener.pem"
    [installed] = [path for path in (debian, redhat) if path.exists()]
    assert installed.read_text() == (CA_PEM + CA_PEM).strip() + "\n"
    assert f"trusting 2 extra CA certificate(s) from {installed}" in result.stdout
    assert f"NODE_EXTRA_CA_CERTS={installed}" in (sandbox.runner_dir / ".env").read_text()
    assert os.stat(installed).st_mode & 0o777 == 0o644
