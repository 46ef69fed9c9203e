"""The monitoring artefacts hold to the code: the Grafana dashboard parses and each of its
panels reads metrics eventkeep defines; the alert rules read only such metrics too, and pass
Prometheus's own checker and their unit tests against recorded samples (infra/alerts-check)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Metric

import eventkeep.metrics as engine
from eventkeep.api.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "eventkeep.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
NAME = re.compile(r"\beventkeep_[a-z0-9_]+")
SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def defined_metrics() -> set[str]:
    """The names of every metric the code defines, read from the code's own objects."""
    families: list[Metric] = []
    for value in vars(engine).values():
        if hasattr(value, "collect") and hasattr(value, "_name"):
            families += value.collect()
    families += Metrics().registry.collect()
    lag = engine.LagCollector(lambda: 10, lambda: {"users": 5}, lambda: 7)
    families += lag.collect()
    families += engine.ReplicaLagCollector(lambda: {"users": 1}, lambda: True).collect()
    return {family.name for family in families}


def metric_of(name: str) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_the_dashboard_parses_and_every_panel_reads_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    defined = defined_metrics()
    panels = dashboard["panels"]
    assert len(panels) >= 15
    titles = " ".join(panel["title"].lower() for panel in panels)
    for subject in ("projection lag", "relay", "kafka", "group commit", "quarantine", "cache",
                    "latency", "refusals"):  # fmt: skip
        assert subject in titles, subject
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = NAME.findall(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = {metric_of(name) for name in names} - defined
            assert not unknown, (panel["title"], unknown)


def test_every_alert_reads_defined_metrics_and_has_a_runbook_entry() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    defined = defined_metrics()
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    operations = (REPO / "docs" / "operations.md").read_text()
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "EventkeepProjectionLagGrowing",
        "EventkeepRelayWithoutLeader",
        "EventkeepQuarantineNotEmpty",
        "EventkeepAuditVerifyFailing",
        "EventkeepHighErrorRate",
        "EventkeepCommandLatencySLOBurn",
    }
    for rule in rules["groups"][0]["rules"] + alerts:
        names = {metric_of(name) for name in NAME.findall(rule["expr"])}
        assert not names - defined - recorded, (rule.get("alert"), names - defined)
    for alert in alerts:
        assert f"### {alert['alert']}" in operations, alert["alert"]


@pytest.mark.timeout(900)  # the first run on a machine installs promtool with apt
def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    done = subprocess.run(
        [str(REPO / "infra" / "alerts-check")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_scrape_registry_answers_engine_and_app_metrics() -> None:
    app_metrics = Metrics()
    app_metrics.requests.labels("GET", "/healthz", "200").inc()
    registry: CollectorRegistry = engine.scrape_registry(own=[app_metrics.registry])
    names = {family.name for family in registry.collect()}
    assert {"eventkeep_http_requests", "eventkeep_group_commit_batch_appends"} <= names
