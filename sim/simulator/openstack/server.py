"""Running the simulated cloud: in a daemon thread for tests, or in the foreground (CLI)
(simulator.serving runs both simulators the same way)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulator import serving
from simulator.openstack.app import CloudApp
from simulator.openstack.cloudsyaml import clouds_yaml_text
from simulator.openstack.config import CloudConfig
from simulator.openstack.control import CloudControl
from simulator.openstack.state import Cloud
from simulator.serving import RunningServer, Service

TICK_INTERVAL = 0.05


def service(cloud: Cloud) -> Service:
    app = CloudApp(cloud)

    async def ticker() -> None:
        """Move timed transitions along even while nobody asks (requests tick too)."""
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            cloud.tick()

    # A dropped connection (a fault we inject) makes uvicorn log an error: it is ours.
    return Service(app, log_level="critical", background=ticker)


class RunningCloud(RunningServer):
    """A simulated cloud serving on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__("simulator.openstack")
        self.config = config
        self.cloud = Cloud(config, config.public_url or self.base_url)
        self._start(service(self.cloud))
        self.control = CloudControl(self.base_url)

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity/v3"

    def clouds_yaml(self) -> str:
        return clouds_yaml_text(self.base_url, self.config.region)

    def write_clouds_yaml(self, path: Path | str) -> Path:
        target = Path(path)
        target.write_text(self.clouds_yaml(), encoding="utf-8")
        return target

    def _closing(self) -> None:
        self.control.close()


def run_in_thread(config: CloudConfig | None = None) -> RunningCloud:
    return RunningCloud(config or CloudConfig())


async def serve_forever(
    config: CloudConfig, host: str, port: int, clouds_yaml: Path | None = None
) -> None:
    """Serve in the foreground until SIGTERM/SIGINT; once it accepts connections, writes
    `clouds_yaml` (when given) and prints the cloud's URL."""
    sock = serving.bind(host, port)
    cloud = Cloud(config, config.public_url or serving.bound_url(sock))

    async def write_clouds_yaml() -> None:
        if clouds_yaml is not None:
            text = clouds_yaml_text(cloud.base_url, config.region)
            await asyncio.to_thread(clouds_yaml.write_text, text, "utf-8")

    await serving.serve_forever(
        "simulator.openstack", sock, service(cloud), cloud.base_url, write_clouds_yaml
    )
