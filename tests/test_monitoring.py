"""The operator's kit: Prometheus's config, Grafana's board and provisioning, the compose profile, the KEDA example.

Every query they hold names only metrics orbatch exports, as collected from its registry and its fleet gauges.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from jobs.observation.gauges import AccountGauges, FleetCollector, FleetGauges
from jobs.observation.metrics import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# PromQL words that are neither metrics nor followed by `(`.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def exported_names() -> set[str]:
    """Every sample name orbatch's /metrics can carry: the process's families and the fleet's gauges."""
    families = list(REGISTRY.collect())
    families += FleetCollector(FleetGauges(accounts=[AccountGauges("openrouter", 50, 0, 0.0)])).collect()
    names: set[str] = set()
    for family in families:
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "info": ("_info",),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, label names and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, $__rate_interval included
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr):
        followed = expr[match.end() :].lstrip()
        if not followed.startswith("(") and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_the_promql_reader_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, model) (rate(orbatch_call_duration_seconds_bucket{job="w"}'
        "[$__rate_interval]))) * 60 + max(orbatch_queue_depth) offset 5m and on(account) up"
    )
    assert metric_names(expr) == {"orbatch_call_duration_seconds_bucket", "orbatch_queue_depth", "up"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "orbatch.json").read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_every_dashboard_query_names_only_metrics_orbatch_exports() -> None:
    exported = exported_names()
    used: set[str] = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    # The board shows what an operator asks first.
    assert {
        "orbatch_requests_finished_total",
        "orbatch_tasks_total",
        "orbatch_call_duration_seconds_bucket",
        "orbatch_cost_usd_total",
        "orbatch_free_requests_left_today",
        "orbatch_queue_depth",
        "orbatch_fleet_calls_in_flight",
        "orbatch_breaker_open",
        "orbatch_workers_alive",
    } <= used


def test_the_dashboard_is_a_grafana_board_on_the_provisioned_datasource_with_no_overlapping_panels() -> None:
    board = dashboard()
    assert board["uid"] == "orbatch"
    assert isinstance(board["schemaVersion"], int)
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid
            assert all(t["datasource"]["uid"] == uid for t in panel["targets"])
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_prometheus_scrapes_every_worker_replica_and_the_api_server() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"orbatch-workers", "orbatch-api"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port = compose["services"]["worker"]["environment"]["ORBATCH_METRICS_PORT"]
    # `worker` resolves to every replica of `--scale worker=N`; the api at api:8000.
    assert jobs["orbatch-workers"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": int(port), "refresh_interval": "15s"}
    ]
    assert jobs["orbatch-api"]["dns_sd_configs"][0]["names"] == ["api"]
    assert jobs["orbatch-api"]["dns_sd_configs"][0]["port"] == 8000
    assert jobs["orbatch-api"]["metrics_path"] == "/metrics"
    # Where the board selects a job, it is one of these.
    selected = {
        job
        for panel in panels()
        for target in panel["targets"]
        for job in re.findall(r'job="([^"]*)"', target["expr"])
    }
    assert selected
    assert selected <= set(jobs)


def test_the_monitoring_profile_starts_prometheus_and_grafana_with_both_provisioned() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    worker = services["worker"]
    assert worker["expose"] == [worker["environment"]["ORBATCH_METRICS_PORT"]]
    assert "ports" not in worker
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"]
    assert grafana["profiles"] == ["monitoring"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    mounted = next(v for v in grafana["volumes"] if v.startswith("./deploy/grafana/orbatch.json:"))
    board_path = mounted.split(":")[1]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/orbatch.yml").read_text())
    assert Path(board_path).parent == Path(provider["providers"][0]["options"]["path"])
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == board_path
    # Published on this machine only.
    for service in (prometheus, grafana):
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])


def test_the_keda_example_scales_the_workers_on_the_queue_depth_they_export() -> None:
    scaled = yaml.safe_load((DEPLOY / "keda.yaml").read_text())
    assert scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["minReplicaCount"] >= 1  # the feeder runs in the workers
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert metric_names(trigger["metadata"]["query"]) == {"orbatch_queue_depth"}
    assert float(trigger["metadata"]["threshold"]) > 0
    readme = (ROOT / "README.md").read_text()
    assert trigger["metadata"]["query"] in readme
