"""Prometheus metrics: ARC's listener metrics under ARC's names, and ours for the VMs.

The `gha_*` metrics carry the names, types, labels and histogram buckets of
actions-runner-controller's scale set listener, so an ARC Grafana dashboard and its alert rules
work against us unchanged (docs/monitoring.md lists every metric). `namespace`, ARC's
Kubernetes namespace, is our LISTENER_INSTANCE_ID. Ours are `scaleset_listener_*`.

Values that already live in the service (runners by phase, capacity, the runner version) are
read when Prometheus scrapes, by a collector; events (jobs, requests, VM creates and deletes,
reconcile decisions) are counted where they happen. Label sets are bounded: scale set names,
phases, endpoint names and outcome kinds, never a VM, job or runner id. Every metric lives in
the service's own registry (one per `Metrics`), so several services in one process (the tests)
do not share counts.

This is the only module that imports prometheus_client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scaleset_listener.github_urls import GitHubTarget, Scope

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ARC's buckets for both job histograms (seconds).
ARC_JOB_BUCKETS = (
    0.01, 0.05, 0.1, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 18, 20, 25, 30, 40, 50, 60, 70,
    80, 90, 100, 110, 120, 150, 180, 210, 240, 300, 360, 420, 480, 540, 600, 900, 1200, 1800,
    2400, 3000, 3600,
)  # fmt: skip
# VM lifecycle steps: a create is seconds, a boot tens of seconds to minutes.
VM_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1800)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PROBE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30)

SCALE_SET_LABELS = ("enterprise", "organization", "repository", "name", "namespace")
JOB_LABELS = ("enterprise", "organization", "repository", "job_name", "event_name")

# Our endpoint names for GitHub and Actions requests, by path (ids and names left out): a
# bounded label however many runners and sessions there are. docs/monitoring.md lists them.
_ENDPOINTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("access_tokens", r"/app/installations/[^/]+/access_tokens$"),
        ("registration_token", r"/actions/runners/registration-token$"),
        ("runner_registration", r"/actions/runner-registration$"),
        ("runner_downloads", r"/actions/runners/downloads$"),
        ("runner_releases", r"/repos/actions/runner/releases$"),
        ("repository", r"/repos/[^/]+/[^/]+$"),
        ("acquirable_jobs", r"/runnerscalesets/\d+/acquirablejobs$"),
        ("acquire_jobs", r"/runnerscalesets/\d+/acquirejobs$"),
        ("session", r"/runnerscalesets/\d+/sessions(/[^/]+)?$"),
        ("generate_jit_config", r"/runnerscalesets/\d+/generatejitconfig$"),
        ("scale_set", r"/runnerscalesets(/\d+)?$"),
        ("runner_groups", r"/runnergroups$"),
        ("runner", r"/distributedtask/pools/\d+/agents/\d+$"),
        ("runners", r"/distributedtask/pools/\d+/agents$"),
    )
)


# The broker's long poll (`.../scalesets/message`, the ack appends the message id).
_MESSAGE_QUEUE = re.compile(r"/messages?(/\d+)?$")


def endpoint_of(method: str, path: str) -> str:
    """The bounded endpoint name of a request path."""
    for name, pattern in _ENDPOINTS:
        if pattern.search(path):
            return name
    if _MESSAGE_QUEUE.search(path):
        return "message" if method == "GET" else "delete_message"
    return "other"


@dataclass(frozen=True)
class JobFacts:
    """What the job metrics read of a JobStarted or JobCompleted message."""

    owner_name: str
    repository_name: str
    job_display_name: str
    event_name: str
    scale_set_assign_time: datetime | None
    runner_assign_time: datetime | None
    finish_time: datetime | None = None
    result: str = ""


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    # ARC counts whole seconds (Unix time differences).
    return float(int(end.timestamp()) - int(start.timestamp()))


class ScaleSetMetrics:
    """The metrics of one scale set, its labels bound."""

    def __init__(self, metrics: Metrics, name: str, min_runners: int, max_runners: int) -> None:
        self._metrics = metrics
        self.name = name
        self._labels = metrics.scale_set_labels(name)
        metrics.min_runners.labels(*self._labels).set(min_runners)
        metrics.max_runners.labels(*self._labels).set(max_runners)
        self._assigned = metrics.assigned_jobs.labels(*self._labels)
        self._running = metrics.running_jobs.labels(*self._labels)
        self._registered = metrics.registered_runners.labels(*self._labels)
        self._busy = metrics.busy_runners.labels(*self._labels)
        self._idle = metrics.idle_runners.labels(*self._labels)
        self._desired = metrics.desired_runners.labels(*self._labels)
        self._last_poll = metrics.last_poll.labels(name)

    def statistics(
        self, assigned: int, running: int, registered: int, busy: int, idle: int
    ) -> None:
        self._assigned.set(assigned)
        self._running.set(running)
        self._registered.set(registered)
        self._busy.set(busy)
        self._idle.set(idle)

    def desired(self, count: int) -> None:
        self._desired.set(count)

    def polled(self) -> None:
        """The message queue answered (a message or an empty poll)."""
        self._last_poll.set(time.time())

    def job_started(self, job: JobFacts) -> None:
        labels = self._metrics.job_labels(job)
        self._metrics.started_jobs.labels(*labels).inc()
        startup = _seconds_between(job.scale_set_assign_time, job.runner_assign_time)
        if startup is not None:
            self._metrics.job_startup_duration.labels(*labels).observe(startup)

    def job_completed(self, job: JobFacts) -> None:
        labels = (*self._metrics.job_labels(job), job.result)
        self._metrics.completed_jobs.labels(*labels).inc()
        execution = _seconds_between(job.runner_assign_time, job.finish_time)
        if execution is not None:
            self._metrics.job_execution_duration.labels(*labels).observe(execution)

    def vm_created(self, seconds: float) -> None:
        """A VM reached ACTIVE `seconds` after its create request."""
        self._metrics.vms_created.labels(self.name).inc()
        self._metrics.vm_create_duration.labels(self.name).observe(seconds)

    def runner_online(self, seconds: float) -> None:
        """A runner came online `seconds` after its VM was ACTIVE."""
        self._metrics.vm_boot_duration.labels(self.name).observe(seconds)

    def vm_deleted(self, reason: str, seconds: float) -> None:
        self._metrics.vms_deleted.labels(self.name, reason).inc()
        self._metrics.vm_delete_duration.labels(self.name).observe(seconds)

    def vm_gone(self, lived_seconds: float) -> None:
        """A VM is gone, `lived_seconds` after its create request (what it cost)."""
        self._metrics.vm_seconds.labels(self.name).inc(max(0.0, lived_seconds))

    def cloud_error(self, operation: str, kind: str) -> None:
        self._metrics.cloud_errors.labels(self.name, operation, kind).inc()

    def reconcile_decision(self, reconcile_pass: str, action: str, reason: str) -> None:
        self._metrics.reconcile_decisions.labels(self.name, reconcile_pass, action, reason).inc()

    def probe(self, outcome: str, seconds: float) -> None:
        self._metrics.probes.labels(self.name, outcome).inc()
        self._metrics.probe_duration.labels(self.name).observe(seconds)


@dataclass(frozen=True)
class ScaleSetView:
    """What the scrape-time collector reads of a running scale set."""

    name: str
    phases: Callable[[], Mapping[str, int]]
    capacity: Callable[[], int | None]


@dataclass(frozen=True)
class RunnerVersionView:
    version: Callable[[], str | None]
    stale: Callable[[], bool]


class _LiveValues(Collector):
    """Gauges read from the service when Prometheus scrapes (nothing to keep in step)."""

    def __init__(self) -> None:
        self.scale_sets: dict[str, ScaleSetView] = {}
        self.runner_version: RunnerVersionView | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        phases = GaugeMetricFamily(
            "scaleset_listener_runners",
            "Runners this process tracks, by phase (creating, booting, idle, busy, finished, "
            "failed).",
            labels=["name", "phase"],
        )
        capacity = GaugeMetricFamily(
            "scaleset_listener_capacity",
            "How many runners the scale set may own now: max_runners, the cloud's headroom and "
            "the VMs still being deleted, as announced in X-ScaleSetMaxCapacity.",
            labels=["name"],
        )
        for view in list(self.scale_sets.values()):
            for phase, count in view.phases().items():
                phases.add_metric([view.name, phase], count)
            limit = view.capacity()
            if limit is not None:
                capacity.add_metric([view.name], limit)
        yield phases
        yield capacity
        if self.runner_version is not None:
            version = self.runner_version.version()
            if version is not None:
                info = GaugeMetricFamily(
                    "scaleset_listener_runner_version_info",
                    "The runner release new VMs get (value 1).",
                    labels=["version"],
                )
                info.add_metric([version], 1)
                yield info
            yield GaugeMetricFamily(
                "scaleset_listener_runner_version_stale",
                "1 while the runner release is superseded long enough that GitHub will soon "
                "refuse it (or already does).",
                value=1 if self.runner_version.stale() else 0,
            )


class Metrics:
    """Every metric of one service, in its own registry."""

    def __init__(self, target: GitHubTarget | None = None, namespace: str = "") -> None:
        self.registry = CollectorRegistry()
        # Read when a scale set's metrics are made: set before (the service sets it once the
        # GitHub URL is parsed).
        self.target = target
        self._namespace = namespace
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._live = _LiveValues()
        registry.register(self._live)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, SCALE_SET_LABELS, registry=registry)

        self.assigned_jobs = gauge(
            "gha_assigned_jobs", "Number of jobs assigned to this scale set."
        )
        self.running_jobs = gauge("gha_running_jobs", "Number of jobs running (or about to).")
        self.registered_runners = gauge(
            "gha_registered_runners", "Number of runners registered by the scale set."
        )
        self.busy_runners = gauge("gha_busy_runners", "Number of registered runners running a job.")
        self.idle_runners = gauge(
            "gha_idle_runners", "Number of registered runners not running a job."
        )
        self.min_runners = gauge("gha_min_runners", "Minimum number of runners.")
        self.max_runners = gauge("gha_max_runners", "Maximum number of runners.")
        self.desired_runners = gauge(
            "gha_desired_runners", "Number of runners desired by the scale set."
        )
        self.started_jobs = Counter(
            "gha_started_jobs", "Total number of jobs started.", JOB_LABELS, registry=registry
        )
        self.completed_jobs = Counter(
            "gha_completed_jobs",
            "Total number of jobs completed.",
            (*JOB_LABELS, "job_result"),
            registry=registry,
        )
        self.job_startup_duration = Histogram(
            "gha_job_startup_duration_seconds",
            "Time from a job's assignment to the scale set to its runner's assignment (seconds).",
            JOB_LABELS,
            buckets=ARC_JOB_BUCKETS,
            registry=registry,
        )
        self.job_execution_duration = Histogram(
            "gha_job_execution_duration_seconds",
            "Time from a job's runner assignment to its finish (seconds).",
            (*JOB_LABELS, "job_result"),
            buckets=ARC_JOB_BUCKETS,
            registry=registry,
        )
        self.last_poll = Gauge(
            "scaleset_listener_last_poll_timestamp_seconds",
            "When the message queue last answered a poll of this scale set (Unix time).",
            ["name"],
            registry=registry,
        )
        self.vms_created = Counter(
            "scaleset_listener_vms_created",
            "VMs that reached ACTIVE.",
            ["name"],
            registry=registry,
        )
        self.vm_create_duration = Histogram(
            "scaleset_listener_vm_create_duration_seconds",
            "From the create request to ACTIVE (seconds).",
            ["name"],
            buckets=VM_BUCKETS,
            registry=registry,
        )
        self.vm_boot_duration = Histogram(
            "scaleset_listener_vm_boot_duration_seconds",
            "From ACTIVE to the runner online on GitHub (seconds).",
            ["name"],
            buckets=VM_BUCKETS,
            registry=registry,
        )
        self.vms_deleted = Counter(
            "scaleset_listener_vms_deleted",
            "VMs deleted, by why (job_done, idle, lifetime, boot_failed, abandoned, ...).",
            ["name", "reason"],
            registry=registry,
        )
        self.vm_seconds = Counter(
            "scaleset_listener_vm_seconds",
            "VM-seconds of VMs that are gone, from creation to deletion (per-job detail: the "
            "job_usage records).",
            ["name"],
            registry=registry,
        )
        self.vm_delete_duration = Histogram(
            "scaleset_listener_vm_delete_duration_seconds",
            "From the delete request until the cloud no longer lists the VM (seconds).",
            ["name"],
            buckets=VM_BUCKETS,
            registry=registry,
        )
        self.cloud_errors = Counter(
            "scaleset_listener_cloud_errors",
            "Cloud API errors, by operation (create, boot, delete) and kind (quota, timeout, "
            "server_failed, temporary, permanent).",
            ["name", "operation", "kind"],
            registry=registry,
        )
        self.github_requests = Counter(
            "scaleset_listener_github_requests",
            "Requests to GitHub and the Actions service, by endpoint and status "
            "(transport_error when no answer came).",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.github_request_duration = Histogram(
            "scaleset_listener_github_request_duration_seconds",
            "Duration of requests to GitHub and the Actions service (the long poll excluded).",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.reconcile_decisions = Counter(
            "scaleset_listener_reconcile_decisions",
            "Reconciler decisions, by pass (startup, sweep), action and rule.",
            ["name", "reconcile_pass", "action", "reason"],
            registry=registry,
        )
        self.probes = Counter(
            "scaleset_listener_probes",
            "SSH probes of VMs, by outcome.",
            ["name", "outcome"],
            registry=registry,
        )
        self.probe_duration = Histogram(
            "scaleset_listener_probe_duration_seconds",
            "Duration of SSH probes (seconds).",
            ["name"],
            buckets=PROBE_BUCKETS,
            registry=registry,
        )

    # Labels ------------------------------------------------------------------------------

    def _enterprise(self) -> str:
        target = self.target
        return target.owner if target is not None and target.scope is Scope.ENTERPRISE else ""

    def scale_set_labels(self, name: str) -> tuple[str, str, str, str, str]:
        target = self.target
        organization = repository = ""
        if target is not None and target.scope is Scope.ORGANIZATION:
            organization = target.owner
        elif target is not None and target.scope is Scope.REPOSITORY:
            organization, repository = target.owner, target.repository or ""
        return (self._enterprise(), organization, repository, name, self._namespace)

    def job_labels(self, job: JobFacts) -> tuple[str, str, str, str, str]:
        return (
            self._enterprise(),
            job.owner_name,
            job.repository_name,
            job.job_display_name,
            job.event_name,
        )

    # Registration ------------------------------------------------------------------------

    def scale_set(self, name: str, min_runners: int, max_runners: int) -> ScaleSetMetrics:
        return ScaleSetMetrics(self, name, min_runners, max_runners)

    def watch_scale_set(self, view: ScaleSetView) -> None:
        self._live.scale_sets[view.name] = view

    def watch_runner_version(self, view: RunnerVersionView) -> None:
        self._live.runner_version = view

    # Events ------------------------------------------------------------------------------

    def github_request(self, method: str, path: str, status: int | None, seconds: float) -> None:
        endpoint = endpoint_of(method, path)
        code = "transport_error" if status is None else str(status)
        self.github_requests.labels(endpoint, method, code).inc()
        if endpoint != "message":
            self.github_request_duration.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
