"""One sandbox VM: a PID and mount namespace with its own copy-on-write root, a real sshd on its
own loopback address, and the server's user_data run as cloud-init runs it.

Layout inside the namespace (nothing of it is visible to, or changes, the host):

* a tmpfs holds an overlay whose lower layer is the host's root file system, so the VM sees the
  host's programs (sshd, bash, curl, python3) and everything it writes (`useradd`, the host key
  in /etc/ssh, /var/lib/scaleset-runner, /opt/actions-runner) lands in the VM's upper layer;
* fresh tmpfs mounts over /tmp, /run, /root and /home (a new VM has empty homes, and the host's
  dotfiles must not run in a probe); a fresh /proc of the VM's PID namespace, so `pgrep` and
  `/proc/<pid>` see only the VM's processes; a minimal /dev;
* host-visible files bound in: `console` over /dev/console (the sandbox relays new lines to the
  cloud's console log), `cloud-init-output.log` over /var/log/cloud-init-output.log, and the
  `power/` directory at /run/scaleset-sandbox, where the VM's stub `systemctl poweroff`,
  `shutdown` and `poweroff` record that the guest powered itself off.

Boot order follows a cloud image: the injected host key is in place (cloud-init's cc_ssh does
that before sshd starts), sshd starts on `<address>:<port>`, then the user_data script runs as
root from / with cloud-init's PATH, its output appended to cloud-init-output.log.

Stopping a VM is pulling its plug: SIGKILL to the namespace's init (by pid), so its parent
`unshare` reaps it and exits; the kernel kills every other process of the namespace and the
mounts go with it. `unshare` runs with `--kill-child=SIGKILL` as a backstop. Never by name.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# cloud-init runs user scripts with systemd's default PATH.
CLOUD_INIT_PATH = SBIN_PATH
STOP_TIMEOUT = 10.0
USER_DATA_PATH = "/var/lib/cloud/instance/scripts/part-001"

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin no
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
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

# `{power_file}` is where the guest's power-off is recorded (the fleet watches it).
POWEROFF_STUB = """\
#!/bin/sh
# simulator.sandbox: this VM has no init system; powering off tells the sandbox, which then
# pulls the plug and reports the server SHUTOFF.
printf '%s %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(basename "$0") $*" \\
  >>{power_file}
exit 0
"""
SANDBOX_POWER_FILE = "/run/scaleset-sandbox/poweroff"

SYSTEMCTL_STUB = """\
#!/bin/sh
# simulator.sandbox: a systemctl for a VM without systemd. Power verbs power off; reloads and
# restarts of the SSH service make sshd re-read its keys; everything else succeeds quietly.
for word in "$@"; do
  case "$word" in
    poweroff|halt|reboot|kexec) exec poweroff "$word" ;;
    reload|restart|try-restart|reload-or-restart|try-reload-or-restart)
      if [ -f /run/sshd.pid ]; then kill -HUP "$(cat /run/sshd.pid)" 2>/dev/null || true; fi
      exit 0 ;;
  esac
done
exit 0
"""

# The image's default user, the only one the cloud's key pair lets in (as on a stock image).
DEFAULT_USER = "ubuntu"
KEY_PAIR_PATH = "/etc/scaleset-sandbox/key-pair.pub"

INIT_SCRIPT = """\
#!/bin/sh
# simulator.sandbox VM init: the default user with the key pair's key (cloud-init's cc_ssh),
# sshd (the host key is already in place), then user_data. "*": sshd without PAM refuses "!".
id -u {default_user} >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' {default_user}
mkdir -p /home/{default_user}/.ssh
cp {key_pair} /home/{default_user}/.ssh/authorized_keys
chown -R {default_user}: /home/{default_user}/.ssh
chmod 0700 /home/{default_user}/.ssh
/usr/sbin/sshd -t -f /etc/ssh/sshd_config >/run/scaleset-sandbox/sshd-t.log 2>&1
d=$(tr -d '\\r' </run/scaleset-sandbox/sshd-t.log \\
  | sed -n 's/^Missing privilege separation directory: //p')
[ -n "$d" ] && mkdir -p "$d"
if /usr/sbin/sshd -f /etc/ssh/sshd_config -E /run/scaleset-sandbox/sshd.log; then
  echo ok >/run/scaleset-sandbox/sshd
else
  echo "failed $?" >/run/scaleset-sandbox/sshd
fi
if [ -x {user_data} ]; then
  (cd / && exec env -i PATH={path} HOME=/root LANG=C.UTF-8 {user_data}) \\
    >>/var/log/cloud-init-output.log 2>&1 </dev/null
  echo "$?" >/run/scaleset-sandbox/user-data-exit
fi
exec sleep 2147483647
"""

FAILING_CURL = """\
#!/bin/sh
# simulator.sandbox setup_fail: the runner download fails as a broken mirror would.
echo "curl: (7) Failed to connect: simulated download failure" >&2
exit 7
"""


@dataclass(frozen=True)
class VmSpec:
    """What one VM is made of. `user_data` None: cloud-init never gets to run it (a hang).
    `files`: extra files (path inside the VM -> (content, mode))."""

    name: str
    address: str
    port: int
    host_key_private: str
    host_key_public: str
    # The cloud key pair's keys: the image's default user gets them, nobody else.
    authorized_keys: str
    user_data: str | None
    files: dict[str, tuple[str, int]] = field(default_factory=dict)


class GuestDirectory:
    """The host-side files of one guest (sandbox VM or light VM) in its directory: what it
    writes to its console, its cloud-init-output.log and its power-off record in `power/`."""

    def __init__(self, vm_dir: Path) -> None:
        self.dir = vm_dir
        self.console_path = vm_dir / "console"
        self.output_log_path = vm_dir / "cloud-init-output.log"
        self.power_dir = vm_dir / "power"
        self._console_offset = 0
        self._console_rest = b""

    def powered_off(self) -> bool:
        return (self.power_dir / "poweroff").exists()

    def new_console_lines(self) -> list[str]:
        """Complete lines written to the VM's console since the last call."""
        try:
            with self.console_path.open("rb") as console:
                console.seek(self._console_offset)
                chunk = console.read()
        except FileNotFoundError:
            return []
        self._console_offset += len(chunk)
        data = self._console_rest + chunk
        *lines, self._console_rest = data.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def output_log(self) -> str:
        return self.output_log_path.read_text(errors="replace")


class SandboxVm(GuestDirectory):
    """A started VM; `kill()` ends it."""

    def __init__(self, spec: VmSpec, vm_dir: Path) -> None:
        super().__init__(vm_dir)
        self.spec = spec
        self._process: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.pid_namespace: str | None = None

    # ------------------------------------------------------------------ start and stop

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("mnt", "power"):
            (self.dir / sub).mkdir(exist_ok=True)
        self.console_path.touch()
        self.output_log_path.touch()
        seed = self.dir / "seed"
        if seed.exists():
            shutil.rmtree(seed)
        self._write_seed(seed)
        launch = self.dir / "launch.sh"
        launch.write_text(self._launch_script(seed))
        with (self.dir / "start.err").open("wb") as start_err:
            self._process = subprocess.Popen(  # noqa: S603 (our own launcher)
                [
                    _tool("unshare"),
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--mount",
                    "--propagation",
                    "private",
                    "--kill-child=SIGKILL",
                    "/bin/sh",
                    str(launch),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=start_err,
                start_new_session=True,
                env={"PATH": SBIN_PATH, "LANG": "C.UTF-8"},
            )

    def kill(self) -> None:
        """Pull the plug: every process of the VM dies, its mounts go with its namespace.

        The namespace's init is killed first, so `unshare` (its parent) reaps it and exits; only
        if it does not is `unshare` killed too (its --kill-child then kills the init)."""
        process = self._process
        if process is None:
            return
        init_pid = self.init_pid or self._find_init_pid()
        if init_pid is None:
            process.kill()  # not forked yet: --kill-child takes care of a late child
        elif process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGKILL)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        # When `unshare` itself was killed, its --kill-child reaches the init only as unshare
        # dies (a parent-death signal), after our wait returned.
        wait_until_gone(self.processes)

    # ------------------------------------------------------------------ observation

    @property
    def launcher_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def exited(self) -> int | None:
        """The launcher's exit status once the whole VM has gone, else None."""
        return self._process.poll() if self._process is not None else None

    def note_namespace(self) -> bool:
        """Record the namespace's init and PID namespace once they exist; True when known."""
        if self.pid_namespace is not None:
            return True
        pid = self._find_init_pid()
        if pid is None:
            return False
        with contextlib.suppress(OSError):
            self.pid_namespace = os.readlink(f"/proc/{pid}/ns/pid")
            self.init_pid = pid
        return self.pid_namespace is not None

    def processes(self) -> list[int]:
        """Host pids of the processes in the VM's PID namespace (empty once it is gone)."""
        if self.pid_namespace is None:
            return []
        return processes_in_namespace(self.pid_namespace)

    def sshd_state(self) -> str | None:
        """None until the VM's sshd listens; then `ok`, or `failed <code>` if it did not start."""
        try:
            state = (self.power_dir / "sshd").read_text().strip() or None
        except FileNotFoundError:
            return None
        # sshd daemonizes before it binds its socket, so its exit status comes first.
        if (
            state == "ok"
            and proc_net_key(self.spec.address, self.spec.port) not in listening_keys()
        ):
            return None
        return state

    def start_errors(self) -> str:
        path = self.dir / "start.err"
        return path.read_text(errors="replace").strip() if path.exists() else ""

    # ------------------------------------------------------------------ internals

    def _find_init_pid(self) -> int | None:
        if self._process is None:
            return None
        pid = self._process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _write_seed(self, seed: Path) -> None:
        spec = self.spec
        files: dict[str, tuple[str, int]] = {
            "etc/ssh/sshd_config": (
                SSHD_CONFIG.format(address=spec.address, port=spec.port),
                0o644,
            ),
            **image_files(spec, SANDBOX_POWER_FILE),
            "etc/scaleset-sandbox/init": (
                INIT_SCRIPT.format(
                    user_data=shlex.quote(USER_DATA_PATH),
                    path=shlex.quote(CLOUD_INIT_PATH),
                    default_user=DEFAULT_USER,
                    key_pair=shlex.quote(KEY_PAIR_PATH),
                ),
                0o755,
            ),
            KEY_PAIR_PATH.lstrip("/"): (spec.authorized_keys.strip() + "\n", 0o644),
        }
        if spec.user_data is not None:
            files[USER_DATA_PATH.lstrip("/")] = (spec.user_data, 0o700)
        files.update({path.lstrip("/"): item for path, item in spec.files.items()})
        write_files(seed, files)

    def _launch_script(self, seed: Path) -> str:
        q = shlex.quote
        mnt = self.dir / "mnt"
        root = mnt / "root"
        lines = [
            "set -e",
            f"M={q(str(mnt))}",
            f"R={q(str(root))}",
            'mount -t tmpfs -o mode=0755,size=512m sandbox-vm "$M"',
            'mkdir "$M/upper" "$M/work" "$R"',
            'mount -t overlay sandbox-root -o "lowerdir=/,upperdir=$M/upper,workdir=$M/work" "$R"',
            'mount -t proc proc "$R/proc"',
            'mount -t tmpfs -o mode=0755,size=1m sandbox-dev "$R/dev"',
            "for d in null zero full random urandom tty; do",
            '  touch "$R/dev/$d" && mount --bind "/dev/$d" "$R/dev/$d"',
            "done",
            'ln -s /proc/self/fd "$R/dev/fd"',
            'ln -s /proc/self/fd/0 "$R/dev/stdin"',
            'ln -s /proc/self/fd/1 "$R/dev/stdout"',
            'ln -s /proc/self/fd/2 "$R/dev/stderr"',
            'mkdir "$R/dev/pts" "$R/dev/shm"',
            'mount -t tmpfs -o mode=1777 sandbox-shm "$R/dev/shm"',
            f'touch "$R/dev/console" && mount --bind {q(str(self.console_path))} "$R/dev/console"',
            'mount -t tmpfs -o mode=1777 sandbox-tmp "$R/tmp"',
            'mount -t tmpfs -o mode=0755 sandbox-run "$R/run"',
            'mount -t tmpfs -o mode=0700 sandbox-root-home "$R/root"',
            'mount -t tmpfs -o mode=0755 sandbox-home "$R/home"',
            'mkdir "$R/run/scaleset-sandbox"',
            f'mount --bind {q(str(self.power_dir))} "$R/run/scaleset-sandbox"',
            f'cp -a {q(str(seed))}/. "$R/"',
            'mkdir -p "$R/var/log" && touch "$R/var/log/cloud-init-output.log"',
            f'mount --bind {q(str(self.output_log_path))} "$R/var/log/cloud-init-output.log"',
            'exec chroot "$R" /bin/sh /etc/scaleset-sandbox/init',
        ]
        return "\n".join(lines) + "\n"


def image_files(spec: VmSpec, power_file: str) -> dict[str, tuple[str, int]]:
    """What every guest's image holds before it boots (paths relative to its root): the host
    key, installed before sshd starts as cloud-init's cc_ssh does, its hostname, and
    `systemctl`, `poweroff`, `shutdown`, `halt` and `reboot` stubs in /usr/local/sbin (first
    in the guest's PATH), which record a power-off by appending a line to `power_file`."""
    poweroff = POWEROFF_STUB.format(power_file=shlex.quote(power_file))
    stubs = {name: (poweroff, 0o755) for name in ("poweroff", "shutdown", "halt", "reboot")}
    stubs["systemctl"] = (SYSTEMCTL_STUB, 0o755)
    return {
        "etc/ssh/ssh_host_ed25519_key": (spec.host_key_private.strip() + "\n", 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": (spec.host_key_public.strip() + "\n", 0o644),
        "etc/hostname": (spec.name + "\n", 0o644),
        **{f"usr/local/sbin/{name}": item for name, item in stubs.items()},
    }


def write_files(root: Path, files: dict[str, tuple[str, int]]) -> None:
    """Write `files` (path relative to `root` -> (content, mode)) under `root`."""
    for relative, (content, mode) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(content)
        path.chmod(mode)


def wait_until_gone(processes: Callable[[], list[int]]) -> None:
    """After a kill: the VM is gone only once `processes()` (its live ones) is empty, as killed
    processes die when the kernel runs their exit, not when the launcher is reaped. Bounded by
    STOP_TIMEOUT: a process that outlives it is for the caller to see."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while processes() and time.monotonic() < deadline:
        time.sleep(0.01)


def processes_where(matches: Callable[[int], bool]) -> list[int]:
    """Host pids for which `matches(pid)` holds; a process that ends meanwhile (OSError) is
    left out."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if matches(int(entry)):
                found.append(int(entry))
    return found


def processes_in_namespace(pid_namespace: str) -> list[int]:
    """Host pids whose PID namespace is `pid_namespace` (a `pid:[inode]` link text)."""
    return processes_where(lambda pid: os.readlink(f"/proc/{pid}/ns/pid") == pid_namespace)


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), SBIN_PATH]))
    if path is None:
        raise RuntimeError(f"{name} not found: run scripts/install-system-deps")
    return path


def proc_net_key(address: str, port: int) -> str:
    """`/proc/net/tcp`'s local_address for address:port (little-endian hex IPv4)."""
    packed = socket.inet_aton(address)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def listening_keys() -> set[str]:
    """Every listening IPv4 TCP address of this network namespace, in /proc/net/tcp's form."""
    keys = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                keys.add(fields[1])
    return keys
