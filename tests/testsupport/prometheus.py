"""A real Prometheus (Debian's `prometheus` package, scripts/install-system-deps) on 127.0.0.1,
scraping given targets every second, queried through its HTTP API.

Without the binary the tests that need it are skipped, unless REQUIRE_PROMETHEUS=1 (CI sets it):
then they fail, so a missing package cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")


def prometheus_binary(name: str = "prometheus") -> str:
    """The path of `prometheus` (or `promtool`); skips or fails the test when absent."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (scripts/install-system-deps installs it)"
        if os.environ.get("REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"REQUIRE_PROMETHEUS=1 but {message}")
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) of `promql` now, as the API returns its results."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        data = response.json()["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of `promql` (None when it has no result)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(self, what: str, found: Callable[[], T | None], timeout: float) -> T:
        """Ask until `found` returns something: Prometheus learns by scraping on its own
        schedule and has no way to tell us, so this asks its API, bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = found()
            if value is not None:
                return value
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(
                    f"Prometheus never showed {what} within {timeout:g} s; its log:\n"
                    + self.log.read_text()[-3000:]
                )
            time.sleep(0.2)


@contextmanager
def running_prometheus(
    directory: Path, targets: Sequence[str], rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    directory.mkdir(parents=True, exist_ok=True)
    rules = "".join(f"\n  - {path}" for path in rule_files)
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        + (f"rule_files:{rules}\n" if rules else "")
        + "scrape_configs:\n  - job_name: scaleset-listener\n    static_configs:\n"
        + f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool | None:
            try:
                return httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200 or None
            except httpx.TransportError:
                return None

        prometheus.wait_for("itself ready", ready, timeout=30)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
