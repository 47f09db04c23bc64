"""The probe's remote command and the strict parse of its report (no network)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from provisioners.base import HostKeyPolicy
from provisioners.sentinels import (
    REMOTE_SCRIPT,
    REPORT_MARKER,
    ReportError,
    parse_report,
    remote_command,
)
from provisioners.ssh import SSHProbeConfig, SSHProbeConfigError

BOOT = "b7f92d12-a0d0-4cc6-b34f-63abed46702f"


def report(
    *files: str,
    boot: str = BOOT,
    proc: str = "visible",
    pid_alive: str = "-",
    runner_process: str = "no",
    directory: str = "ok",
) -> str:
    """A report as the script prints it; `files` are `name` (absent) or `name=l1|l2`."""
    lines = [REPORT_MARKER, f"dir {directory}"]
    given: dict[str, str | None] = {}
    for item in files:
        key, has_content, text = item.partition("=")
        given[key] = text if has_content else None
    for name in ("setup-complete", "setup-failed", "runner-started", "run-complete"):
        content = given.get(name)
        if content is None:
            lines.append(f"{name} absent")
            continue
        first, _, second = content.partition("|")
        lines += [f"{name} present", f"{name}.1 {first}", f"{name}.2 {second}"]
    lines += [f"boot-id {boot}", f"proc {proc}", f"pid-alive {pid_alive}"]
    lines += [f"runner-process {runner_process}", "end", ""]
    return "\n".join(lines)


def test_a_fresh_vm_reports_setup_not_complete_and_no_runner() -> None:
    parsed = parse_report(report())
    assert parsed.setup_complete is False
    assert parsed.runner_alive is False
    assert parsed.run_complete_exit_code is None
    assert parsed.setup_failed_reason is None


def test_a_running_runner_is_alive_when_its_pid_runs_in_this_boot() -> None:
    parsed = parse_report(
        report("setup-complete=now", f"runner-started=42|{BOOT}", pid_alive="yes")
    )
    assert (parsed.setup_complete, parsed.runner_alive) == (True, True)


def test_a_runner_whose_pid_is_gone_is_dead() -> None:
    parsed = parse_report(report("setup-complete=now", f"runner-started=42|{BOOT}", pid_alive="no"))
    assert parsed.runner_alive is False


def test_a_runner_started_before_a_reboot_is_dead_even_if_the_pid_exists() -> None:
    other = "00000000-0000-4000-8000-000000000000"
    parsed = parse_report(
        report("setup-complete=now", f"runner-started=42|{other}", pid_alive="yes")
    )
    assert parsed.runner_alive is False
    assert "rebooted" in parsed.basis


def test_hidden_processes_make_liveness_unknown_not_dead() -> None:
    parsed = parse_report(
        report("setup-complete=now", f"runner-started=42|{BOOT}", proc="hidden", pid_alive="no")
    )
    assert parsed.runner_alive is None


def test_without_runner_started_exact_process_names_decide() -> None:
    alive = parse_report(report("setup-complete=now", runner_process="yes"))
    dead = parse_report(report("setup-complete=now", runner_process="no"))
    unknown = parse_report(report("setup-complete=now", runner_process="-"))
    assert (alive.runner_alive, dead.runner_alive, unknown.runner_alive) == (True, False, None)


def test_run_complete_gives_the_exit_code_and_a_finished_runner() -> None:
    parsed = parse_report(
        report("setup-complete=now", f"runner-started=42|{BOOT}", "run-complete=-1", pid_alive="no")
    )
    assert parsed.run_complete_exit_code == -1
    assert parsed.runner_alive is False


def test_the_setup_failed_reason_is_kept_verbatim() -> None:
    parsed = parse_report(report('setup-failed=command failed with exit 2 at line 7: "x" $y'))
    assert parsed.setup_failed_reason == 'command failed with exit 2 at line 7: "x" $y'
    assert parsed.setup_complete is False


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello\n",
        REPORT_MARKER + "\n",
        report().replace("end\n", ""),
        report().replace("dir ok", "dir maybe"),
        report().replace("boot-id", "bootid"),
        report().replace("proc visible\n", ""),
        report() + "extra\n",
        report().replace("end", "stray line\nend"),
        report("run-complete=zero"),
        report("run-complete="),
        report("setup-complete=now", f"runner-started=pid|{BOOT}", pid_alive="-"),
        report("setup-complete=now", f"runner-started=42|{BOOT}", pid_alive="-"),
        report("setup-complete=now").replace("setup-complete.2 \n", ""),
        report(directory="unreadable"),
        report().replace("setup-failed absent", "setup-failed unreadable"),
        "scaleset-probe 2\n" + report().split("\n", 1)[1],
    ],
)
def test_anything_but_the_exact_report_is_refused(text: str) -> None:
    with pytest.raises(ReportError):
        parse_report(text)


def test_the_remote_script_is_posix_sh_and_never_uses_pgrep_f() -> None:
    assert "pgrep -f" not in REMOTE_SCRIPT
    assert "pgrep -x" in REMOTE_SCRIPT
    assert "'" not in REMOTE_SCRIPT
    for bashism in ("[[", "local ", "$BASHPID", "<(", "function "):
        assert bashism not in REMOTE_SCRIPT
    # It never looks at a command line (the runner's carries the JIT config).
    assert "cmdline" not in REMOTE_SCRIPT
    assert "ps " not in REMOTE_SCRIPT


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_the_remote_command_runs_under_common_shells(shell: str, tmp_path: Path) -> None:
    argv = [shell]
    sentinels = tmp_path / "sentinel dir with 'quotes' and $dollar"
    sentinels.mkdir()
    (sentinels / "setup-complete").write_text("2026-01-01T00:00:00Z\n")
    (sentinels / "run-complete").write_text("7")  # no trailing newline
    command = remote_command(str(sentinels)).replace("/bin/sh -c", shlex.join(argv) + " -c", 1)
    done = subprocess.run(
        [*argv, "-c", command], capture_output=True, text=True, timeout=10, check=True
    )
    parsed = parse_report(done.stdout)
    assert parsed.setup_complete is True
    assert parsed.run_complete_exit_code == 7
    assert done.stderr == ""


def test_the_config_refuses_impossible_values(tmp_path: Path) -> None:
    key = tmp_path / "k"
    with pytest.raises(SSHProbeConfigError):
        SSHProbeConfig(user="u", private_key_path=key, connect_timeout=0)
    with pytest.raises(SSHProbeConfigError):
        SSHProbeConfig(user="u", private_key_path=key, max_workers=0)
    with pytest.raises(SSHProbeConfigError):
        SSHProbeConfig(user="u", private_key_path=key, sentinel_dir="relative")
    with pytest.raises(SSHProbeConfigError, match="'tofu' is not one of: pinned, accept-new"):
        SSHProbeConfig(user="u", private_key_path=key, host_key_policy="tofu")  # type: ignore[arg-type]


def test_one_probe_timeout_setting_fills_every_stage_and_doubles_for_the_deadline(
    tmp_path: Path,
) -> None:
    config = SSHProbeConfig.from_timeout(
        10, user="runner", private_key_path=tmp_path / "k", host_key_policy="accept-new"
    )
    assert (config.connect_timeout, config.banner_timeout) == (10, 10)
    assert (config.auth_timeout, config.command_timeout, config.deadline) == (10, 10, 20)
    assert config.host_key_policy is HostKeyPolicy.ACCEPT_NEW
