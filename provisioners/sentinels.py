"""The contract between a runner VM and the listener: the sentinel files the bootstrap writes,
the marker lines it prints to the console, and the report the SSH probe's command prints about
them (and how it is read).

The bootstrap (`templates/cloud-init.sh.j2`) writes what is named here, and installs the report
script (`report_script`) with the probe key's `authorized_keys_entry`, whose forced command runs
it whatever the client asks; the prober (`provisioners.ssh`) sends `remote_command` (what a VM
without that entry runs) and parses the output with `parse_report`; the reconciler reads the
console markers. Change one side only together with the other (and
docs/bootstrap.md, docs/ssh-probe.md). Nothing here needs paramiko.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

DEFAULT_SENTINEL_DIR = "/var/lib/scaleset-runner"

# The sentinel files the default template writes under `sentinel_dir`, and the console markers.
SETUP_COMPLETE = "setup-complete"
SETUP_FAILED = "setup-failed"
RUNNER_STARTED = "runner-started"
RUN_COMPLETE = "run-complete"
# Console only: a pre-baked runner older than the wanted version is being replaced.
RUNNER_UPDATE = "runner-update"
# Console only: a safety net (idle or lifetime) powered the VM off (docs/bootstrap.md).
SAFETY_POWEROFF = "safety-poweroff"
MARKER_PREFIX = "SCALESET-RUNNER"

# The user the probe logs in as (VM_SSH_USER's default): made by the bootstrap, no sudo, and
# its only key runs the report script (a forced command), nothing else.
DEFAULT_PROBE_USER = "scaleset-probe"
# Where the bootstrap installs the report script (root-owned, 0755).
REPORT_SCRIPT_PATH = "/usr/local/libexec/scaleset-probe"

REPORT_MARKER = "scaleset-probe 1"
# The report is a few hundred bytes; more than this is not our command talking.
MAX_REPORT_BYTES = 16384
# Process names the fallback liveness check matches exactly (`pgrep -x`, never `pgrep -f`).
RUNNER_PROCESS_NAMES = ("Runner.Listener", "Runner.Worker", "run.sh")


@dataclass(frozen=True)
class SentinelReport:
    """The parsed remote report (see `REMOTE_SCRIPT`)."""

    setup_complete: bool
    setup_failed_reason: str | None
    run_complete_exit_code: int | None
    runner_alive: bool | None
    basis: str


class ReportError(ValueError):
    """The command's output is not the report our command prints."""


# The remote command, POSIX sh (dash, bash, busybox ash); `$1` is the sentinel directory. It
# prints one `key value` line per fact, in a fixed order, between a marker and `end`. It reads
# only the sentinel files, the boot id and whether /proc/<pid> exists; never a command line.
# No single quotes in it, so it can travel as one quoted word through any login shell. The
# report is gathered first and written at once: one SSH data packet instead of one per line
# (each costs the probe and sshd a packet's work; docs/ssh-probe.md).
REMOTE_SCRIPT = r"""d=$1
report() {
echo "scaleset-probe 1"
if [ ! -e "$d" ]; then echo "dir absent"
elif [ -d "$d" ] && [ -r "$d" ] && [ -x "$d" ]; then echo "dir ok"
else echo "dir unreadable"; fi
for f in setup-complete setup-failed runner-started run-complete; do
  if [ ! -e "$d/$f" ]; then echo "$f absent"
  elif [ -f "$d/$f" ] && [ -r "$d/$f" ]; then
    echo "$f present"
    head -c 1024 "$d/$f" | tr -d "\r" | {
      IFS= read -r a || :; IFS= read -r b || :; printf "%s.1 %s\n%s.2 %s\n" "$f" "$a" "$f" "$b"; }
  else echo "$f unreadable"; fi
done
b=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
echo "boot-id $b"
if [ -d /proc/1 ]; then echo "proc visible"; else echo "proc hidden"; fi
p=$(head -n 1 "$d/runner-started" 2>/dev/null)
case "$p" in
  ""|*[!0-9]*) echo "pid-alive -" ;;
  *) if [ -d "/proc/$p" ]; then echo "pid-alive yes"; else echo "pid-alive no"; fi ;;
esac
if ! command -v pgrep >/dev/null 2>&1; then echo "runner-process -"
elif pgrep -x Runner.Listener >/dev/null || pgrep -x Runner.Worker >/dev/null \
  || pgrep -x run.sh >/dev/null; then echo "runner-process yes"
else echo "runner-process no"; fi
echo end
}
r=$(report)
printf "%s\n" "$r"
"""


def remote_command(sentinel_dir: str) -> str:
    """The exact command line the probe sends (run by the user's login shell)."""
    return f"/bin/sh -c {shlex.quote(REMOTE_SCRIPT)} scaleset-probe {shlex.quote(sentinel_dir)}"


def report_script() -> str:
    """The report script as a file (`REPORT_SCRIPT_PATH` on the VM; `$1` the sentinel dir)."""
    return "#!/bin/sh\n" + REMOTE_SCRIPT


def forced_command(sentinel_dir: str) -> str:
    """The command the probe key's entry forces: the installed report script."""
    return f"{REPORT_SCRIPT_PATH} {shlex.quote(sentinel_dir)}"


def authorized_keys_entry(public_key: str, sentinel_dir: str) -> str:
    """The probe key's `authorized_keys` line: `restrict` (no pty, no forwarding of any kind)
    and a forced command, so the key runs the report and nothing else. The key's comment is
    left out: it is free text the line must not carry."""
    parts = public_key.split()
    if len(parts) < 2 or not re.fullmatch(r"[A-Za-z0-9@._-]+", parts[0]):
        raise ValueError("not an OpenSSH public key line (`<type> <base64> [comment]`)")
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", parts[1]):
        raise ValueError("the public key's base64 is invalid")
    # sshd unescapes only \" inside command="..."; a path with quotes or backslashes could
    # not be written back unambiguously, so it is refused.
    if any(c in sentinel_dir for c in '"\\\n'):
        raise ValueError("the sentinel directory must not contain quotes, backslashes or newlines")
    return f'restrict,command="{forced_command(sentinel_dir)}" {parts[0]} {parts[1]}'


_FILES = (SETUP_COMPLETE, SETUP_FAILED, RUNNER_STARTED, RUN_COMPLETE)
_LINE = re.compile(r"(?P<key>[a-z-]+(?:\.[12])?)(?: (?P<value>.*))?")
_EXIT_CODE = re.compile(r"-?[0-9]{1,10}")
_PID = re.compile(r"[0-9]{1,10}")


def parse_report(text: str) -> SentinelReport:
    """The report, strictly: the expected keys in the expected order, nothing else."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != REPORT_MARKER:
        raise ReportError("the output does not start with the report marker")
    if lines[-1] != "end":
        raise ReportError("the report is cut short (no end line)")
    it = iter(lines[1:-1])

    def take(key: str, allowed: tuple[str, ...] | None = None) -> str:
        line = next(it, None)
        if line is None:
            raise ReportError(f"the report lacks {key!r}")
        match = _LINE.fullmatch(line)
        if not match or match["key"] != key:
            raise ReportError(f"expected {key!r}, got an unexpected line")
        value = match["value"] or ""
        if allowed is not None and value not in allowed:
            raise ReportError(f"{key!r} has an unexpected value")
        return value

    if take("dir", ("ok", "absent", "unreadable")) == "unreadable":
        raise ReportError("the sentinel directory cannot be read as this user")
    files: dict[str, tuple[str, str] | None] = {}
    for name in _FILES:
        state = take(name, ("present", "absent", "unreadable"))
        if state == "unreadable":
            raise ReportError(f"the sentinel {name} cannot be read as this user")
        files[name] = (take(f"{name}.1"), take(f"{name}.2")) if state == "present" else None
    boot_id = take("boot-id").strip()
    proc_visible = take("proc", ("visible", "hidden")) == "visible"
    pid_alive = take("pid-alive", ("yes", "no", "-"))
    runner_process = take("runner-process", ("yes", "no", "-"))
    if next(it, None) is not None:
        raise ReportError("the report has extra lines")

    setup_failed = files[SETUP_FAILED]
    run_complete = files[RUN_COMPLETE]
    exit_code: int | None = None
    if run_complete is not None:
        if not _EXIT_CODE.fullmatch(run_complete[0].strip()):
            raise ReportError("run-complete does not hold an exit code")
        exit_code = int(run_complete[0])
    alive, basis = _liveness(files, boot_id, proc_visible, pid_alive, runner_process, exit_code)
    return SentinelReport(
        setup_complete=files[SETUP_COMPLETE] is not None,
        setup_failed_reason=None if setup_failed is None else setup_failed[0].strip(),
        run_complete_exit_code=exit_code,
        runner_alive=alive,
        basis=basis,
    )


def _liveness(
    files: dict[str, tuple[str, str] | None],
    boot_id: str,
    proc_visible: bool,
    pid_alive: str,
    runner_process: str,
    exit_code: int | None,
) -> tuple[bool | None, str]:
    if exit_code is not None:
        return False, "run-complete is present"
    started = files[RUNNER_STARTED]
    if started is not None:
        pid = started[0].strip()
        if not _PID.fullmatch(pid):
            raise ReportError("runner-started does not start with a pid")
        recorded_boot = started[1].strip()
        if recorded_boot and boot_id and recorded_boot != boot_id:
            return False, "the VM rebooted since the runner started (boot id differs)"
        if not proc_visible:
            return None, "this user cannot see other processes (/proc hidepid)"
        if pid_alive == "yes":
            return True, f"runner-started pid {pid} is running"
        if pid_alive == "no":
            return False, f"runner-started pid {pid} is gone"
        raise ReportError("pid-alive does not match runner-started")
    if files[SETUP_COMPLETE] is None:
        return False, "setup is not complete: the runner has not started"
    if runner_process == "-":
        return None, "no runner-started sentinel and no pgrep on the VM"
    if not proc_visible and runner_process == "no":
        return None, "this user cannot see other processes (/proc hidepid)"
    if runner_process == "yes":
        return True, "no runner-started sentinel; a runner process runs (exact name)"
    return False, "no runner-started sentinel and no runner process (exact name)"
