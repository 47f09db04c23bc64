"""run_once(): gathering, deciding and acting against in-memory stand-ins for the cloud, GitHub
and the prober (the decision table itself is in test_policy.py)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from provisioners.base import ProbeOutcome, ProbeResult, RunnerVM, ServerNotFound, ServerSpec
from provisioners.naming import FAILED_TAG, META_HOST_KEY, Ownership, ownership_metadata
from reconciler.reconcile import ReconcileReport, run_once
from scaleset_listener.dry_run import DryRunProvisioner, DryRunRegistry
from scaleset_listener.wire import JitConfig

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
OWNER = Ownership("test", 1)
BOOT = timedelta(minutes=10)


@dataclass
class Registration:
    id: int
    name: str
    status: str = "online"
    busy: bool = False


class Registry:
    def __init__(self, runners: list[Registration]) -> None:
        self.runners = runners
        self.removed: list[int] = []

    async def list_runners(self, scale_set_id: int) -> list[Registration]:
        return list(self.runners)

    async def get_runner(self, runner_id: int) -> Registration | None:
        return next((r for r in self.runners if r.id == runner_id), None)

    async def generate_jit_config(
        self, scale_set_id: int, runner_name: str, work_folder: str = ""
    ) -> JitConfig:
        raise AssertionError("the reconciler never registers a runner")

    async def remove_runner(self, runner_id: int) -> None:
        self.removed.append(runner_id)
        self.runners = [r for r in self.runners if r.id != runner_id]


class Cloud:
    """A Provisioner in memory: the reconciler lists, deletes, reads consoles and records host
    keys; nothing here creates a server."""

    def __init__(self, vms: list[RunnerVM], consoles: dict[str, str] | None = None) -> None:
        self.vms = {vm.id: vm for vm in vms}
        self.consoles = consoles or {}
        self.deleted: list[str] = []
        self.vanish: set[str] = set()  # deleted by someone else meanwhile

    async def list_owned(self, tags: tuple[str, ...]) -> list[RunnerVM]:
        return [vm for vm in self.vms.values() if set(tags) <= set(vm.tags)]

    async def delete(self, server_id: str) -> None:
        self.deleted.append(server_id)
        if server_id in self.vanish or server_id not in self.vms:
            raise ServerNotFound(server_id)
        del self.vms[server_id]

    async def console_output(self, server_id: str, lines: int = 200) -> str:
        return self.consoles.get(server_id, "")

    async def set_metadata(self, server_id: str, metadata: Mapping[str, str]) -> None:
        vm = self.vms[server_id]
        self.vms[server_id] = dataclasses.replace(vm, metadata={**vm.metadata, **metadata})

    async def get(self, server_id: str) -> RunnerVM | None:
        return self.vms.get(server_id)

    async def submit(self, spec: ServerSpec) -> str:
        raise AssertionError("the reconciler never creates a server")

    async def finish_create(
        self, server_id: str, name: str, tags: tuple[str, ...] = ()
    ) -> RunnerVM:
        raise AssertionError("the reconciler never creates a server")

    async def add_tag(self, server_id: str, tag: str) -> None:
        vm = self.vms[server_id]
        self.vms[server_id] = dataclasses.replace(vm, tags=(*vm.tags, tag))

    async def capacity(self, flavor: str | None = None, owner: tuple[str, ...] = ()) -> int | None:
        return None

    async def release_floating_ips(self, server_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


class Prober:
    def __init__(self, results: dict[str, ProbeResult]) -> None:
        self.results = results
        self.asked: list[tuple[str, str | None]] = []

    async def probe(self, address: str, pinned_public_key: str | None) -> ProbeResult:
        self.asked.append((address, pinned_public_key))
        return self.results.get(address, ProbeResult(address, ProbeOutcome.UNREACHABLE))


def vm(
    n: int,
    *,
    status: str = "ACTIVE",
    age_minutes: float = 30,
    tags: tuple[str, ...] = (),
    host_key: bool = True,
) -> RunnerVM:
    name = f"linux-{n:08x}"
    created = NOW - timedelta(minutes=age_minutes)
    return RunnerVM(
        id=f"srv-{n}",
        name=name,
        status=status,
        created_at=created,
        tags=OWNER.tags() + tags,
        metadata=ownership_metadata(
            name, "linux", created, host_public_key=f"ssh-ed25519 KEY{n}" if host_key else None
        ),
        addresses=(f"10.0.0.{n}",),
    )


def alive(n: int, **facts: object) -> ProbeResult:
    values: dict[str, object] = {"setup_complete": True, "runner_alive": True, **facts}
    return ProbeResult(f"10.0.0.{n}", ProbeOutcome.OK, **values)  # type: ignore[arg-type]


def scenario() -> tuple[Cloud, Registry, Prober]:
    foreign = RunnerVM("srv-x", "other", "ACTIVE", NOW, tags=Ownership("prod", 1).tags())
    cloud = Cloud(
        [
            vm(1),  # alive, idle -> adopt_idle
            vm(2),  # alive, busy -> adopt_busy
            vm(3),  # run complete -> clean_up
            vm(4, status="ERROR"),  # -> delete
            vm(5),  # unreachable, GitHub busy -> adopt_busy
            vm(6),  # unreachable, console says run-complete -> clean_up
            vm(7, age_minutes=1),  # unreachable, young -> adopt_booting
            vm(8),  # no runner at GitHub -> delete
            vm(9, tags=(FAILED_TAG,)),  # kept for debugging -> skip
            foreign,
        ],
        consoles={"srv-6": "boot\nSCALESET-RUNNER run-complete runner=linux-00000006 exit=0\n"},
    )
    registry = Registry(
        [
            Registration(1, "linux-00000001"),
            Registration(2, "linux-00000002", busy=True),
            Registration(3, "linux-00000003", status="offline"),
            Registration(4, "linux-00000004", status="offline"),
            Registration(5, "linux-00000005", busy=True),
            Registration(6, "linux-00000006", status="offline"),
            Registration(7, "linux-00000007", status="offline"),
            Registration(99, "linux-orphan", status="offline"),
        ]
    )
    prober = Prober(
        {
            "10.0.0.1": alive(1),
            "10.0.0.2": alive(2),
            "10.0.0.3": alive(3, runner_alive=False, run_complete_exit_code=0),
            "10.0.0.8": alive(8, setup_complete=False, runner_alive=None),
        }
    )
    return cloud, registry, prober


async def reconcile(
    cloud: Cloud, registry: Registry, prober: Prober, dry_run: bool
) -> ReconcileReport:
    """One pass; a dry one through the DRY_RUN wrappers the service builds."""
    return await run_once(
        provisioner=DryRunProvisioner(cloud) if dry_run else cloud,
        registry=DryRunRegistry(registry) if dry_run else registry,  # type: ignore[arg-type]
        prober=prober,
        ownership=OWNER,
        boot_timeout=BOOT,
        concurrency=3,
        now=lambda: NOW,
    )


async def test_each_owned_vm_gets_its_action_and_the_cloud_and_github_follow() -> None:
    cloud, registry, prober = scenario()
    report = await reconcile(cloud, registry, prober, dry_run=False)
    actions = {row.vm.id: row.decision.action.value for row in report.rows}
    assert actions == {
        "srv-1": "adopt_idle",
        "srv-2": "adopt_busy",
        "srv-3": "clean_up",
        "srv-4": "delete",
        "srv-5": "adopt_busy",
        "srv-6": "clean_up",
        "srv-7": "adopt_booting",
        "srv-8": "delete",
        "srv-9": "skip",
    }
    assert sorted(cloud.vms) == ["srv-1", "srv-2", "srv-5", "srv-7", "srv-9", "srv-x"]
    assert sorted(registry.removed) == [3, 4, 6, 99]
    assert {row.vm.id for row in report.adopted} == {"srv-1", "srv-2", "srv-5", "srv-7"}
    assert [o.registration.name for o in report.orphans] == ["linux-orphan"]
    assert report.counts()["delete"] == 2
    assert report.counts()["orphan_registrations"] == 1
    assert all(row.error is None for row in report.rows)


async def test_probes_use_the_vm_address_and_the_host_key_pinned_in_its_metadata() -> None:
    cloud, registry, prober = scenario()
    await reconcile(cloud, registry, prober, dry_run=True)
    assert ("10.0.0.1", "ssh-ed25519 KEY1") in prober.asked
    # ERROR servers are not probed; nor are foreign ones.
    assert all(address not in ("10.0.0.4", "") for address, _ in prober.asked)
    assert len(prober.asked) == 8


async def test_a_dry_run_changes_nothing_and_prints_every_decision_with_its_reason() -> None:
    cloud, registry, prober = scenario()
    before = (copy.deepcopy(cloud.vms), copy.deepcopy(registry.runners))
    report = await reconcile(cloud, registry, prober, dry_run=True)
    assert (cloud.vms, registry.runners) == before
    assert cloud.deleted == []
    assert registry.removed == []
    table = report.table()
    for header in ("VM", "AGE", "STATUS", "RUNNER", "PROBE", "ACTION", "REASON"):
        assert header in table
    assert "never kill a busy runner" in table
    assert "linux-orphan" in table
    assert "remove_registration" in table


async def test_a_server_already_gone_when_deleted_counts_as_success() -> None:
    cloud, registry, prober = scenario()
    cloud.vanish.add("srv-4")
    report = await reconcile(cloud, registry, prober, dry_run=False)
    assert all(row.error is None for row in report.rows)
    assert "srv-4" in cloud.deleted


async def test_a_second_pass_finds_nothing_left_to_remove() -> None:
    cloud, registry, prober = scenario()
    await reconcile(cloud, registry, prober, dry_run=False)
    cloud.deleted.clear()
    registry.removed.clear()
    report = await reconcile(cloud, registry, prober, dry_run=False)
    assert cloud.deleted == []
    assert registry.removed == []
    assert {row.decision.action.value for row in report.rows} <= {
        "adopt_idle",
        "adopt_busy",
        "adopt_booting",
        "skip",
    }


async def test_a_host_key_learned_on_first_contact_is_recorded_unless_the_vm_goes() -> None:
    rsa = "ssh-rsa " + "A" * 400  # longer than a Nova metadata value may be
    cloud = Cloud([vm(1, host_key=False), vm(2, host_key=False), vm(3, host_key=False)])
    registry = Registry([Registration(1, "linux-00000001"), Registration(3, "linux-00000003")])
    prober = Prober(
        {
            "10.0.0.1": alive(1, host_key="ssh-ed25519 LEARNED1"),
            "10.0.0.2": alive(2, host_key="ssh-ed25519 LEARNED2"),  # no registration: deleted
            "10.0.0.3": alive(3, host_key=rsa),
        }
    )
    dry = await reconcile(cloud, registry, prober, dry_run=True)
    assert all(META_HOST_KEY not in v.metadata for v in cloud.vms.values())
    # A dry run records nothing, and its table says what a real pass would do.
    assert "host key learned, recorded" in dry.table()
    report = await reconcile(cloud, registry, prober, dry_run=False)
    rows = {row.vm.id: row for row in report.rows}
    assert rows["srv-1"].host_key_recorded
    assert cloud.vms["srv-1"].metadata[META_HOST_KEY] == "ssh-ed25519 LEARNED1"
    assert "srv-2" not in cloud.vms
    assert not rows["srv-2"].host_key_recorded
    # Too long to record: reported, and the VM keeps its decision.
    assert rows["srv-3"].decision.action.value == "adopt_idle"
    assert not rows["srv-3"].host_key_recorded
    assert rows["srv-3"].error is not None
    assert "255" in rows["srv-3"].error
    assert META_HOST_KEY not in cloud.vms["srv-3"].metadata
    # The next pass pins what was recorded and learns nothing new.
    prober.asked.clear()
    again = await reconcile(cloud, registry, prober, dry_run=True)
    assert ("10.0.0.1", "ssh-ed25519 LEARNED1") in prober.asked
    assert {row.vm.id: row.learned_host_key for row in again.rows}["srv-1"] is None
