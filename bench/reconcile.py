"""Startup reconcile of N leftover VMs, with a serial baseline in the same run.

The world an earlier listener process left behind: N servers in the simulated cloud, created
through the provisioner with the ownership tags and metadata it writes (host key included);
runner registrations in the simulated Actions service (idle, busy, offline or none); and for
every ACTIVE VM either a real OpenSSH sshd in the VM's state (tests/testsupport/ssh_hosts.py:
one per VM, in its own PID and mount namespace, on 127.0.x.y) or, for a `--hanging` share of
all VMs, an address that never answers the TCP handshake. Some servers are SHUTOFF or ERROR,
and a few registrations have no VM. Seeding is not measured.

Measured: the real reconcile pass (`reconciler.run_once` as `reconcile_scale_set` calls it:
openstacksdk against the simulated cloud, the Actions client against the simulated GitHub, the
SSHProber with host keys pinned from the server metadata, RECONCILE_CONCURRENCY slots, console
fallback, deletes and deregistrations). Only the address is translated: the cloud reports
10.0.x.y, the VM's sshd listens on 127.0.x.y (`MappedProber`). Wall time and the listener's CPU
time: this process and the probe's worker processes (`cpu_ms_per_vm`: that per VM examined);
the simulators' CPU and the sshd CPU (which in production lands on the VMs, here on the same
2 cores) are reported separately. `floor_s` is what no pass on this machine can beat:
max(the SSH timeout, all the CPU the machine spent during the pass divided by the cores): the
listener, the VMs' sshd and the kernel's work for their connections (softirq time on loopback,
which no process is charged with), the simulators. `floor_listener_sshd_s` counts only the
listener's and sshd's own CPU, the stricter figure.

Baseline (the Orka approach): one VM after the other, one SSH connection at a time: the same
pass with concurrency 1 and a one-worker prober, over `--sample` VMs of the same mix (their own
scale set), extrapolated linearly to N (the output says so).

Checked, not only timed: each VM must get the decision its state calls for, and after the pass
the cloud holds exactly the adopted VMs and GitHub exactly their registrations; otherwise the
bench fails. Needs root (sshd, namespaces). Prints progress and, on its last line, one JSON
object: `python bench/reconcile.py --vms 1000 --hanging 0.1 --timeout 10`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/reconcile.py` puts bench/ first on sys.path: this repository's root must come
# first (its packages, not an installed copy; tests.testsupport for the sshd hosts).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bench.scale_up import peer_process
from provisioners.base import ServerSpec
from provisioners.bootstrap import generate_host_key
from provisioners.naming import Ownership, ownership_metadata
from provisioners.openstack import OpenStackProvisioner
from provisioners.ssh import SSHProbeConfig, SSHProber
from reconciler.reconcile import ReconcileReport, run_once
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, PersonalAccessToken
from scaleset_listener.config import LogFormat, LogLevel, Settings
from scaleset_listener.http import HttpChannel
from scaleset_listener.logs import configure
from scaleset_listener.wiring import openstack_config, probe_processes, retry_policy
from simulator.github.config import DEFAULT_PAT
from simulator.github.control import SimulatorControl
from simulator.openstack.control import CloudControl
from simulator.openstack.state import FLAVOR_NAMES, IMAGE_NAME, NETWORK_NAME
from tests.testsupport.ssh_hosts import (
    HostSpec,
    MappedProber,
    SSHHost,
    SSHHostFactory,
    install_system_deps,
    namespace_problem,
)

JSON = dict[str, Any]
GOAL_WALL_S = 30.0
OLD = timedelta(hours=2)
YOUNG = timedelta(minutes=1)  # well inside the default BOOT_TIMEOUT (600 s) for the whole run
SEED_TIMEOUT = 300.0
Registration = Literal["none", "offline", "idle", "busy"]


@dataclass(frozen=True)
class Kind:
    """One kind of leftover VM: its state in the cloud, at GitHub and on the VM, and the
    decision the table in reconciler/policy.py gives it. `weight` is its share in its group."""

    name: str
    weight: float
    expected: str
    host: Callable[[], HostSpec] | None = None  # a real sshd VM in this state
    hangs: bool = False  # the address never answers the TCP handshake
    status: Literal["ACTIVE", "SHUTOFF", "ERROR"] = "ACTIVE"
    registration: Registration = "none"
    age: timedelta = OLD
    console: str | None = None  # a marker line on the console log ({name}: the runner name)


# Answering VMs: mostly runners alive (idle or busy), then finished, crashed, booting, failed.
ANSWERING = (
    Kind("alive_idle", 35, "adopt_idle", HostSpec.runner_alive, registration="idle"),
    Kind("alive_busy", 25, "adopt_busy", HostSpec.runner_alive, registration="busy"),
    # The job is over, GitHub removed the ephemeral runner; the VM has not powered off yet.
    Kind("run_complete", 8, "clean_up", lambda: HostSpec.run_complete(0)),
    Kind("crashed", 5, "delete", HostSpec.runner_crashed, registration="offline"),
    Kind(
        "booting",
        5,
        "adopt_booting",
        HostSpec.setup_not_complete,
        registration="offline",
        age=YOUNG,
    ),
    Kind("stuck_booting", 3, "delete", HostSpec.setup_not_complete, registration="offline"),
    Kind(
        "setup_failed",
        2,
        "delete",
        lambda: HostSpec.setup_failed("runner download failed"),
        registration="offline",
    ),
    Kind("unregistered", 2, "delete", HostSpec.runner_alive),
)
# Never answering: GitHub and the console decide.
HANGING = (
    Kind("hang_busy", 3, "adopt_busy", hangs=True, registration="busy"),
    Kind("hang_booting", 3, "adopt_booting", hangs=True, registration="offline", age=YOUNG),
    Kind("hang_old", 3, "delete", hangs=True, registration="offline"),
    Kind(
        "hang_run_complete",
        1,
        "clean_up",
        hangs=True,
        console="SCALESET-RUNNER run-complete runner={name} exit=0",
    ),
)
# Not ACTIVE, so not probed.
DOWN = (
    Kind("shutoff", 3, "clean_up", status="SHUTOFF"),
    Kind("error", 2, "delete", status="ERROR", registration="offline"),
)
DOWN_SHARE = 0.05
ORPHAN_SHARE = 0.01  # registrations with no VM (on top of the N VMs)


def _split(total: int, kinds: Sequence[Kind]) -> list[Kind]:
    """`total` VMs over `kinds` by weight (largest remainder, so the counts add up)."""
    weights = sum(kind.weight for kind in kinds)
    exact = [total * kind.weight / weights for kind in kinds]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(kinds)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [kind for kind, count in zip(kinds, counts, strict=True) for _ in range(count)]


def mix(n: int, hanging: float, seed: int) -> list[Kind]:
    """N VMs: `hanging` of them never answer, 5 % are down, the rest answer; shuffled."""
    hung = round(n * hanging)
    down = min(round(n * DOWN_SHARE), n - hung)
    kinds = _split(hung, HANGING) + _split(down, DOWN) + _split(n - hung - down, ANSWERING)
    random.Random(seed).shuffle(kinds)
    return kinds


def expected_counts(kinds: Sequence[Kind], orphans: int) -> dict[str, int]:
    """Decisions by action as `ReconcileReport.counts()` gives them, zeros left out."""
    counts: dict[str, int] = dict(Counter(kind.expected for kind in kinds))
    if orphans:
        counts["orphan_registrations"] = orphans
    return counts


# --- The world ---------------------------------------------------------------------------


@dataclass
class World:
    github: SimulatorControl
    cloud: CloudControl
    settings: Settings
    factory: SSHHostFactory
    peer_pids: dict[str, int]


@dataclass
class Seeded:
    """One scale set's leftovers, and what the pass must do with them."""

    scale_set_name: str
    ownership: Ownership
    kinds: dict[str, Kind]  # runner name -> kind
    hosts: dict[str, SSHHost]  # the VM's cloud address -> the host standing in for it
    orphans: int
    hanging: int = 0
    sshd_pids: list[int] = field(default_factory=list)

    @property
    def scale_set_id(self) -> int:
        return self.ownership.scale_set_id


def bench_settings(
    github_url: str, factory: SSHHostFactory, timeout: float, concurrency: int | None
) -> Settings:
    """The service's settings for this world (the defaults unless the bench sets them)."""
    values: dict[str, Any] = {
        "github_url": f"{github_url}/bench-org",
        "github_token": DEFAULT_PAT,
        "runners": [{"name": "bench"}],
        "openstack_image": IMAGE_NAME,
        "openstack_flavor": FLAVOR_NAMES[0],
        "openstack_network": NETWORK_NAME,
        "vm_ssh_user": factory.user,
        "vm_ssh_private_key_path": factory.client_key_path,
        "sentinel_dir": factory.sentinel_dir,
        "ssh_probe_timeout": timeout,
        "log_level": "warning",
    }
    if concurrency is not None:
        values["reconcile_concurrency"] = concurrency
    return Settings(**values)


def probe_config(
    settings: Settings, port: int, workers: int, processes: int | None = None, serial: bool = False
) -> SSHProbeConfig:
    """As `scaleset_listener.wiring.make_prober` builds it, on the test hosts' port; `serial`:
    one connection at a time, connects included (the baseline)."""
    extra: dict[str, Any] = {"max_connections": 1} if serial else {}
    assert settings.vm_ssh_private_key_path is not None
    return SSHProbeConfig.from_timeout(
        settings.ssh_probe_timeout,
        user=settings.vm_ssh_user,
        private_key_path=settings.vm_ssh_private_key_path,
        host_key_policy=settings.ssh_host_key_policy,
        sentinel_dir=settings.sentinel_dir,
        max_workers=min(4096, workers),
        port=port,
        worker_processes=probe_processes(settings) if processes is None else processes,
        **extra,
    )


@contextlib.asynccontextmanager
async def actions_client(settings: Settings) -> AsyncIterator[ActionsClient]:
    """The Actions client the service's reconcile uses (PAT auth, the service's retries)."""
    http = HttpChannel(retry_policy(settings))
    token = settings.github_token
    assert token is not None
    auth = ActionsAdminAuth(
        settings.github_target, PersonalAccessToken(token.get_secret_value()), http
    )
    try:
        yield ActionsClient(auth, http)
    finally:
        await http.aclose()


async def seed(world: World, name: str, kinds: Sequence[Kind], orphans: int) -> Seeded:
    """Create one scale set's leftovers: hosts, registrations, servers (not measured)."""
    scale_set = world.github.create_scale_set(name, labels=[name])
    ownership = Ownership(world.settings.effective_listener_instance_id, int(scale_set["id"]))
    names = [f"{name}-{k:08x}" for k in range(len(kinds))]
    by_name = dict(zip(names, kinds, strict=True))

    answering = [(n, k) for n, k in by_name.items() if k.host is not None]
    started = world.factory.start_many([k.host() for _, k in answering if k.host is not None])
    host_of: dict[str, SSHHost] = {n: h for (n, _), h in zip(answering, started, strict=True)}
    for runner, kind in by_name.items():
        if kind.hangs:
            host_of[runner] = world.factory.hang_host()

    await _register(world, ownership.scale_set_id, name, by_name, orphans)
    hosts = await _create_servers(world, name, ownership, by_name, host_of)
    return Seeded(
        name,
        ownership,
        by_name,
        hosts,
        orphans,
        hanging=sum(1 for kind in kinds if kind.hangs),
        sshd_pids=[host.sshd_pid for host in started if host.sshd_pid is not None],
    )


async def _register(
    world: World, scale_set_id: int, label: str, by_name: dict[str, Kind], orphans: int
) -> None:
    registered = [n for n, k in by_name.items() if k.registration != "none"]
    orphan_names = [f"{label}-orphan{k:04x}" for k in range(orphans)]
    gate = asyncio.Semaphore(16)
    async with actions_client(world.settings) as client:

        async def jit(runner: str) -> tuple[str, str]:
            async with gate:
                config = await client.generate_jit_config(scale_set_id, runner)
                return runner, config.encoded_jit_config

        jits = dict(await asyncio.gather(*(jit(n) for n in registered + orphan_names)))
        runner_ids = {
            n: int(world.github.connect_runner(jits[n])["id"])
            for n, k in by_name.items()
            if k.registration in ("idle", "busy")
        }
        busy = [n for n, k in by_name.items() if k.registration == "busy"]
        if not busy:
            return
        # A job for every busy runner: assigned to the scale set through a live session.
        session = await client.create_session(scale_set_id, "bench-seed")
        world.github.enqueue_jobs([label], count=len(busy), duration=86400)
        world.github.wait_for_state(
            lambda s: (
                sum(
                    1
                    for j in s["jobs"]
                    if j["scale_set_id"] == scale_set_id and j["state"] == "assigned"
                )
                >= len(busy)
            ),
            SEED_TIMEOUT,
        )
        for runner in busy:
            world.github.runner_take_job(runner_ids[runner])
        await client.delete_session(scale_set_id, session.session_id)


async def _create_servers(
    world: World,
    label: str,
    ownership: Ownership,
    by_name: dict[str, Kind],
    host_of: dict[str, SSHHost],
) -> dict[str, SSHHost]:
    now = datetime.now(UTC)
    config = dataclasses.replace(openstack_config(world.settings), max_workers=16)
    provisioner = OpenStackProvisioner(config)
    gate = asyncio.Semaphore(32)

    async def create(runner: str, kind: Kind) -> None:
        host = host_of.get(runner)
        # Every VM's host key is recorded at create, as the provisioner does.
        key = host.pinned_public_key if host else generate_host_key(runner).public_openssh
        spec = ServerSpec(
            name=runner,
            user_data=b"#!/bin/sh\ntrue\n",
            tags=ownership.tags(),
            metadata=ownership_metadata(runner, label, now - kind.age, key),
        )
        async with gate:
            await provisioner.submit(spec)

    try:
        await asyncio.gather(*(create(n, k) for n, k in by_name.items()))
    finally:
        await provisioner.close()
    servers = _wait_active(world.cloud, set(by_name))
    hosts: dict[str, SSHHost] = {}
    for server in servers:
        kind = by_name[server.name]
        if kind.status != "ACTIVE":
            world.cloud.set_server_status(server.id, kind.status, "bench: host failure")
        if kind.console:
            world.cloud.append_console(server.id, kind.console.format(name=server.name))
        if server.name in host_of:
            hosts[server.addresses[0]] = host_of[server.name]
    return hosts


def _wait_active(cloud: CloudControl, names: set[str]) -> list[Any]:
    deadline = time.monotonic() + SEED_TIMEOUT
    while True:
        servers = [s for s in cloud.servers() if s.name in names]
        if len(servers) == len(names) and all(s.status == "ACTIVE" for s in servers):
            return servers
        if time.monotonic() > deadline:
            raise RuntimeError(f"seeded servers not ACTIVE after {SEED_TIMEOUT:g} s")
        time.sleep(0.2)  # the simulated cloud has no watch; bounded by the deadline above


# --- The measured pass -------------------------------------------------------------------


def _ticks(pid: int, children: bool = False) -> int:
    """utime + stime (+ reaped children's) of a process, in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # After the ")": state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based).
    times = [int(x) for x in fields[11:15]]
    return sum(times) if children else times[0] + times[1]


def _machine_ticks() -> list[int]:
    # /proc/stat's first line: user nice system idle iowait irq softirq steal.
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def _machine_split(before: list[int], after: list[int]) -> dict[str, float]:
    """The machine's busy CPU by kind, in seconds."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "user": round((spent[0] + spent[1]) / TICK, 2),
        "system": round(spent[2] / TICK, 2),
        "irq_softirq": round((spent[5] + spent[6]) / TICK, 2),
        "steal": round(spent[7] / TICK, 2),
    }


TICK = os.sysconf("SC_CLK_TCK")


# The prober's helper processes (its workers and the fork server that starts them) -> their
# CPU ticks when last read: the fork server outlives a prober, so a later pass counts only its
# own share.
_HELPER_TICKS: dict[int, int] = {}


def _helper_ticks(prober: SSHProber) -> int:
    """CPU ticks the prober's helper processes spent since last read (they are the listener's
    CPU as much as its own process's)."""
    pids = set(prober.worker_pids)
    for pid in list(pids):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
            pids.add(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
    pids.discard(os.getpid())
    spent = 0
    for pid in pids:
        now = _ticks(pid)
        spent += max(0, now - _HELPER_TICKS.get(pid, 0))
        _HELPER_TICKS[pid] = now
    return spent


@dataclass
class Measured:
    report: ReconcileReport
    wall_s: float
    cpu_s: float  # this process
    helpers_cpu_s: float  # the prober's worker processes (and their fork server)
    simulators_cpu_s: dict[str, float]
    sshd_cpu_s: float
    machine_busy_cpu_s: float
    machine_split: dict[str, float] = field(default_factory=dict)

    @property
    def listener_cpu_s(self) -> float:
        return self.cpu_s + self.helpers_cpu_s

    @property
    def cpu_ms_per_vm(self) -> float:
        return 1000 * self.listener_cpu_s / max(1, len(self.report.rows))

    def floor_s(self, timeout: float) -> float:
        """No pass can beat the SSH timeout (the hung VMs), nor all the CPU the machine spent
        on it spread over every core."""
        cores = os.cpu_count() or 1
        return max(timeout, self.machine_busy_cpu_s / cores)

    def floor_listener_sshd_s(self, timeout: float) -> float:
        """The same with only the listener's and the VMs' sshd CPU (a lower, stricter floor)."""
        cores = os.cpu_count() or 1
        return max(timeout, (self.listener_cpu_s + self.sshd_cpu_s) / cores)


async def reconcile(
    world: World, seeded: Seeded, concurrency: int, *, serial: bool = False
) -> Measured:
    """One non-dry pass over `seeded`, wired as `reconcile_scale_set` wires it, timed."""
    settings = world.settings
    peers_before = {name: _ticks(pid) for name, pid in world.peer_pids.items()}
    sshd_before = sum(_ticks(pid, children=True) for pid in seeded.sshd_pids)
    machine_before = _machine_ticks()
    cpu_before = time.process_time()
    started = time.monotonic()
    async with actions_client(settings) as client:
        provisioner = OpenStackProvisioner(openstack_config(settings))
        config = probe_config(
            settings, world.factory.port, concurrency, 0 if serial else None, serial=serial
        )
        prober = SSHProber(config)
        _helper_ticks(prober)  # the fork server's ticks so far are not this pass's
        helpers = 0
        try:
            report = await run_once(
                provisioner=provisioner,
                registry=client,
                prober=MappedProber(prober, seeded.hosts),
                ownership=seeded.ownership,
                boot_timeout=timedelta(seconds=settings.boot_timeout),
                concurrency=concurrency,
            )
            helpers = _helper_ticks(prober)  # before close: the workers end with it
        finally:
            await prober.close()
            await provisioner.close()
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    machine_after = _machine_ticks()
    busy_before = sum(machine_before) - machine_before[3] - machine_before[4]
    machine = sum(machine_after) - machine_after[3] - machine_after[4] - busy_before
    sshd = sum(_ticks(pid, children=True) for pid in seeded.sshd_pids) - sshd_before
    peers = {
        name: (_ticks(pid) - peers_before[name]) / TICK for name, pid in world.peer_pids.items()
    }
    return Measured(
        report,
        wall_s=wall,
        cpu_s=cpu,
        helpers_cpu_s=helpers / TICK,
        simulators_cpu_s={name: round(value, 2) for name, value in peers.items()},
        sshd_cpu_s=sshd / TICK,
        machine_busy_cpu_s=machine / TICK,
        machine_split=_machine_split(machine_before, machine_after),
    )


def check(world: World, seeded: Seeded, report: ReconcileReport) -> list[str]:
    """What went wrong: decisions not as the state calls for, servers or registrations left
    that should be gone, gone that should be kept. Empty when the pass was right."""
    problems = []
    counts = {action: n for action, n in report.counts().items() if n}
    want = expected_counts(list(seeded.kinds.values()), seeded.orphans)
    if counts != want:
        problems.append(f"decisions by action {counts}, expected {want}")
    got = {row.runner_name: row for row in report.rows}
    for runner, kind in seeded.kinds.items():
        row = got.get(runner)
        if row is None:
            problems.append(f"{runner} ({kind.name}): not in the report")
        elif row.decision.action.value != kind.expected:
            problems.append(
                f"{runner} ({kind.name}): expected {kind.expected}, got "
                f"{row.decision.action.value} ({row.decision.reason}; probe {row.probe_text})"
            )
        elif row.error:
            problems.append(f"{runner} ({kind.name}): acting failed: {row.error}")
    problems += [f"{r}: not one of the seeded VMs" for r in got.keys() - seeded.kinds.keys()]
    orphans_removed = sum(1 for orphan in report.orphans if orphan.removed)
    if len(report.orphans) != seeded.orphans or orphans_removed != seeded.orphans:
        problems.append(
            f"orphan registrations: {seeded.orphans} seeded, {len(report.orphans)} found, "
            f"{orphans_removed} removed"
        )
    adopted = {r for r, k in seeded.kinds.items() if k.expected.startswith("adopt_")}
    tags = set(seeded.ownership.tags())
    servers = {s.name for s in world.cloud.servers() if tags <= set(s.tags)}
    if servers != adopted:
        problems.append(
            f"cloud: {len(servers - adopted)} servers left that should be gone "
            f"{sorted(servers - adopted)[:5]}, {len(adopted - servers)} adopted ones gone "
            f"{sorted(adopted - servers)[:5]}"
        )
    registered = {
        r["name"]
        for r in world.github.state()["runners"]
        if r["scale_set_id"] == seeded.scale_set_id
    }
    kept = {r for r in adopted if seeded.kinds[r].registration != "none"}
    if registered != kept:
        problems.append(
            f"github: {len(registered - kept)} registrations left that should be gone "
            f"{sorted(registered - kept)[:5]}, {len(kept - registered)} kept ones gone"
        )
    return problems


# --- Running it --------------------------------------------------------------------------


@contextlib.contextmanager
def world_of(scratch: Path, timeout: float, concurrency: int | None, vms: int) -> Iterator[World]:
    clouds_yaml = scratch / "clouds.yaml"
    with (
        peer_process("simulator.github") as (github_url, github_pid),
        peer_process("simulator.openstack", "--clouds-yaml", str(clouds_yaml)) as (
            cloud_url,
            cloud_pid,
        ),
        SimulatorControl(github_url) as github,
        CloudControl(cloud_url, timeout=60.0) as cloud,
        SSHHostFactory(scratch / "hosts") as factory,
    ):
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds_yaml)
        os.environ["OS_CLOUD"] = "sim"
        cloud.set_quotas(instances=vms * 2 + 10, cores=vms * 4 + 10, ram=vms * 4096 + 10)
        settings = bench_settings(github_url, factory, timeout, concurrency)
        yield World(
            github, cloud, settings, factory, {"openstack": cloud_pid, "github": github_pid}
        )


def fail(what: str, problems: list[str]) -> None:
    print(f"FAILED: {what}: {len(problems)} problems", file=sys.stderr, flush=True)
    for problem in problems[:20]:
        print(f"  {problem}", file=sys.stderr, flush=True)
    raise SystemExit(1)


async def run(args: argparse.Namespace) -> JSON:
    with (
        tempfile.TemporaryDirectory(prefix="bench-reconcile-") as scratch,
        world_of(Path(scratch), args.timeout, args.concurrency, args.vms + args.sample) as world,
    ):
        concurrency = world.settings.reconcile_concurrency
        kinds = mix(args.vms, args.hanging, args.seed)
        orphans = round(args.vms * ORPHAN_SHARE)
        began = time.monotonic()
        seeded = await seed(world, "bench", kinds, orphans)
        print(
            f"seeded {args.vms} VMs ({seeded.hanging} never answering, "
            f"{len(seeded.sshd_pids)} sshd hosts) and {orphans} orphan registrations "
            f"in {time.monotonic() - began:.1f} s",
            flush=True,
        )
        print(
            f"reconcile: RECONCILE_CONCURRENCY={concurrency}, SSH_PROBE_TIMEOUT="
            f"{args.timeout:g}s, load before {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        measured = await reconcile(world, seeded, concurrency)
        counts = measured.report.counts()
        floor = measured.floor_s(args.timeout)
        print(
            f"  {measured.wall_s:.1f} s wall (floor {floor:.1f} s), {measured.cpu_s:.1f} s CPU "
            f"(this process) + {measured.helpers_cpu_s:.1f} s (probe workers): "
            f"{measured.cpu_ms_per_vm:.1f} ms per VM, "
            f"simulators {measured.simulators_cpu_s} s, sshd {measured.sshd_cpu_s:.1f} s, "
            f"machine busy {measured.machine_busy_cpu_s:.1f} s; {counts}",
            flush=True,
        )
        problems = check(world, seeded, measured.report)
        if problems:
            fail("the reconcile did not do what the VMs' states call for", problems)

        baseline: JSON = {}
        if args.sample:
            baseline = await run_baseline(world, args)
    result: JSON = {
        "bench": "reconcile",
        "vms": args.vms,
        "hanging": seeded.hanging,
        "timeout_s": args.timeout,
        "concurrency": concurrency,
        "probe_processes": probe_processes(world.settings),
        "wall_s": round(measured.wall_s, 2),
        "floor_s": round(floor, 2),
        "wall_over_floor": round(measured.wall_s / floor, 2),
        "floor_listener_sshd_s": round(measured.floor_listener_sshd_s(args.timeout), 2),
        "wall_over_floor_listener_sshd": round(
            measured.wall_s / measured.floor_listener_sshd_s(args.timeout), 2
        ),
        "cpu_s": round(measured.cpu_s, 2),
        "probe_workers_cpu_s": round(measured.helpers_cpu_s, 2),
        "cpu_ms_per_vm": round(measured.cpu_ms_per_vm, 2),
        "simulators_cpu_s": measured.simulators_cpu_s,
        "sshd_cpu_s": round(measured.sshd_cpu_s, 2),
        "machine_busy_cpu_s": round(measured.machine_busy_cpu_s, 2),
        "machine_busy_split_s": measured.machine_split,
        **baseline,
        "goal_wall_s": GOAL_WALL_S,
        "decisions": counts,
    }
    if baseline:
        result["speedup"] = round(baseline["serial_baseline_s"] / measured.wall_s, 1)
    return result


async def run_baseline(world: World, args: argparse.Namespace) -> JSON:
    kinds = mix(args.sample, args.hanging, args.seed + 1)
    orphans = round(args.sample * ORPHAN_SHARE)
    seeded = await seed(world, "serial", kinds, orphans)
    print(
        f"serial baseline: {args.sample} VMs of the same mix ({seeded.hanging} never answering), "
        "one after the other, one SSH connection at a time",
        flush=True,
    )
    measured = await reconcile(world, seeded, 1, serial=True)
    problems = check(world, seeded, measured.report)
    if problems:
        fail("the serial baseline did not do what the VMs' states call for", problems)
    extrapolated = measured.wall_s * args.vms / args.sample
    print(
        f"  {measured.wall_s:.1f} s for {args.sample} VMs, extrapolated to {args.vms}: "
        f"~{extrapolated:.0f} s",
        flush=True,
    )
    return {
        "serial_baseline_s": round(extrapolated, 1),
        "serial_baseline_extrapolated_from": args.sample,
        "serial_baseline_sample_wall_s": round(measured.wall_s, 2),
        "serial_baseline_sample_hanging": seeded.hanging,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="leftover VMs to reconcile")
    parser.add_argument(
        "--hanging", type=float, default=0.1, help="share of VMs that never answer (0-0.9)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="SSH_PROBE_TIMEOUT, seconds")
    parser.add_argument(
        "--concurrency", type=int, help="RECONCILE_CONCURRENCY (default: the setting's default)"
    )
    parser.add_argument(
        "--sample", type=int, default=100, help="VMs in the serial baseline's sample (0: none)"
    )
    parser.add_argument("--seed", type=int, default=1, help="shuffles the mix")
    args = parser.parse_args(argv)
    if args.vms < 1:
        parser.error("--vms must be at least 1")
    if not 0 <= args.hanging <= 0.9:
        parser.error("--hanging must be between 0 and 0.9")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.sample < 0:
        parser.error("--sample must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> JSON:
    args = parse_args(argv)
    problem = namespace_problem()
    if problem is not None:
        raise SystemExit(f"bench/reconcile.py needs real sshd hosts: {problem}")
    install_system_deps()
    configure(LogLevel.WARNING, LogFormat.TEXT)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
