"""A whole world for end-to-end runs of the real listener as a subprocess.

GitHub (+ the Actions service) and the cloud are the simulators, in threads of this process; the
VMs are guests that run the real bootstrap (`simulator.sandbox`: light VMs by default, sandbox
VMs where the machine allows them); the listener is `python -m scaleset_listener run
--env-file F`, started, killed and restarted at will (`simulator.listener_process`).

At the end `violations()` judges the run from the simulators' own records, never from the
listener's word:

* unserved_job: a job queued here that did not complete with the result it was queued with;
* busy_runner_killed: a job whose runner died under it (the simulated GitHub completes such a
  job "failed": only a VM going away mid-job does that when no guest crashes on purpose);
* leaked_vm / leaked_registration / orphan_session: anything left in the cloud or at GitHub;
* unacked_message: a message no listener acknowledged (once the last listener has stopped),
  except one whose last delivery answered the final poll of a session its listener deleted (a
  poll cut off at a clean stop: the service delivers it again to the next session);
* over_max_runners: more servers at once than max_runners (from the cloud's request log:
  accepted creates minus accepted deletes, in order).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

from simulator.github.config import SimulatorConfig
from simulator.github.server import RunningSimulator
from simulator.github.server import run_in_thread as run_github
from simulator.listener_process import ListenerProcess, world_settings, write_env_file
from simulator.openstack.config import CloudConfig
from simulator.openstack.control import CloudControl
from simulator.openstack.server import RunningCloud
from simulator.openstack.server import run_in_thread as run_cloud
from simulator.sandbox import LightFleet, SandboxConfig, SandboxFleet

JSON = dict[str, Any]
T = TypeVar("T")

GuestKind = Literal["light", "sandbox"]
# The checkout this file lives in (sim/simulator/e2e_world.py), when it is one: the listener
# runs from there, so a worktree runs its own code. None for an installed simulator.
_CHECKOUT = Path(__file__).resolve().parents[2]
REPOSITORY = _CHECKOUT if (_CHECKOUT / "scaleset_listener").is_dir() else None
SCALE_SET = "e2e-linux"

# Short lifecycle timeouts so that a run takes seconds (a SIGKILLed listener leaves its message
# session behind: the simulated GitHub drops it after `session_abandon_timeout`, and the restart
# retries the 409 every SESSION_CONFLICT_RETRY_INTERVAL meanwhile).
FAST_LISTENER_SETTINGS: dict[str, str] = {
    "ENABLE_RECONCILIATION": "true",
    "IDLE_RUNNER_TIMEOUT": "2s",
    "RUNNER_DEREGISTRATION_TIMEOUT": "2s",
    "VM_TRACKER_INTERVAL": "2s",
    "BOOT_TIMEOUT": "20s",
    "OPENSTACK_SERVER_ACTIVE_TIMEOUT": "30s",
    "RETRY_MAX_WAIT": "500ms",
    "RECOVERY_BACKOFF_MAX": "1s",
    "SESSION_CONFLICT_RETRY_INTERVAL": "500ms",
    "SHUTDOWN_TIMEOUT": "5s",
}


class Guests(Protocol):
    """What the world needs of the fleet that plays the VMs (light VMs, sandbox VMs)."""

    def __enter__(self) -> Any: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T: ...


def make_guests(kind: GuestKind, github_url: str, cloud_url: str) -> Guests:
    """The one place that chooses what plays the VMs."""
    fleet = LightFleet if kind == "light" else SandboxFleet
    return fleet(github_url, cloud_url, SandboxConfig())


def guest_settings(guests: Guests) -> dict[str, str]:
    """Extra env-file settings the guests need (SSH user, key and port). The runner needs none:
    the listener's default resolves it from the GitHub simulator, which serves the files."""
    settings = getattr(guests, "listener_settings", None)
    return dict(settings()) if callable(settings) else {}


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str


@dataclass
class E2EWorld:
    """GitHub and cloud simulators, the guests, and listener processes started from env files."""

    directory: Path
    guest_kind: GuestKind = "light"
    max_runners: int = 5
    scale_set: str = SCALE_SET
    github_config: SimulatorConfig = field(
        default_factory=lambda: SimulatorConfig(long_poll_timeout=1.0, session_abandon_timeout=2.0)
    )
    cloud_config: CloudConfig = field(
        default_factory=lambda: CloudConfig(
            build_delay=0.3, delete_delay=0.2, request_log_size=200_000
        )
    )
    # Settings every listener of this world gets (on top of FAST_LISTENER_SETTINGS).
    listener_overrides: dict[str, str] = field(default_factory=dict)
    listeners: list[ListenerProcess] = field(default_factory=list)
    queued: dict[int, str] = field(default_factory=dict)  # job id -> the result it was queued with

    def __post_init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.github: RunningSimulator
        self.cloud: RunningCloud
        self.cloud_control: CloudControl
        self.guests: Guests

    def __enter__(self) -> E2EWorld:
        try:
            self.github = self._stack.enter_context(run_github(self.github_config))
            self.cloud = self._stack.enter_context(run_cloud(self.cloud_config))
            self.cloud_control = self._stack.enter_context(CloudControl(self.cloud.base_url))
            self.guests = make_guests(self.guest_kind, self.github.base_url, self.cloud.base_url)
            self._stack.enter_context(self.guests)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for listener in self.listeners:
            if listener.running:
                listener.kill()
        self._stack.close()

    # The listener ------------------------------------------------------------------------

    def settings(self, **overrides: str) -> dict[str, str]:
        scale_sets = [{"name": self.scale_set, "labels": ["e2e"], "max_runners": self.max_runners}]
        return {
            **world_settings(self.github, self.cloud, self.directory / "clouds.yaml", scale_sets),
            **FAST_LISTENER_SETTINGS,
            **guest_settings(self.guests),
            **self.listener_overrides,
            **overrides,
        }

    def start_listener(self, **overrides: str) -> ListenerProcess:
        env_file = write_env_file(
            self.directory / f"listener-{len(self.listeners) + 1}.env", self.settings(**overrides)
        )
        listener = ListenerProcess(env_file, cwd=REPOSITORY)
        self.listeners.append(listener)
        return listener

    @property
    def listener(self) -> ListenerProcess:
        return self.listeners[-1]

    # Jobs --------------------------------------------------------------------------------

    def queue_jobs(self, count: int, duration: float) -> list[int]:
        ids = self.github.control.enqueue_jobs([self.scale_set], count, duration=duration)
        self.queued.update(dict.fromkeys(ids, "succeeded"))
        return ids

    def queue_stream(
        self, count: int, rng: random.Random, durations: tuple[float, float] = (1.0, 3.0)
    ) -> list[int]:
        """`count` jobs of random durations, queued one by one (a stream, not one burst: the
        listener sees several messages)."""
        ids: list[int] = []
        for _ in range(count):
            ids += self.queue_jobs(1, round(rng.uniform(*durations), 2))
        return ids

    def jobs(self) -> list[JSON]:
        jobs: list[JSON] = self.github.control.state()["jobs"]
        return jobs

    # Waiting -----------------------------------------------------------------------------

    def wait_github(self, predicate: Callable[[JSON], bool], timeout: float) -> JSON:
        return self.github.control.wait_for_state(predicate, timeout)

    def wait_github_event(
        self, predicate: Callable[[JSON], bool], timeout: float, after: int = 0
    ) -> JSON:
        return self.github.control.wait_for_event(predicate, timeout, after)

    def wait_cloud(self, predicate: Callable[[list[JSON]], bool], timeout: float) -> None:
        """Until `predicate(servers)` holds; checked on every look of the guests at the cloud."""
        self.guests.wait_for(lambda: predicate(self.servers()), timeout)

    def servers(self) -> list[JSON]:
        servers: list[JSON] = self.cloud_control.state()["servers"]
        return servers

    def wait_served(self, timeout: float) -> None:
        wanted = set(self.queued)

        def all_done(state: JSON) -> bool:
            done = {j["id"] for j in state["jobs"] if j["state"] == "completed"}
            return wanted <= done

        self.wait_github(all_done, timeout)

    def wait_clean(self, timeout: float) -> None:
        """No VM and no runner registration left (jobs served first)."""
        self.wait_cloud(lambda servers: not servers, timeout)
        self.wait_github(lambda state: not state["runners"], timeout)

    def wait_until(self, deadline_seconds: float) -> None:
        """Let time pass for a chosen random offset (a kill point's jitter, not a synchroniser)."""
        threading.Event().wait(deadline_seconds)

    # Judging -----------------------------------------------------------------------------

    def peak_servers(self) -> int:
        """The most servers at once: accepted creates minus accepted deletes, in request order."""
        live = peak = 0
        for record in self.cloud_control.requests(service="compute"):
            if record.endpoint == "compute.servers.create" and record.status == 202:
                live += 1
            elif record.endpoint == "compute.servers.delete" and record.status == 204:
                live -= 1
            peak = max(peak, live)
        return peak

    def violations(self, *, sessions_closed: bool = True) -> list[Violation]:
        state = self.github.control.state()
        found: list[Violation] = []
        jobs = {j["id"]: j for j in state["jobs"]}
        for job_id, result in sorted(self.queued.items()):
            job = jobs.get(job_id)
            if job is None or job["state"] != "completed":
                where = job["state"] if job else "missing"
                found.append(Violation("unserved_job", f"job {job_id} is {where}"))
            elif job["result"] != result:
                kind = "busy_runner_killed" if job["result"] == "failed" else "unserved_job"
                found.append(
                    Violation(kind, f"job {job_id} ended {job['result']} on {job['runner_name']}")
                )
        for server in self.servers():
            found.append(Violation("leaked_vm", f"{server['name']} ({server['status']})"))
        for runner in state["runners"]:
            found.append(Violation("leaked_registration", f"{runner['name']} ({runner['state']})"))
        if sessions_closed:
            for session in state["sessions"]:
                if not session["ghost"]:
                    found.append(Violation("orphan_session", session["id"]))
            for scale_set in state["scale_sets"]:
                # A message whose last delivery answered the final poll of a session its client
                # deleted was cut off at a clean stop, not dropped: the service delivers it to
                # the next session (docs/architecture.md#the-long-poll).
                cut_off = set(scale_set["unacked_at_session_end_ids"])
                for message_id in scale_set["unacked_message_ids"]:
                    if message_id not in cut_off:
                        found.append(Violation("unacked_message", f"message {message_id}"))
        peak = self.peak_servers()
        if peak > self.max_runners:
            found.append(
                Violation("over_max_runners", f"{peak} servers at once, max {self.max_runners}")
            )
        return found


def count_kinds(violations: list[Violation]) -> dict[str, int]:
    return dict(Counter(v.kind for v in violations))


@contextlib.contextmanager
def e2e_world(directory: Path, **options: Any) -> Iterator[E2EWorld]:
    with E2EWorld(directory, **options) as world:
        yield world


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 2)
