"""python -m simulator.openstack --port N [--host 127.0.0.1] [--clouds-yaml PATH]"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from simulator.openstack.config import CloudConfig, address_range
from simulator.openstack.server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.openstack", description="Run the simulated OpenStack cloud."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--clouds-yaml", type=Path, help="write clouds sim and sim-password here")
    parser.add_argument("--public-url", help="base URL for the catalog (default: bound address)")
    parser.add_argument("--build-delay", type=float, default=CloudConfig.build_delay)
    parser.add_argument("--delete-delay", type=float, default=CloudConfig.delete_delay)
    parser.add_argument("--max-microversion", default=CloudConfig.max_microversion)
    parser.add_argument(
        "--floating-ips",
        default="203.0.113.10-203.0.113.19",
        help="pre-allocated floating IPs, FIRST-LAST; empty for none",
    )
    parser.add_argument(
        "--fixed-subnet",
        default=CloudConfig.fixed_subnet,
        help="the tenant subnet of servers' fixed addresses (a loopback /16 for sandbox VMs)",
    )
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    pool: tuple[str, ...] = ()
    if args.floating_ips:
        first, _, last = args.floating_ips.partition("-")
        pool = address_range(first, last or first)
    config = CloudConfig(
        build_delay=args.build_delay,
        delete_delay=args.delete_delay,
        max_microversion=args.max_microversion,
        floating_ip_pool=pool,
        fixed_subnet=args.fixed_subnet,
        public_url=args.public_url,
        seed=args.seed,
    )
    asyncio.run(serve_forever(config, args.host, args.port, args.clouds_yaml))


if __name__ == "__main__":
    main()
