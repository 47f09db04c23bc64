"""The `scaleset-listener` command: `run` the service, `reconcile` once, `check-config` (offline,
or `--online`: the pre-flight, preflight.py), `user-data` (print a VM's rendered bootstrap),
`usage` (the per-job usage log grouped), `demo`.

Exit codes: 0 success, 1 the service failed while running, 2 the configuration is wrong (for
`demo`: the simulator it needs is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from provisioners.base import Provisioner
from provisioners.bootstrap import BootstrapError
from provisioners.openstack import OpenStackProvisioner
from reconciler.reconcile import ReconcileReport
from scaleset_listener import __version__
from scaleset_listener.auth import load_app_private_key
from scaleset_listener.config import Settings, load_settings, parse_duration
from scaleset_listener.errors import ConfigError
from scaleset_listener.http import HttpChannel
from scaleset_listener.logs import configure
from scaleset_listener.preflight import run_preflight
from scaleset_listener.runner_versions import parse_version
from scaleset_listener.service import run_service
from scaleset_listener.usage import GroupBy, read_records, summarize, utc_now
from scaleset_listener.usage import as_json as usage_json
from scaleset_listener.usage import table as usage_table
from scaleset_listener.vm_scaler.execute import RunnerRegistry
from scaleset_listener.wiring import (
    acting_on,
    github,
    missing_cloud_settings,
    placement,
    placements,
    preview_user_data,
    probe_public_key,
    reconcile_deleted_scale_sets,
    reconcile_scale_set,
    retry_policy,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaleset-listener",
        description="GitHub Actions runner scale sets on single-use OpenStack VMs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    env_file = argparse.ArgumentParser(add_help=False)
    env_file.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="read settings from this env file (process environment variables take precedence)",
    )
    commands.add_parser("run", parents=[env_file], help="run the listener until SIGTERM")
    commands.add_parser(
        "demo",
        help="run the listener against the built-in simulator (see `demo --help`)",
        add_help=False,
    )
    usage = commands.add_parser(
        "usage",
        help="VM-hours, jobs and median queue wait per group, from a USAGE_LOG_PATH file",
    )
    usage.add_argument("file", type=Path, metavar="FILE", help="the JSON Lines usage log")
    usage.add_argument(
        "--since",
        metavar="DURATION",
        help="only jobs whose VM was deleted within this long (e.g. 7d, 12h)",
    )
    usage.add_argument(
        "--by",
        choices=[group.value for group in GroupBy],
        default=GroupBy.REPOSITORY.value,
        help="group by repository (default), workflow or flavor",
    )
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reconcile = commands.add_parser(
        "reconcile",
        parents=[env_file],
        help="one startup reconciliation pass: print the decision table, act, exit",
    )
    reconcile.add_argument(
        "--dry-run", action="store_true", help="print the decisions and change nothing"
    )
    check_config = commands.add_parser(
        "check-config",
        parents=[env_file],
        help="validate the settings and print them, secrets masked",
    )
    check_config.add_argument(
        "--online",
        action="store_true",
        help="also ask GitHub and the cloud (read-only): one line per check, exit 2 on a failure",
    )
    user_data = commands.add_parser(
        "user-data",
        parents=[env_file],
        help="print the bootstrap a runner VM gets (placeholders for its JIT config and host key)",
    )
    user_data.add_argument(
        "--scale-set", metavar="NAME", help="the scale set (required when RUNNERS has several)"
    )
    user_data.add_argument(
        "--runner-version",
        metavar="X.Y.Z",
        help="the runner release to render (required with GITHUB_RUNNER_VERSION=latest, which "
        "the service resolves from GitHub; nothing here uses the network)",
    )
    return parser


def validate_deeply(settings: Settings) -> None:
    """Checks beyond field validation that still need no network: the App key parses, the
    probe's key pair loads."""
    if settings.uses_github_app:
        load_app_private_key(settings.app_private_key_pem())
    probe_public_key(settings)


def effective_settings(settings: Settings) -> list[str]:
    """`NAME=value` lines of every setting, secrets masked."""
    lines = []
    for name, value in settings.model_dump(mode="python").items():
        shown: object = value
        if isinstance(getattr(settings, name), SecretStr):
            shown = "**********"
        elif name == "runners":
            specs = (spec.model_dump_json(exclude_none=True) for spec in settings.runners)
            shown = "[" + ", ".join(specs) + "]"
        elif value is None:
            shown = ""
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, float):
            shown = f"{value:g}s"  # every float setting is a duration
        elif hasattr(value, "value"):
            shown = value.value
        lines.append(f"{name.upper()}={shown}")
    lines.extend(placement_lines(settings))
    target = settings.github_target
    lines.append(f"# scope: {target.scope.value}, REST API: {target.api_url}")
    lines.append(
        "# auth: " + ("GitHub App" if settings.uses_github_app else "personal access token")
    )
    return lines


def placement_lines(settings: Settings) -> list[str]:
    """One comment line per scale set: where its VMs go, globals and its overrides merged."""
    lines = []
    for spec in settings.runners:
        config = placement(settings, spec)
        metadata = ",".join(f"{key}={value}" for key, value in config.server_metadata.items())
        shown = {
            "cloud": config.cloud or "(OS_CLOUD)",
            "image": spec.image or config.image,
            "flavor": spec.flavor or config.flavor,
            "network": config.network or "",
            "security_groups": ",".join(config.security_groups),
            "availability_zone": config.availability_zone or "",
            "keypair": config.keypair or "",
            "boot_volume_size_gb": config.boot_volume_size_gb,
            "floating_ips": ",".join(config.floating_ips),
            "server_metadata": metadata,
        }
        pairs = " ".join(f"{key}={value}" for key, value in shown.items())
        lines.append(f"# placement of {spec.name}: {pairs}")
    return lines


DEMO_NOT_INSTALLED = (
    "scaleset-listener: the demo is not installed here: it ships in scaleset-listener-sim (the "
    "simulator), a separate distribution that production installs leave out. From a checkout: "
    "`make demo`, or `pip install ./sim` into this environment; for a container: "
    "`docker build --target demo`."
)


def demo_installed() -> bool:
    """Whether `python -m simulator.demo` can run here. Looked up, not imported: the service
    never imports the simulator."""
    spec = importlib.util.find_spec("simulator")
    places = (spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(place) / "demo.py").is_file() for place in places)


def run_demo(demo_args: Sequence[str]) -> int:
    """The demo drives the simulator, a peer system: run it as its own process, never import it."""
    if not demo_installed():
        print(DEMO_NOT_INSTALLED, file=sys.stderr)
        return EXIT_CONFIG
    command = [sys.executable, "-m", "simulator.demo", *demo_args]
    try:
        return subprocess.run(command, check=False).returncode  # noqa: S603 (our own module)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["demo"]:
        return run_demo(arguments[1:])
    args = _parser().parse_args(arguments)
    if args.command == "usage":
        return usage_report(args.file, args.since, GroupBy(args.by), as_json=args.json)
    try:
        settings = load_settings(args.env_file)
        validate_deeply(settings)
    except ConfigError as exc:
        print(f"scaleset-listener: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        if args.online:
            return asyncio.run(run_preflight(settings, out=print))
        print("\n".join(effective_settings(settings)))
        return EXIT_OK
    if args.command == "user-data":
        try:
            sys.stdout.buffer.write(render_preview(settings, args.scale_set, args.runner_version))
        except (ConfigError, BootstrapError) as exc:
            print(f"scaleset-listener: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        sys.stdout.flush()
        return EXIT_OK
    configure(settings.log_level, settings.log_format)
    if args.command == "reconcile":
        try:
            return asyncio.run(reconcile_once(settings, dry_run=args.dry_run, out=print))
        except ConfigError as exc:
            print(f"scaleset-listener: configuration error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    return asyncio.run(run_service(settings))


def usage_report(path: Path, since: str | None, by: GroupBy, *, as_json: bool) -> int:
    """`scaleset-listener usage`: the usage log grouped; lines that are not records are
    reported on stderr and skipped."""
    cutoff = None
    if since is not None:
        try:
            cutoff = utc_now() - timedelta(seconds=parse_duration(since))
        except ValueError as exc:
            print(f"scaleset-listener: --since: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        records, unreadable = read_records(path)
    except OSError as exc:
        print(f"scaleset-listener: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    for line in unreadable:
        print(
            f"scaleset-listener: {path}:{line.line_number}: skipped: {line.problem}",
            file=sys.stderr,
        )
    rows = summarize(records, by, cutoff)
    if as_json:
        print(usage_json(rows, by))
    else:
        for row in usage_table(rows, by):
            print(row)
    return EXIT_OK


def render_preview(settings: Settings, scale_set: str | None, runner_version: str | None) -> bytes:
    """`scaleset-listener user-data`: the user_data of one scale set's next VM, offline."""
    names = [spec.name for spec in settings.runners]
    if scale_set is None and len(names) > 1:
        raise ConfigError(f"--scale-set: RUNNERS has several scale sets: {', '.join(names)}")
    chosen = [spec for spec in settings.runners if scale_set in (None, spec.name)]
    if not chosen:
        raise ConfigError(
            f"--scale-set: no scale set {scale_set!r} in RUNNERS ({', '.join(names)})"
        )
    version = runner_version
    if version is None:
        if settings.github_runner_version == "latest":
            raise ConfigError(
                "--runner-version: GITHUB_RUNNER_VERSION=latest is resolved from GitHub when the "
                "service starts; give the release to render, e.g. --runner-version 2.331.0"
            )
        version = settings.github_runner_version
    if parse_version(version) is None:
        raise ConfigError(f"--runner-version: {version!r} is not like 2.331.0")
    return preview_user_data(settings, chosen[0], version.removeprefix("v"))


async def reconcile_once(settings: Settings, *, dry_run: bool, out: Callable[[str], None]) -> int:
    """`scaleset-listener reconcile`: one reconciliation pass per configured scale set, its
    decision table written to `out`; with `dry_run` nothing is changed. The exit code."""
    missing = missing_cloud_settings(settings)
    if missing:
        raise ConfigError(f"reconcile needs the cloud settings: {', '.join(missing)}")
    http = HttpChannel(retry_policy(settings))
    provisioners: list[OpenStackProvisioner] = []
    failed = False
    try:
        client = github(settings, http).client
        groups = placements(settings)
        clouds: dict[str, Provisioner] = {}
        registry: RunnerRegistry = client
        for config, names in zip(groups.configs, groups.scale_sets, strict=True):
            provisioners.append(OpenStackProvisioner(config))
            cloud, registry = acting_on(provisioners[-1], client, dry_run=dry_run)
            clouds.update(dict.fromkeys(names, cloud))
        mode = "dry run, nothing changed" if dry_run else "acted"
        reports: list[ReconcileReport] = []
        served: set[int] = set()
        for spec in settings.runners:
            group_id = spec.runner_group_id
            if group_id is None:
                group_id = (await client.get_runner_group_by_name(spec.runner_group)).id
            scale_set = await client.find_scale_set(spec.name, group_id)
            if scale_set is None:
                out(f"# scale set {spec.name}: not registered at GitHub, nothing to reconcile")
                continue
            served.add(scale_set.id)
            report = await reconcile_scale_set(settings, registry, clouds[spec.name], scale_set.id)
            out(f"# scale set {spec.name} (id {scale_set.id}): {mode}")
            out(report.table())
            reports.append(report)
        # Deleted sets' VMs are looked for once on each cloud in use.
        for on_cloud in groups.scale_sets_by_cloud().values():
            for scale_set_id, report in await reconcile_deleted_scale_sets(
                settings, client, clouds[on_cloud[0]], registry=registry, skip=served
            ):
                out(f"# scale set {scale_set_id} (deleted at GitHub, its VMs remain): {mode}")
                out(report.table())
                reports.append(report)
        failed = any(row.error for report in reports for row in report.rows) or any(
            orphan.error for report in reports for orphan in report.orphans
        )
    finally:
        await http.aclose()
        for provisioner in provisioners:
            await provisioner.close()
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
