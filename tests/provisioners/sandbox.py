"""A sandbox that runs the rendered bootstrap for real: a stub runner tarball served over HTTP on
loopback, a root directory standing in for the VM's filesystem, a recorded power-off.

The stub `run.sh` records every call (its arguments NUL-separated, the user it ran as, its
working directory) into its own directory, which the bootstrap hands to the runner user, and
exits with the code it was built with.
"""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import shlex
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from provisioners.bootstrap import BootstrapSpec

RUNNER_VERSION = "2.330.0"
URL_TEMPLATE = "/v{version}/actions-runner-linux-{arch}-{version}.tar.gz"
# Every script run is bounded; a healthy one takes well under a second.
SCRIPT_TIMEOUT = 30.0

STUB_RUN_SH = """#!/bin/bash
here=$(cd "$(dirname "$0")" && pwd)
printf '%s\\0' "$@" >"$here/stub-args"
id -un >"$here/stub-user"
pwd >"$here/stub-cwd"
echo call >>"$here/stub-calls"
exit {code}
"""


def stub_run_sh(exit_code: int) -> str:
    return STUB_RUN_SH.format(code=exit_code)


def stub_runner_tarball(exit_code: int) -> bytes:
    """A tar.gz laid out like the real runner's: run.sh at the top level."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text, mode in (
            ("run.sh", stub_run_sh(exit_code), 0o755),
            ("config.sh", "#!/bin/bash\nexit 0\n", 0o755),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@dataclass
class RunnerServer:
    """Serves `tarball` at every path (404 when `missing`), recording each request."""

    base_url: str
    tarball: bytes = b""
    missing: bool = False
    requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [path for path, _agent in self.requests]


@contextmanager
def serve_runner() -> Iterator[RunnerServer]:
    state = RunnerServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("User-Agent", "")))
            if state.missing:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(state.tarball)))
            self.end_headers()
            self.wfile.write(state.tarball)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; requests are recorded above

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval keeps shutdown() (which waits for the next poll) quick.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="stub-runner-http", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass(frozen=True)
class Sandbox:
    """A VM's filesystem under `root`, plus where the script's side effects are recorded."""

    root: Path

    @property
    def console(self) -> Path:
        return self.root / "dev" / "console"

    @property
    def poweroff_log(self) -> Path:
        return self.root / "poweroff-calls"

    @property
    def sentinels(self) -> Path:
        return self.root / "var" / "lib" / "scaleset-runner"

    @property
    def runner_dir(self) -> Path:
        return self.root / "opt" / "actions-runner"

    def spec(self, server_url: str, **overrides: Any) -> BootstrapSpec:
        values: dict[str, Any] = {
            "runner_name": "linux-x64-abc123",
            "jit_config": "eyJKSVQiOiAiZmFrZSJ9+/=",
            "runner_version": RUNNER_VERSION,
            "runner_download_url": server_url + URL_TEMPLATE,
            "labels": ("self-hosted", "linux"),
            "runner_user": current_user(),
            "root": str(self.root),
            "console_path": str(self.console),
            "poweroff_command": f"echo poweroff >>{shlex.quote(str(self.poweroff_log))}",
        }
        values.update(overrides)
        return BootstrapSpec(**values)

    def run(self, user_data: bytes, env: dict[str, str] | None = None) -> RunResult:
        script = self.root.parent / "user-data.sh"
        script.write_bytes(user_data)
        completed = subprocess.run(
            ["/bin/bash", str(script)],
            capture_output=True,
            timeout=SCRIPT_TIMEOUT,
            env=env if env is not None else clean_env(),
            check=False,
        )
        return RunResult(completed.returncode, completed.stdout.decode(), completed.stderr.decode())

    def read(self, path: Path) -> str:
        return path.read_text() if path.exists() else ""

    def poweroff_calls(self) -> int:
        return self.read(self.poweroff_log).count("poweroff")

    def stub_calls(self) -> int:
        return self.read(self.runner_dir / "stub-calls").count("call")

    def stub_args(self) -> list[str]:
        return (self.runner_dir / "stub-args").read_bytes().decode().split("\0")[:-1]


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


def make_sandbox(parent: Path) -> Sandbox:
    root = parent / "vm"
    (root / "dev").mkdir(parents=True)
    return Sandbox(root)


def clean_env() -> dict[str, str]:
    """The test process's environment without proxies, so curl reaches loopback directly."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


def path_without(bin_dir: Path, *hidden: str) -> str:
    """A PATH of one directory linking every command on the current PATH except `hidden`,
    to show what the script does on an image that lacks them."""
    bin_dir.mkdir()
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]:
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name in hidden or link.exists() or link.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(bin_dir)
