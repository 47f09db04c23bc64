"""The sandbox fleet: simulated VMs that boot for real and run the real bootstrap.

It watches the simulated cloud like the scripted fleet (`simulator.fleet`) and, when a server
whose user_data is the listener's bootstrap (a `JIT_CONFIG=` line) goes ACTIVE, boots a
`SandboxVm` for it (sim/simulator/sandbox/vm.py): its own PID and mount namespaces, a real
OpenSSH sshd on the server's fixed address (a loopback address: the fleet gives the cloud's
tenant subnet a 127.N.0.0/16 range), the host key from the user_data's `HOST_KEY` installed
before sshd starts, and the user_data run as cloud-init runs it. The bootstrap downloads the
stub runner from the simulated GitHub's release URLs (what its downloads endpoint lists) or, for
a pinned version, from the fleet's runner mirror (`mirror_settings(version)`), and the stub
connects to the simulated GitHub with the JIT config and its version, takes one job, runs it
for its duration, and exits.

What the VM writes to /dev/console is relayed to the server's console log; marker lines drive
the events (`setup-complete`, `setup-failed`, `run-complete`). When the bootstrap powers off, the
fleet pulls the VM's plug and sets the server SHUTOFF. A server deleted, shut off or broken from
outside loses its VM, and a runner still online dies with it (`runner_dies`).

Behaviours, per server name or for the next N servers, as in the scripted fleet: `hang`
(cloud-init never runs the user_data: no marker, no runner, sshd up), `setup_fail` (the runner
download fails: the bootstrap's own failure path), `crash` (the runner dies once its job runs:
run.sh exits 1, run-complete exit=1, power-off), `wedge` (the runner dies and its process hangs:
the VM stays up without a word), plus a slow boot (`boot_seconds`: from ACTIVE to the VM
starting).

The interface matches `simulator.fleet.Fleet` (events, counters, `vms()`, `wait_for`), so tests
written for the scripted fleet run here too. Sandbox VMs need root and namespaces:
`sandbox_problem()` says why not, and callers fall back to light VMs (`LightFleet`, below: the
same bootstrap and interface, no namespaces, any user).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from simulator.fleet import (
    FAILURE_MODES,
    MARKER,
    GuestFleet,
    VmRecord,
    user_data_texts,
)
from simulator.github.control import ControlAPIError
from simulator.openstack.control import ControlApiError
from simulator.runner_stub import BEHAVIOUR_PATH, RunnerTarball, runner_files
from simulator.sandbox.downloads import DownloadServer
from simulator.sandbox.light_vm import (
    LightVm,
    current_user,
    host_has_downloader,
    light_problem,
)
from simulator.sandbox.vm import FAILING_CURL, SBIN_PATH, SandboxVm, VmSpec

log = logging.getLogger("simulator.sandbox")

JSON = dict[str, Any]
T = TypeVar("T")
# The user the listener's probe logs in as: its VM_SSH_USER default, which the bootstrap
# creates (the simulator imports nothing of the service, so the name is repeated here).
PROBE_USER = "scaleset-probe"

_MARKER_LINE = re.compile(
    rf"^{MARKER} (?P<what>setup-complete|setup-failed|run-complete)\b(?P<rest>.*)$"
)
_EXIT = re.compile(r"\bexit=(-?\d+)")
_REASON = re.compile(r"\breason=(.*)$")
__all__ = [
    "FAILURE_MODES",
    "LightFleet",
    "SandboxConfig",
    "SandboxFleet",
    "SandboxVmInfo",
    "sandbox_problem",
]


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox runs.

    boot_seconds: from ACTIVE to the VM starting (a slow hypervisor).
    poll_interval: how often the fleet looks at both simulators and its VMs.
    subnet: the loopback range for servers' fixed addresses; None picks 127.N.0.0/16 at random
        (two fleets on one machine rarely collide). The fleet sets the cloud's `fixed_subnet`.
    ssh_port: the VMs' sshd port; None is 22 for sandbox VMs and 2222 for light VMs (a
        non-root user cannot bind 22). `listener_settings()` hands it on as VM_SSH_PORT.
    root: where per-VM directories go; None: a temporary directory removed at stop.
    provide_curl: light VMs only: give each VM the simulator's small `curl` (None: only
        where the host has neither curl nor wget, as in the slim container image).
    image_files: files every VM's image holds (absolute path -> (text, mode)), e.g. a stub
        package manager in /usr/local/sbin, which comes first on the bootstrap's PATH.
    baked_runner: a runner version baked into every image at `baked_runner_dir` (the stub
        runner's files, as an image builder would leave them): the bootstrap then downloads
        nothing when it is at least the wanted version.
    """

    boot_seconds: float = 0.0
    poll_interval: float = 0.03
    request_timeout: float = 5.0
    subnet: str | None = None
    ssh_port: int | None = None
    root: Path | None = None
    provide_curl: bool | None = None
    image_files: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    baked_runner: str | None = None
    baked_runner_dir: str = "/opt/actions-runner"

    def __post_init__(self) -> None:
        for name in ("boot_seconds", "poll_interval", "request_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.subnet is not None and not ipaddress.IPv4Network(self.subnet).is_loopback:
            raise ValueError(f"subnet {self.subnet} must be a loopback range (127.0.0.0/8)")
        if self.ssh_port is not None and not 0 < self.ssh_port < 65536:
            raise ValueError(f"ssh_port {self.ssh_port} is not a TCP port")


@dataclass(frozen=True)
class SandboxVmInfo:
    """Where a running VM lives on the host (for tests and debugging)."""

    name: str
    address: str
    port: int
    host_key_public: str
    dir: Path
    launcher_pid: int | None
    init_pid: int | None
    pid_namespace: str | None

    @property
    def target(self) -> tuple[str, str]:
        """`(address, pinned_public_key)`, as `SSHProber.probe_many` takes it."""
        return self.address, self.host_key_public


class GuestMachine(Protocol):
    """What the fleet needs of one running guest (`SandboxVm`, `LightVm`)."""

    dir: Path
    init_pid: int | None
    pid_namespace: str | None

    @property
    def launcher_pid(self) -> int | None: ...

    def start(self) -> None: ...
    def kill(self) -> None: ...
    def exited(self) -> int | None: ...
    def note_namespace(self) -> bool: ...
    def processes(self) -> list[int]: ...
    def sshd_state(self) -> str | None: ...
    def powered_off(self) -> bool: ...
    def new_console_lines(self) -> list[str]: ...
    def output_log(self) -> str: ...
    def start_errors(self) -> str: ...


@dataclass(kw_only=True)
class _Vm(VmRecord):
    runner_name: str
    user_data: str
    host_key_private: str
    host_key_public: str
    address: str | None = None
    sandbox: GuestMachine | None = None
    sshd_reported: bool = False
    connected: bool = False


# ---------------------------------------------------------------------- can it run here?


@functools.cache
def sandbox_problem() -> str | None:
    """Why sandbox VMs cannot run on this machine, or None. Not root, a missing tool, or a
    machine that forbids PID/mount namespaces or overlay mounts: callers use light VMs."""
    if os.geteuid() != 0:
        return "sandbox VMs need root (mount namespaces, overlay mounts, sshd, useradd)"
    path = os.pathsep.join([os.environ.get("PATH", ""), SBIN_PATH])
    for tool in ("unshare", "sshd", "curl", "runuser", "useradd", "pgrep"):
        if shutil.which(tool, path=path) is None:
            return f"{tool} is not installed (scripts/install-system-deps installs it)"
    if shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") is None:
        return "no python3 in /usr/local/bin or /usr/bin for the stub runner"
    with tempfile.TemporaryDirectory(prefix="sandbox-check-") as scratch:
        script = (
            f'mount -t tmpfs sandbox-check "{scratch}" && '
            f'mkdir "{scratch}/u" "{scratch}/w" "{scratch}/r" && '
            f'mount -t overlay sandbox-check -o "lowerdir=/,upperdir={scratch}/u,'
            f'workdir={scratch}/w" "{scratch}/r" && test -x "{scratch}/r/bin/sh"'
        )
        try:
            done = subprocess.run(  # noqa: S603 (fixed arguments)
                [
                    shutil.which("unshare", path=path) or "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--mount",
                    "--propagation",
                    "private",
                    "/bin/sh",
                    "-c",
                    script,
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare --pid --mount failed: {exc}"
    if done.returncode != 0:
        return f"this machine forbids PID/mount namespaces or overlay mounts: {done.stderr.strip()}"
    return None


# ---------------------------------------------------------------------- user_data


def user_data_text(user_data: str | None) -> str | None:
    """The bootstrap script from a server's user_data (as it is, or the base64 of it), or None
    when it is not a bootstrap (no `JIT_CONFIG=` line)."""
    for text in user_data_texts(user_data):
        if re.search(r"^JIT_CONFIG=\S", text, re.MULTILINE):
            return text
    return None


def shell_assignment(script: str, name: str) -> str | None:
    """The value of the first top-level `NAME=<shell word>` line (quotes may span lines)."""
    found = re.search(rf"^{re.escape(name)}=", script, re.MULTILINE)
    if found is None:
        return None
    rest = script[found.end() :]
    if not rest or rest[0] in " \t\n":
        return ""
    lexer = shlex.shlex(rest, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        token = lexer.get_token()
    except ValueError:
        return None
    return token if token is not None else ""


def write_key_pair(path: Path, comment: str) -> tuple[str, str]:
    """A fresh ed25519 key pair in OpenSSH formats, written to `path` and `path.pub`."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    public = f"{public} {comment}"
    path.touch(mode=0o600)
    path.write_text(private)
    path.with_suffix(".pub").write_text(public + "\n")
    return private, public


# ---------------------------------------------------------------------- the fleet


class SandboxFleet(GuestFleet[_Vm]):
    """Boots sandbox VMs for a simulated cloud's bootstrap servers; a context manager.

    ```python
    with SandboxFleet(github_url, cloud_url) as fleet:
        env.update(fleet.listener_settings())
        ...
        fleet.wait_for_event("run-complete", server="runner-1", timeout=30)
    ```
    """

    _NAME = "sandbox"
    _SURVIVED = (*GuestFleet._SURVIVED, OSError)
    _DEFAULT_SSH_PORT = 22

    def __init__(
        self, github_url: str, cloud_url: str, config: SandboxConfig | None = None
    ) -> None:
        self.config = config or SandboxConfig()
        super().__init__(
            github_url,
            cloud_url,
            poll_interval=self.config.poll_interval,
            request_timeout=self.config.request_timeout,
        )
        self.subnet = ipaddress.IPv4Network(
            self.config.subnet or f"127.{random.randrange(100, 250)}.0.0/16"
        )
        self.ssh_port = self.config.ssh_port or self._DEFAULT_SSH_PORT
        self.login_user = self._login_user()
        self._github_seq = 0
        self._own_root = self.config.root is None
        self.root = self.config.root or Path(tempfile.mkdtemp(prefix="scaleset-sandbox-"))
        (self.root / "vms").mkdir(parents=True, exist_ok=True)
        (self.root / "keys").mkdir(exist_ok=True)
        self.client_key_path = self.root / "keys" / "client_ed25519"
        if not self.client_key_path.exists():
            write_key_pair(self.client_key_path, "scaleset-sandbox-client")
        self.client_public_key = self.client_key_path.with_suffix(".pub").read_text().strip()
        self._downloads = DownloadServer()

    # ------------------------------------------------------------------ lifecycle

    def _login_user(self) -> str:
        """The user the listener's probe logs in as: the listener's default, which the bootstrap
        creates and authorizes the probe's key for (the key pair's key lets in only the image's
        default user, and root not at all, as on a stock image)."""
        return PROBE_USER

    def _problem(self) -> str | None:
        """Why this fleet's guests cannot run on this machine, or None."""
        problem = sandbox_problem()
        return None if problem is None else f"sandbox VMs cannot run here: {problem}"

    def _starting(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise RuntimeError(problem)
        self._cloud.update_config(fixed_subnet=str(self.subnet))
        self._downloads.start()
        atexit.register(self._kill_all)

    def _stopped(self) -> None:
        """Kill every VM, stop the download server; nothing is left behind."""
        self._downloads.stop()
        self._kill_all()
        atexit.unregister(self._kill_all)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def listener_settings(self) -> dict[str, str]:
        """The env-file settings a listener needs to boot and probe these VMs. No runner
        settings: the listener's default (the latest release, from the simulated GitHub's
        downloads endpoint) has the VMs download the runner from the GitHub simulator."""
        return {
            "VM_SSH_USER": self.login_user,
            "VM_SSH_PRIVATE_KEY_PATH": str(self.client_key_path),
            "VM_SSH_PORT": str(self.ssh_port),
        }

    def mirror_settings(self, version: str) -> dict[str, str]:
        """The env-file settings that pin runner `version` and have the VMs download it from
        this fleet's mirror (`{version}` and `{arch}` kept in the URL)."""
        return {
            "GITHUB_RUNNER_VERSION": version,
            "RUNNER_DOWNLOAD_URL": self._downloads.runner_url,
            "RUNNER_SHA256": self.tarball(version).sha256,
        }

    def tarball(self, version: str) -> RunnerTarball:
        """The stub runner the mirror serves for `version`."""
        return self._downloads.tarball(version)

    @property
    def runner_download_url(self) -> str:
        """The mirror's URL template (`{version}`, `{arch}`)."""
        return self._downloads.runner_url

    @property
    def downloads(self) -> list[str]:
        """The paths the VMs downloaded the runner from the mirror, in order (downloads from
        the GitHub simulator are in its request log, endpoint `runner_release_download`)."""
        return list(self._downloads.downloads)

    # ------------------------------------------------------------------ behaviours

    def crash_runner(self, name: str, *, power_off: bool = True) -> None:
        """The runner of server `name` dies now: the service sees it go offline and its
        Runner.Listener is killed (run.sh exits non-zero, the VM prints run-complete and powers
        off) or, without `power_off`, stopped (the VM stays up silent). KeyError when that
        server has no online runner."""
        with self._cond:
            vm = self._online_vm(name)
            if vm is None or vm.runner_id is None or vm.sandbox is None:
                raise KeyError(f"server {name!r} has no online runner")
            runner_id, sandbox = vm.runner_id, vm.sandbox
        # The process first: told of its death first, the stub would exit by itself.
        for pid in sandbox.processes():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "Runner.Listener":
                    os.kill(pid, signal.SIGKILL if power_off else signal.SIGSTOP)
        self._github.runner_dies(runner_id)
        with self._cond:
            self._record(name, "crashed", "power-off" if power_off else "wedged")

    # ------------------------------------------------------------------ observation

    def sandbox_vm(self, name: str) -> SandboxVmInfo:
        """Where the VM of server `name` runs; KeyError before it has started."""
        with self._cond:
            vm = self._vm_named(name)
            if vm is None or vm.sandbox is None or vm.address is None:
                raise KeyError(name)
            box = vm.sandbox
            return SandboxVmInfo(
                vm.name,
                vm.address,
                self.ssh_port,
                vm.host_key_public,
                box.dir,
                box.launcher_pid,
                box.init_pid,
                box.pid_namespace,
            )

    def vm_processes(self, name: str) -> list[int]:
        """Host pids of the processes in that VM (empty once it is gone)."""
        with self._cond:
            vm = self._vm_named(name)
            box = vm.sandbox if vm is not None else None
        return box.processes() if box is not None else []

    def output_log(self, name: str) -> str:
        """The VM's cloud-init-output.log (the bootstrap's stdout and stderr)."""
        with self._cond:
            vm = self._vm_named(name)
            box = vm.sandbox if vm is not None else None
        if box is None:
            raise KeyError(name)
        return box.output_log()

    # ------------------------------------------------------------------ internals

    def _kill_all(self) -> None:
        with self._cond:
            boxes = [vm.sandbox for vm in self._vms.values() if vm.sandbox is not None]
        for box in boxes:
            box.kill()

    # ------------------------------------------------------------------ internals: the loop

    def _tick(self) -> None:
        servers = self._cloud.state()["servers"]
        world = self._github.state()
        # GitHub's events before the consoles: a console line written before an event (the
        # setup-complete marker before the runner connects) is then always read with it.
        events = self._github.events(after=self._github_seq)
        with self._cond:
            self._observe_cloud(servers, world)
        self._run_due_actions()
        self._observe_vms(events)

    def _observe_cloud(self, servers: list[JSON], world: JSON) -> None:
        present = {s["id"]: s for s in servers}
        for server in servers:
            if server["id"] in self._ignored:
                continue
            vm = self._vms.get(server["id"])
            if vm is None:
                vm = self._first_sight(server, world)
                if vm is None:
                    continue
            if vm.phase in ("gone", "down", "off"):
                continue
            if server.get("deleting") or server.get("task_state") == "deleting":
                self._went_away(vm, world, "deleted")
            elif vm.phase == "building" and server["status"] == "ACTIVE":
                address = self._address_of(server)
                if address is None:
                    vm.phase = "down"
                    self._record(
                        vm.name,
                        "error",
                        f"no address in {self.subnet} among {server.get('addresses')}",
                        errors=1,
                    )
                    continue
                vm.address = address
                vm.phase = "booting"
                delay = vm.behaviour.boot_seconds
                if delay is None:
                    delay = self.config.boot_seconds
                self._record(vm.name, "booting", f"{address} {delay:g}s")
                self._schedule(delay, partial(self._boot, vm))
            elif server["status"] in ("SHUTOFF", "ERROR"):
                self._went_away(vm, world, "down")
        for vm in self._vms.values():
            if vm.phase not in ("gone",) and vm.server_id not in present:
                self._went_away(vm, world, "deleted")

    def _address_of(self, server: JSON) -> str | None:
        for address in server.get("addresses") or ():
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Address(address) in self.subnet:
                    return str(address)
        return None

    def _first_sight(self, server: JSON, world: JSON) -> _Vm | None:
        name = str(server["name"])
        script = user_data_text(server.get("user_data"))
        if script is None:
            self._ignored.add(server["id"])
            self._record(name, "ignored", "no JIT_CONFIG line in user_data", ignored=1)
            return None
        behaviour = self._behaviour_for(name)
        vm = _Vm(
            server_id=str(server["id"]),
            name=name,
            runner_name=shell_assignment(script, "RUNNER_NAME") or name,
            user_data=script,
            behaviour=behaviour,
            host_key_private=shell_assignment(script, "HOST_KEY") or "",
            host_key_public=shell_assignment(script, "HOST_KEY_PUB") or "",
        )
        runner = _find_runner(world, vm)
        if runner is not None:
            vm.scale_set_id = int(runner["scale_set_id"])
        self._vms[vm.server_id] = vm
        self._record(name, "seen", behaviour.failure or "", seen=1)
        return vm

    def _went_away(self, vm: _Vm, world: JSON, why: Literal["deleted", "down"]) -> None:
        """Deleted, shut off or broken from outside: the VM dies, a runner online with it."""
        if vm.phase == ("gone" if why == "deleted" else "down"):
            return
        was = vm.phase
        vm.phase = "gone" if why == "deleted" else "down"
        self._record(vm.name, why)
        if was in ("off", "gone", "down"):
            return
        runner = _find_runner(world, vm)
        online = runner["id"] if runner and runner["state"] in ("idle", "busy") else None
        self._schedule(0.0, partial(self._pull_plug, vm, online))

    def _observe_github(self, events: list[JSON]) -> None:
        """Follow the GitHub simulator's event log, so nothing that happened between two looks
        is missed (a fast job starts and ends within one poll interval)."""
        for event in events:
            self._github_seq = max(self._github_seq, int(event["seq"]))
            kind = event["type"]
            if kind == "runner_registered":
                vm = self._vm_of_runner(event.get("runner_id"), event.get("name"))
                if vm is not None:
                    vm.scale_set_id = event.get("scale_set_id")
            elif kind == "runner_state":
                vm = self._vm_of_runner(event.get("runner_id"), event.get("name"))
                if vm is not None:
                    self._runner_state(vm, str(event["state"]))
            elif kind == "job_state" and event.get("state") == "running":
                vm = self._vm_of_runner(event.get("runner_id"), None)
                if vm is not None:
                    vm.job_id = event.get("job")
                    if vm.phase in ("booting", "idle"):
                        vm.phase = "busy"
                    self._record(vm.name, "job-started", f"job={vm.job_id}", jobs_started=1)

    def _vm_of_runner(self, runner_id: object, name: object) -> _Vm | None:
        for vm in self._vms.values():
            if runner_id is not None and vm.runner_id == runner_id:
                return vm
        if isinstance(name, str) and isinstance(runner_id, int):
            for vm in self._vms.values():
                if vm.runner_id is None and vm.runner_name.lower() == name.lower():
                    vm.runner_id = runner_id
                    return vm
        return None

    def _runner_state(self, vm: _Vm, state: str) -> None:
        if state in ("idle", "busy") and not vm.connected:
            vm.connected = True
            if vm.phase == "booting":
                vm.phase = "idle"
            self._record(vm.name, "connected", f"runner={vm.runner_id}", connected=1)
        elif state == "offline":
            if vm.phase in ("booting", "idle", "busy"):
                vm.phase = "dead"
            self._record(vm.name, "runner-offline", f"runner={vm.runner_id}", died=1)

    def _observe_vms(self, events: list[JSON]) -> None:
        with self._cond:
            live = [
                vm
                for vm in self._vms.values()
                if vm.sandbox is not None and vm.phase not in ("off", "gone", "down")
            ]
        consoles: list[tuple[_Vm, list[str]]] = []
        for vm in live:
            box = vm.sandbox
            assert box is not None
            box.note_namespace()
            if not vm.sshd_reported:
                state = box.sshd_state()
                if state is not None:
                    vm.sshd_reported = True
                    with self._cond:
                        if state == "ok":
                            self._record(vm.name, "sshd-started", f"{vm.address}")
                        else:
                            self._record(vm.name, "error", f"sshd {state}", errors=1)
            consoles.append((vm, self._relay_console(vm, box)))
        self._absorb(consoles, events)
        for vm in live:
            box = vm.sandbox
            assert box is not None
            if box.powered_off():
                self._power_off(vm)
            elif box.exited() is not None:
                with self._cond:
                    vm.phase = "down"
                    self._record(vm.name, "error", f"VM died: {box.start_errors()}", errors=1)

    def _relay_console(self, vm: _Vm, box: GuestMachine) -> list[str]:
        """New lines of the VM's /dev/console, appended to the server's console log."""
        lines = box.new_console_lines()
        if lines:
            try:
                self._cloud.append_console(vm.server_id, *lines)
            except ControlApiError as exc:
                if exc.status != 404:
                    raise
        return lines

    def _absorb(self, consoles: list[tuple[_Vm, list[str]]], events: list[JSON]) -> None:
        """Console markers and GitHub events in the order they happened: setup markers before
        the events (read after them), run-complete and setup-failed after every event up to now
        (a job that started and ended between two looks is recorded before its end)."""
        finals: list[tuple[_Vm, str]] = []
        with self._cond:
            for vm, lines in consoles:
                for line in lines:
                    if line.startswith(f"{MARKER} setup-complete"):
                        self._on_console(vm, line)
                    elif _MARKER_LINE.match(line):
                        finals.append((vm, line))
            self._observe_github(events)
        if finals:
            later = self._github.events(after=self._github_seq)
            with self._cond:
                self._observe_github(later)
                for vm, line in finals:
                    self._on_console(vm, line)

    def _on_console(self, vm: _Vm, line: str) -> None:
        found = _MARKER_LINE.match(line)
        if found is None:
            return
        what, rest = found.group("what"), found.group("rest")
        if what == "setup-complete":
            self._record(vm.name, "setup-complete", booted=1)
        elif what == "setup-failed":
            reason = _REASON.search(rest)
            vm.phase = "exiting"
            self._record(vm.name, "setup-failed", reason.group(1) if reason else "", setup_failed=1)
        else:
            code = _EXIT.search(rest)
            vm.exit_code = int(code.group(1)) if code else None
            vm.phase = "exiting"
            self._record(vm.name, "run-complete", f"exit={vm.exit_code}", run_complete=1)

    # ------------------------------------------------------------------ internals: actions

    def _boot(self, vm: _Vm) -> None:
        with self._cond:
            if vm.phase != "booting" or vm.address is None:
                return
            behaviour = vm.behaviour
        vm_dir = self.root / "vms" / vm.server_id
        if not vm.host_key_private:
            vm_dir.mkdir(parents=True, exist_ok=True)
            key_path = vm_dir / "ssh_host_ed25519_key"
            key_path.unlink(missing_ok=True)
            key_path.with_suffix(".pub").unlink(missing_ok=True)
            vm.host_key_private, vm.host_key_public = write_key_pair(key_path, vm.name)
        files: dict[str, tuple[str, int]] = dict(self.config.image_files)
        if self.config.baked_runner is not None:
            for relative, text in runner_files(self.config.baked_runner).items():
                files[f"{self.config.baked_runner_dir}/{relative}"] = (text, 0o755)
        if behaviour.failure in ("crash", "wedge"):
            files[BEHAVIOUR_PATH] = (
                f'{{"failure": "{behaviour.failure}", "crash_after": {behaviour.crash_after}}}\n',
                0o644,
            )
        if behaviour.failure == "setup_fail":
            files["/usr/local/bin/curl"] = (FAILING_CURL, 0o755)
        spec = VmSpec(
            name=vm.name,
            address=vm.address,
            port=self.ssh_port,
            host_key_private=vm.host_key_private,
            host_key_public=vm.host_key_public,
            authorized_keys=self.client_public_key,
            user_data=None if behaviour.failure == "hang" else vm.user_data,
            files=files,
        )
        box, user_data_runs = self._machine(vm, spec, vm_dir)
        box.start()
        with self._cond:
            vm.sandbox = box
            self._record(vm.name, "vm-started", f"pid={box.launcher_pid}")
            if not user_data_runs:
                vm.phase = "hung"
                self._record(vm.name, "setup-hang", hung=1)
            if _went_away_meanwhile(vm):
                self._schedule(0.0, partial(self._pull_plug, vm, None))

    def _machine(self, vm: _Vm, spec: VmSpec, vm_dir: Path) -> tuple[GuestMachine, bool]:
        """The guest for `spec`, and whether it runs the user_data."""
        return SandboxVm(spec, vm_dir), spec.user_data is not None

    def _power_off(self, vm: _Vm) -> None:
        """The guest powered itself off: pull the plug, report SHUTOFF. A runner still online
        (the VM went down under it, e.g. a safety net's power-off) dies with it, as it would
        with GitHub: its job fails, the runner goes offline."""
        box = vm.sandbox
        assert box is not None
        self._absorb([(vm, self._relay_console(vm, box))], [])
        runner = _find_runner(self._github.state(), vm)
        online = runner["id"] if runner and runner["state"] in ("idle", "busy") else None
        self._pull_plug(vm, online)
        try:
            self._cloud.set_server_status(vm.server_id, "SHUTOFF")
        except ControlApiError as exc:
            if exc.status != 404:
                raise
        with self._cond:
            if vm.phase not in ("gone", "down"):
                vm.phase = "off"
            self._record(vm.name, "powered-off", powered_off=1)

    def _pull_plug(self, vm: _Vm, online_runner: int | None) -> None:
        if vm.sandbox is not None:
            vm.sandbox.kill()
        if online_runner is None:
            return
        try:
            self._github.runner_dies(online_runner)
        except ControlAPIError as exc:
            if exc.status != 404:
                with self._cond:
                    self._record(vm.name, "error", f"runner_dies: {exc}", errors=1)
            return
        with self._cond:
            # Counted as died when the service reports the runner offline.
            self._record(vm.name, "runner-killed", f"runner={online_runner}")


def _went_away_meanwhile(vm: _Vm) -> bool:
    """Deleted or shut off while its VM started (another tick may have changed the phase)."""
    return vm.phase in ("gone", "down")


def _find_runner(world: JSON, vm: _Vm) -> JSON | None:
    for runner in world["runners"]:
        if vm.runner_id is not None and runner["id"] == vm.runner_id:
            return dict(runner)
        if vm.runner_id is None and runner["name"].lower() == vm.runner_name.lower():
            return dict(runner)
    return None


class LightFleet(SandboxFleet):
    """Light VMs (sim/simulator/sandbox/light_vm.py) for a simulated cloud's bootstrap servers:
    the same bootstrap, stub runner, sentinels, console markers, behaviours and events as
    sandbox VMs, for machines without namespaces or without root. Each VM is a directory, a
    process session and a paramiko sshd on its loopback address at `ssh_port` (default 2222);
    the probe logs in as the bootstrap's probe user, and runs as the simulator's user."""

    _NAME = "light VMs"
    _DEFAULT_SSH_PORT = 2222

    def _problem(self) -> str | None:
        problem = light_problem()
        return None if problem is None else f"light VMs cannot run here: {problem}"

    def _machine(self, vm: _Vm, spec: VmSpec, vm_dir: Path) -> tuple[GuestMachine, bool]:
        provide_curl = self.config.provide_curl
        if provide_curl is None:
            provide_curl = not host_has_downloader()
        user = current_user() or str(os.getuid())
        guest = LightVm(spec, vm_dir, user=user, provide_curl=provide_curl)
        if guest.start_errors():
            with self._cond:
                self._record(vm.name, "error", guest.start_errors(), errors=1)
        return guest, guest.runs_user_data
