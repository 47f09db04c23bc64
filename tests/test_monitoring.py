"""docs/monitoring: the alert rules pass `promtool check rules` and their unit tests, and every
metric the rules and the dashboard use is one the service exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from scaleset_listener.metrics import Metrics, RunnerVersionView, ScaleSetView
from tests.testsupport.prometheus import prometheus_binary

pytestmark = pytest.mark.timeout(60)

MONITORING = Path(__file__).resolve().parents[1] / "docs" / "monitoring"
OUR_NAMES = re.compile(r"\b(?:gha|scaleset_listener)_[a-z_]+")


def exported_names() -> set[str]:
    """Every sample name the service can export (counters with _total, histograms' series)."""
    metrics = Metrics(namespace="test")
    metrics.watch_scale_set(ScaleSetView("linux", lambda: {"idle": 1}, lambda: 3))
    metrics.watch_runner_version(RunnerVersionView(lambda: "2.331.0", lambda: False))
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def test_promtool_checks_the_alert_rules() -> None:
    promtool = prometheus_binary("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(MONITORING / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_pass_their_unit_tests() -> None:
    promtool = prometheus_binary("promtool")
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("document", ["alerts.yml", "dashboard.json"])
def test_every_metric_used_is_exported(document: str) -> None:
    used = set(OUR_NAMES.findall((MONITORING / document).read_text()))
    assert used, f"{document} uses none of our metrics"
    assert used - exported_names() == set()


def test_the_dashboard_is_a_grafana_dashboard_with_a_query_per_panel() -> None:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    panels = [
        panel
        for row in dashboard["panels"]
        for panel in ([row, *row.get("panels", [])] if row["type"] == "row" else [row])
        if panel["type"] != "row"
    ]
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]
    assert {variable["name"] for variable in dashboard["templating"]["list"]} >= {"name"}
