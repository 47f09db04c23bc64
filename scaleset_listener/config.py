"""Settings: one typed tree, read once at start from the environment and an optional env file.

The variable names are a contract with users (README.md, Configuration, and examples/.env, which
documents every variable; compatible with the Orka integration where it has one). Rules:

* An unknown variable in the env file is an error naming it (a typo must not be silently ignored).
  Unknown variables in the process environment are ignored: a container has many.
* A bad or missing value fails at start with one line per problem, naming the variable.
* Secrets are `SecretStr`: never printed, never in a repr.
* Durations accept seconds (`300`, `1.5`) or Go-style strings (`300s`, `5m`, `1h30m`, `250ms`).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from scaleset_listener.errors import ConfigError, InvalidConfigURL
from scaleset_listener.github_urls import GitHubTarget, Scope, parse_github_url

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
# Go's units plus days (`7d`), which a month of operation wants.
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: object) -> float:
    """Seconds from a number or a Go-style duration string; negative values are refused."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300s, 5m or 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not text or "".join(number + unit for number, unit in parts) != text:
                raise ValueError(
                    f"{value!r} is not a duration; use seconds or e.g. 300s, 5m, 1h30m"
                ) from None
            seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    else:
        raise ValueError("expected a duration such as 300s, 5m or 1h30m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _split_list(value: object) -> object:
    """`a, b,c` -> ("a", "b", "c"); lists pass through; empty means none."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _split_mapping(value: object) -> object:
    """`k=v,k2=v2` -> {"k": "v", "k2": "v2"} (the Orka integration's ORKA_VM_METADATA form)."""
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for part in (item.strip() for item in value.split(",")):
        if not part:
            continue
        key, separator, item = part.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{part!r} is not key=value; use k=v,k2=v2")
        pairs[key.strip()] = item.strip()
    return pairs


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_list)]
KeyValues = Annotated[dict[str, str], NoDecode, BeforeValidator(_split_mapping)]


@dataclass(frozen=True)
class TextFile:
    """A file read once at start (a setup script, a CA bundle): shown by its path only."""

    path: Path
    text: str = field(repr=False)


def _read_text_file(value: object) -> object:
    if isinstance(value, TextFile) or value is None:
        return value
    if not isinstance(value, str | Path):
        raise ValueError("expected the path of a file")
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {reason}") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return TextFile(path, text)


def _certificates(file: TextFile | None) -> TextFile | None:
    if file is not None and "-----BEGIN CERTIFICATE-----" not in file.text:
        raise ValueError(f"{file.path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return file


# Read at start; check-config and logs show the path, never the content.
ScriptFile = Annotated[
    TextFile | None, BeforeValidator(_read_text_file), PlainSerializer(lambda f: f and str(f.path))
]
CertificateFile = Annotated[
    TextFile | None,
    BeforeValidator(_read_text_file),
    AfterValidator(_certificates),
    PlainSerializer(lambda f: f and str(f.path)),
]
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9@_.+][^\s'\"\\]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROXY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"\\]+")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def _packages(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for name in value or ():
        if not _PACKAGE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a package name")
    return value


def _runner_env(value: dict[str, str] | None) -> dict[str, str] | None:
    for key, item in (value or {}).items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a variable name")
        if key.startswith("ACTIONS_RUNNER_HOOK_JOB_"):
            raise ValueError(f"{key}: the bootstrap sets the job hooks itself")
        if "\n" in item or "\r" in item:
            raise ValueError(f"the value of {key} has a line break")
    return value


def _proxy(value: SecretStr | None) -> SecretStr | None:
    # The URL may carry credentials: the message never repeats it.
    if value is not None and not _PROXY_URL.fullmatch(value.get_secret_value()):
        raise ValueError("expected a URL such as http://proxy.example:3128 (the value is hidden)")
    return value


def _no_proxy(value: str | None) -> str | None:
    if value is not None and any(c.isspace() or c in "'\"\\" for c in value):
        raise ValueError("a comma-separated list of hosts, domains or CIDRs, without spaces")
    return value


def _runner_user(value: str | None) -> str | None:
    if value is not None and (not _USER.fullmatch(value) or value == "root"):
        raise ValueError("a user name other than root (the runner refuses to run as root)")
    return value


def _runner_dir(value: str | None) -> str | None:
    if value is not None and (not value.startswith("/") or any(c.isspace() for c in value)):
        raise ValueError("an absolute path without spaces, e.g. /opt/actions-runner")
    return value


def _ip_addresses(addresses: tuple[str, ...]) -> tuple[str, ...]:
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
    return addresses


Packages = Annotated[
    tuple[str, ...], NoDecode, BeforeValidator(_split_list), AfterValidator(_packages)
]
RunnerEnv = Annotated[
    dict[str, str], NoDecode, BeforeValidator(_split_mapping), AfterValidator(_runner_env)
]
ProxyURL = Annotated[SecretStr | None, AfterValidator(_proxy)]
NoProxy = Annotated[str | None, AfterValidator(_no_proxy)]
RunnerUser = Annotated[str | None, AfterValidator(_runner_user)]
RunnerDir = Annotated[str | None, AfterValidator(_runner_dir)]


class JobPolicySpec(BaseModel):
    """A RUNNERS entry's `job_policy` (docs/bootstrap.md#job-policy): shell patterns, case
    ignored; a list left out allows anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    fork_pull_requests: bool = True

    @field_validator("events", "repositories", "refs")
    @classmethod
    def _one_word_each(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            if not pattern or any(c.isspace() for c in pattern):
                raise ValueError(f"{pattern!r} is not a pattern (one word, no spaces)")
        return patterns


# openstacksdk reads these itself (OS_CLOUD with clouds.yaml, or the standard OS_* variables).
OPENSTACK_ENV_PREFIX = "OS_"


class _EnvFileWithoutOpenStack(DotEnvSettingsSource):
    """The env file minus OS_* variables: those belong to openstacksdk, not to our settings."""

    def _load_env_vars(self) -> dict[str, str | None]:
        return {
            name: value
            for name, value in super()._load_env_vars().items()
            if not name.upper().startswith(OPENSTACK_ENV_PREFIX)
        }


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_SCALE_SET_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


class ScaleSetSpec(BaseModel):
    """One entry of RUNNERS: a scale set this process serves."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    labels: tuple[str, ...] = ()
    runner_group: str = "default"
    # The Orka integration's RUNNERS entries carry the runner group *id* as "id".
    runner_group_id: int | None = Field(default=None, alias="id", ge=1)
    min_runners: int = Field(default=0, ge=0)
    max_runners: int = Field(default=10, ge=0)
    flavor: str | None = None
    image: str | None = None
    # Placement (docs/architecture.md#placement-per-scale-set): each replaces the OPENSTACK_*
    # setting of the same name, except server_metadata, whose keys are added to
    # OPENSTACK_SERVER_METADATA's. `cloud` names a clouds.yaml entry (another project or region);
    # unset: the cloud of OS_CLOUD or the OS_* variables.
    cloud: str | None = None
    network: str | None = None
    security_groups: tuple[str, ...] | None = None
    availability_zone: str | None = None
    keypair: str | None = None
    boot_volume_size_gb: int | None = Field(default=None, ge=0)
    server_metadata: dict[str, str] | None = None
    floating_ips: tuple[str, ...] | None = None
    # Bootstrap extras: each replaces the global setting of the same name (VM_PACKAGES...),
    # except runner_env, whose keys are added to RUNNER_ENV's (docs/bootstrap.md).
    vm_packages: tuple[str, ...] | None = None
    vm_setup_script: ScriptFile = None
    vm_http_proxy: ProxyURL = None
    vm_https_proxy: ProxyURL = None
    vm_no_proxy: NoProxy = None
    vm_ca_certificates: CertificateFile = None
    runner_env: dict[str, str] | None = None
    runner_user: RunnerUser = None
    runner_dir: RunnerDir = None
    runner_sudo: bool | None = None
    job_policy: JobPolicySpec | None = None

    @field_validator("vm_packages")
    @classmethod
    def _package_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _packages(value)

    @field_validator("security_groups", "floating_ips", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # The same forms as OPENSTACK_SECURITY_GROUPS: a JSON list or "a,b".
        return _split_list(value)

    @field_validator("floating_ips")
    @classmethod
    def _floating_ips_are_addresses(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _ip_addresses(value) if value is not None else None

    @field_validator("cloud", "network", "availability_zone", "keypair")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty; leave the key out to use the global setting")
        return value.strip() if value is not None else None

    @field_validator("runner_env")
    @classmethod
    def _runner_env_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _runner_env(value)

    @field_validator("name")
    @classmethod
    def _name_is_usable_as_label_and_vm_name(cls, name: str) -> str:
        if not _SCALE_SET_NAME.match(name):
            raise ValueError(
                f"scale set name {name!r} must be 1-63 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        return name

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min_runners > self.max_runners:
            raise ValueError(
                f"min_runners ({self.min_runners}) is above max_runners ({self.max_runners})"
            )
        return self

    @property
    def effective_labels(self) -> tuple[str, ...]:
        """The scale set's name first, then the extra labels, without duplicates."""
        labels = [self.name, *self.labels]
        return tuple(dict.fromkeys(label.strip() for label in labels if label.strip()))


class Settings(BaseSettings):
    """Every setting of the service. Field names are the variable names, lower-cased."""

    model_config = SettingsConfigDict(
        extra="forbid",
        case_sensitive=False,
        validate_default=True,
        env_file_encoding="utf-8",
        hide_input_in_errors=True,
        # `NAME=` in an env file means "not set", as in the documented example.
        env_ignore_empty=True,
    )

    # GitHub
    github_url: str
    github_api_url: str = ""
    github_app_id: str = ""
    github_app_installation_id: int | None = None
    github_app_private_key: SecretStr | None = None
    github_app_private_key_path: Path | None = None
    github_token: SecretStr | None = None

    # Scale sets
    runners: tuple[ScaleSetSpec, ...]
    manage_runner_scale_sets: bool = False
    enable_reconciliation: bool = True

    # Resilience: bounded HTTP retries, then the listener's own backoff and a new session.
    retry_max_attempts: int = Field(default=5, ge=1, le=20)
    retry_max_wait: Duration = 30.0
    recovery_backoff_max: Duration = 60.0
    session_conflict_retry_interval: Duration = 30.0
    shutdown_timeout: Duration = 30.0

    # Runner and bootstrap
    # `latest`: resolved from GitHub's runner downloads endpoint at start and every
    # RUNNER_VERSION_CHECK_INTERVAL (GitHub stops giving jobs to runners 30 days after a newer
    # release, and JIT runners do not update themselves). A version pins it (mirrors).
    github_runner_version: str = "latest"
    # Empty: GitHub's own download URL. Otherwise a mirror; {version} and {arch} (x64, arm64,
    # arm; resolved on the VM) are filled in.
    runner_download_url: str = ""
    runner_sha256: str = ""
    runner_version_check_interval: Duration = 86400.0
    cloud_init_template: Path | None = None
    sentinel_dir: str = "/var/lib/scaleset-runner"
    runner_user: Annotated[str, AfterValidator(_runner_user)] = "runner"
    runner_dir: Annotated[str, AfterValidator(_runner_dir)] = "/opt/actions-runner"
    runner_sudo: bool = True
    # Extra KEY=VALUE lines for the runner's .env, which its jobs see (k=v,k2=v2).
    runner_env: RunnerEnv = Field(default_factory=dict)

    # Bootstrap extras (docs/bootstrap.md#bootstrap-extras); RUNNERS entries may override each.
    vm_packages: Packages = ()
    vm_setup_script: ScriptFile = None
    # A proxy URL may carry credentials: secret, masked by check-config.
    vm_http_proxy: ProxyURL = None
    vm_https_proxy: ProxyURL = None
    vm_no_proxy: NoProxy = None
    vm_ca_certificates: CertificateFile = None

    # SSH probe of the startup reconciler (docs/ssh-probe.md)
    # The bootstrap creates this user (no sudo) and lets the probe's key run only the report.
    # (provisioners.sentinels.DEFAULT_PROBE_USER: the config knows no VM code)
    vm_ssh_user: str = "scaleset-probe"
    vm_ssh_private_key_path: Path | None = None
    # The probe key's public half for the bootstrap; empty: derived from the private key.
    vm_ssh_public_key: str = ""
    # The VMs' sshd port: 22 on cloud images; another where the image moves sshd.
    vm_ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_probe_timeout: Duration = 10.0
    ssh_host_key_policy: Literal["pinned", "accept-new"] = "pinned"
    reconcile_concurrency: int = Field(default=128, ge=1, le=1024)
    # Worker processes for the probes' SSH handshakes: "auto" is the cores this process may
    # use, at most 8, and 0 (threads of the listener process) on a single core.
    ssh_probe_processes: Literal["auto"] | Annotated[int, Field(ge=0, le=64)] = "auto"

    # OpenStack (auth comes from OS_CLOUD + clouds.yaml or the OS_* variables)
    openstack_image: str = ""
    openstack_flavor: str = ""
    openstack_network: str = ""
    openstack_security_groups: CommaList = ()
    openstack_keypair: str = ""
    openstack_availability_zone: str = ""
    openstack_boot_volume_size_gb: int = Field(default=0, ge=0)
    openstack_floating_ips: CommaList = ()
    openstack_server_metadata: KeyValues = Field(default_factory=dict)
    openstack_server_active_timeout: Duration = 600.0
    # How often the project's quota headroom (Nova's /limits) is read again: the capacity counts
    # this process's own creates and deletes between reads, so this catches only changes from
    # outside (other deployments in the project, a new quota) (docs/architecture.md#capacity).
    capacity_refresh_interval: Duration = 60.0
    # Creates in flight at once (JIT config + create request) and OpenStack worker threads. 32
    # lets a burst of 500 jobs reach the cloud within 5 s at 100 ms per API call (8: 15-20 s),
    # and more gains nothing there (bench/README.md, scale_up); Nova's API takes it easily.
    provision_concurrency: int = Field(default=32, ge=1, le=256)

    # Runner lifecycle (docs/architecture.md#runner-lifecycle-and-the-deletion-rule)
    boot_timeout: Duration = 600.0
    idle_runner_timeout: Duration = 300.0
    max_runner_lifetime: Duration = 86400.0
    runner_deregistration_timeout: Duration = 30.0
    # Safety nets inside the VM (docs/bootstrap.md#safety-nets): it powers itself off when its
    # runner has had no job this long (unset: 3 x IDLE_RUNNER_TIMEOUT; 0: off), and in any case
    # at MAX_RUNNER_LIFETIME + VM_LIFETIME_GRACE, so a VM outlives no missing listener.
    vm_idle_shutdown: Duration | None = None
    vm_lifetime_grace: Duration = 3600.0
    vm_tracker_interval: Duration = 300.0
    keep_failed_vms: int = Field(default=0, ge=0, le=100)
    failed_vm_retention: Duration = 86400.0
    dry_run: bool = False
    # Written on every server so that two deployments (staging, prod) can share a project;
    # empty: derived from GITHUB_URL, stable across restarts.
    listener_instance_id: str = ""

    # Observability
    enable_metrics: bool = False
    # host:port of /healthz, /readyz and /metrics; ":8080" means every interface.
    metrics_addr: str = ":8080"
    # Append one JSON line per job (its usage record) here; the directory must exist.
    usage_log_path: Path | None = None
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.TEXT

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_file = getattr(dotenv_settings, "env_file", None)
        return (
            init_settings,
            env_settings,
            _EnvFileWithoutOpenStack(settings_cls, env_file=env_file),
            file_secret_settings,
        )

    @field_validator("listener_instance_id")
    @classmethod
    def _instance_id_fits_a_tag(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,40}", value):
            raise ValueError("use 1-40 letters, digits, '.', '_' or '-' (it becomes a server tag)")
        return value

    @property
    def effective_listener_instance_id(self) -> str:
        if self.listener_instance_id:
            return self.listener_instance_id
        digest = hashlib.sha256(self.github_target.config_url.lower().encode()).hexdigest()
        return f"gh-{digest[:12]}"

    @field_validator("vm_ssh_user")
    @classmethod
    def _ssh_user_is_a_user_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", value):
            raise ValueError("not a user name (the bootstrap creates this user on each VM)")
        return value

    @field_validator("vm_ssh_public_key")
    @classmethod
    def _public_key_is_one_line(cls, value: str) -> str:
        value = value.strip()
        if value and (len(value.split()) < 2 or "\n" in value):
            raise ValueError("expected one OpenSSH public key line: `<type> <base64> [comment]`")
        return value

    @field_validator("usage_log_path")
    @classmethod
    def _usage_log_directory_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.parent.is_dir():
            raise ValueError(f"the directory {path.parent} does not exist")
        if path is not None and path.is_dir():
            raise ValueError(f"{path} is a directory; name the file to append to")
        return path

    @field_validator("metrics_addr")
    @classmethod
    def _addr_has_a_port(cls, value: str) -> str:
        host, separator, port = value.strip().rpartition(":")
        if not separator or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port or :port, e.g. :8080 or 127.0.0.1:9090")
        return f"{host}:{port}"

    @field_validator("github_runner_version")
    @classmethod
    def _runner_version_is_latest_or_a_release(cls, value: str) -> str:
        value = value.strip().removeprefix("v")
        if value.lower() == "latest":
            return "latest"
        if not re.fullmatch(r"\d+\.\d+\.\d+", value):
            raise ValueError("expected latest or a runner release such as 2.331.0")
        return value

    @field_validator("runner_download_url")
    @classmethod
    def _download_url_placeholders(cls, value: str) -> str:
        value = value.strip()
        if value and not re.match(r"https?://", value):
            raise ValueError("expected an http(s) URL, e.g. https://mirror.example/v{version}/...")
        unknown = re.search(r"\{(?!version\}|arch\})[^}]*\}", value)
        if unknown:
            raise ValueError(
                f"unknown placeholder {unknown.group(0)}; use {{version}} and {{arch}}"
            )
        return value

    @field_validator("runner_version_check_interval")
    @classmethod
    def _check_interval_is_positive(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s (default 24h)")
        return value

    @field_validator("capacity_refresh_interval")
    @classmethod
    def _capacity_refresh_is_positive(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s (default 60s)")
        return value

    @model_validator(mode="after")
    def _idle_shutdown_after_the_listener_retires(self) -> Self:
        idle = self.vm_idle_shutdown
        if idle is not None and 0 < idle < max(1.0, self.idle_runner_timeout):
            raise ValueError(
                "VM_IDLE_SHUTDOWN: 0 (off) or at least IDLE_RUNNER_TIMEOUT "
                f"({self.idle_runner_timeout:g}s) and 1s: the listener retires idle runners "
                "first; the VM's own net is for when the listener is gone"
            )
        return self

    @property
    def effective_vm_idle_shutdown(self) -> float:
        """Seconds an idle runner's VM waits before powering itself off; 0: never."""
        if self.vm_idle_shutdown is None:
            return 3 * self.idle_runner_timeout
        return self.vm_idle_shutdown

    @property
    def vm_lifetime_shutdown(self) -> float:
        """Seconds after boot at which a VM powers itself off even during a job."""
        return self.max_runner_lifetime + self.vm_lifetime_grace

    @model_validator(mode="after")
    def _checksum_only_for_a_pinned_runner(self) -> Self:
        if self.runner_sha256 and self.github_runner_version == "latest":
            raise ValueError(
                "RUNNER_SHA256: only with a pinned GITHUB_RUNNER_VERSION; with latest the "
                "checksums come from GitHub's downloads endpoint"
            )
        return self

    @field_validator("runner_sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str) -> str:
        value = value.strip().lower()
        if value and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("expected 64 hex digits (the runner tarball's SHA-256)")
        return value

    @field_validator("openstack_floating_ips")
    @classmethod
    def _floating_ips_are_addresses(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        return _ip_addresses(addresses)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case_enum(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("github_app_id")
    @classmethod
    def _app_id_is_an_id(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[A-Za-z0-9.]+", value):
            raise ValueError("expected the App's numeric id or its client id")
        return value

    @field_validator("runners")
    @classmethod
    def _runners_are_distinct(cls, runners: tuple[ScaleSetSpec, ...]) -> tuple[ScaleSetSpec, ...]:
        if not runners:
            raise ValueError('list at least one scale set, e.g. [{"name": "linux-x64"}]')
        names = [spec.name.lower() for spec in runners]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"scale set names must be unique; repeated: {', '.join(duplicates)}")
        return runners

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        app_fields = {
            "GITHUB_APP_ID": bool(self.github_app_id),
            "GITHUB_APP_INSTALLATION_ID": self.github_app_installation_id is not None,
            "GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH": (
                self.github_app_private_key is not None
                or self.github_app_private_key_path is not None
            ),
        }
        if self.github_app_private_key is not None and self.github_app_private_key_path:
            raise ValueError("set GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH, not both")
        if any(app_fields.values()) and not all(app_fields.values()):
            missing = ", ".join(name for name, present in app_fields.items() if not present)
            raise ValueError(f"GitHub App auth is incomplete: missing {missing}")
        if not any(app_fields.values()) and not self.github_token:
            raise ValueError(
                "no GitHub credentials: set GITHUB_TOKEN (a PAT) or GITHUB_APP_ID, "
                "GITHUB_APP_INSTALLATION_ID and GITHUB_APP_PRIVATE_KEY(_PATH)"
            )
        return self

    @property
    def uses_github_app(self) -> bool:
        return bool(self.github_app_id)

    @property
    def github_target(self) -> GitHubTarget:
        return parse_github_url(self.github_url, self.github_api_url or None)

    def app_private_key_pem(self) -> str:
        """The App's PEM text, read from GITHUB_APP_PRIVATE_KEY_PATH when given as a path."""
        if self.github_app_private_key is not None:
            return self.github_app_private_key.get_secret_value()
        if self.github_app_private_key_path is None:
            raise ConfigError("GITHUB_APP_PRIVATE_KEY: not set")
        try:
            return self.github_app_private_key_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"GITHUB_APP_PRIVATE_KEY_PATH: cannot read {self.github_app_private_key_path}: "
                f"{exc.strerror}"
            ) from exc

    @model_validator(mode="after")
    def _github_url_parses(self) -> Self:
        try:
            parse_github_url(self.github_url, self.github_api_url or None)
        except InvalidConfigURL as exc:
            raise ValueError(f"GITHUB_URL: {exc}") from None
        if self.uses_github_app and self.github_target.scope is Scope.ENTERPRISE:
            # GitHub refuses an App at the enterprise scope (docs/deploy.md, credentials).
            raise ValueError(
                "GITHUB_APP_ID: a GitHub App cannot manage enterprise-level runners; for an "
                "enterprise GITHUB_URL set GITHUB_TOKEN (a classic PAT with "
                "manage_runners:enterprise) instead"
            )
        return self


def _runner_names(env_file: Path | None) -> list[str | None]:
    """The `name` of each RUNNERS entry as given (None where there is none), so that a problem
    in an entry is reported as RUNNERS[<name>].key; empty when RUNNERS is not a JSON list."""
    raw = next((value for key, value in os.environ.items() if key.upper() == "RUNNERS"), None)
    if raw is None and env_file is not None:
        raw = next(
            (value for key, value in dotenv_values(env_file).items() if key.upper() == "RUNNERS"),
            None,
        )
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    names: list[str | None] = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        names.append(name if isinstance(name, str) and _SCALE_SET_NAME.match(name) else None)
    return names


def _describe(error: Any, runner_names: list[str | None] | None = None) -> str:
    location = [str(part) for part in error["loc"]]
    variable = location[0].upper() if location else "settings"
    if variable == "RUNNERS" and len(location) > 1 and location[1].isdigit():
        # An entry by its name where it has a usable one (the index otherwise).
        index = int(location[1])
        names = runner_names or []
        if index < len(names) and names[index] is not None and location[2:] != ["name"]:
            location[1] = str(names[index])
    path = ""
    for position, part in enumerate(location[1:]):
        named_entry = variable == "RUNNERS" and position == 0
        path += f"[{part}]" if named_entry or part.isdigit() else f".{part}"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return (
            f"{variable}{path}: unknown setting (not a scaleset-listener variable; check spelling)"
        )
    if error["type"] == "missing":
        return f"{variable}{path}: required but not set"
    message = message.removeprefix("Value error, ")
    if not location:
        return message
    return f"{variable}{path}: {message}"


def export_openstack_variables(env_file: Path) -> dict[str, str]:
    """Put the env file's OS_* variables into the environment, where openstacksdk reads them.

    The process environment wins, as it does for every other setting.
    """
    exported = {}
    for name, value in dotenv_values(env_file).items():
        if name.upper().startswith(OPENSTACK_ENV_PREFIX) and value and name not in os.environ:
            os.environ[name] = value
            exported[name] = value
    return exported


def load_settings(env_file: Path | None = None) -> Settings:
    """Build the settings from the environment and `env_file`; ConfigError names each problem."""
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file: {env_file} does not exist or is not a file")
    if env_file is not None:
        export_openstack_variables(env_file)
    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        names = _runner_names(env_file)
        raise ConfigError("; ".join(_describe(error, names) for error in exc.errors())) from None
    except SettingsError as exc:
        # pydantic-settings decodes list/object variables as JSON before validation.
        match = re.search(r'field "(\w+)"', str(exc))
        variable = match.group(1).upper() if match else "settings"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"{variable}: not valid JSON{cause}") from None
