"""The monitoring files: Prometheus rules pass promtool's checks and unit tests, and the rules and the Grafana
dashboard query only metrics that exist (sdtriton's, as ``sdtriton.serving.metrics`` names them, the gateway's, as
its app exports them, Triton's ``nv_*``, and the rules' recorded series)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sdtriton.serving.metrics import ENGINE_METRICS
from tests.unit.gateway_series import gateway_exposition
from tests.unit.promql import metric_names, recorded_series, rules_of

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "prometheus_rules.yaml"
RULES_TEST = MONITORING / "prometheus_rules_test.yaml"
DASHBOARD = MONITORING / "grafana_dashboard.json"

OUR_SERIES = {name for spec in ENGINE_METRICS for name in spec.series_names}
# kube-state-metrics' HorizontalPodAutoscaler series (docs/horizontalpodautoscaler-metrics.md), read by the alerts
# on the autoscaler.
KUBE_STATE_METRICS = {
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_horizontalpodautoscaler_spec_target_metric",
    "kube_horizontalpodautoscaler_status_current_metric",
    "kube_horizontalpodautoscaler_status_current_replicas",
}


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/setup_monitoring.sh (Debian's prometheus package)")
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promtool_accepts_the_rules():
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass():
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path):
    shutil.copy(RULES, tmp_path / RULES.name)
    text = RULES_TEST.read_text()
    assert "summary: 10% of pipeline's requests fail" in text
    (tmp_path / RULES_TEST.name).write_text(text.replace("10% of pipeline's requests fail", "9% of pipeline's"))
    result = _promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "SdtritonRequestsFailing" in result.stdout + result.stderr


def test_the_name_finder_findsmetric_names_only():
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(sdtriton_image_duration_seconds_bucket{model=~"a|b"}'
        "[$__rate_interval]))) / 1e6 / ignoring (state) group_left sum(nv_inference_count) and on (model) up > 0.5"
    )
    assert metric_names(expr) == {"sdtriton_image_duration_seconds_bucket", "nv_inference_count", "up"}


def test_the_rules_read_only_our_metrics_and_their_own_records():
    known = OUR_SERIES | gateway_exposition().series | recorded_series(RULES) | KUBE_STATE_METRICS
    for rule in rules_of(RULES):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads unknown metrics {unknown}"


def test_the_dashboard_queries_only_metrics_that_exist_and_shows_every_one_of_ours():
    exprs = _dashboard_exprs()
    assert exprs
    queried = set().union(*map(metric_names, exprs))
    gateway = gateway_exposition().series
    unknown = {name for name in queried - OUR_SERIES - gateway - recorded_series(RULES) if not name.startswith("nv_")}
    assert not unknown, f"the dashboard queries metrics that do not exist: {unknown}"
    shown = {spec.name for spec in ENGINE_METRICS if queried & set(spec.series_names)}
    assert shown == {spec.name for spec in ENGINE_METRICS}
    # Every gateway metric (a counter's _total, a histogram's _bucket: the series one reads) is on the dashboard.
    read = {name for name in gateway if not name.endswith(("_created", "_count", "_sum"))}
    assert read <= queried, f"the dashboard shows none of {read - queried}"


def test_the_dashboard_panels_are_placed_and_query_the_chosen_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "pipeline"} <= variables
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def _label_matchers(expr: str) -> list[tuple[str, str, str]]:
    """Each ``metric{label op "value"}`` of an expression: (metric, label, value)."""
    found = []
    for metric, body in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        for label, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', body):
            found.append((metric, label, value))
    return found


def test_gateway_queries_match_its_real_labels_and_routes():
    """The gateway rules and panels select by labels the gateway sets, and their route pattern (the API, /v1/...)
    takes every API route it has and none of its probes or /metrics."""
    exposition = gateway_exposition()
    exprs = [rule["expr"] for rule in rules_of(RULES)] + _dashboard_exprs()
    gateway_matchers = [m for expr in exprs for m in _label_matchers(expr) if m[0] in exposition.series]
    assert gateway_matchers
    route_patterns = set()
    for metric, label, value in gateway_matchers:
        scrape_labels = {"job", "instance", "namespace", "pod"}
        assert label in exposition.labels.get(metric, frozenset()) | scrape_labels, f"{metric} has no label {label}"
        if label == "route":
            route_patterns.add(value)
    (pattern,) = route_patterns
    api = {route for route in exposition.routes if re.fullmatch(pattern, route)}
    assert api == {route for route in exposition.routes if route.startswith("/v1/")}
    assert not api & {"/healthz", "/readyz", "/metrics"}


def test_promtool_rule_unit_tests_cover_every_gateway_rule():
    text = RULES_TEST.read_text()
    for rule in rules_of(RULES):
        name = rule.get("record") or rule.get("alert")
        if metric_names(str(rule["expr"])) & gateway_exposition().series or "gateway" in name.lower():
            assert name in text, f"{name} has no promtool unit test in {RULES_TEST.name}"
