"""A light VM: a simulated VM for machines without namespaces or without root.

It runs the same bootstrap as a sandbox VM (the server's real user_data), the same stub runner
and writes the same sentinels, but without a file-system or PID namespace of its own:

* the VM's file system is a directory, `<vm dir>/root`. The bootstrap's own sandbox knobs point it
  there: its `ROOT=` line (every path it writes: sentinels, runner, host key) becomes that
  directory, `CONSOLE=` the VM's console file, and `RUNNER_USER=` the user the simulator runs as
  (a light VM creates no users). Nothing else in the script changes. A user_data without those
  lines (a custom template) is not run: it could write to the host's /var/lib or /opt.
* the VM's programs are the host's, with the VM's own first in PATH (`<root>/usr/local/sbin`,
  `<root>/usr/local/bin`): `systemctl`/`poweroff` stubs that record the power-off, a `pgrep` that
  sees only this VM's processes (its session), and, where the host has neither curl nor wget (a
  slim container), a small `curl` for the runner download.
* the VM's processes are one session (`setsid`), so pulling the plug is SIGKILL to that session.
* its sshd is `simulator.sandbox.sshd.GuestSSHServer` (paramiko) on the VM's loopback address and
  the configured port (a non-root user cannot bind 22). Like a stock cloud image's, it lets the
  key pair's key (the fleet's client key) in for the default user `ubuntu` only, never root;
  any other user only with what the bootstrap wrote to `<root>/home/<user>/.ssh/authorized_keys`,
  honouring that entry's forced command. Every login runs as the simulator's user. A command
  runs with the host's `/bin/sh`; the absolute paths of a forced command, and those handed to a
  `sh -c SCRIPT NAME ARGS...` command (the probe's form: its argument is the sentinel
  directory), are rooted in the VM's directory.

Started like a cloud image boots: the host key in place, sshd up, then user_data.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from simulator.sandbox.sshd import (
    AuthorizedKey,
    CommandResult,
    GuestSSHServer,
    parse_authorized_keys,
)
from simulator.sandbox.vm import (
    SBIN_PATH,
    STOP_TIMEOUT,
    USER_DATA_PATH,
    GuestDirectory,
    VmSpec,
    image_files,
    processes_where,
    wait_until_gone,
    write_files,
)

COMMAND_TIMEOUT = 30.0
# The image's default user, the only one the cloud's key pair lets in (as on a stock image).
DEFAULT_USER = "ubuntu"
NOT_THE_DEFAULT_BOOTSTRAP = (
    "user_data is not the default bootstrap (no ROOT=, CONSOLE= or RUNNER_USER= line): a light "
    "VM does not run it"
)

PGREP_SHIM = """\
#!/bin/sh
# simulator light VM: pgrep over this VM's processes only (they share one session).
sid=$(cat {session_file} 2>/dev/null) || exit 1
[ -n "$sid" ] || exit 1
exec {pgrep} -s "$sid" "$@"
"""

# The subset of curl's options the default bootstrap uses: -fsSL --retry N --connect-timeout S
# -o FILE URL.
CURL_SHIM = """\
#!/usr/bin/env python3
\"\"\"simulator light VM: a curl for hosts that have none (the bootstrap's options only).\"\"\"
import shutil
import sys
import urllib.request

args, out, url, timeout = sys.argv[1:], None, None, 30.0
i = 0
while i < len(args):
    if args[i] == "-o":
        out, i = args[i + 1], i + 2
    elif args[i] in ("--retry", "--connect-timeout"):
        if args[i] == "--connect-timeout":
            timeout = float(args[i + 1])
        i += 2
    elif args[i].startswith("-"):
        i += 1
    else:
        url, i = args[i], i + 1
if url is None or out is None:
    print("curl: usage: curl -fsSL -o FILE URL", file=sys.stderr)
    sys.exit(2)
try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(out, "wb") as target:
        shutil.copyfileobj(response, target)
except Exception as exc:
    print(f"curl: (22) {exc}", file=sys.stderr)
    sys.exit(22)
"""


def current_user() -> str | None:
    """The name of the user the simulator runs as, or None when it has no passwd entry."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def light_problem() -> str | None:
    """Why light VMs cannot run here, or None."""
    if not Path("/proc/self/stat").exists():
        return "light VMs need Linux's /proc"
    for tool in ("bash", "tar", "gzip", "sha256sum"):
        if shutil.which(tool, path=_host_path()) is None:
            return f"{tool} is not installed (the bootstrap needs it)"
    if shutil.which("python3", path=_host_path()) is None:
        return "no python3 in PATH for the stub runner"
    if current_user() is None:
        return f"uid {os.getuid()} has no user name (the runner user must exist)"
    return None


def host_has_downloader() -> bool:
    return any(shutil.which(tool, path=_host_path()) for tool in ("curl", "wget"))


def light_user_data(user_data: str, root: Path, console: Path, runner_user: str) -> str | None:
    """The bootstrap with its ROOT, CONSOLE and RUNNER_USER lines pointed at the VM, or None when
    it lacks one of them (not the default template: running it could write to the host)."""
    script = user_data
    values = {"ROOT": str(root), "CONSOLE": str(console), "RUNNER_USER": runner_user}
    for name, value in values.items():
        pattern = re.compile(rf"^{name}=[^\n]*$", re.MULTILINE)
        found = pattern.search(script)
        if found is None:
            return None
        script = script[: found.start()] + f"{name}={shlex.quote(value)}" + script[found.end() :]
    return script


def _host_path() -> str:
    return os.environ.get("PATH") or SBIN_PATH


class LightVm(GuestDirectory):
    """A light VM; `start()` boots it, `kill()` ends it. The same face as `SandboxVm`.

    `user` is the simulator's own: the probe logs in as it and the runner runs as it."""

    def __init__(self, spec: VmSpec, vm_dir: Path, *, user: str, provide_curl: bool) -> None:
        super().__init__(vm_dir)
        self.spec = spec
        self.root = vm_dir / "root"
        self.session_file = vm_dir / "session"
        self._user = user
        self._provide_curl = provide_curl
        self._script = (
            None
            if spec.user_data is None
            else light_user_data(spec.user_data, self.root, self.console_path, user)
        )
        self._error = (
            NOT_THE_DEFAULT_BOOTSTRAP if spec.user_data is not None and self._script is None else ""
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._sshd: GuestSSHServer | None = None
        self._sshd_state: str | None = None
        self.init_pid: int | None = None
        self.pid_namespace: str | None = None  # the host's: a light VM has none of its own

    # ------------------------------------------------------------------ start and stop

    def start(self) -> None:
        for sub in (self.root, self.power_dir):
            sub.mkdir(parents=True, exist_ok=True)
        self.console_path.touch()
        self.output_log_path.touch()
        self._write_image()
        self._start_sshd()
        if self._script is None:
            return  # cloud-init never gets to the user_data (a hang), or it is not run here
        path = self.root / USER_DATA_PATH.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._script)
        path.chmod(0o700)
        with self.output_log_path.open("ab") as output:
            self._process = subprocess.Popen(  # noqa: S603 (the guest's own user_data)
                [shutil.which("bash", path=_host_path()) or "/bin/bash", str(path)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
                env=self._env(),
            )
        self.init_pid = self._process.pid
        self.session_file.write_text(f"{self._process.pid}\n")

    def kill(self) -> None:
        """Pull the plug: sshd stops answering, every process of the VM's session dies."""
        if self._sshd is not None:
            self._sshd.stop()
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in self.processes():  # any that left the process group, not the session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)
        wait_until_gone(self.processes)  # the session's killed members die after the wait

    # ------------------------------------------------------------------ observation

    @property
    def launcher_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def exited(self) -> int | None:
        """None: a light VM stays up until its plug is pulled (the bootstrap ending is not
        the VM ending; a real VM without a power-off keeps running too)."""
        return None

    def note_namespace(self) -> bool:
        return True

    def processes(self) -> list[int]:
        """Host pids of the VM's live processes (its session; zombies left out)."""
        if self._process is None:
            return []
        return processes_in_session(self._process.pid)

    def sshd_state(self) -> str | None:
        return self._sshd_state

    @property
    def runs_user_data(self) -> bool:
        return self._script is not None

    def start_errors(self) -> str:
        return self._error

    # ------------------------------------------------------------------ internals

    def _write_image(self) -> None:
        spec = self.spec
        files = image_files(spec, str(self.power_dir / "poweroff"))
        pgrep = shutil.which("pgrep", path=_host_path())
        if pgrep is not None:
            files["usr/local/bin/pgrep"] = (
                PGREP_SHIM.format(
                    session_file=shlex.quote(str(self.session_file)), pgrep=shlex.quote(pgrep)
                ),
                0o755,
            )
        if self._provide_curl:
            files["usr/local/bin/curl"] = (CURL_SHIM, 0o755)
        files.update({path.lstrip("/"): item for path, item in spec.files.items()})
        write_files(self.root, files)
        for home in ("root", "home"):
            (self.root / home).mkdir(exist_ok=True)

    def _start_sshd(self) -> None:
        server = GuestSSHServer(
            self.spec.address,
            self.spec.port,
            self.spec.host_key_private,
            self._authorized,
            self._run_command,
        )
        try:
            server.start()
        except OSError as exc:
            self._sshd_state = f"failed {exc}"
            return
        self._sshd = server
        self._sshd_state = "ok"

    def _env(self) -> dict[str, str]:
        guest_bins = [str(self.root / "usr/local/sbin"), str(self.root / "usr/local/bin")]
        return {
            "PATH": os.pathsep.join([*guest_bins, _host_path()]),
            "HOME": str(self.root / "root"),
            "LANG": "C.UTF-8",
            # The stub runner reads its per-VM behaviour file under this root.
            "SCALESET_GUEST_ROOT": str(self.root),
        }

    def _authorized(self, user: str) -> list[AuthorizedKey]:
        """`~user/.ssh/authorized_keys` as sshd would read it at login."""
        if user == DEFAULT_USER:
            return parse_authorized_keys(self.spec.authorized_keys)
        if "/" in user or user in ("", ".", ".."):
            return []
        try:
            text = (self.root / "home" / user / ".ssh" / "authorized_keys").read_text()
        except (OSError, UnicodeDecodeError):
            return []
        return parse_authorized_keys(text)

    def _run_command(self, command: str, forced: bool = False) -> CommandResult:
        """What the VM's sshd runs for an exec request (or a key's forced command)."""
        try:
            words = shlex.split(command)
        except ValueError:
            words = []
        if forced and words:
            argv = ["/bin/sh", "-c", shlex.join(self._guest_path(word) for word in words)]
        elif len(words) >= 3 and words[0] in ("/bin/sh", "sh") and words[1] == "-c":
            argv = [*words[:4], *(self._guest_path(word) for word in words[4:])]
        else:
            argv = ["/bin/sh", "-c", command]
        try:
            done = subprocess.run(  # noqa: S603 (what the VM's login shell would run)
                argv,
                cwd=self.root / "root",
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return CommandResult(124, _bytes(exc.stdout), _bytes(exc.stderr))
        except OSError as exc:
            return CommandResult(127, b"", f"{exc}\n".encode())
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def _guest_path(self, word: str) -> str:
        if word.startswith("/") and not word.startswith(str(self.root) + "/"):
            return str(self.root) + word
        return word


def _bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else data


def processes_in_session(session_id: int) -> list[int]:
    """Host pids of the live (not zombie) processes whose session is `session_id`."""

    def live_in_session(pid: int) -> bool:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # After the parenthesised command name: state, ppid, pgrp, session, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[3]) == session_id and fields[0] != "Z"

    return processes_where(live_in_session)
