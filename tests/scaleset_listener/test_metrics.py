"""The metrics' names, labels and buckets as ARC exports them, and our bounded labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scaleset_listener.github_urls import parse_github_url
from scaleset_listener.metrics import ARC_JOB_BUCKETS, JobFacts, Metrics, endpoint_of


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    parsed = text_string_to_metric_families(metrics.exposition().decode())
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parsed
        for sample in family.samples
    }


def test_the_scale_set_gauges_carry_arcs_labels() -> None:
    metrics = Metrics(parse_github_url("https://github.com/acme"), namespace="listener-1")
    scale_set = metrics.scale_set("gpu", min_runners=1, max_runners=8)
    scale_set.statistics(assigned=5, running=3, registered=4, busy=3, idle=1)
    scale_set.desired(6)
    labels = frozenset(
        {
            "enterprise": "",
            "organization": "acme",
            "repository": "",
            "name": "gpu",
            "namespace": "listener-1",
        }.items()
    )
    found = samples(metrics)
    expected = {
        "gha_assigned_jobs": 5,
        "gha_running_jobs": 3,
        "gha_registered_runners": 4,
        "gha_busy_runners": 3,
        "gha_idle_runners": 1,
        "gha_min_runners": 1,
        "gha_max_runners": 8,
        "gha_desired_runners": 6,
    }
    assert {name: found[(name, labels)] for name in expected} == expected


def test_a_repository_url_fills_organization_and_repository() -> None:
    metrics = Metrics(parse_github_url("https://github.com/acme/app"))
    assert metrics.scale_set_labels("linux") == ("", "acme", "app", "linux", "")
    enterprise = Metrics(parse_github_url("https://github.com/enterprises/big"))
    assert enterprise.scale_set_labels("linux") == ("big", "", "", "linux", "")


def test_job_metrics_count_and_time_as_arc_does() -> None:
    metrics = Metrics(parse_github_url("https://github.com/acme"))
    scale_set = metrics.scale_set("linux", 0, 4)
    assigned = datetime(2026, 12, 3, 10, 0, 0, 900_000, tzinfo=UTC)
    job = JobFacts(
        owner_name="acme",
        repository_name="app",
        job_display_name="build",
        event_name="push",
        scale_set_assign_time=assigned,
        runner_assign_time=assigned + timedelta(seconds=41.2),
        finish_time=assigned + timedelta(seconds=341.2),
        result="succeeded",
    )
    scale_set.job_started(job)
    scale_set.job_completed(job)
    found = samples(metrics)
    job_labels = {
        "enterprise": "",
        "organization": "acme",
        "repository": "app",
        "job_name": "build",
        "event_name": "push",
    }
    started = frozenset(job_labels.items())
    completed = frozenset({**job_labels, "job_result": "succeeded"}.items())
    assert found[("gha_started_jobs_total", started)] == 1
    assert found[("gha_completed_jobs_total", completed)] == 1
    # Whole seconds of Unix time: 10:00:00 -> 10:00:42 is 42, as ARC counts it.
    assert found[("gha_job_startup_duration_seconds_sum", started)] == 42
    assert found[("gha_job_execution_duration_seconds_sum", completed)] == 300
    buckets = sorted(
        float(dict(labels)["le"])
        for (name, labels) in found
        if name == "gha_job_startup_duration_seconds_bucket"
    )
    assert buckets == [*map(float, ARC_JOB_BUCKETS), float("inf")]


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "/app/installations/77/access_tokens", "access_tokens"),
        ("POST", "/api/v3/orgs/acme/actions/runners/registration-token", "registration_token"),
        ("POST", "/api/v3/actions/runner-registration", "runner_registration"),
        ("GET", "/abc/_apis/runtime/runnerscalesets/5/acquirablejobs", "acquirable_jobs"),
        ("POST", "/abc/_apis/runtime/runnerscalesets/5/acquirejobs", "acquire_jobs"),
        ("PATCH", "/abc/_apis/runtime/runnerscalesets/5/sessions/0f1e", "session"),
        ("POST", "/abc/_apis/runtime/runnerscalesets/5/generatejitconfig", "generate_jit_config"),
        ("GET", "/abc/_apis/runtime/runnerscalesets", "scale_set"),
        ("DELETE", "/abc/_apis/distributedtask/pools/0/agents/123", "runner"),
        ("GET", "/abc/_apis/distributedtask/pools/0/agents", "runners"),
        ("GET", "/repos/actions/runner/releases", "runner_releases"),
        ("GET", "/abc/_apis/something/new", "other"),
        ("GET", "/scalesets/message", "message"),
        ("DELETE", "/scalesets/message/42", "delete_message"),
        ("GET", "/rest/message", "message"),
        ("DELETE", "/rest/message/42", "delete_message"),
    ],
)
def test_request_paths_become_bounded_endpoint_names(method: str, path: str, endpoint: str) -> None:
    assert endpoint_of(method, path) == endpoint


def test_each_service_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.github_request("GET", "/repos/actions/runner/releases", 200, 0.1)
    second.github_request("GET", "/repos/actions/runner/releases", None, 0.1)
    counted = {
        key: value
        for key, value in samples(first).items()
        if key[0] == "scaleset_listener_github_requests_total"
    }
    assert counted == {
        (
            "scaleset_listener_github_requests_total",
            frozenset({"endpoint": "runner_releases", "method": "GET", "status": "200"}.items()),
        ): 1
    }
