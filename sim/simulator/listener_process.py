"""The real listener as a subprocess: its env file, its JSON log and its signals.

The simulators' side of an end-to-end run (the demo, the end-to-end tests, the crash-restart
soak) starts `python -m scaleset_listener run --env-file F` exactly as a user would, and watches
it only through what it prints (LOG_FORMAT=json on stderr) and what reaches the simulators. This
module imports nothing of the service: the listener is a command here, nothing more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from simulator.github.server import RunningSimulator
from simulator.openstack.cloudsyaml import APP_CREDENTIAL_CLOUD
from simulator.openstack.server import RunningCloud
from simulator.openstack.state import FLAVOR_NAMES, IMAGE_NAME, NETWORK_NAME

JSON = dict[str, Any]
T = TypeVar("T")

# Variables of the caller's environment that would override the env file (the process
# environment wins over --env-file), so they never reach the listener.
_FOREIGN_PREFIXES = ("GITHUB_", "OS_", "LOG_")


@dataclass
class ListenerLog:
    """One listener process's JSON log lines, read on a thread as they arrive."""

    events: list[JSON] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def follow(self, stream: TextIO) -> None:
        for line in stream:
            with self.changed:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    self.other_lines.append(line.rstrip())
                else:
                    if isinstance(event, dict):
                        event["_seen_at"] = time.monotonic()
                        self.events.append(event)
                    else:
                        self.other_lines.append(line.rstrip())
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def named(self, name: str, **match: Any) -> list[JSON]:
        with self.changed:
            return [
                event
                for event in self.events
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items())
            ]

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str = "condition") -> T:
        """Block until `predicate()` is truthy (checked on every new log line) and return it;
        TimeoutError naming the last events otherwise."""
        with self.changed:
            result = self.changed.wait_for(predicate, timeout)
            if not result:
                tail = [e.get("event") for e in self.events[-15:]] + self.other_lines[-5:]
                raise TimeoutError(
                    f"listener log: {what} not seen within {timeout} s; last: {tail}"
                )
            return result

    def wait_event(self, name: str, timeout: float, after: int = 0, **match: Any) -> JSON:
        """The first event called `name` (from index `after`) whose fields match."""

        def find() -> JSON | None:
            for event in self.events[after:]:
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        found = self.wait_for(find, timeout, f"event {name} {match or ''}")
        assert found is not None  # wait_for returns only a truthy value
        return found


def world_settings(
    sim: RunningSimulator,
    cloud: RunningCloud,
    clouds_yaml: Path,
    scale_sets: list[JSON],
    organization: str = "acme",
) -> dict[str, str]:
    """The env-file settings that point the listener at the simulated GitHub and cloud."""
    return {
        "GITHUB_URL": f"{sim.base_url}/{organization}",
        "GITHUB_TOKEN": sim.config.pats[0],
        "RUNNERS": json.dumps(scale_sets),
        "OS_CLIENT_CONFIG_FILE": str(cloud.write_clouds_yaml(clouds_yaml)),
        "OS_CLOUD": APP_CREDENTIAL_CLOUD,
        "OPENSTACK_IMAGE": IMAGE_NAME,
        "OPENSTACK_FLAVOR": FLAVOR_NAMES[0],
        "OPENSTACK_NETWORK": NETWORK_NAME,
        "LOG_FORMAT": "json",
    }


def write_env_file(path: Path, settings: Mapping[str, str]) -> Path:
    """An env file as `scaleset-listener run --env-file` reads it (one NAME=value a line)."""
    lines = []
    for name, value in settings.items():
        if "\n" in value:
            raise ValueError(f"{name}: a multi-line value does not fit this env file")
        lines.append(f"{name}={value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ListenerProcess:
    """`python -m scaleset_listener run --env-file F` as a child process, its log followed.

    `cwd` is the repository the listener's code comes from (so a worktree runs its own code).
    """

    def __init__(self, env_file: Path, cwd: Path | None = None) -> None:
        self.env_file = env_file
        self.log = ListenerLog()
        self._process = subprocess.Popen(  # noqa: S603 (our own command)
            [sys.executable, "-m", "scaleset_listener", "run", "--env-file", str(env_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)},
        )
        assert self._process.stderr is not None
        self._reader = threading.Thread(
            target=self.log.follow, args=(self._process.stderr,), daemon=True, name="listener-log"
        )
        self._reader.start()
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self._process.poll()

    def kill(self) -> int:
        """SIGKILL: the crash a restart must survive. Returns once the process is gone."""
        if self.running:
            self._process.send_signal(signal.SIGKILL)
        return self.wait(10)

    def terminate(self) -> None:
        """SIGTERM: ask for the drain (docs/architecture.md#runtime-model)."""
        if self.running:
            self._process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None) -> int:
        """The exit code, once the process has ended and its log is read to the end."""
        code = self._process.wait(timeout)
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self._process.stderr is not None:
            self._process.stderr.close()
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and SIGKILL when the drain takes longer than `timeout`; the exit code."""
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def __enter__(self) -> ListenerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.kill()
