"""Running the simulator: in a daemon thread for tests, or in the foreground for the CLI
(simulator.serving runs both simulators the same way)."""

from __future__ import annotations

from simulator import serving
from simulator.github.app import SimulatorApp
from simulator.github.config import SimulatorConfig
from simulator.github.control import SimulatorControl
from simulator.github.world import World
from simulator.serving import RunningServer, Service


def service(world: World) -> Service:
    app = SimulatorApp(world)

    # Stopping wakes the long polls and cancels the world's timers.
    return Service(app, on_stop=world.shutdown)


class RunningSimulator(RunningServer):
    """A simulator serving on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__("simulator.github")
        self.config = config
        self.world = World(config, config.public_url or self.base_url)
        self._start(service(self.world))
        self.control = SimulatorControl(self.base_url)

    def _closing(self) -> None:
        self.control.close()


def run_in_thread(config: SimulatorConfig | None = None) -> RunningSimulator:
    return RunningSimulator(config or SimulatorConfig())


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve in the foreground until SIGTERM/SIGINT; prints the address it listens on."""
    sock = serving.bind(host, port)
    url = serving.bound_url(sock)
    world = World(config, config.public_url or url)
    await serving.serve_forever("simulator.github", sock, service(world), url)
