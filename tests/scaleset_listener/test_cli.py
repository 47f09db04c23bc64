"""The `scaleset-listener` command as users run it: a subprocess configured by an env file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.conftest import GitHubSim, GitHubSimFactory

EXAMPLE_ENV = Path(__file__).parents[2] / "examples" / ".env"
FAST = (
    "RETRY_MAX_WAIT=0.05\nRECOVERY_BACKOFF_MAX=0.2\nSESSION_CONFLICT_RETRY_INTERVAL=0.1\n"
    "ENABLE_RECONCILIATION=false\n"
)


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scaleset_listener", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_env(tmp_path: Path, sim: GitHubSim, extra: str = "") -> Path:
    path = tmp_path / "listener.env"
    path.write_text(
        f"GITHUB_URL={sim.config_url()}\n"
        f"GITHUB_TOKEN={sim.pat}\n"
        'RUNNERS=[{"name": "linux", "max_runners": 4}]\n' + FAST + extra
    )
    return path


@pytest.fixture
def listener_process() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def start(env_file: Path, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "scaleset_listener", "run", "--env-file", str(env_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    return process


def live_session_count(state: dict[str, object]) -> int:
    sessions = state["sessions"]
    assert isinstance(sessions, list)
    return sum(1 for session in sessions if not session["ghost"])


# --- check-config ----------------------------------------------------------------------------


def test_check_config_prints_the_example_settings_with_secrets_masked() -> None:
    result = cli("check-config", "--env-file", str(EXAMPLE_ENV))
    assert result.returncode == 0, result.stderr
    assert "GITHUB_TOKEN=**********" in result.stdout
    assert "ghp_replace_me" not in result.stdout
    assert "MANAGE_RUNNER_SCALE_SETS=false" in result.stdout
    assert "# scope: organization, REST API: https://api.github.com" in result.stdout


def test_check_config_exits_2_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text(EXAMPLE_ENV.read_text() + "GITHUB_TOKNE=typo\n")
    result = cli("check-config", "--env-file", str(env))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "GITHUB_TOKNE: unknown setting" in line


def test_check_config_refuses_an_unreadable_app_key(tmp_path: Path) -> None:
    key = tmp_path / "app.pem"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nbroken\n-----END RSA PRIVATE KEY-----\n")
    env = tmp_path / "app.env"
    env.write_text(
        'GITHUB_URL=https://github.com/acme\nRUNNERS=[{"name": "x"}]\n'
        f"GITHUB_APP_ID=1\nGITHUB_APP_INSTALLATION_ID=2\nGITHUB_APP_PRIVATE_KEY_PATH={key}\n"
    )
    result = cli("check-config", "--env-file", str(env))
    assert result.returncode == 2
    assert "GITHUB_APP_PRIVATE_KEY" in result.stderr


def test_run_without_settings_names_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = cli("run", "--env-file", str(empty))
    assert result.returncode == 2
    assert "GITHUB_URL: required but not set" in result.stderr
    assert "RUNNERS: required but not set" in result.stderr


# --- run ---------------------------------------------------------------------------------------


def test_sigterm_deletes_the_session_and_exits_0(
    github_sim_factory: GitHubSimFactory,
    tmp_path: Path,
    listener_process: list[subprocess.Popen[str]],
) -> None:
    sim = github_sim_factory()
    process = start(write_env(tmp_path, sim), listener_process)
    sim.control.wait_for_state(lambda s: live_session_count(s) == 1, timeout=15)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    state = sim.control.state()
    assert live_session_count(state) == 0
    assert state["counters"]["sessions_deleted"] == 1
    assert (
        "Runner Set Statistics - Available: 0, Acquired: 0, Assigned: 0, Running: 0, "
        "Registered Runners: 0, Busy: 0, Idle: 0"
    ) in stderr
    assert sim.pat not in stderr
    # No cloud in this env file: `run` says which settings are missing, and only logs.
    assert "no_cloud_configured" in stderr
    assert "OPENSTACK_IMAGE" in stderr
    assert "OPENSTACK_FLAVOR" in stderr


def test_sigterm_finishes_the_message_in_hand_first(
    github_sim_factory: GitHubSimFactory,
    tmp_path: Path,
    listener_process: list[subprocess.Popen[str]],
) -> None:
    sim = github_sim_factory()
    process = start(write_env(tmp_path, sim), listener_process)
    sim.control.wait_for_state(lambda s: live_session_count(s) == 1, timeout=15)
    # The acknowledgement will take a while: the signal arrives while it is in flight.
    sim.control.add_fault("delete_message", kind="delay", delay=1.0, times=1)
    sim.control.enqueue_jobs(["linux"], count=1)
    sim.control.wait_for_request(
        lambda r: r["endpoint"] == "get_message" and r["status"] == 200, timeout=10
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    acks = sim.control.requests(endpoint="delete_message")
    deletes = sim.control.requests(endpoint="delete_session")
    assert [ack["status"] for ack in acks] == [204]
    assert [delete["status"] for delete in deletes] == [204]
    assert acks[0]["seq"] < deletes[0]["seq"]
    # The scaler had the demand before the ack went out; the message ends after the signal.
    before, after = stderr.split("shutdown_requested", 1)
    assert "desired_runners" in before
    assert "message_handled" in after


def test_managed_scale_set_is_deleted_on_sigterm(
    github_sim_factory: GitHubSimFactory,
    tmp_path: Path,
    listener_process: list[subprocess.Popen[str]],
) -> None:
    sim = github_sim_factory()
    process = start(write_env(tmp_path, sim, "MANAGE_RUNNER_SCALE_SETS=true\n"), listener_process)
    sim.control.wait_for_state(lambda s: live_session_count(s) == 1, timeout=15)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert sim.control.state()["scale_sets"] == []


def test_github_app_auth_end_to_end_with_a_key_file(
    github_sim_factory: GitHubSimFactory,
    tmp_path: Path,
    listener_process: list[subprocess.Popen[str]],
) -> None:
    sim = github_sim_factory()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "app.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sim.control.add_app(4242, 77, public_pem.decode())
    env = tmp_path / "app.env"
    env.write_text(
        f'GITHUB_URL={sim.config_url()}\nRUNNERS=[{{"name": "linux"}}]\n'
        f"GITHUB_APP_ID=4242\nGITHUB_APP_INSTALLATION_ID=77\n"
        f"GITHUB_APP_PRIVATE_KEY_PATH={key_file}\n" + FAST
    )
    process = start(env, listener_process)
    sim.control.wait_for_state(lambda s: live_session_count(s) == 1, timeout=15)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    (minted,) = sim.control.requests(endpoint="access_tokens")
    assert (minted["token_kind"], minted["status"]) == ("app_jwt", 201)
    (registration,) = sim.control.requests(endpoint="registration_token")
    assert (registration["token_kind"], registration["status"]) == ("installation", 201)
    assert "PRIVATE KEY" not in stderr


def test_the_process_environment_wins_over_the_env_file(
    github_sim_factory: GitHubSimFactory, tmp_path: Path
) -> None:
    sim = github_sim_factory()
    env = write_env(tmp_path, sim)
    result = subprocess.run(
        [sys.executable, "-m", "scaleset_listener", "check-config", "--env-file", str(env)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={**os.environ, "LOG_FORMAT": "json"},
    )
    assert result.returncode == 0, result.stderr
    assert "LOG_FORMAT=json" in result.stdout


# --- user-data and the probe's key -----------------------------------------------------------


def probe_key_pair(tmp_path: Path) -> tuple[Path, str]:
    """An ed25519 client key file and its `<type> <base64>` public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "probe_ed25519"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return path, public.decode()


def offline_env(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "offline.env"
    path.write_text(
        "GITHUB_URL=https://github.com/acme\nGITHUB_TOKEN=ghp_not_used\n"
        'RUNNERS=[{"name": "linux", "labels": ["gpu"]}, {"name": "arm"}]\n' + extra
    )
    return path


def test_user_data_prints_the_bootstrap_with_the_probe_key_and_no_secret(tmp_path: Path) -> None:
    key_path, public = probe_key_pair(tmp_path)
    env = offline_env(
        tmp_path, f"GITHUB_RUNNER_VERSION=2.331.0\nVM_SSH_PRIVATE_KEY_PATH={key_path}\n"
    )

    result = cli("user-data", "--env-file", str(env), "--scale-set", "linux")

    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("#!/bin/bash\n")
    assert "JIT_CONFIG='<JIT_CONFIG>'\n" in script
    assert "RUNNER_VERSION=2.331.0\n" in script
    assert "RUNNER_NAME=linux-" in script
    assert "RUNNER_LABELS=linux,gpu\n" in script
    assert "PROBE_USER=scaleset-probe\n" in script
    entry = (
        f'restrict,command="/usr/local/libexec/scaleset-probe /var/lib/scaleset-runner" {public}'
    )
    assert f"PROBE_ENTRY='{entry}'\n" in script
    assert "PRIVATE KEY" not in script
    assert "<SSH_HOST_KEY_PRIVATE" in script
    # What bash would run: it parses.
    syntax = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, timeout=10, check=False
    )
    assert syntax.returncode == 0, syntax.stderr


def test_user_data_takes_a_given_public_key_without_a_private_one(tmp_path: Path) -> None:
    _, public = probe_key_pair(tmp_path)
    env = offline_env(tmp_path, f"VM_SSH_PUBLIC_KEY={public} operator@laptop\n")

    result = cli(
        "user-data", "--env-file", str(env), "--scale-set", "arm", "--runner-version", "2.330.0"
    )

    assert result.returncode == 0, result.stderr
    assert f" {public}'\n" in result.stdout
    assert "operator@laptop" not in result.stdout
    assert "RUNNER_VERSION=2.330.0\n" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--scale-set: RUNNERS has several scale sets: linux, arm"),
        (("--scale-set", "x86"), "--scale-set: no scale set 'x86'"),
        (("--scale-set", "arm"), "--runner-version: GITHUB_RUNNER_VERSION=latest"),
        (("--scale-set", "arm", "--runner-version", "next"), "--runner-version: 'next'"),
    ],
)
def test_user_data_says_what_it_needs(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = cli("user-data", "--env-file", str(offline_env(tmp_path)), *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


@pytest.mark.parametrize(
    ("setting", "variable"),
    [
        ("VM_SSH_PUBLIC_KEY=ssh-ed25519 AAAA-not-base64", "VM_SSH_PUBLIC_KEY"),
        ("VM_SSH_PUBLIC_KEY=just-one-word", "VM_SSH_PUBLIC_KEY"),
        ("VM_SSH_PRIVATE_KEY_PATH={tmp}/missing", "VM_SSH_PRIVATE_KEY_PATH"),
        ("VM_SSH_PRIVATE_KEY_PATH={tmp}/garbage", "VM_SSH_PRIVATE_KEY_PATH"),
        ("VM_SSH_PUBLIC_KEY={other}\nVM_SSH_PRIVATE_KEY_PATH={key}", "VM_SSH_PUBLIC_KEY"),
        ("VM_SSH_USER=probe user", "VM_SSH_USER"),
    ],
)
def test_a_probe_key_that_cannot_work_fails_at_start_naming_the_variable(
    tmp_path: Path, setting: str, variable: str
) -> None:
    (tmp_path / "other").mkdir()
    _, other = probe_key_pair(tmp_path / "other")
    key_path, _ = probe_key_pair(tmp_path)
    (tmp_path / "garbage").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    line = setting.format(tmp=tmp_path, key=key_path, other=other)
    env = offline_env(tmp_path, "GITHUB_RUNNER_VERSION=2.331.0\n" + line + "\n")

    for command in (("check-config",), ("user-data", "--scale-set", "arm")):
        result = cli(*command, "--env-file", str(env))
        assert result.returncode == 2, (command, result.stdout)
        assert variable in result.stderr
        assert "PRIVATE KEY" not in result.stderr
