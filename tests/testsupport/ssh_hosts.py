"""Real OpenSSH sshd "VMs" on loopback addresses, and hosts that misbehave, for the SSH prober.

Each VM is one `sshd -D` on its own 127.0.x.y address, started inside its own PID and mount
namespace (`unshare --pid --fork --mount-proc --mount`). Inside that namespace one fixed path,
`<root>/vm`, is bind-mounted from the VM's own directory and the user's home is an empty
per-VM directory, so:

* the sentinel dir `<root>/vm/state` (`SSHHostFactory.sentinel_dir`) holds *this* VM's sentinels;
* `pgrep` and `/proc/<pid>` over SSH see only this VM's processes: a runner stand-in
  (`run.sh --jitconfig <secret>` running `Runner.Listener`, a symlink to `sleep`) is started by
  the VM's launcher, which writes `runner-started` with the in-namespace pid and the boot id;
* the host's dotfiles never run in a probe.

Every VM gets a host key from `provisioners.bootstrap.generate_host_key()` (so pinning can be
tested) and authorizes one client key. Misbehaving hosts: a listener whose accept queue is full
(the TCP handshake is never answered), a bound socket that never listens (refused), a listener
that accepts and never sends a banner, one that sends a banner and then nothing, plus sshd
variants (auth stall, command stall, garbage output) and a VM pinned with the wrong key.

The port is chosen at random per factory (20000-31999, below Linux's ephemeral range) and every
address is checked to be free, so two test runs on one machine do not collide. Needs root (sshd
privilege separation, mount namespaces); `ssh_host_factory` skips with the reason where the
machine forbids namespaces, and fails instead when REQUIRE_SSH_HOSTS=1 (CI).

Cost on a 2-core box (docs/ssh-probe.md, "Test hosts"): ≈8-9 ms per VM to start in batches
(1,000 in ≈9 s), ≈1.7 MB of memory per VM; misbehaving hosts ≈0.3 ms each. For a benchmark:
`factory.start_fleet(900)` plus `[factory.hang_host() for _ in range(100)]`, then
`[host.target for host in hosts]` for `SSHProber.probe_many`.
Stop order: SIGTERM to sshd (the namespace's init: the kernel then kills the rest of that VM)
and to its launcher; never by process name.
"""

from __future__ import annotations

import contextlib
import enum
import os
import pwd
import random
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioners.base import ProbeResult
from provisioners.bootstrap import generate_host_key
from provisioners.sentinels import (
    REPORT_SCRIPT_PATH,
    RUN_COMPLETE,
    SETUP_COMPLETE,
    SETUP_FAILED,
    authorized_keys_entry,
    report_script,
)
from provisioners.ssh import SSHProber
from simulator.sandbox.vm import listening_keys, proc_net_key

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-system-deps"
# The stand-in runner's secret: it is on `run.sh`'s command line, as the real JIT config is.
FAKE_JIT_CONFIG = "JITCONFIG-c2VjcmV0LWRvLW5vdC1wcmludA"
OPENSSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
# An other machine's boot id, for the "rebooted since the runner started" VM.
OTHER_BOOT_ID = "00000000-0000-4000-8000-000000000000"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Held processes (stand-in runner, stalls) end by themselves even if a teardown is missed.
HOLD_SECONDS = 3600

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {vm_dir}/etc/ssh_host_ed25519_key
AuthorizedKeysFile {vm_dir}/etc/authorized_keys
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
MaxStartups 100:30:200
LoginGraceTime 30
LogLevel ERROR
"""

RUN_SH = """\
#!/bin/sh
# The runner stand-in: named run.sh like the real one, its child is named Runner.Listener.
"$(dirname "$0")/bin/Runner.Listener" {hold}
"""


class RunnerState(enum.Enum):
    """What the VM's launcher does about the runner before sshd starts."""

    NONE = "none"  # no runner-started, no runner process
    ALIVE = "alive"  # runner running; runner-started holds its pid and this boot's id
    CRASHED = "crashed"  # runner-started holds the pid of a process that has exited
    REBOOTED = "rebooted"  # runner running, but runner-started names another boot id
    UNRECORDED = "unrecorded"  # runner running, no runner-started (a custom template)


@dataclass(frozen=True)
class HostSpec:
    """One VM: its sentinel files (name -> content), its runner, and sshd variations."""

    sentinels: Mapping[str, str] = field(default_factory=dict)
    runner: RunnerState = RunnerState.NONE
    # sshd's ForceCommand: the probe's command is replaced by this one (stalls, garbage).
    force_command: str | None = None
    # Public-key auth never answers (AuthorizedKeysCommand sleeps).
    auth_stall: bool = False
    # The client key authorized as the bootstrap authorizes the probe's key (`restrict`, the
    # report script forced), the script at its VM path (a tmpfs over /usr/local in the VM's
    # mount namespace), and sshd otherwise permissive (forwarding, agent, X11 allowed), so
    # that whatever is refused is refused by the key's entry.
    probe_entry: bool = False
    label: str = ""

    @classmethod
    def setup_not_complete(cls) -> HostSpec:
        return cls(label="setup not complete")

    @classmethod
    def runner_alive(cls) -> HostSpec:
        return cls({SETUP_COMPLETE: "2026-01-01T00:00:00Z\n"}, RunnerState.ALIVE, label="alive")

    @classmethod
    def run_complete(cls, exit_code: int = 0) -> HostSpec:
        return cls(
            {SETUP_COMPLETE: "2026-01-01T00:00:00Z\n", RUN_COMPLETE: f"{exit_code}\n"},
            RunnerState.CRASHED,  # runner-started names the pid that has exited
            label=f"run complete exit {exit_code}",
        )

    @classmethod
    def runner_crashed(cls) -> HostSpec:
        return cls({SETUP_COMPLETE: "2026-01-01T00:00:00Z\n"}, RunnerState.CRASHED, label="crashed")

    @classmethod
    def setup_failed(cls, reason: str) -> HostSpec:
        return cls({SETUP_FAILED: reason + "\n"}, label="setup failed")


@dataclass(frozen=True)
class SSHHost:
    """A host the prober can be pointed at. `pinned_public_key` is what a test should pin (the
    VM's own key, except on the wrong-key host); `public_key` is what the server presents."""

    kind: str
    address: str
    port: int
    public_key: str | None = None
    pinned_public_key: str | None = None
    vm_dir: Path | None = None
    launcher_pid: int | None = None
    sshd_pid: int | None = None

    @property
    def state_dir(self) -> Path:
        """The VM's sentinel directory as seen from the host (write here to change state)."""
        assert self.vm_dir is not None, f"{self.kind} host has no VM directory"
        return self.vm_dir / "state"

    @property
    def target(self) -> tuple[str, str | None]:
        """`(address, pinned_public_key)`, as `SSHProber.probe_many` takes it."""
        return self.address, self.pinned_public_key


class MappedProber:
    """Probes the test host standing in for the VM at `address`: the simulated cloud reports
    10.0.x.y addresses, the VMs' sshd listen on 127.0.x.y. The pinned key is passed through."""

    def __init__(self, inner: SSHProber, hosts: dict[str, SSHHost]) -> None:
        self.inner = inner
        self.hosts = hosts
        # The key pinned per cloud address, so tests can see what the reconciler passed.
        self.pinned: dict[str, str | None] = {}

    async def probe(self, address: str, pinned_public_key: str | None) -> ProbeResult:
        self.pinned[address] = pinned_public_key
        return await self.inner.probe(self.hosts[address].address, pinned_public_key)


def namespace_problem() -> str | None:
    """Why real sshd hosts cannot run here, or None. Only a machine that forbids namespaces (or
    a non-root user) is a reason to skip."""
    if os.geteuid() != 0:
        return "SSH test hosts need root (sshd privilege separation, mount namespaces)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return None  # util-linux is missing: install_system_deps() installs it
    try:
        done = subprocess.run(
            [unshare, "--pid", "--fork", "--mount-proc", "--mount", "true"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --pid --mount failed: {exc}"
    if done.returncode != 0:
        return f"this machine forbids PID/mount namespaces: {done.stderr.strip()}"
    return None


def install_system_deps(*, force: bool = False) -> None:
    """Install sshd, unshare and pgrep through the project's script when they are missing (with
    `force`, run the script anyway: it installs only what is missing)."""
    tools = ("sshd", "unshare", "pgrep")
    if not force and all(shutil.which(tool, path=_SBIN_PATH) for tool in tools):
        return
    done = subprocess.run(
        [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{INSTALL_SCRIPT} failed: {done.stderr.strip()[-2000:]}")


_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


def _tool(name: str) -> str:
    path = shutil.which(name, path=_SBIN_PATH)
    if path is None:
        raise RuntimeError(f"{name} not found: run scripts/install-system-deps")
    return path


class _Listeners:
    """In-process misbehaving listeners on one thread: accept-and-hold (optionally after a
    banner), plus sockets that hold an address without answering (full accept queue, refused)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._pending: list[tuple[socket.socket, bytes]] = []
        self._thread = threading.Thread(target=self._run, name="ssh-test-listeners", daemon=True)
        self._stopping = False
        self._thread.start()

    def serve(self, sock: socket.socket, greeting: bytes) -> None:
        sock.setblocking(False)
        with self._lock:
            self._pending.append((sock, greeting))
        self._wake_w.send(b"x")

    def hold(self, sock: socket.socket) -> None:
        with self._lock:
            self._held.append(sock)

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                data = key.data
                if data is None:
                    self._wake_r.recv(4096)
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for listener, hello in pending:
                        self._selector.register(listener, selectors.EVENT_READ, ("listen", hello))
                    continue
                role, greeting = data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if role == "listen":
                    with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        if greeting:
                            conn.send(greeting)
                        self._selector.register(conn, selectors.EVENT_READ, ("conn", b""))
                    continue
                try:
                    chunk = sock.recv(65536)  # whatever the client says is ignored
                except OSError:
                    chunk = b""
                if not chunk:
                    self._selector.unregister(sock)
                    sock.close()

    def close(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._wake_w.close()
        with self._lock:
            for sock in self._held:
                sock.close()
            self._held.clear()


@dataclass
class _Launch:
    host: SSHHost
    process: subprocess.Popen[bytes]


class SSHHostFactory:
    """Starts and stops test hosts under `root`. Use as a context manager, or call `stop()`."""

    def __init__(self, root: Path, *, port: int | None = None) -> None:
        self.root = root
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self._home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
        self._sshd = _tool("sshd")
        self._unshare = _tool("unshare")
        self._sleep = _tool("sleep")
        self._next = 0
        self._launches: list[_Launch] = []
        self._listeners = _Listeners()
        self.port = port or random.randrange(20000, 32000)
        (root / "vm").mkdir(parents=True, exist_ok=True)
        (root / "vms").mkdir(exist_ok=True)
        keys = root / "keys"
        keys.mkdir(exist_ok=True)
        client = generate_host_key("ssh-test-client")
        wrong = generate_host_key("ssh-test-wrong-client")
        self.client_key_path = keys / "client_ed25519"
        self.wrong_client_key_path = keys / "wrong_ed25519"
        for path, key in ((self.client_key_path, client), (self.wrong_client_key_path, wrong)):
            path.write_text(key.private_openssh)
            path.chmod(0o600)
        self._client_public = client.public_openssh
        self._privsep_checked = False

    @property
    def sentinel_dir(self) -> str:
        """The sentinel directory every VM sees as its own (SSHProbeConfig.sentinel_dir)."""
        return str(self.root / "vm" / "state")

    # Real sshd VMs

    def start(self, spec: HostSpec) -> SSHHost:
        return self.start_many([spec])[0]

    def start_many(self, specs: Sequence[HostSpec], *, batch: int = 64) -> list[SSHHost]:
        """Start one VM per spec, `batch` launches in flight at a time; wait until each listens."""
        hosts: list[SSHHost] = []
        for first in range(0, len(specs), batch):
            launches = [self._launch(spec) for spec in specs[first : first + batch]]
            self._launches.extend(launches)
            self._wait_listening(launches)
            for launch in launches:
                launch.host = self._with_sshd_pid(launch)
                hosts.append(launch.host)
        return hosts

    def start_fleet(
        self, n: int, spec_for: Callable[[int], HostSpec] | None = None
    ) -> list[SSHHost]:
        """N VMs for a benchmark; by default their states rotate: not complete, alive, run
        complete (exit 0), crashed."""
        rotation = (
            HostSpec.setup_not_complete(),
            HostSpec.runner_alive(),
            HostSpec.run_complete(0),
            HostSpec.runner_crashed(),
        )
        chooser = spec_for or (lambda k: rotation[k % len(rotation)])
        return self.start_many([chooser(k) for k in range(n)])

    def wrong_key_host(self, spec: HostSpec | None = None) -> SSHHost:
        """A real VM pinned with a key that is not its own (a reused address, a young VM)."""
        host = self.start(spec or HostSpec.runner_alive())
        other = generate_host_key("not-this-vm").public_openssh
        launch = next(item for item in self._launches if item.host == host)
        launch.host = SSHHost(
            "wrong_host_key",
            host.address,
            host.port,
            host.public_key,
            other,
            host.vm_dir,
            host.launcher_pid,
            host.sshd_pid,
        )
        return launch.host

    # Hosts that misbehave at the TCP or SSH level (in this process)

    def hang_host(self) -> SSHHost:
        """Never answers the TCP handshake: a listener whose accept queue is full drops SYNs."""
        address = self._allocate()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((address, self.port))
        listener.listen(0)
        self._listeners.hold(listener)
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((address, self.port))
            self._listeners.hold(filler)
        return SSHHost("hang", address, self.port, pinned_public_key=self._any_key())

    def refusing_host(self) -> SSHHost:
        """Refuses at once (RST): the address is bound, nothing listens."""
        address = self._allocate()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind((address, self.port))
        self._listeners.hold(holder)
        return SSHHost("refused", address, self.port, pinned_public_key=self._any_key())

    def silent_host(self) -> SSHHost:
        """Accepts TCP, never sends a banner."""
        return self._serving_host("no_banner", b"")

    def banner_stall_host(self) -> SSHHost:
        """Sends an OpenSSH banner, then nothing: the key exchange stalls."""
        return self._serving_host("banner_stall", OPENSSH_BANNER)

    def _serving_host(self, kind: str, greeting: bytes) -> SSHHost:
        address = self._allocate()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((address, self.port))
        listener.listen(512)
        self._listeners.serve(listener, greeting)
        return SSHHost(kind, address, self.port, pinned_public_key=self._any_key())

    # Teardown

    def stop(self) -> None:
        """Stop every VM (sshd, then its launcher, by pid) and every listener."""
        for launch in self._launches:
            for pid in (launch.host.sshd_pid, launch.process.pid):
                if pid is not None and launch.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        for launch in self._launches:
            try:
                launch.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                launch.process.kill()
                launch.process.wait(timeout=STOP_TIMEOUT)
        self._launches.clear()
        self._listeners.close()

    def __enter__(self) -> SSHHostFactory:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # Internals

    def _allocate(self) -> str:
        """The next free 127.0.x.y (x from 1, y 1..250) for this factory's port."""
        while True:
            self._next += 1
            k = self._next
            if k > 250 * 250:
                raise RuntimeError("out of loopback addresses")
            address = f"127.0.{1 + (k - 1) // 250}.{1 + (k - 1) % 250}"
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind((address, self.port))
            except OSError:
                continue
            finally:
                probe.close()
            return address

    @staticmethod
    def _any_key() -> str:
        return generate_host_key("unused").public_openssh

    def _launch(self, spec: HostSpec) -> _Launch:
        address = self._allocate()
        name = "vm" + address.replace("127.0.", "").replace(".", "-")
        vm_dir = self.root / "vms" / name
        for sub in ("etc", "state", "runner/bin", "home", "log"):
            (vm_dir / sub).mkdir(parents=True, exist_ok=True)
        key = generate_host_key(name)
        host_key = vm_dir / "etc" / "ssh_host_ed25519_key"
        host_key.write_text(key.private_openssh)
        host_key.chmod(0o600)
        (vm_dir / "etc" / "ssh_host_ed25519_key.pub").write_text(key.public_openssh)
        authorized = self._client_public
        config = SSHD_CONFIG.format(address=address, port=self.port, vm_dir=vm_dir)
        if spec.probe_entry:
            authorized = authorized_keys_entry(self._client_public, self.sentinel_dir) + "\n"
            (vm_dir / "etc" / "scaleset-probe").write_text(report_script())
            for option in ("X11Forwarding", "AllowTcpForwarding", "AllowAgentForwarding"):
                config = config.replace(f"{option} no", f"{option} yes")
            config = config.replace("PermitTunnel no", "PermitTunnel yes")
            config += "Subsystem sftp internal-sftp\n"
        (vm_dir / "etc" / "authorized_keys").write_text(authorized)
        if spec.force_command:
            config += f"ForceCommand {spec.force_command}\n"
        if spec.auth_stall:
            config = config.replace(f"AuthorizedKeysFile {vm_dir}/etc/authorized_keys", "")
            config += "AuthorizedKeysFile none\n"
            config += f"AuthorizedKeysCommand {self._sleep} {HOLD_SECONDS}\n"
            config += "AuthorizedKeysCommandUser nobody\n"
        config_path = vm_dir / "etc" / "sshd_config"
        config_path.write_text(config)
        self._ensure_privsep_dir(config_path)
        for sentinel in (vm_dir / "state").iterdir():
            sentinel.unlink()
        for file_name, content in spec.sentinels.items():
            (vm_dir / "state" / file_name).write_text(content)
        run_sh = vm_dir / "runner" / "run.sh"
        run_sh.write_text(RUN_SH.format(hold=HOLD_SECONDS))
        run_sh.chmod(0o755)
        listener = vm_dir / "runner" / "bin" / "Runner.Listener"
        if not listener.is_symlink():
            listener.symlink_to(self._sleep)
        launch_sh = vm_dir / "launch.sh"
        launch_sh.write_text(self._launch_script(vm_dir, spec.runner, spec.probe_entry))
        with (vm_dir / "log" / "start.err").open("wb") as start_err:
            process = subprocess.Popen(
                [
                    self._unshare,
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--mount",
                    "--kill-child=SIGTERM",
                    "/bin/sh",
                    str(launch_sh),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=start_err,
                start_new_session=True,
            )
        host = SSHHost(
            spec.label or "vm",
            address,
            self.port,
            key.public_openssh,
            key.public_openssh,
            vm_dir,
            process.pid,
        )
        return _Launch(host, process)

    def _launch_script(self, vm_dir: Path, runner: RunnerState, probe_entry: bool = False) -> str:
        view = self.root / "vm"
        q = shlex.quote
        lines = [
            "set -e",
            f"mount --bind {q(str(vm_dir))} {q(str(view))}",
            f"mount --bind {q(str(vm_dir / 'home'))} {q(str(self._home))}",
        ]
        if probe_entry:
            script = q(REPORT_SCRIPT_PATH)
            lines += [
                "mount -t tmpfs -o mode=0755 probe-usr-local /usr/local",
                f"mkdir -p {q(REPORT_SCRIPT_PATH.rsplit('/', 1)[0])}",
                f"cp {q(str(vm_dir / 'etc' / 'scaleset-probe'))} {script}",
                f"chmod 0755 {script}",
            ]
        lines += [
            f"state={q(str(view / 'state'))}",
            "boot=$(cat /proc/sys/kernel/random/boot_id)",
        ]
        start_runner = (
            f"{q(str(view / 'runner' / 'run.sh'))} --jitconfig {q(FAKE_JIT_CONFIG)}"
            " </dev/null >/dev/null 2>&1 & pid=$!"
        )
        record = 'printf "%s\\n%s\\n" "$pid" "{boot}" >"$state/runner-started.tmp"'
        record += ' && mv "$state/runner-started.tmp" "$state/runner-started"'
        if runner is RunnerState.ALIVE:
            lines += [start_runner, record.format(boot="$boot")]
        elif runner is RunnerState.REBOOTED:
            lines += [start_runner, record.format(boot=OTHER_BOOT_ID)]
        elif runner is RunnerState.UNRECORDED:
            lines += [start_runner]
        elif runner is RunnerState.CRASHED:
            lines += ["sh -c 'exit 1' & pid=$!", "wait $pid || true", record.format(boot="$boot")]
        lines.append(
            f"exec {q(self._sshd)} -D -f {q(str(vm_dir / 'etc' / 'sshd_config'))}"
            f" -E {q(str(vm_dir / 'log' / 'sshd.log'))}"
        )
        return "\n".join(lines) + "\n"

    def _ensure_privsep_dir(self, config_path: Path) -> None:
        """sshd refuses to start without its compiled-in privilege separation directory."""
        if self._privsep_checked:
            return
        done = subprocess.run(
            [self._sshd, "-t", "-f", str(config_path)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        prefix = "Missing privilege separation directory: "
        for line in done.stderr.splitlines():
            if line.strip().startswith(prefix):
                Path(line.strip()[len(prefix) :]).mkdir(parents=True, exist_ok=True)
        self._privsep_checked = True

    def _wait_listening(self, launches: list[_Launch]) -> None:
        """Until every sshd has its listening socket (read from /proc/net/tcp), bounded."""
        wanted = {proc_net_key(item.host.address, self.port): item for item in launches}
        until = time.monotonic() + READY_TIMEOUT
        while wanted:
            for key in listening_keys() & wanted.keys():
                del wanted[key]
            for launch in list(wanted.values()):
                if launch.process.poll() is not None:
                    raise RuntimeError(f"test host {launch.host.address} died: {_logs(launch)}")
            if not wanted:
                return
            if time.monotonic() > until:
                first = next(iter(wanted.values()))
                raise RuntimeError(
                    f"{len(wanted)} test hosts not listening after {READY_TIMEOUT:g}s; "
                    f"first {first.host.address}: {_logs(first)}"
                )
            time.sleep(0.005)  # polling an external process's readiness, bounded above

    @staticmethod
    def _with_sshd_pid(launch: _Launch) -> SSHHost:
        pid = launch.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        host = launch.host
        return SSHHost(
            host.kind,
            host.address,
            host.port,
            host.public_key,
            host.pinned_public_key,
            host.vm_dir,
            host.launcher_pid,
            int(children[0]) if children else None,
        )


def _logs(launch: _Launch) -> str:
    vm_dir = launch.host.vm_dir
    assert vm_dir is not None
    parts = []
    for name in ("start.err", "sshd.log"):
        path = vm_dir / "log" / name
        if path.exists():
            parts.append(f"{name}: {path.read_text(errors='replace').strip()[-1000:]}")
    return "; ".join(parts) or "no log output"


@pytest.fixture(scope="session")
def ssh_host_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHHostFactory]:
    """One factory per test run. Skips only where namespaces are forbidden (or not root);
    with REQUIRE_SSH_HOSTS=1 that is a failure instead."""
    problem = namespace_problem()
    if problem is not None:
        if os.environ.get("REQUIRE_SSH_HOSTS") == "1":
            pytest.fail(f"REQUIRE_SSH_HOSTS=1 but {problem}")
        pytest.skip(problem)
    install_system_deps()
    factory = SSHHostFactory(tmp_path_factory.mktemp("ssh-hosts"))
    try:
        yield factory
    finally:
        factory.stop()
