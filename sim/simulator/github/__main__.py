"""`python -m simulator.github --port N`: serve the simulated GitHub + Actions service."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from types import FrameType

from simulator.github.config import DEFAULT_PAT, SimulatorConfig
from simulator.github.server import serve_forever


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator.github", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--pat",
        action="append",
        default=[],
        help=f"accepted PAT (repeatable); default: {DEFAULT_PAT}",
    )
    parser.add_argument("--mode", choices=["github.com", "ghes"], default="github.com")
    parser.add_argument("--long-poll-timeout", type=float, default=50.0)
    parser.add_argument("--admin-token-ttl", type=float, default=3600.0)
    parser.add_argument("--queue-token-ttl", type=float, default=3600.0)
    parser.add_argument("--assign-timeout", type=float, default=None)
    parser.add_argument("--session-abandon-timeout", type=float, default=None)
    parser.add_argument("--public-url", default=None, help="base URL to hand out in replies")
    parser.add_argument("--auto-take", action="store_true", help="idle runners take jobs")
    parser.add_argument("--lenient", action="store_true", help="skip api-version/Accept checks")
    defaults = SimulatorConfig()
    parser.add_argument(
        "--runner-version",
        default=defaults.runner_version,
        help="the newest actions/runner release at start",
    )
    parser.add_argument(
        "--runner-version-age-days",
        type=float,
        default=defaults.runner_version_age_days,
        help="how long ago that release was published",
    )
    parser.add_argument(
        "--runner-min-version",
        default=defaults.runner_min_version,
        help="runners below this version cannot register",
    )
    parser.add_argument(
        "--runner-deprecation-days",
        type=float,
        default=defaults.runner_deprecation_days,
        help="a runner gets no messages once a newer release is older than this",
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        pats=tuple(args.pat) or (DEFAULT_PAT,),
        mode=args.mode,
        long_poll_timeout=args.long_poll_timeout,
        admin_token_ttl=args.admin_token_ttl,
        queue_token_ttl=args.queue_token_ttl,
        assign_timeout=args.assign_timeout,
        session_abandon_timeout=args.session_abandon_timeout,
        public_url=args.public_url,
        auto_take=args.auto_take,
        strict=not args.lenient,
        runner_version=args.runner_version,
        runner_version_age_days=args.runner_version_age_days,
        runner_min_version=args.runner_min_version,
        runner_deprecation_days=args.runner_deprecation_days,
    )


def _ignore(signum: int, frame: FrameType | None) -> None:
    # uvicorn handles SIGTERM/SIGINT while serving and re-raises them afterwards; by then the
    # server has shut down cleanly, so the re-raised signal must not kill the process.
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from_args(args)
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    asyncio.run(serve_forever(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
