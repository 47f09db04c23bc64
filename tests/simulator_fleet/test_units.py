"""JIT config extraction, exit codes, and the standalone command."""

from __future__ import annotations

import base64
import shlex
import signal
import subprocess
import sys

from provisioners.bootstrap import BootstrapSpec, render_user_data
from simulator.fleet import exit_code_for, extract_jit_config
from simulator.openstack.server import run_in_thread as run_cloud
from tests.conftest import GitHubSim


def _rendered(jit: str) -> str:
    spec = BootstrapSpec(
        runner_name="r", jit_config=jit, runner_version="2.330.0", runner_download_url="x"
    )
    return render_user_data(spec).decode()


def test_the_jit_config_comes_back_from_a_rendered_bootstrap() -> None:
    jit = base64.b64encode(b'{"runnerId": 1, "secret": "s"}').decode()
    assert extract_jit_config(_rendered(jit)) == jit


def test_odd_characters_survive_the_shell_quoting() -> None:
    jit = "a'b\"c $(x) `y` ;\\"
    assert extract_jit_config(_rendered(jit)) == jit
    assert extract_jit_config(f"#!/bin/sh\nJIT_CONFIG={shlex.quote(jit)}\n") == jit


def test_base64_user_data_is_decoded() -> None:
    script = _rendered("abc=")
    assert extract_jit_config(base64.b64encode(script.encode()).decode()) == "abc="


def test_no_jit_config_line_is_none() -> None:
    assert extract_jit_config(None) is None
    assert extract_jit_config("") is None
    assert extract_jit_config("#cloud-config\nruncmd: []\n") is None
    assert extract_jit_config("JIT_CONFIG=''\n") is None
    assert extract_jit_config("JIT_CONFIG='unterminated\n") is None
    assert extract_jit_config("JIT_CONFIG=two words\n") is None


def test_exit_codes_follow_the_job_result() -> None:
    assert exit_code_for("succeeded") == 0
    assert [exit_code_for(r) for r in ("failed", "canceled", None)] == [1, 1, 1]


def test_the_command_runs_until_sigterm(github_sim: GitHubSim) -> None:
    with run_cloud() as cloud:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator.fleet",
                "--github-url",
                github_sim.base_url,
                "--cloud-url",
                cloud.base_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("simulator.fleet running"), line
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
