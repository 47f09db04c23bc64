"""The scripted fleet: it plays the VMs of the simulated cloud against the simulated GitHub.

The simulated cloud (`simulator.openstack`) only keeps servers' records; nothing boots them. The
fleet watches the cloud's servers and, for each one whose user_data is the listener's bootstrap
(a `JIT_CONFIG=<shell-quoted>` line), plays in Python what the real bootstrap does on a real VM
(docs/bootstrap.md), running nothing: fast enough for the scaler's tests with many VMs. The
guests that run the real bootstrap (sandbox VMs, light VMs) are `simulator.sandbox`; both
kinds build on `GuestFleet` below.

* when the server is ACTIVE it "boots" for `boot_seconds`, prints
  `SCALESET-RUNNER setup-complete runner=<name>` on the console and starts the runner: the
  runner connects to the simulated GitHub with the JIT config (`connect_runner`);
* the runner takes one job (see "Jobs" below), and when the service removes it (ephemeral, its
  job is over) the VM prints `SCALESET-RUNNER run-complete runner=<name> exit=<0|1>` (0 when the
  job succeeded) and, `poweroff_seconds` later, powers off (SHUTOFF);
* when the server is deleted, shut off or put in ERROR while its runner is online, the runner
  dies with it (`runner_dies`).

Jobs: by default (`take_jobs=True`) the fleet is the runner, so it takes work itself: each idle
runner of the fleet calls `runner_take_job` when a job is assigned to its scale set. With
`take_jobs=False` it leaves that to the GitHub simulator's `auto_take`. Jobs end as the GitHub
simulator decides: `auto_finish` ends jobs that have a `duration`, and `finish_job`/`cancel_job`
end the others.

Failure behaviours, per server name (`behave`) or for the next N servers (`next_boots`):
`hang` (setup never completes: no marker, no runner), `setup_fail` (setup-failed marker, then
power-off), `crash` (the runner dies once its job runs; run.sh exits non-zero, so the bootstrap
prints run-complete exit=1 and powers off), `wedge` (the runner dies once its job runs and the
VM stays up without a word), plus a slow boot (`boot_seconds`).

Everything the fleet does is recorded in `events` and the counters; `wait_for` blocks on a
condition that is notified on every change, so tests never poll.

The fleet is part of the simulated world, so it polls both simulators' control APIs every
`poll_interval` seconds (the cloud has no blocking watch). It imports nothing of the service.

`python -m simulator.fleet --github-url U --cloud-url U` runs it standalone.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import heapq
import itertools
import logging
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from types import FrameType, TracebackType
from typing import Any, Generic, Literal, NamedTuple, Self, TypeVar

import httpx

from simulator.github.control import ControlAPIError, SimulatorControl
from simulator.openstack.control import CloudControl, ControlApiError

log = logging.getLogger("simulator.fleet")

JSON = dict[str, Any]
T = TypeVar("T")

FailureMode = Literal["hang", "setup_fail", "crash", "wedge"]
FAILURE_MODES: tuple[FailureMode, ...] = ("hang", "setup_fail", "crash", "wedge")

MARKER = "SCALESET-RUNNER"
_JIT_LINE = re.compile(r"^JIT_CONFIG=(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class FleetConfig:
    """How the simulated VMs behave by default.

    boot_seconds: from ACTIVE to the setup-complete marker and the runner connecting.
    poweroff_seconds: from the run-complete (or setup-failed) marker to SHUTOFF.
    poll_interval: how often the fleet looks at both simulators.
    take_jobs: the fleet's idle runners take the jobs assigned to their scale set themselves;
        False leaves it to the GitHub simulator's `auto_take`.
    """

    boot_seconds: float = 0.2
    poweroff_seconds: float = 0.1
    poll_interval: float = 0.03
    take_jobs: bool = True
    request_timeout: float = 5.0
    # Threads running the VMs' due steps side by side (1: one after the other, in order).
    action_workers: int = 1

    def __post_init__(self) -> None:
        for name in ("boot_seconds", "poweroff_seconds", "poll_interval", "request_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class Behaviour:
    """How one VM behaves: `failure` None is a healthy VM; `boot_seconds` None is the
    fleet's default; `crash_after` (crash, wedge) counts from the moment its job runs."""

    failure: FailureMode | None = None
    boot_seconds: float | None = None
    crash_after: float = 0.0

    def __post_init__(self) -> None:
        if self.failure is not None and self.failure not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {self.failure!r}; one of {FAILURE_MODES}")
        if self.boot_seconds is not None and self.boot_seconds < 0:
            raise ValueError("boot_seconds must not be negative")
        if self.crash_after < 0:
            raise ValueError("crash_after must not be negative")


class FleetEvent(NamedTuple):
    """One thing that happened to a VM. `what` is one of: seen, ignored, booting,
    setup-complete, connected, connect-failed, setup-hang, setup-failed, job-started,
    take-failed, crashed, runner-offline, runner-removed, run-complete (detail `exit=N`),
    powered-off, runner-killed (the VM went away under its runner), down, deleted, error."""

    time: float
    server: str
    what: str
    detail: str = ""


@dataclass(frozen=True)
class FleetCounters:
    seen: int = 0
    ignored: int = 0
    booted: int = 0
    connected: int = 0
    jobs_started: int = 0
    run_complete: int = 0
    setup_failed: int = 0
    hung: int = 0
    powered_off: int = 0
    died: int = 0
    errors: int = 0


Phase = Literal[
    "building",  # not ACTIVE yet
    "booting",  # ACTIVE, setup running
    "hung",  # setup never ends
    "idle",  # runner online, no job
    "busy",  # runner running a job
    "exiting",  # run-complete or setup-failed printed, power-off pending
    "off",  # powered itself off
    "dead",  # runner gone, VM left up (wedge, killed by someone else)
    "down",  # the server went SHUTOFF/ERROR under the fleet
    "gone",  # deleted
]


@dataclass(frozen=True)
class VmView:
    """A snapshot of one VM as the fleet sees it."""

    server_id: str
    name: str
    phase: Phase
    behaviour: Behaviour
    runner_id: int | None
    scale_set_id: int | None
    job_id: int | None
    exit_code: int | None


@dataclass
class VmRecord:
    """What every fleet keeps of one VM (a fleet's own record adds its fields, keyword-only);
    `view()` is the snapshot callers get."""

    server_id: str
    name: str
    behaviour: Behaviour
    phase: Phase = "building"
    runner_id: int | None = None
    scale_set_id: int | None = None
    job_id: int | None = None
    exit_code: int | None = None

    def view(self) -> VmView:
        return VmView(
            self.server_id,
            self.name,
            self.phase,
            self.behaviour,
            self.runner_id,
            self.scale_set_id,
            self.job_id,
            self.exit_code,
        )


@dataclass(kw_only=True)
class _Vm(VmRecord):
    jit_config: str
    killed_by_fleet: bool = False


@dataclass(order=True)
class _Action:
    due: float
    seq: int
    run: Callable[[], None] = field(compare=False)


def user_data_texts(user_data: str | None) -> list[str]:
    """What a server's user_data may be: the script itself, then, when it decodes, the script
    it is the base64 of (the cloud shows non-UTF-8 data as sent)."""
    if not user_data:
        return []
    texts = [user_data]
    with contextlib.suppress(binascii.Error, ValueError):
        texts.append(base64.b64decode(user_data.strip(), validate=True).decode("utf-8"))
    return texts


def extract_jit_config(user_data: str | None) -> str | None:
    """The JIT config from a bootstrap's `JIT_CONFIG=<shell-quoted>` line, or None."""
    for text in user_data_texts(user_data):
        found = _JIT_LINE.search(text)
        if found is None:
            continue
        try:
            words = shlex.split(found.group(1), comments=True)
        except ValueError:
            return None
        return words[0] if len(words) == 1 and words[0] else None
    return None


def exit_code_for(result: str | None) -> int:
    """run.sh's exit code for a job result: 0 when it succeeded, else 1."""
    return 0 if result == "succeeded" else 1


VmT = TypeVar("VmT", bound=VmRecord)


class GuestFleet(Generic[VmT]):
    """What every fleet of simulated VMs shares: one thread that looks at the world every
    `poll_interval` (`_tick`, the subclass's), timed steps, per-name and next-N behaviours, an
    event log with counters, and blocking waits notified on every change (tests never poll)."""

    _NAME = "fleet"
    # Phases in which a VM has not used its behaviour yet, so `behave` may still replace it.
    _UNBOOTED: tuple[Phase, ...] = ("building",)
    # Errors of one look at the world that are recorded and survived (the next look retries).
    _SURVIVED: tuple[type[Exception], ...] = (
        httpx.HTTPError,
        ControlAPIError,
        ControlApiError,
        KeyError,
    )

    def __init__(
        self,
        github_url: str,
        cloud_url: str,
        *,
        poll_interval: float,
        request_timeout: float,
        action_workers: int = 1,
    ) -> None:
        self.github_url = github_url.rstrip("/")
        self.cloud_url = cloud_url.rstrip("/")
        self._poll_interval = poll_interval
        self._cond = threading.Condition()
        self._events: list[FleetEvent] = []
        self._counters = FleetCounters()
        self._vms: dict[str, VmT] = {}  # by server id
        self._ignored: set[str] = set()  # server ids
        self._by_name: dict[str, Behaviour] = {}
        self._next: list[Behaviour] = []
        self._actions: list[_Action] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticks = 0
        self._github = SimulatorControl(self.github_url, timeout=request_timeout)
        self._cloud = CloudControl(self.cloud_url, timeout=request_timeout)
        # More than one worker: the due steps of different VMs run side by side (thousands of
        # VMs each waiting on the simulators one after the other would fall behind).
        self._workers = (
            ThreadPoolExecutor(action_workers, thread_name_prefix=f"simulator.{self._NAME}")
            if action_workers > 1
            else None
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"the {self._NAME} is already running")
        self._starting()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"simulator.{self._NAME}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._stopped()
        if self._workers is not None:
            self._workers.shutdown(wait=True)
        self._github.close()
        self._cloud.close()

    def _starting(self) -> None:
        """Before the thread starts (a subclass prepares what its VMs need)."""

    def _stopped(self) -> None:
        """After the thread stopped, before the control clients close."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ behaviours

    def behave(
        self,
        name: str,
        failure: FailureMode | None = None,
        *,
        boot_seconds: float | None = None,
        crash_after: float = 0.0,
    ) -> None:
        """How the server called `name` behaves (before it boots; a later call replaces it)."""
        behaviour = Behaviour(failure, boot_seconds, crash_after)
        with self._cond:
            self._by_name[name] = behaviour
            for vm in self._vms.values():
                if vm.name == name and vm.phase in self._UNBOOTED:
                    vm.behaviour = behaviour

    def next_boots(
        self,
        n: int,
        failure: FailureMode | None = None,
        *,
        boot_seconds: float | None = None,
        crash_after: float = 0.0,
    ) -> None:
        """The next `n` bootstrap servers the fleet sees (oldest first) behave so; queued after
        earlier `next_boots` calls. A per-name `behave` wins over this queue."""
        if n < 0:
            raise ValueError("n must not be negative")
        behaviour = Behaviour(failure, boot_seconds, crash_after)
        with self._cond:
            self._next.extend([behaviour] * n)

    def next_boots_fail(self, n: int, mode: FailureMode, *, crash_after: float = 0.0) -> None:
        self.next_boots(n, mode, crash_after=crash_after)

    def next_boots_slow(self, n: int, boot_seconds: float) -> None:
        self.next_boots(n, boot_seconds=boot_seconds)

    # ------------------------------------------------------------------ observation

    @property
    def events(self) -> list[FleetEvent]:
        with self._cond:
            return list(self._events)

    @property
    def counters(self) -> FleetCounters:
        with self._cond:
            return self._counters

    @property
    def booted(self) -> int:
        return self.counters.booted

    @property
    def connected(self) -> int:
        return self.counters.connected

    @property
    def powered_off(self) -> int:
        return self.counters.powered_off

    @property
    def died(self) -> int:
        return self.counters.died

    @property
    def pending(self) -> int:
        """How many timed steps (boots, power-offs, crashes) are still to come."""
        with self._cond:
            return len(self._actions)

    def vms(self) -> dict[str, VmView]:
        """The fleet's VMs by server name (servers with a foreign user_data are not listed)."""
        with self._cond:
            return {vm.name: vm.view() for vm in self._vms.values()}

    def vm(self, name: str) -> VmView:
        with self._cond:
            vm = self._vm_named(name)
            if vm is None:
                raise KeyError(name)
            return vm.view()

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Block until `predicate()` is truthy (checked on every change of the fleet); returns
        its value. TimeoutError names the last events."""
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
            if not result:
                tail = [(e.server, e.what, e.detail) for e in self._events[-12:]]
                raise TimeoutError(
                    f"{self._NAME} condition not met within {timeout} s; last: {tail}"
                )
            return result

    def wait_for_event(
        self,
        what: str,
        server: str | None = None,
        timeout: float = 5.0,
        after: int = 0,
    ) -> FleetEvent:
        """The first event (from index `after`) with that `what` (and server)."""

        def find() -> FleetEvent | None:
            for event in self._events[after:]:
                if event.what == what and (server is None or event.server == server):
                    return event
            return None

        event = self.wait_for(find, timeout)
        assert event is not None  # wait_for returns only a truthy value
        return event

    def wait_idle_ticks(self, ticks: int = 2, timeout: float = 5.0) -> int:
        """Block until the fleet has looked at the world `ticks` more times (so "nothing
        happened" can be asserted without sleeping); returns the fleet's tick count."""
        with self._cond:
            target = self._ticks + ticks
        self.wait_for(lambda: self._ticks >= target, timeout)
        with self._cond:
            return self._ticks

    # ------------------------------------------------------------------ internals: bookkeeping

    def _record(self, server: str, what: str, detail: str = "", **counts: int) -> None:
        """Under the lock: append an event, bump counters, wake waiters."""
        event = FleetEvent(time.time(), server, what, detail)
        self._events.append(event)
        if counts:
            changes = {k: getattr(self._counters, k) + v for k, v in counts.items()}
            self._counters = replace(self._counters, **changes)
        log.info("%s: %s %s%s", self._NAME, server or "-", what, f" {detail}" if detail else "")
        self._cond.notify_all()

    def _vm_named(self, name: str) -> VmT | None:
        """Under the lock: the VM of server `name`, if the fleet has seen it."""
        return next((vm for vm in self._vms.values() if vm.name == name), None)

    def _behaviour_for(self, name: str) -> Behaviour:
        """Under the lock, at first sight of server `name`: its own behaviour (`behave`), else
        the next queued one (`next_boots`), else a healthy VM."""
        behaviour = self._by_name.get(name)
        if behaviour is None:
            behaviour = self._next.pop(0) if self._next else Behaviour()
        return behaviour

    def _schedule(self, delay: float, run: Callable[[], None]) -> None:
        heapq.heappush(self._actions, _Action(time.monotonic() + delay, next(self._seq), run))

    def _online_vm(self, name: str) -> VmT | None:
        for vm in self._vms.values():
            if vm.name == name and vm.phase in ("idle", "busy"):
                return vm
        return None

    # ------------------------------------------------------------------ internals: the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
                with self._cond:
                    self._ticks += 1
                    self._cond.notify_all()
            except self._SURVIVED as exc:
                log.warning(
                    "%s: one look failed (retried): %s: %s", self._NAME, type(exc).__name__, exc
                )
                with self._cond:
                    self._record("", "error", f"{type(exc).__name__}: {exc}", errors=1)
            except Exception as exc:  # a bug here must not silently stop every VM
                log.exception("%s: unexpected error", self._NAME)
                with self._cond:
                    self._record("", "error", f"{type(exc).__name__}: {exc}", errors=1)
            self._stop.wait(self._sleep_time())

    def _tick(self) -> None:
        """One look at the world: the subclass's."""
        raise NotImplementedError

    def _sleep_time(self) -> float:
        with self._cond:
            if self._actions:
                until = self._actions[0].due - time.monotonic()
                return max(0.0, min(self._poll_interval, until))
        return self._poll_interval

    def _run_due_actions(self) -> None:
        while True:
            due: list[_Action] = []
            with self._cond:
                now = time.monotonic()
                while self._actions and self._actions[0].due <= now:
                    due.append(heapq.heappop(self._actions))
                    if self._workers is None:
                        break
            if not due:
                return
            # Actions call the simulators; they take the lock themselves for bookkeeping.
            if self._workers is None:
                due[0].run()
                continue
            # Each step checks its VM's phase under the lock, and the batch ends before the
            # next look at the world; the first failure is raised once every step has run.
            running = [self._workers.submit(action.run) for action in due]
            wait(running)
            for step in running:
                step.result()


# Jobs completed this many seconds ago or less are in each look (a runner's removal follows its
# job's end by far less); older ones are left out, so a look does not grow with the history.
COMPLETED_WINDOW = 30.0


class Fleet(GuestFleet[_Vm]):
    """Plays the VMs of a simulated cloud against a simulated GitHub; a context manager.

    ```python
    with Fleet(github_url, cloud_url, FleetConfig(boot_seconds=0.1)) as fleet:
        fleet.next_boots_fail(1, "hang")
        ...
        fleet.wait_for_event("connected", server="runner-1", timeout=5)
    ```
    """

    _UNBOOTED: tuple[Phase, ...] = ("building", "booting")

    def __init__(self, github_url: str, cloud_url: str, config: FleetConfig | None = None) -> None:
        self.config = config or FleetConfig()
        super().__init__(
            github_url,
            cloud_url,
            poll_interval=self.config.poll_interval,
            request_timeout=self.config.request_timeout,
            action_workers=self.config.action_workers,
        )
        self._user_data_seen = 0  # the highest server sequence listed with its user_data

    def crash_runner(self, name: str, *, power_off: bool = True) -> None:
        """The runner of server `name` dies now (idle or busy). With `power_off` run.sh exits
        non-zero, so the VM prints run-complete exit=1 and powers off; without, it stays up
        silent. KeyError when that server has no online runner."""
        with self._cond:
            vm = self._online_vm(name)
            if vm is None:
                raise KeyError(f"server {name!r} has no online runner")
            self._schedule(0.0, partial(self._crash, vm, power_off))

    def _tick(self) -> None:
        # Brief listings, so one look stays cheap with thousands of VMs: each server's user_data
        # only until the fleet has seen it, and the jobs still open or just completed.
        servers = self._cloud.server_briefs(self._user_data_seen)
        world = _World(
            self._github.state(
                parts=("runners", "jobs"),
                completed_within=max(COMPLETED_WINDOW, 20 * self.config.poll_interval),
            )
        )
        with self._cond:
            self._observe_cloud(servers, world)
            self._observe_github(world)
        self._run_due_actions()

    def _observe_cloud(self, servers: list[JSON], world: _World) -> None:
        present = {s["id"]: s for s in servers}
        for server in servers:
            if server["id"] in self._ignored:
                continue
            vm = self._vms.get(server["id"])
            if vm is None:
                vm = self._first_sight(server)
                if vm is None:
                    continue
            if vm.phase in ("gone",):
                continue
            if server.get("deleting") or server.get("task_state") == "deleting":
                self._went_away(vm, world, "deleted")
            elif vm.phase == "building" and server["status"] == "ACTIVE":
                vm.phase = "booting"
                delay = vm.behaviour.boot_seconds
                if delay is None:
                    delay = self.config.boot_seconds
                self._record(vm.name, "booting", f"{delay:g}s")
                self._schedule(delay, partial(self._boot, vm))
            elif server["status"] in ("SHUTOFF", "ERROR") and vm.phase in (
                "building",
                "booting",
                "hung",
                "idle",
                "busy",
            ):
                # Stopped or broken from outside (the fleet's own power-off comes later).
                self._went_away(vm, world, "down")
        for vm in self._vms.values():
            if vm.phase != "gone" and vm.server_id not in present:
                self._went_away(vm, world, "deleted")
        # Every server listed so far was seen with its user_data once: that is enough.
        self._user_data_seen = max(
            (int(s["sequence"]) for s in servers), default=self._user_data_seen
        )

    def _first_sight(self, server: JSON) -> _Vm | None:
        name = str(server["name"])
        jit = extract_jit_config(server.get("user_data"))
        if jit is None:
            self._ignored.add(server["id"])
            self._record(name, "ignored", "no JIT_CONFIG line in user_data", ignored=1)
            return None
        behaviour = self._behaviour_for(name)
        vm = _Vm(server_id=str(server["id"]), name=name, behaviour=behaviour, jit_config=jit)
        self._vms[vm.server_id] = vm
        self._record(name, "seen", behaviour.failure or "", seen=1)
        return vm

    def _went_away(self, vm: _Vm, world: _World, why: Literal["deleted", "down"]) -> None:
        """The server was deleted, shut off or broken: a runner still online dies with it."""
        was = vm.phase
        vm.phase = "gone" if why == "deleted" else "down"
        if was in ("idle", "busy") and vm.runner_id is not None:
            runner = world.runners.get(vm.runner_id)
            if runner is not None and runner["state"] in ("idle", "busy"):
                vm.killed_by_fleet = True
                runner_id = vm.runner_id
                self._schedule(0.0, partial(self._kill, vm, runner_id))
        self._record(vm.name, why)

    def _observe_github(self, world: _World) -> None:
        for vm in self._vms.values():
            if vm.phase not in ("idle", "busy") or vm.runner_id is None:
                continue
            runner = world.runners.get(vm.runner_id)
            if runner is None:
                self._runner_removed(vm, world)
            elif runner["state"] == "offline":
                vm.phase = "dead"
                self._record(vm.name, "runner-offline")
            elif runner["state"] == "busy" and vm.phase == "idle":
                self._job_started(vm, runner["job"])
            elif runner["state"] == "idle" and self._has_assigned_job(vm, world):
                self._schedule(0.0, partial(self._take, vm, vm.runner_id))

    def _has_assigned_job(self, vm: _Vm, world: _World) -> bool:
        return self.config.take_jobs and vm.scale_set_id in world.sets_with_assigned_jobs

    def _job_started(self, vm: _Vm, job_id: int | None) -> None:
        vm.phase, vm.job_id = "busy", job_id
        self._record(vm.name, "job-started", f"job={job_id}", jobs_started=1)
        if vm.behaviour.failure in ("crash", "wedge"):
            power_off = vm.behaviour.failure == "crash"
            self._schedule(vm.behaviour.crash_after, partial(self._crash, vm, power_off))

    def _runner_removed(self, vm: _Vm, world: _World) -> None:
        """The service removed the runner: its job is over (ephemeral) or its registration was
        deleted. run.sh exits, the bootstrap prints run-complete and powers off."""
        job = _job_of(world.completed_by_runner.get(vm.runner_id, ()), vm.runner_id, vm.job_id)
        if job is not None:
            if vm.phase == "idle":  # the job ran and ended between two looks
                self._record(vm.name, "job-started", f"job={job['id']}", jobs_started=1)
            vm.job_id = job["id"]
            code = exit_code_for(job["result"])
        else:
            code = 1  # removed while idle: the runner exits with an error
            self._record(vm.name, "runner-removed")
        self._finish_run(vm, code)

    def _finish_run(self, vm: _Vm, code: int) -> None:
        """Under the lock: run.sh exited with `code`."""
        vm.phase, vm.exit_code = "exiting", code
        self._schedule(0.0, partial(self._exit_run, vm, code))

    # ------------------------------------------------------------------ internals: actions

    def _boot(self, vm: _Vm) -> None:
        with self._cond:
            if vm.phase != "booting":
                return
            failure = vm.behaviour.failure
            if failure == "hang":
                vm.phase = "hung"
                self._record(vm.name, "setup-hang", hung=1)
                return
        if failure == "setup_fail":
            reason = "simulated setup failure"
            if not self._console(vm, f"{MARKER} setup-failed runner={vm.name} reason={reason}"):
                return
            with self._cond:
                vm.phase = "exiting"
                self._record(vm.name, "setup-failed", reason, setup_failed=1)
                self._schedule(self.config.poweroff_seconds, partial(self._power_off, vm))
            return
        if not self._console(vm, f"{MARKER} setup-complete runner={vm.name}"):
            return
        with self._cond:
            self._record(vm.name, "setup-complete", booted=1)
        try:
            runner = self._github.connect_runner(vm.jit_config)
        except ControlAPIError as exc:
            # run.sh fails to configure the runner: it exits non-zero and the VM powers off.
            with self._cond:
                self._record(vm.name, "connect-failed", str(exc))
                if vm.phase == "booting":
                    self._finish_run(vm, 1)
            return
        with self._cond:
            vm.runner_id = int(runner["id"])
            vm.scale_set_id = int(runner["scale_set_id"])
            # Only this thread changes phases, so the VM is still booting here; a deletion
            # meanwhile is seen on the next tick, which then kills the runner.
            vm.phase = "idle"
            self._record(vm.name, "connected", f"runner={vm.runner_id}", connected=1)

    def _take(self, vm: _Vm, runner_id: int) -> None:
        with self._cond:
            if vm.phase != "idle":
                return
        try:
            job = self._github.runner_take_job(runner_id)
        except ControlAPIError as exc:
            if exc.status != 409:  # 409: the job went elsewhere, or auto_take was first
                with self._cond:
                    self._record(vm.name, "take-failed", str(exc))
            return
        with self._cond:
            if vm.phase == "idle":
                self._job_started(vm, int(job["id"]))

    def _crash(self, vm: _Vm, power_off: bool) -> None:
        with self._cond:
            if vm.phase not in ("idle", "busy") or vm.runner_id is None:
                return
            vm.killed_by_fleet = True
            runner_id = vm.runner_id
        try:
            self._github.runner_dies(runner_id)
        except ControlAPIError as exc:
            with self._cond:
                self._record(vm.name, "error", f"runner_dies: {exc}", errors=1)
            return
        with self._cond:
            self._record(vm.name, "crashed", "power-off" if power_off else "wedged", died=1)
            if vm.phase not in ("idle", "busy"):
                return
            if power_off:
                self._finish_run(vm, 1)
            else:
                vm.phase = "dead"

    def _kill(self, vm: _Vm, runner_id: int) -> None:
        try:
            self._github.runner_dies(runner_id)
        except ControlAPIError as exc:
            if exc.status != 404:
                with self._cond:
                    self._record(vm.name, "error", f"runner_dies: {exc}", errors=1)
            return
        with self._cond:
            self._record(vm.name, "runner-killed", f"runner={runner_id}", died=1)

    def _exit_run(self, vm: _Vm, code: int) -> None:
        if not self._console(vm, f"{MARKER} run-complete runner={vm.name} exit={code}"):
            return
        with self._cond:
            self._record(vm.name, "run-complete", f"exit={code}", run_complete=1)
            self._schedule(self.config.poweroff_seconds, partial(self._power_off, vm))

    def _power_off(self, vm: _Vm) -> None:
        with self._cond:
            if vm.phase != "exiting":
                return
        try:
            self._cloud.set_server_status(vm.server_id, "SHUTOFF")
        except ControlApiError as exc:
            if exc.status != 404:
                raise
            return  # deleted meanwhile: nothing left to power off
        with self._cond:
            if vm.phase == "exiting":
                vm.phase = "off"
            self._record(vm.name, "powered-off", powered_off=1)

    def _console(self, vm: _Vm, line: str) -> bool:
        """Print a line on the VM's console; False when the server is gone."""
        try:
            self._cloud.append_console(vm.server_id, line)
        except ControlApiError as exc:
            if exc.status != 404:
                raise
            return False
        return True


class _World:
    """One look at the simulated GitHub, indexed: a fleet of thousands of VMs looks up each
    VM's runner and job here on every tick."""

    def __init__(self, state: JSON) -> None:
        self.runners: dict[int | None, JSON] = {r["id"]: r for r in state["runners"]}
        self.sets_with_assigned_jobs: set[int | None] = set()
        self.completed_by_runner: dict[int | None, list[JSON]] = {}
        for job in state["jobs"]:
            if job["state"] == "assigned":
                self.sets_with_assigned_jobs.add(job["scale_set_id"])
            elif job["state"] == "completed":
                self.completed_by_runner.setdefault(job["runner_id"], []).append(job)


def _job_of(jobs: Iterable[JSON], runner_id: int | None, job_id: int | None) -> JSON | None:
    """The completed job the runner ran (by its id when the fleet saw it start)."""
    done = [j for j in jobs if j["state"] == "completed" and j["runner_id"] == runner_id]
    if job_id is not None:
        done = [j for j in done if j["id"] == job_id] or done
    return max(done, key=lambda j: j["id"]) if done else None


# ---------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.fleet",
        description="Play the VMs of a simulated cloud against a simulated GitHub.",
    )
    parser.add_argument("--github-url", required=True, help="the GitHub simulator's base URL")
    parser.add_argument("--cloud-url", required=True, help="the OpenStack simulator's base URL")
    defaults = FleetConfig()
    parser.add_argument("--boot-seconds", type=float, default=defaults.boot_seconds)
    parser.add_argument("--poweroff-seconds", type=float, default=defaults.poweroff_seconds)
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval)
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        help="seconds per call to a simulator (a step that times out is lost)",
    )
    parser.add_argument(
        "--action-workers",
        type=int,
        default=defaults.action_workers,
        help="threads running the VMs' steps side by side (thousands of VMs: 8 or more)",
    )
    parser.add_argument(
        "--no-take-jobs",
        action="store_true",
        help="leave taking jobs to the GitHub simulator's auto_take",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = FleetConfig(
        boot_seconds=args.boot_seconds,
        poweroff_seconds=args.poweroff_seconds,
        poll_interval=args.poll_interval,
        take_jobs=not args.no_take_jobs,
        action_workers=args.action_workers,
        request_timeout=args.request_timeout,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Fleet(args.github_url, args.cloud_url, config):
        print(
            f"simulator.fleet running: github {args.github_url}, cloud {args.cloud_url}",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
