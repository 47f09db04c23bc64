"""The job policy: rendered into the job-started hook by the real bootstrap (run in a sandbox
root), then that hook run as the runner runs it (`bash -e`, the job's GITHUB_* variables and
its event payload in a file) for jobs it allows and jobs it refuses."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioners.bootstrap import BootstrapError, JobPolicy, render_user_data
from simulator.github.events import JobEvent, job_event
from tests.provisioners.sandbox import (
    RunnerServer,
    Sandbox,
    clean_env,
    make_sandbox,
    path_without,
    serve_runner,
    sha256_hex,
    stub_runner_tarball,
)
from tests.provisioners.test_bootstrap import spec

GPU_POLICY = JobPolicy(
    events=("push", "workflow_dispatch", "pull_request"),
    repositories=("acme/*",),
    refs=("refs/heads/main", "refs/tags/*", "refs/pull/*"),
    fork_pull_requests=False,
)
HOOK_TIMEOUT = 20.0


@pytest.fixture
def server() -> Iterator[RunnerServer]:
    with serve_runner() as running:
        running.tarball = stub_runner_tarball(0)
        yield running


def install(tmp_path: Path, server: RunnerServer, **overrides: object) -> Sandbox:
    """Run the real bootstrap in a sandbox root; its hooks stay behind for the test to run."""
    sandbox = make_sandbox(tmp_path)
    the_spec = sandbox.spec(
        server.base_url,
        runner_sha256=sha256_hex(server.tarball),
        scale_set="gpu",
        **overrides,
    )
    result = sandbox.run(render_user_data(the_spec))
    assert result.returncode == 0, result.stdout + result.stderr
    return sandbox


def run_hook(
    sandbox: Sandbox,
    event: JobEvent,
    *,
    payload: object | None = None,
    write_payload: bool = True,
    path: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The job-started hook named in the runner's .env, run as the runner runs it."""
    env_lines = (sandbox.runner_dir / ".env").read_text().splitlines()
    hook = next(
        line.split("=", 1)[1]
        for line in env_lines
        if line.startswith("ACTIONS_RUNNER_HOOK_JOB_STARTED=")
    )
    event_path = sandbox.root / "_work" / "_temp" / "_github_workflow" / "event.json"
    if write_payload:
        event_path.parent.mkdir(parents=True, exist_ok=True)
        event_path.write_text(json.dumps(event.payload if payload is None else payload))
    env = {**clean_env(), **event.runner_env(), "GITHUB_EVENT_PATH": str(event_path)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", "-e", hook],
        env=env,
        capture_output=True,
        text=True,
        timeout=HOOK_TIMEOUT,
        check=False,
    )


# Rendering


def test_without_a_policy_nothing_of_it_is_rendered() -> None:
    text = render_user_data(spec()).decode()
    assert '\nPOLICY=""\n' in text
    assert "job_policy_check()" not in text
    # A policy that restricts nothing installs no check either.
    assert "job_policy_check()" not in render_user_data(spec(job_policy=JobPolicy())).decode()


def test_the_policy_reaches_the_script_quoted() -> None:
    text = render_user_data(spec(job_policy=GPU_POLICY, scale_set="gpu")).decode()
    assert "job_policy_check()" in text
    assert "'push workflow_dispatch pull_request'" in text
    assert "'refs/heads/main refs/tags/* refs/pull/*'" in text


@pytest.mark.parametrize("pattern", ["", "a b", "x\ny"])
def test_a_pattern_with_spaces_is_refused(pattern: str) -> None:
    with pytest.raises(BootstrapError, match=r"job_policy\.events"):
        JobPolicy(events=(pattern,))


# The hook, run


@pytest.mark.timeout(60)
def test_a_fork_pull_request_is_refused_and_a_same_repository_one_and_a_push_allowed(
    tmp_path: Path, server: RunnerServer
) -> None:
    sandbox = install(tmp_path, server, job_policy=GPU_POLICY)

    fork = run_hook(
        sandbox, job_event("pull_request", "acme", "app", head_repository="mallory/app")
    )
    same = run_hook(sandbox, job_event("pull_request", "acme", "app"))
    push = run_hook(sandbox, job_event("push", "acme", "app"))

    assert fork.returncode == 1
    assert fork.stdout.splitlines() == [
        "scaleset-listener job policy: a pull request from the fork mallory/app is not "
        "allowed on scale set gpu"
    ]
    assert same.returncode == 0, same.stdout + same.stderr
    assert push.returncode == 0, push.stdout + push.stderr
    assert "is allowed" in push.stdout


@pytest.mark.timeout(60)
def test_events_repositories_and_refs_outside_the_policy_are_refused(
    tmp_path: Path, server: RunnerServer
) -> None:
    sandbox = install(tmp_path, server, job_policy=GPU_POLICY)

    target = run_hook(sandbox, job_event("pull_request_target", "acme", "app"))
    elsewhere = run_hook(sandbox, job_event("push", "evil", "app"))
    branch = run_hook(sandbox, job_event("push", "acme", "app", ref="refs/heads/dev"))
    tag = run_hook(sandbox, job_event("push", "ACME", "App", ref="refs/tags/v1.2"))

    assert (target.returncode, target.stdout) == (
        1,
        "scaleset-listener job policy: event pull_request_target is not allowed on scale set gpu\n",
    )
    assert "repository evil/app is not allowed" in elsewhere.stdout
    assert elsewhere.returncode == 1
    assert "ref refs/heads/dev is not allowed" in branch.stdout
    assert branch.returncode == 1
    # Patterns ignore case, as GitHub's names do.
    assert tag.returncode == 0, tag.stdout + tag.stderr


@pytest.mark.timeout(60)
def test_a_payload_that_cannot_be_read_refuses_a_pull_request(
    tmp_path: Path, server: RunnerServer
) -> None:
    sandbox = install(tmp_path, server, job_policy=GPU_POLICY)
    event = job_event("pull_request", "acme", "app")

    missing = run_hook(sandbox, event, write_payload=False)
    garbled = run_hook(sandbox, event, payload={"repository": {"full_name": "acme/app"}})
    no_python = run_hook(sandbox, event, path=path_without(tmp_path / "bin", "python3"))

    for refused in (missing, garbled, no_python):
        assert refused.returncode == 1
        assert refused.stdout.startswith("scaleset-listener job policy: a pull request ")
    assert "FileNotFoundError" in missing.stdout
    assert "KeyError: 'pull_request'" in garbled.stdout
    assert "no python3" in no_python.stdout
    # A push needs no payload.
    assert run_hook(sandbox, job_event("push", "acme", "app"), write_payload=False).returncode == 0


@pytest.mark.timeout(60)
def test_the_policy_runs_before_the_safety_net_and_the_images_own_hook(
    tmp_path: Path, server: RunnerServer
) -> None:
    sandbox_root = tmp_path / "vm"
    theirs = tmp_path / "their-hook.sh"
    ran = tmp_path / "their-hook-ran"
    theirs.write_text(f"echo ran >>{ran}\n")
    baked = sandbox_root / "opt" / "actions-runner"
    baked.mkdir(parents=True)
    (baked / ".env").write_text(f"ACTIONS_RUNNER_HOOK_JOB_STARTED={theirs}\n")
    sandbox = install(
        tmp_path, server, job_policy=GPU_POLICY, vm_idle_shutdown=3600, vm_lifetime_shutdown=7200
    )
    # The pre-baked .env above has no run.sh: the bootstrap downloads the runner and keeps it.
    job_running = sandbox.sentinels / "job" / "job-running"

    refused = run_hook(sandbox, job_event("pull_request_target", "acme", "app"))
    assert refused.returncode == 1
    assert not job_running.exists()
    assert not ran.exists()

    allowed = run_hook(sandbox, job_event("push", "acme", "app"))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert job_running.exists()
    assert ran.read_text() == "ran\n"
    hooks = sandbox.sentinels / "hooks"
    assert oct(hooks.stat().st_mode & 0o777) == "0o755"
    assert os.access(hooks / "job-started.sh", os.X_OK)


def test_a_custom_template_that_ignores_the_policy_is_refused(tmp_path: Path) -> None:
    ignoring = tmp_path / "mine.sh.j2"
    ignoring.write_text("#!/bin/bash\nrun {{ runner_name | shquote }} {{ jit_config | shquote }}\n")
    honouring = tmp_path / "policy.sh.j2"
    honouring.write_text("#!/bin/bash\n{% if job_policy %}check{% endif %}\n")

    with pytest.raises(BootstrapError, match="does not use job_policy"):
        render_user_data(spec(job_policy=GPU_POLICY), ignoring)
    assert render_user_data(spec(), ignoring).startswith(b"#!/bin/bash\nrun ")
    assert render_user_data(spec(job_policy=GPU_POLICY), honouring).startswith(
        b"#!/bin/bash\ncheck"
    )
