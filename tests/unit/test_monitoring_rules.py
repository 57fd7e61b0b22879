"""The monitoring files: Prometheus rules pass promtool's checks and unit tests, and the rules and the Grafana
dashboard query only metrics that exist (sdtriton's, as ``sdtriton.serving.metrics`` names them, Triton's ``nv_*``,
and the rules' recorded series)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sdtriton.serving.metrics import ENGINE_METRICS
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
    known = OUR_SERIES | recorded_series(RULES) | KUBE_STATE_METRICS
    for rule in rules_of(RULES):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads unknown metrics {unknown}"


def test_the_dashboard_queries_only_metrics_that_exist_and_shows_every_one_of_ours():
    exprs = _dashboard_exprs()
    assert exprs
    queried = set().union(*map(metric_names, exprs))
    unknown = {name for name in queried - OUR_SERIES - recorded_series(RULES) if not name.startswith("nv_")}
    assert not unknown, f"the dashboard queries metrics that do not exist: {unknown}"
    shown = {spec.name for spec in ENGINE_METRICS if queried & set(spec.series_names)}
    assert shown == {spec.name for spec in ENGINE_METRICS}


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
