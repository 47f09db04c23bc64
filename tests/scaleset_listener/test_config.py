from pathlib import Path

import pytest

from scaleset_listener.cli import effective_settings
from scaleset_listener.config import load_settings, parse_duration

EXAMPLE_ENV = Path(__file__).parents[2] / "examples" / ".env"
MINIMAL = (
    'GITHUB_URL=https://github.com/acme\nGITHUB_TOKEN=ghp_secret123\nRUNNERS=[{"name": "linux"}]\n'
)


def write_env(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "test.env"
    path.write_text(text)
    return path


def test_the_documented_example_env_file_loads() -> None:
    settings = load_settings(EXAMPLE_ENV)
    assert settings.runners[0].name == "linux-x64"
    assert settings.manage_runner_scale_sets is False
    assert settings.enable_reconciliation is True


def test_every_setting_is_documented_in_the_example_env_file() -> None:
    from scaleset_listener.config import Settings

    documented = {
        line.split("=", 1)[0]
        for line in EXAMPLE_ENV.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert documented == {name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300.0),
        ("1.5", 1.5),
        ("300s", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        (" 2M ", 120.0),
        (7, 7.0),
    ],
)
def test_durations_accept_seconds_and_go_style_strings(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m5", "", "-3", "1h 30m", "s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("FOO=1", "FOO: unknown setting"),
        ("RETRY_MAX_WAIT=5x", "RETRY_MAX_WAIT: '5x' is not a duration"),
        ("LOG_FORMAT=xml", "LOG_FORMAT:"),
        ("MANAGE_RUNNER_SCALE_SETS=perhaps", "MANAGE_RUNNER_SCALE_SETS:"),
        ('RUNNERS=[{"name": "a", "min_runners": 5, "max_runners": 2}]', "RUNNERS[a]"),
        ('RUNNERS=[{"name": "a"}, {"name": "A"}]', "RUNNERS: "),
        ('RUNNERS=[{"name": "bad name"}]', "RUNNERS[0].name"),
        ('RUNNERS=[{"name": "a", "flavour": "x"}]', "RUNNERS[a].flavour: unknown setting"),
        ("RUNNERS=not json", "RUNNERS"),
        ("GITHUB_URL=https://github.com/a/b/c", "GITHUB_URL:"),
        ("VM_SSH_PORT=0", "VM_SSH_PORT:"),
        ("VM_SSH_PORT=65536", "VM_SSH_PORT:"),
        ("GITHUB_APP_ID=12", "GitHub App auth is incomplete: missing GITHUB_APP_INSTALLATION_ID"),
        ("VM_IDLE_SHUTDOWN=1m", "VM_IDLE_SHUTDOWN: 0 (off) or at least IDLE_RUNNER_TIMEOUT"),
        ("VM_IDLE_SHUTDOWN=5x", "VM_IDLE_SHUTDOWN: '5x' is not a duration"),
        ("VM_LIFETIME_GRACE=-1", "VM_LIFETIME_GRACE:"),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_variable(
    tmp_path: Path, line: str, named: str
) -> None:
    from scaleset_listener.errors import ConfigError

    lines = [
        existing
        for existing in MINIMAL.splitlines()
        if existing.split("=")[0] != line.split("=")[0]
    ]
    env = write_env(tmp_path, "\n".join([*lines, line]) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_missing_required_settings_are_named(tmp_path: Path) -> None:
    from scaleset_listener.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(write_env(tmp_path, "GITHUB_TOKEN=x\n"))
    assert "GITHUB_URL: required but not set" in str(caught.value)
    assert "RUNNERS: required but not set" in str(caught.value)


def test_no_credentials_is_an_error(tmp_path: Path) -> None:
    from scaleset_listener.errors import ConfigError

    env = write_env(tmp_path, MINIMAL.replace("GITHUB_TOKEN=ghp_secret123\n", ""))
    with pytest.raises(ConfigError, match="no GitHub credentials"):
        load_settings(env)


def test_process_environment_overrides_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = load_settings(write_env(tmp_path, MINIMAL + "LOG_LEVEL=error\n"))
    assert settings.log_level.value == "debug"


def test_orka_style_runner_entries_carry_the_runner_group_id(tmp_path: Path) -> None:
    env = write_env(
        tmp_path, MINIMAL.replace('[{"name": "linux"}]', '[{"name": "linux", "id": 4}]')
    )
    assert load_settings(env).runners[0].runner_group_id == 4


def test_scale_set_labels_start_with_its_name_without_duplicates(tmp_path: Path) -> None:
    env = write_env(
        tmp_path,
        MINIMAL.replace(
            '[{"name": "linux"}]', '[{"name": "linux", "labels": ["gpu", "linux", " "]}]'
        ),
    )
    assert load_settings(env).runners[0].effective_labels == ("linux", "gpu")


def test_secrets_never_appear_in_reprs_or_the_printed_settings(tmp_path: Path) -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\\nsecretkeymaterial\\n-----END RSA PRIVATE KEY-----"
    env = write_env(
        tmp_path,
        MINIMAL
        + f'GITHUB_APP_ID=12\nGITHUB_APP_INSTALLATION_ID=34\nGITHUB_APP_PRIVATE_KEY="{pem}"\n',
    )
    settings = load_settings(env)
    printed = "\n".join(effective_settings(settings))
    for text in (repr(settings), str(settings), printed):
        assert "ghp_secret123" not in text
        assert "secretkeymaterial" not in text
    assert "GITHUB_TOKEN=**********" in printed


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    from scaleset_listener.errors import ConfigError

    with pytest.raises(ConfigError, match="--env-file"):
        load_settings(tmp_path / "absent.env")


def test_openstack_variables_in_the_env_file_go_to_openstacksdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("OS_REGION_NAME", "from-process")
    env = write_env(
        tmp_path,
        MINIMAL + "OS_CLOUD=my-cloud\nOS_REGION_NAME=from-file\n",
    )
    monkeypatch.delenv("OS_CLOUD", raising=False)
    load_settings(env)
    assert os.environ["OS_CLOUD"] == "my-cloud"
    assert os.environ["OS_REGION_NAME"] == "from-process"
    monkeypatch.delenv("OS_CLOUD")


def test_lists_and_metadata_take_the_plain_comma_forms(tmp_path: Path) -> None:
    env = write_env(
        tmp_path,
        MINIMAL
        + "OPENSTACK_SECURITY_GROUPS=default, ssh\n"
        + "OPENSTACK_FLOATING_IPS=203.0.113.10,203.0.113.11\n"
        + "OPENSTACK_SERVER_METADATA=team=ci, cost-center=42\n",
    )
    settings = load_settings(env)
    assert settings.openstack_security_groups == ("default", "ssh")
    assert settings.openstack_floating_ips == ("203.0.113.10", "203.0.113.11")
    assert settings.openstack_server_metadata == {"team": "ci", "cost-center": "42"}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("OPENSTACK_FLOATING_IPS=203.0.113.10,nope", "OPENSTACK_FLOATING_IPS: 'nope' is not an IP"),
        ("OPENSTACK_SERVER_METADATA=team", "OPENSTACK_SERVER_METADATA: 'team' is not key=value"),
        ("RUNNER_SHA256=abc", "RUNNER_SHA256: expected 64 hex digits"),
        ("OPENSTACK_BOOT_VOLUME_SIZE_GB=-1", "OPENSTACK_BOOT_VOLUME_SIZE_GB:"),
    ],
)
def test_bad_openstack_values_name_the_variable(tmp_path: Path, line: str, named: str) -> None:
    from scaleset_listener.errors import ConfigError

    with pytest.raises(ConfigError, match=named):
        load_settings(write_env(tmp_path, MINIMAL + line + "\n"))


@pytest.mark.parametrize(
    ("lines", "idle", "lifetime"),
    [
        ("", 900.0, 86400.0 + 3600.0),
        ("IDLE_RUNNER_TIMEOUT=2m\nMAX_RUNNER_LIFETIME=6h\n", 360.0, 6 * 3600.0 + 3600.0),
        ("VM_IDLE_SHUTDOWN=0\nVM_LIFETIME_GRACE=0\n", 0.0, 86400.0),
        ("VM_IDLE_SHUTDOWN=45m\nVM_LIFETIME_GRACE=10m\n", 2700.0, 86400.0 + 600.0),
    ],
)
def test_the_vm_safety_nets_default_to_multiples_of_the_listener_timers(
    tmp_path: Path, lines: str, idle: float, lifetime: float
) -> None:
    settings = load_settings(write_env(tmp_path, MINIMAL + lines))
    assert settings.effective_vm_idle_shutdown == idle
    assert settings.vm_lifetime_shutdown == lifetime


def test_a_github_app_for_an_enterprise_fails_naming_the_app(tmp_path: Path) -> None:
    from scaleset_listener.errors import ConfigError

    key = tmp_path / "app.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    app = f"GITHUB_APP_ID=123\nGITHUB_APP_INSTALLATION_ID=7\nGITHUB_APP_PRIVATE_KEY_PATH={key}\n"
    organization = MINIMAL.replace("GITHUB_TOKEN=ghp_secret123\n", "") + app
    assert load_settings(write_env(tmp_path, organization)).uses_github_app
    enterprise = [
        "GITHUB_URL=https://github.com/enterprises/big" if line.startswith("GITHUB_URL=") else line
        for line in organization.splitlines()
    ]
    with pytest.raises(ConfigError, match="GITHUB_APP_ID: a GitHub App cannot manage enterprise"):
        load_settings(write_env(tmp_path, "\n".join(enterprise) + "\n"))
