"""The bootstrap's safety nets: rendering, and the rendered script run for real in a sandbox with
a stub runner that either waits for a job that never comes or runs the job-started hook the way
the real runner does (read from its .env) and then stays busy."""

from __future__ import annotations

import io
import shlex
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioners.bootstrap import BootstrapError, render_user_data
from provisioners.sentinels import MARKER_PREFIX, SAFETY_POWEROFF
from tests.provisioners.sandbox import RunnerServer, Sandbox, make_sandbox, serve_runner
from tests.provisioners.test_bootstrap import spec

NAME = "linux-x64-abc123"

# A runner that connects and then waits until the VM powers off (the power-off command below
# creates <root>/stop); `busy` first runs the job-started hook named in its .env, as the real
# runner does before a job's steps.
WAITING_RUN_SH = """#!/bin/bash
here=$(cd "$(dirname "$0")" && pwd)
if [ {busy} = yes ]; then
  hook=$(sed -n 's/^ACTIONS_RUNNER_HOOK_JOB_STARTED=//p' "$here/.env")
  bash -e "$hook" || exit 9
fi
until [ -e "$here/../../stop" ]; do sleep 0.05; done
exit 0
"""


def waiting_runner(busy: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = WAITING_RUN_SH.format(busy="yes" if busy else "no").encode()
        info = tarfile.TarInfo("run.sh")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


@pytest.fixture
def server() -> Iterator[RunnerServer]:
    with serve_runner() as running:
        yield running


def run(sandbox: Sandbox, server: RunnerServer, **overrides: object) -> str:
    """Run the script; the power-off it records also releases the waiting runner."""
    stop = shlex.quote(str(sandbox.root / "stop"))
    log = shlex.quote(str(sandbox.poweroff_log))
    the_spec = sandbox.spec(
        server.base_url, poweroff_command=f"echo poweroff >>{log}; touch {stop}", **overrides
    )
    result = sandbox.run(render_user_data(the_spec))
    assert result.returncode == 0, result.stderr
    return result.stdout


# Rendering


def test_the_timers_reach_the_script_quoted_and_off_by_default() -> None:
    text = render_user_data(spec(vm_idle_shutdown=900, vm_lifetime_shutdown=90000)).decode()
    assert "IDLE_SHUTDOWN=900\n" in text
    assert "LIFETIME_SHUTDOWN=90000\n" in text

    off = render_user_data(spec()).decode()
    assert "IDLE_SHUTDOWN=0\n" in off
    assert "LIFETIME_SHUTDOWN=0\n" in off


@pytest.mark.parametrize("value", [-1, 1.5, "60", True])
def test_a_timer_that_is_not_whole_seconds_is_refused(value: object) -> None:
    with pytest.raises(BootstrapError, match="vm_idle_shutdown"):
        spec(vm_idle_shutdown=value)
    with pytest.raises(BootstrapError, match="vm_lifetime_shutdown"):
        spec(vm_lifetime_shutdown=value)


def test_the_marker_is_the_documented_one() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "bootstrap.md").read_text()
    text = render_user_data(spec(vm_idle_shutdown=1)).decode()

    assert f"{MARKER_PREFIX} {SAFETY_POWEROFF} runner=<runner_name> reason=<idle or" in docs
    assert f'"{MARKER_PREFIX} {SAFETY_POWEROFF} runner=$RUNNER_NAME reason=$1"' in text


# The rendered script, run


def test_an_idle_runner_is_powered_off_after_the_idle_timer(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = waiting_runner(busy=False)

    stdout = run(sandbox, server, vm_idle_shutdown=1, vm_lifetime_shutdown=3600)

    marker = f"SCALESET-RUNNER safety-poweroff runner={NAME} reason=idle"
    assert marker in sandbox.read(sandbox.console).splitlines()
    assert marker in sandbox.read(sandbox.sentinels / "safety-net.log")
    # Then the runner ended and the script powered off as always.
    assert sandbox.poweroff_calls() == 2
    assert f"SCALESET-RUNNER run-complete runner={NAME} exit=0" in stdout
    env = sandbox.read(sandbox.runner_dir / ".env").splitlines()
    assert f"ACTIONS_RUNNER_HOOK_JOB_STARTED={sandbox.sentinels}/hooks/job-started.sh" in env
    assert f"ACTIONS_RUNNER_HOOK_JOB_COMPLETED={sandbox.sentinels}/hooks/job-completed.sh" in env


def test_a_busy_runner_is_left_alone_by_the_idle_net_and_stopped_by_the_lifetime_net(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = waiting_runner(busy=True)

    run(sandbox, server, vm_idle_shutdown=1, vm_lifetime_shutdown=3)

    markers = [
        line for line in sandbox.read(sandbox.console).splitlines() if "safety-poweroff" in line
    ]
    assert markers == [f"SCALESET-RUNNER safety-poweroff runner={NAME} reason=lifetime"]
    assert (sandbox.sentinels / "job" / "job-running").read_text().strip().isdigit()


def test_a_hook_the_image_named_still_runs_after_ours(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = waiting_runner(busy=True)
    theirs = sandbox.root / "their-hook.sh"
    theirs.write_text(f"echo ran >{shlex.quote(str(sandbox.root / 'their-hook-ran'))}\n")
    # The image's runner: older than wanted, so it is replaced and its .env carried over.
    baked = sandbox.root / "opt" / "actions-runner"
    baked.mkdir(parents=True)
    (baked / "run.sh").write_text("#!/bin/sh\nexit 0\n")
    (baked / ".env").write_text(f"LANG=C.UTF-8\nACTIONS_RUNNER_HOOK_JOB_STARTED={theirs}\n")

    run(sandbox, server, vm_idle_shutdown=1, vm_lifetime_shutdown=2)

    assert (sandbox.root / "their-hook-ran").read_text() == "ran\n"
    env = sandbox.read(sandbox.runner_dir / ".env").splitlines()
    assert "LANG=C.UTF-8" in env
    assert [line for line in env if "HOOK_JOB_STARTED" in line] == [
        f"ACTIONS_RUNNER_HOOK_JOB_STARTED={sandbox.sentinels}/hooks/job-started.sh"
    ]


def test_with_both_timers_off_there_is_no_watchdog_and_no_hook(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = waiting_runner(busy=False)
    (sandbox.root / "stop").touch()  # the runner ends at once

    stdout = run(sandbox, server)

    assert "safety" not in sandbox.read(sandbox.console)
    assert not (sandbox.sentinels / "safety-net.log").exists()
    assert not (sandbox.runner_dir / ".env").exists()
    assert f"SCALESET-RUNNER run-complete runner={NAME} exit=0" in stdout
    assert sandbox.poweroff_calls() == 1
