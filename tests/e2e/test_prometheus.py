"""A real Prometheus scrapes the listener (a subprocess, ENABLE_METRICS) through a job stream on
the simulators; what it stored is read back through its HTTP API, as a dashboard would."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from simulator.e2e_world import E2EWorld
from tests.testsupport.prometheus import free_port, prometheus_binary, running_prometheus

JOBS = 12
MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
ALERTS = MONITORING / "alerts.yml"


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    panels = [panel for row in dashboard["panels"] for panel in [row, *row.get("panels", [])]]
    variables = {"$__rate_interval": "1m", "$name": ".*", "$job": ".*"}
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in variables.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


@pytest.mark.timeout(150)
def test_prometheus_follows_a_job_stream_through_arc_and_our_metrics(
    world: E2EWorld, tmp_path: Path
) -> None:
    prometheus_binary()
    port = free_port()
    listener = world.start_listener(ENABLE_METRICS="true", METRICS_ADDR=f"127.0.0.1:{port}")
    listener.log.wait_event("session_created", timeout=30)
    with running_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], [ALERTS]) as prom:
        prom.wait_for(
            "the listener scraped",
            lambda: prom.value('up{job="scaleset-listener"}') == 1.0 or None,
            timeout=20,
        )
        # Configuration gauges carry ARC's labels: name is the scale set.
        name = world.scale_set
        assert prom.value(f'gha_max_runners{{name="{name}"}}') == world.max_runners
        assert prom.value(f'gha_min_runners{{name="{name}"}}') == 0

        world.queue_stream(JOBS, random.Random(15), durations=(0.5, 2.0))
        world.wait_served(timeout=90)
        world.wait_clean(timeout=30)

        # The counters reach the number of jobs served once Prometheus scraped after the end.
        prom.wait_for(
            f"{JOBS} completed jobs",
            lambda: prom.value("sum(gha_completed_jobs_total)") == JOBS or None,
            timeout=20,
        )
        assert prom.value("sum(gha_started_jobs_total)") == JOBS
        assert prom.value('sum(gha_completed_jobs_total{job_result="succeeded"})') == JOBS
        assert prom.value("sum(gha_job_execution_duration_seconds_count)") == JOBS
        assert prom.value("sum(gha_job_startup_duration_seconds_count)") == JOBS
        # Desired and assigned followed the stream: up while jobs waited, back to 0 after.
        window = "[5m]"
        peak_desired = prom.value(f'max_over_time(gha_desired_runners{{name="{name}"}}{window})')
        assert peak_desired is not None
        assert 1 <= peak_desired <= world.max_runners
        peak_assigned = prom.value(f'max_over_time(gha_assigned_jobs{{name="{name}"}}{window})')
        assert peak_assigned is not None
        assert peak_assigned >= 1
        prom.wait_for(
            "desired and assigned back to 0",
            lambda: (
                (
                    prom.value(f'gha_desired_runners{{name="{name}"}}') == 0
                    and prom.value(f'gha_assigned_jobs{{name="{name}"}}') == 0
                )
                or None
            ),
            timeout=20,
        )
        # Ours: one JIT config per VM, every VM through ACTIVE and deleted, none left by phase.
        jit_configs = prom.value(
            'sum(scaleset_listener_github_requests_total{endpoint="generate_jit_config"})'
        )
        created = prom.value(f'scaleset_listener_vms_created_total{{name="{name}"}}')
        assert created is not None
        assert created >= JOBS
        assert jit_configs == created
        # Scraped after the last VM went: no runner left in any phase.
        prom.wait_for(
            "no runner tracked",
            lambda: prom.value(f'sum(scaleset_listener_runners{{name="{name}"}})') == 0 or None,
            timeout=20,
        )
        assert prom.value("scaleset_listener_runner_version_stale") == 0
        assert prom.value("count(scaleset_listener_runner_version_info)") == 1
        assert prom.value("process_resident_memory_bytes") is not None
        # The alert rules load in this Prometheus and none fires after a clean stream.
        rules = prom.query('ALERTS{alertstate="firing"}')
        assert rules == []
        # Every dashboard query runs (Grafana's variables filled in as Grafana would).
        for expr in dashboard_queries():
            prom.query(expr)
    assert listener.stop(timeout=15) == 0
