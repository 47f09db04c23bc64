"""`python -m simulator.sandbox --github-url U --cloud-url U [--guest sandbox|light]`: boot sandbox
VMs (or light VMs) for a simulated cloud's servers until interrupted; prints the listener
settings that go with them."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from simulator.sandbox.fleet import LightFleet, SandboxConfig, SandboxFleet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.sandbox",
        description="Boot sandbox VMs (namespaces, sshd, real bootstrap) for simulated servers.",
    )
    parser.add_argument("--github-url", required=True, help="the GitHub simulator's base URL")
    parser.add_argument("--cloud-url", required=True, help="the OpenStack simulator's base URL")
    defaults = SandboxConfig()
    parser.add_argument("--boot-seconds", type=float, default=defaults.boot_seconds)
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval)
    parser.add_argument("--subnet", help="loopback range for the VMs (default 127.N.0.0/16)")
    parser.add_argument(
        "--ssh-port", type=int, default=None, help="the VMs' sshd port (22; light VMs 2222)"
    )
    parser.add_argument(
        "--guest",
        choices=("sandbox", "light"),
        default="sandbox",
        help="sandbox VMs (root, namespaces) or light VMs (any user)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = SandboxConfig(
        boot_seconds=args.boot_seconds,
        poll_interval=args.poll_interval,
        subnet=args.subnet,
        ssh_port=args.ssh_port,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kind = LightFleet if args.guest == "light" else SandboxFleet
    fleet = kind(args.github_url, args.cloud_url, config)
    try:
        fleet.start()
    except RuntimeError as exc:
        print(f"simulator.sandbox: {exc}", file=sys.stderr)
        fleet.stop()
        return 2
    try:
        print(f"simulator.sandbox running: VMs on {fleet.subnet}; listener settings:", flush=True)
        for key, value in fleet.listener_settings().items():
            print(f"{key}={value}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
