"""The HPA SIMULATION (sdtriton/scaling.py): Kubernetes' formula, windows and policies on hand-computed cases, the
load model and derived target on small tables, the built-in burst on the committed load points, and ``scale-sim``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sdtriton import cli, scaling
from sdtriton.scaling import (
    HorizontalPodAutoscaler,
    HpaSettings,
    LoadPoint,
    PolicyType,
    ReplicaModel,
    ScalingInputError,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    SimulationOptions,
    derive_target_in_flight,
    kubernetes_quantity,
    metric_recommendation,
)

COMMITTED_LOAD_POINTS = Path(__file__).resolve().parents[2] / "perf" / "results" / "engine" / "engine_load_points.csv"
SYNC_S = scaling.HPA_SYNC_PERIOD_S


def _point(concurrency: int, images_per_s: float, p99_s: float) -> LoadPoint:
    return LoadPoint(concurrency=concurrency, images_per_s=images_per_s, p50_s=p99_s / 2, p99_s=p99_s)


# The HPA's formula: desired = ceil(current * metric / target), unless within the tolerance.


def test_three_pods_at_six_against_a_target_of_four_ask_for_five():
    assert metric_recommendation(current_replicas=3, metric_per_pod=6, target=4) == 5  # ceil(4.5)


@pytest.mark.parametrize("metric", [4.3, 3.7, 4.39, 3.61])  # ratios 1.075, 0.925, 1.0975, 0.9025
def test_no_change_while_the_ratio_is_within_ten_percent(metric: float):
    assert metric_recommendation(current_replicas=3, metric_per_pod=metric, target=4) == 3


@pytest.mark.parametrize(("metric", "expected"), [(4.5, 4), (2.0, 2), (0.1, 1)])  # ceil of 3.375, 1.5, 0.075
def test_outside_the_tolerance_the_ratio_scales_the_replicas(metric: float, expected: int):
    assert metric_recommendation(current_replicas=3, metric_per_pod=metric, target=4) == expected


def test_pods_not_serving_yet_count_as_zero_on_a_scale_up_and_as_the_target_on_a_scale_down():
    # 2 serving at 8 and 2 starting, target 4: (16 + 0) / (4 x 4) = 1.0, within the tolerance: no change.
    assert metric_recommendation(current_replicas=4, metric_per_pod=8, target=4, missing_pods=2) == 4
    # 2 serving at 20: 40 / 16 = 2.5 -> ceil(2.5 x 4) = 10.
    assert metric_recommendation(current_replicas=4, metric_per_pod=20, target=4, missing_pods=2) == 10
    # 2 serving at 5 (over the target): counting the starting ones at 0 gives 10 / 16 < 1, the other direction: no
    # change, where the serving ones alone would have asked for ceil(2 x 1.25) = 3 and removed a starting pod.
    assert metric_recommendation(current_replicas=4, metric_per_pod=5, target=4, missing_pods=2) == 4
    # 2 serving at 1: the starting ones count at the target, (2 + 8) / 16 = 0.625 -> ceil(2.5) = 3, not ceil(0.5) = 1.
    assert metric_recommendation(current_replicas=4, metric_per_pod=1, target=4, missing_pods=2) == 3


def _settings(**overrides) -> HpaSettings:
    return HpaSettings(**{"target_in_flight_per_pod": 4.0, "min_replicas": 1, "max_replicas": 10, **overrides})


def _sync_all(hpa: HorizontalPodAutoscaler, replicas: int, metric_of, until_s: float) -> list[tuple[float, int]]:
    """Syncs every 15 s from 0 to ``until_s`` with every pod serving; (time, replicas after the sync)."""
    history = []
    for index in range(int(until_s // SYNC_S) + 1):
        now_s = index * SYNC_S
        replicas = hpa.sync(
            now_s, current_replicas=replicas, ready_replicas=replicas, metric_per_pod=metric_of(now_s, replicas)
        ).desired_replicas
        history.append((now_s, replicas))
    return history


def test_scale_up_doubles_at_most_per_30_s_then_stops_at_max_replicas():
    hpa = HorizontalPodAutoscaler(_settings())  # the chart's scale-up: +100% per 30 s, no window
    history = _sync_all(hpa, 1, lambda _now, _replicas: 400.0, until_s=120)
    assert history == [(0, 2), (15, 2), (30, 4), (45, 4), (60, 8), (75, 8), (90, 10), (105, 10), (120, 10)]


def test_select_policy_max_takes_the_policy_allowing_more_and_min_the_one_allowing_less():
    policies = (ScalingPolicy(PolicyType.PERCENT, 100, 15), ScalingPolicy(PolicyType.PODS, 4, 15))
    for select, expected in ((SelectPolicy.MAX, 5), (SelectPolicy.MIN, 2), (SelectPolicy.DISABLED, 1)):
        rules = ScalingRules(stabilization_window_s=0, policies=policies, select_policy=select)
        hpa = HorizontalPodAutoscaler(_settings(scale_up=rules))
        assert hpa.sync(0, current_replicas=1, ready_replicas=1, metric_per_pod=400).desired_replicas == expected


def test_scale_down_waits_for_the_stabilization_window_then_removes_a_pod_per_two_minutes():
    hpa = HorizontalPodAutoscaler(_settings())  # the chart's scale-down: 600 s window, 1 pod per 120 s
    history = _sync_all(hpa, 8, lambda now_s, _replicas: 4.0 if now_s == 0 else 0.5, until_s=900)
    replicas_at = dict(history)
    # The recommendation of 0 s (8 pods) is in the window until 600 s: no pod goes before then, whatever the metric.
    assert all(replicas == 8 for now_s, replicas in history if now_s < 600)
    assert replicas_at[600] == 7
    assert all(replicas == 7 for now_s, replicas in history if 600 <= now_s < 720)
    assert replicas_at[720] == 6
    assert replicas_at[840] == 5


def test_replicas_stay_within_min_and_max():
    hpa = HorizontalPodAutoscaler(_settings(min_replicas=2, max_replicas=3))
    assert hpa.sync(0, current_replicas=5, ready_replicas=5, metric_per_pod=0.0).desired_replicas == 3
    low = HorizontalPodAutoscaler(_settings(min_replicas=2, max_replicas=3, scale_down=scaling.CHART_SCALE_UP))
    history = _sync_all(low, 3, lambda _now, _replicas: 0.0, until_s=600)
    assert min(replicas for _, replicas in history) == 2
    high = HorizontalPodAutoscaler(_settings(min_replicas=2, max_replicas=3))
    assert max(replicas for _, replicas in _sync_all(high, 2, lambda _now, _replicas: 1e6, until_s=300)) == 3
    with pytest.raises(ScalingInputError, match="min_replicas"):
        _settings(min_replicas=0)


# The load model and the target.


def test_the_target_is_where_the_measured_p99_crosses_the_slo():
    points = [_point(1, 2.0, 1.0), _point(2, 3.0, 1.5), _point(4, 3.5, 3.0)]
    assert derive_target_in_flight(points, slo_p99_s=2.0) == pytest.approx(2 + 2 * 0.5 / 1.5)
    assert derive_target_in_flight(points, slo_p99_s=1.5) == pytest.approx(2.0)
    assert derive_target_in_flight(points, slo_p99_s=10.0) == 4.0  # every point meets it: no extrapolation
    with pytest.raises(ScalingInputError, match="below the p99 at concurrency 1"):
        derive_target_in_flight(points, slo_p99_s=0.9)
    assert kubernetes_quantity(2 + 2 * 0.5 / 1.5) == "2667m"
    assert kubernetes_quantity(4.0) == "4"


def test_in_flight_follows_littles_law_and_saturates_at_the_highest_throughput():
    # c=1 at 2/s (W = 0.5 s), c=2 at 3/s; c=4 measured less than c=2: queueing, not capacity.
    model = ReplicaModel((_point(1, 2.0, 0.6), _point(2, 3.0, 0.8), _point(4, 2.9, 1.6)))
    assert model.capacity_rps == 3.0
    assert model.saturation_concurrency == 2
    assert model.in_flight_at(1.0) == pytest.approx(0.5)  # 1/s x 0.5 s
    assert model.in_flight_at(2.5) == pytest.approx(1.5)
    assert model.in_flight_at(99.0) == 2.0
    assert model.p99_at(0.3) == 0.6
    assert model.p99_at(3.0) == pytest.approx(1.2)


def test_the_committed_csv_gives_the_measured_batching_on_sweep_only():
    points = scaling.read_load_points(COMMITTED_LOAD_POINTS)
    with COMMITTED_LOAD_POINTS.open(newline="") as file:
        rows = [
            row
            for row in csv.DictReader(file)
            if (row["section"], row["variant"], row["simulated"]) == ("sweep", "batching_on", "False")
        ]
    assert [p.concurrency for p in points] == [int(row["concurrency"]) for row in rows]
    assert [p.p99_s for p in points] == pytest.approx([float(row["p99_ms"]) / 1000 for row in rows])
    with pytest.raises(ScalingInputError, match="no measured row"):
        scaling.read_load_points(COMMITTED_LOAD_POINTS, variant="no_such_variant")


# Whole traces on the committed load points.


def _committed_burst(**options) -> scaling.SimulationResult:
    points = scaling.read_load_points(COMMITTED_LOAD_POINTS)
    slo_p99_s = scaling.DEFAULT_SLO_OVER_C1_P99 * scaling.c1_p99_s(points)
    model = ReplicaModel(points)
    settings = HpaSettings(
        target_in_flight_per_pod=derive_target_in_flight(points, slo_p99_s=slo_p99_s),
        max_replicas=options.pop("max_replicas", scaling.DEFAULT_MAX_REPLICAS),
    )
    trace = scaling.burst_trace(model.capacity_rps)
    return scaling.simulate(trace, model, settings, slo_p99_s=slo_p99_s, options=SimulationOptions(**options))


def test_the_burst_scales_out_and_p99_recovers_once_new_pods_serve():
    startup_s = 90.0
    result = _committed_burst(startup_s=startup_s)
    summary = result.summary()
    trace = result.trace
    assert summary.first_scale_up_s is not None and summary.first_scale_up_s <= SYNC_S
    assert summary.max_ready_replicas > 1
    # The load is 5 replicas' worth: p99 is over the SLO at first, and back within it before the burst ends...
    assert summary.slo_recovered_s is not None
    assert summary.worst_p99_s > result.slo_p99_s
    assert trace.rise_s + summary.slo_recovered_s < trace.fall_s
    end_of_burst = next(s for s in result.samples if s.t_s == trace.fall_s - 1)
    assert end_of_burst.p99_s <= result.slo_p99_s
    # ... but not before a new pod serves: no pod serves sooner than startup_s after the HPA added it.
    first_new_ready_s = next(s.t_s for s in result.samples if s.ready_replicas > 1)
    assert first_new_ready_s >= trace.rise_s + summary.first_scale_up_s + startup_s
    assert summary.slo_recovered_s >= first_new_ready_s - trace.rise_s
    # Scaled back to minReplicas after the burst, not sooner than the 600 s window.
    assert summary.scale_in_s is not None and summary.scale_in_s >= 600
    assert result.samples[-1].desired_replicas == result.settings.min_replicas


def test_without_scale_out_the_burst_stays_over_the_slo_and_refuses_more():
    scaled = _committed_burst().summary()
    alone = _committed_burst(max_replicas=1)
    assert alone.summary().max_ready_replicas == 1
    burst = [s for s in alone.samples if alone.trace.rise_s + 60 <= s.t_s < alone.trace.fall_s]
    assert all(s.p99_s > alone.slo_p99_s for s in burst)
    assert alone.summary().refused > 2 * scaled.refused


def test_the_simulated_pending_limit_is_the_exports_default():
    args = cli.build_parser().parse_args(["export", "model", "--output", "repository"])
    assert args.max_pending_requests == scaling.DEFAULT_MAX_PENDING_PER_POD


def test_scale_sim_writes_csv_png_and_summary_all_saying_simulation(tmp_path: Path, capsys):
    assert cli.main(["scale-sim", "--load-points", str(COMMITTED_LOAD_POINTS), "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("burst", "ramp"):
        with (tmp_path / f"simulated_{name}.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        assert rows and all(row["simulated"] == "True" for row in rows)
        assert {"t_s", "offered_rps", "ready_replicas", "desired_replicas", "in_flight_per_pod", "p99_s"} <= set(
            rows[0]
        )
        assert f"SIMULATED {name}:" in printed
    assert (tmp_path / "scaling_simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# SIMULATION")
    assert "**Every number below is SIMULATED**" in summary
    assert printed.startswith("SIMULATION:")
    points = scaling.read_load_points(COMMITTED_LOAD_POINTS)
    target = derive_target_in_flight(points, slo_p99_s=2 * scaling.c1_p99_s(points))
    assert f"in-flight requests per pod: {target:.3f} (`{kubernetes_quantity(target)}`)" in printed


def test_scale_sim_refuses_an_slo_no_load_point_meets(tmp_path: Path, capsys):
    assert cli.main(["scale-sim", "--slo-p99-s", "0.01", "-o", str(tmp_path)]) == 2
    assert "no in-flight target meets it" in capsys.readouterr().err
