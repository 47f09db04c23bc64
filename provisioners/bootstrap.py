"""The VM bootstrap: a Jinja2 template rendered into the server's cloud-init user_data.

The rendered script (by default `templates/cloud-init.sh.j2`, a bash script) sets the runner up,
runs `run.sh --jitconfig ...` once as the runner user, leaves sentinel files for the SSH probe and
marker lines for the console log, and powers the VM off. The runner lives in cloud-init's own
process tree, never inside a connection the listener holds, so a listener restart leaves jobs alone.

Invariants:
* Every value reaches the default template through the `shquote` filter, so no value (a runner
  name, a label, the JIT config) can change what the shell runs.
* The JIT config and the host's private key never appear in a repr, a log line or an error
  message produced here.
* `render_user_data` refuses anything Nova would refuse: at most 65,535 bytes once base64-encoded.

    ProvisionerError                     (provisioners.base)
    └── PermanentProvisionerError        rendering again with the same inputs cannot help
        └── BootstrapError               template missing, unreadable, invalid or using an
            │                            unknown variable; a BootstrapSpec that cannot be valid
            └── UserDataTooLarge         rendered user_data over Nova's limit (size, limit)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from provisioners.base import PermanentProvisionerError
from provisioners.sentinels import (
    DEFAULT_PROBE_USER,
    DEFAULT_SENTINEL_DIR,
    REPORT_SCRIPT_PATH,
    authorized_keys_entry,
    report_script,
)

# Nova's limit applies to the base64 text of user_data in the create-server request.
NOVA_USER_DATA_LIMIT = 65535
DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "cloud-init.sh.j2"
DEFAULT_RUNNER_DIR = "/opt/actions-runner"
DEFAULT_POWEROFF_COMMAND = "systemctl poweroff || shutdown -h now || poweroff"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A package name or pin (docker.io, nvidia-container-toolkit=1.17.*): one word, never an option.
_PACKAGE = re.compile(r"[A-Za-z0-9@_.+][^\s'\"\\]*")
_PROXY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"\\]+")
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
# The runner reads its job hooks from these; the bootstrap owns them.
_RESERVED_RUNNER_ENV = re.compile(r"ACTIONS_RUNNER_HOOK_JOB_(STARTED|COMPLETED)")
# `{arch}` is the only placeholder left for the VM; anything else in braces is a typo.
_LEFTOVER_PLACEHOLDER = re.compile(r"\{(?!arch\})[^}]*\}")


class BootstrapError(PermanentProvisionerError):
    """The user_data cannot be produced from this spec and template."""


class UserDataTooLarge(BootstrapError):
    """The rendered user_data is over Nova's limit (both counted in base64 bytes)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"user_data is {size} bytes base64-encoded; Nova takes at most {limit} "
            "(shrink the template or the extra variables)"
        )


@dataclass(frozen=True)
class JobPolicy:
    """What jobs a VM accepts, checked by the runner's job-started hook before any step runs.

    Each list holds shell patterns (`*`, `?`, `[...]`; `*` also matches `/`), compared without
    regard to case; an empty list allows anything. `fork_pull_requests=False` refuses a
    pull_request* event whose head repository is not the base repository (read from the event
    payload: a payload that cannot be read refuses the job)."""

    events: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    fork_pull_requests: bool = True

    def __post_init__(self) -> None:
        for name in ("events", "repositories", "refs"):
            for pattern in getattr(self, name):
                if not pattern or any(c.isspace() for c in pattern):
                    raise BootstrapError(
                        f"job_policy.{name}: {pattern!r} is not a pattern (one word, no spaces)"
                    )

    @property
    def restricts(self) -> bool:
        """Whether any job could be refused (an all-open policy installs no check)."""
        return bool(self.events or self.repositories or self.refs) or not self.fork_pull_requests


# The runner builds a Linux VM can take, named as GitHub names them (`uname -m` picks one).
RUNNER_ARCHITECTURES = ("x64", "arm64", "arm")


@dataclass(frozen=True)
class RunnerDownload:
    """Where one architecture's runner tarball is and its SHA-256 (empty: not verified)."""

    url: str
    sha256: str = ""


def downloads_from_template(
    url_template: str, sha256_by_architecture: Mapping[str, str]
) -> dict[str, RunnerDownload]:
    """One download per architecture named in `sha256_by_architecture`: `{arch}` in the URL
    template filled in, that architecture's checksum beside it."""
    return {
        arch: RunnerDownload(url_template.replace("{arch}", arch), sha256)
        for arch, sha256 in sha256_by_architecture.items()
    }


@dataclass(frozen=True)
class BootstrapSpec:
    """What one VM's bootstrap needs. The documented template variables, plus sandbox knobs
    (`root`, `poweroff_command`, `console_path`) that production leaves at their defaults and
    tests or the simulator set to keep the script away from the host."""

    runner_name: str
    jit_config: str = field(repr=False)
    # The runner the VM must run: a pre-baked one older than this is replaced by a download.
    runner_version: str
    # May hold `{version}` (filled in here) and `{arch}` (x64/arm64/arm, filled in on the VM).
    runner_download_url: str = ""
    runner_sha256: str | None = None
    # Per architecture, exact URLs and checksums (what GitHub's downloads endpoint lists); when
    # empty they are derived from `runner_download_url` and `runner_sha256`.
    runner_downloads: Mapping[str, RunnerDownload] = field(default_factory=dict)
    sentinel_dir: str = DEFAULT_SENTINEL_DIR
    labels: tuple[str, ...] = ()
    runner_user: str = "runner"
    # Passwordless sudo for the runner user, as on GitHub-hosted runners (many actions use it);
    # written only where the image has /etc/sudoers.d.
    runner_sudo: bool = True
    # When `<runner_dir>/run.sh` exists the image is pre-baked and nothing is downloaded.
    runner_dir: str = DEFAULT_RUNNER_DIR
    ssh_host_key_private: str | None = field(default=None, repr=False)
    ssh_host_key_public: str | None = None
    # Safety nets, in whole seconds, 0: off. The VM powers itself off when its runner has had no
    # job for `vm_idle_shutdown`, and `vm_lifetime_shutdown` after the bootstrap started even
    # if a job runs: a VM must not outlive a listener that is gone (docs/bootstrap.md).
    vm_idle_shutdown: int = 0
    vm_lifetime_shutdown: int = 0
    # The SSH probe's public key (`<type> <base64>`), authorized for `probe_user` only to run
    # the report script; None: no probe access is installed.
    probe_public_key: str | None = None
    probe_user: str = DEFAULT_PROBE_USER
    # The scale set this VM serves (named in the job policy's refusals).
    scale_set: str = ""
    # Bootstrap extras (docs/bootstrap.md#bootstrap-extras), applied before the runner starts:
    # packages for the image's package manager, a script run as root, the VM's proxies (a URL
    # may carry credentials: kept out of repr), extra CA certificates (PEM text), and extra
    # KEY=VALUE lines for the runner's .env.
    vm_packages: tuple[str, ...] = ()
    vm_setup_script: str = field(default="", repr=False)
    vm_http_proxy: str = field(default="", repr=False)
    vm_https_proxy: str = field(default="", repr=False)
    vm_no_proxy: str = ""
    vm_ca_certificates: str = field(default="", repr=False)
    runner_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    job_policy: JobPolicy | None = None
    # Users may carry credentials (a registry token) in their own variables: kept out of repr.
    extra: Mapping[str, object] = field(default_factory=dict, repr=False)
    root: str = ""
    poweroff_command: str = DEFAULT_POWEROFF_COMMAND
    console_path: str = "/dev/console"

    def __post_init__(self) -> None:
        if not self.runner_name:
            raise BootstrapError("runner_name must not be empty")
        if not self.jit_config:
            raise BootstrapError("jit_config must not be empty")
        self._check_runner_source()
        if bool(self.ssh_host_key_private) != bool(self.ssh_host_key_public):
            raise BootstrapError("give both parts of the SSH host key, or neither")
        self._check_users()
        for name, path in (("sentinel_dir", self.sentinel_dir), ("runner_dir", self.runner_dir)):
            if not path.startswith("/"):
                raise BootstrapError(f"{name} must be an absolute path, got {path!r}")
        for name, seconds in (
            ("vm_idle_shutdown", self.vm_idle_shutdown),
            ("vm_lifetime_shutdown", self.vm_lifetime_shutdown),
        ):
            if type(seconds) is not int or seconds < 0:
                raise BootstrapError(f"{name} must be whole seconds >= 0 (0: off), got {seconds!r}")
        self._check_extras()
        if self.root and not self.root.startswith("/"):
            raise BootstrapError(f"root must be empty or an absolute path, got {self.root!r}")
        builtins = _BUILTIN_VARIABLES
        for name in self.extra:
            if not _IDENTIFIER.fullmatch(name):
                raise BootstrapError(f"extra variable name {name!r} is not an identifier")
            if name in builtins:
                raise BootstrapError(f"extra variable {name!r} would hide the built-in one")

    def _check_users(self) -> None:
        """The runner's and the probe's users, and the probe's key, can be set up on a VM."""
        if not _USER_NAME.fullmatch(self.runner_user):
            raise BootstrapError(f"runner_user {self.runner_user!r} is not a valid user name")
        if not _USER_NAME.fullmatch(self.probe_user):
            raise BootstrapError(f"probe_user {self.probe_user!r} is not a valid user name")
        if self.probe_public_key:
            try:
                authorized_keys_entry(self.probe_public_key, self.sentinel_dir)
            except ValueError as exc:
                raise BootstrapError(f"probe_public_key: {exc}") from None

    def _check_extras(self) -> None:
        """The bootstrap extras can be written into a shell script and the runner's .env."""
        for package in self.vm_packages:
            if not _PACKAGE.fullmatch(package):
                raise BootstrapError(f"vm_packages: {package!r} is not a package name")
        # The URLs are never repeated in an error: they may carry credentials.
        for name, url in (
            ("vm_http_proxy", self.vm_http_proxy),
            ("vm_https_proxy", self.vm_https_proxy),
        ):
            if url and not _PROXY_URL.fullmatch(url):
                raise BootstrapError(f"{name} is not a URL like http://proxy.example:3128")
        if any(c.isspace() or c in "'\"\\" for c in self.vm_no_proxy):
            raise BootstrapError("vm_no_proxy: a comma-separated list without spaces or quotes")
        if self.vm_ca_certificates and _PEM_CERTIFICATE not in self.vm_ca_certificates:
            raise BootstrapError(
                "vm_ca_certificates: no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )
        for key, value in self.runner_env.items():
            if not _IDENTIFIER.fullmatch(key):
                raise BootstrapError(f"runner_env: {key!r} is not a variable name")
            if _RESERVED_RUNNER_ENV.fullmatch(key):
                raise BootstrapError(f"runner_env: {key} is the bootstrap's own (job hooks)")
            if "\n" in value or "\r" in value:
                raise BootstrapError(f"runner_env: the value of {key} has a line break")

    def _check_runner_source(self) -> None:
        """The runner's version, URLs and checksums can work on a VM."""
        if self.runner_sha256 and not _SHA256_HEX.fullmatch(self.runner_sha256.lower()):
            raise BootstrapError("runner_sha256 must be 64 hex digits (the tarball's SHA-256)")
        if not _VERSION.fullmatch(self.runner_version):
            raise BootstrapError(f"runner_version {self.runner_version!r} is not like 2.331.0")
        if not self.runner_download_url and not self.runner_downloads:
            raise BootstrapError("give runner_download_url or runner_downloads")
        for arch, download in self.runner_downloads.items():
            if arch not in RUNNER_ARCHITECTURES:
                raise BootstrapError(
                    f"runner_downloads: unknown architecture {arch!r}; "
                    f"one of {', '.join(RUNNER_ARCHITECTURES)}"
                )
            if not download.url or "{" in download.url:
                raise BootstrapError(f"runner_downloads[{arch}]: give the full URL")
            if download.sha256 and not _SHA256_HEX.fullmatch(download.sha256.lower()):
                raise BootstrapError(f"runner_downloads[{arch}]: sha256 must be 64 hex digits")
        leftover = _LEFTOVER_PLACEHOLDER.search(self.resolved_download_url)
        if leftover:
            raise BootstrapError(
                f"runner_download_url has an unknown placeholder {leftover.group(0)}; "
                "only {version} and {arch} are filled in"
            )

    @property
    def resolved_download_url(self) -> str:
        """The download URL with `{version}` filled in; `{arch}` is left for the VM."""
        return self.runner_download_url.replace("{version}", self.runner_version)

    @property
    def downloads_by_architecture(self) -> dict[str, RunnerDownload]:
        """Each architecture's tarball: the given ones, or the URL template with one checksum."""
        if self.runner_downloads:
            return {
                arch: RunnerDownload(d.url, d.sha256.lower())
                for arch, d in self.runner_downloads.items()
            }
        checksum = (self.runner_sha256 or "").lower()
        return downloads_from_template(
            self.resolved_download_url, dict.fromkeys(RUNNER_ARCHITECTURES, checksum)
        )

    def variables(self) -> dict[str, object]:
        """The template context: every built-in variable, then each extra variable by name
        (custom templates may also write `extra.NAME`)."""
        probe_entry = (
            authorized_keys_entry(self.probe_public_key, self.sentinel_dir)
            if self.probe_public_key
            else ""
        )
        context: dict[str, object] = {
            "runner_name": self.runner_name,
            "jit_config": self.jit_config,
            "runner_version": self.runner_version,
            "runner_download_url": self.resolved_download_url,
            "runner_sha256": (self.runner_sha256 or "").lower(),
            "runner_downloads": {
                arch: {"url": d.url, "sha256": d.sha256}
                for arch, d in self.downloads_by_architecture.items()
            },
            "sentinel_dir": self.sentinel_dir,
            "labels": self.labels,
            "runner_user": self.runner_user,
            "runner_sudo": self.runner_sudo,
            "runner_dir": self.runner_dir,
            # Without the trailing newline: templates write each key followed by one.
            "ssh_host_key_private": (self.ssh_host_key_private or "").strip(),
            "ssh_host_key_public": (self.ssh_host_key_public or "").strip(),
            "vm_idle_shutdown": self.vm_idle_shutdown,
            "vm_lifetime_shutdown": self.vm_lifetime_shutdown,
            "probe_user": self.probe_user,
            "probe_authorized_key": probe_entry,
            # Only with a key: the script costs about 2 KiB of Nova's 64 KiB.
            "probe_script": report_script() if probe_entry else "",
            "probe_script_path": REPORT_SCRIPT_PATH,
            "scale_set": self.scale_set,
            "vm_packages": self.vm_packages,
            "vm_setup_script": self.vm_setup_script,
            "vm_http_proxy": self.vm_http_proxy,
            "vm_https_proxy": self.vm_https_proxy,
            "vm_no_proxy": self.vm_no_proxy,
            "vm_ca_certificates": self.vm_ca_certificates.strip(),
            "runner_env": dict(self.runner_env),
            "job_policy": (
                {
                    "events": self.job_policy.events,
                    "repositories": self.job_policy.repositories,
                    "refs": self.job_policy.refs,
                    "fork_pull_requests": self.job_policy.fork_pull_requests,
                }
                if self.job_policy is not None and self.job_policy.restricts
                else None
            ),
            "extra": dict(self.extra),
            "root": self.root,
            "poweroff_command": self.poweroff_command,
            "console_path": self.console_path,
        }
        context.update(self.extra)
        return context


_BUILTIN_VARIABLES = frozenset(
    {
        "runner_name",
        "jit_config",
        "runner_version",
        "runner_download_url",
        "runner_sha256",
        "runner_downloads",
        "sentinel_dir",
        "labels",
        "runner_user",
        "runner_sudo",
        "runner_dir",
        "ssh_host_key_private",
        "ssh_host_key_public",
        "vm_idle_shutdown",
        "vm_lifetime_shutdown",
        "probe_user",
        "probe_authorized_key",
        "probe_script",
        "probe_script_path",
        "scale_set",
        "vm_packages",
        "vm_setup_script",
        "vm_http_proxy",
        "vm_https_proxy",
        "vm_no_proxy",
        "vm_ca_certificates",
        "runner_env",
        "job_policy",
        "extra",
        "root",
        "poweroff_command",
        "console_path",
    }
)


def shquote(value: object) -> str:
    """The `shquote` filter: one shell word that stands for `value` literally (None is '')."""
    return shlex.quote("" if value is None else str(value))


def render_user_data(spec: BootstrapSpec, template_path: Path | None = None) -> bytes:
    """Render the default template, or the user's own (`CLOUD_INIT_TEMPLATE`), into user_data
    bytes that Nova will accept."""
    path = template_path or DEFAULT_TEMPLATE
    try:
        template = _load_template(path.resolve())
        if spec.job_policy is not None and spec.job_policy.restricts:
            _require_variable(path.resolve(), "job_policy")
        text = template.render(spec.variables())
    except jinja2.TemplateNotFound as exc:
        if exc.name == path.name:
            raise BootstrapError(f"bootstrap template {path} does not exist") from None
        raise BootstrapError(f"bootstrap template {path}: {exc.name} not found") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise BootstrapError(
            f"bootstrap template {path}, line {exc.lineno}: {exc.message}"
        ) from exc
    except jinja2.TemplateError as exc:
        # UndefinedError's message names the variable ("'foo' is undefined").
        raise BootstrapError(f"bootstrap template {path}: {exc.message}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BootstrapError(f"bootstrap template {path} cannot be read: {exc}") from exc
    user_data = text.encode("utf-8")
    size = len(base64.b64encode(user_data))
    if size > NOVA_USER_DATA_LIMIT:
        raise UserDataTooLarge(size, NOVA_USER_DATA_LIMIT)
    return user_data


@functools.lru_cache(maxsize=8)
def _environment(directory: Path) -> jinja2.Environment:
    # A shell script, not HTML: HTML escaping would corrupt it. Values are made safe by the
    # `shquote` filter instead; StrictUndefined turns a misspelt variable into an error rather
    # than an empty string in a command line.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shquote"] = shquote
    return env


def _require_variable(path: Path, name: str) -> None:
    """A template that never reads `name` would drop what it asks for silently (a job policy
    left unenforced): refused instead."""
    if name not in _template_variables(path, path.stat().st_mtime_ns):
        raise BootstrapError(
            f"bootstrap template {path} does not use {name}: this scale set's {name} would not "
            "be enforced (start from the default template, docs/bootstrap.md)"
        )


@functools.lru_cache(maxsize=16)
def _template_variables(path: Path, _mtime_ns: int) -> frozenset[str]:
    environment = _environment(path.parent)
    source = path.read_text(encoding="utf-8")
    return frozenset(jinja2.meta.find_undeclared_variables(environment.parse(source)))


def _load_template(path: Path) -> jinja2.Template:
    # FileSystemLoader re-reads the file when it changes, so a cached environment is safe.
    return _environment(path.parent).get_template(path.name)


@dataclass(frozen=True)
class HostKey:
    """A per-VM SSH host key, handed to the bootstrap and pinned by the prober."""

    private_openssh: str = field(repr=False)
    public_openssh: str
    fingerprint_sha256: str


def generate_host_key(comment: str = "") -> HostKey:
    """A fresh ed25519 host key in OpenSSH formats, with its `SHA256:...` fingerprint."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    if comment:
        public = f"{public} {comment}"
    return HostKey(
        private_openssh=private,
        public_openssh=public,
        fingerprint_sha256=fingerprint_sha256(public),
    )


def fingerprint_sha256(public_openssh: str) -> str:
    """The fingerprint `ssh-keygen -lf` prints for an OpenSSH public key line
    (`SHA256:` + unpadded base64 of the SHA-256 of the key blob)."""
    parts = public_openssh.split()
    if len(parts) < 2:
        raise BootstrapError("not an OpenSSH public key line (expected 'TYPE BASE64 [comment]')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise BootstrapError(f"the public key's base64 is invalid: {exc}") from exc
    return fingerprint_of_blob(blob)


def fingerprint_of_blob(blob: bytes) -> str:
    """The `SHA256:...` fingerprint of a raw SSH public key blob (what a server presents)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")
