"""A SIMULATION of Kubernetes' HorizontalPodAutoscaler scaling sdtriton replicas, from one replica's measured load.

Nothing here is measured on a cluster: it replays the HPA's algorithm (autoscaling/v2, as
https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#algorithm-details documents it and
``pkg/controller/podautoscaler`` implements it) over a model of each replica built from a perf run's load points,
so that a target, replica bounds and a startup delay can be judged against a request-rate trace before a
cluster exists. Every output says SIMULATION.

The parts, each a function or a small class that unit tests drive by hand:

1. Load points (:func:`read_load_points`): the rows of ``engine_load_points.csv`` that describe one server at
   one concurrency: section ``sweep``, variant ``batching_on`` (the default export: ``max_running_images`` 8),
   ``simulated`` False. Each is a closed loop of ``c`` clients: images/s and p50/p99 latency.
2. The replica model (:class:`ReplicaModel`), a fluid one:

   - A pod offered ``r`` requests/s below its capacity holds ``c`` requests in flight, where ``c`` is the
     concurrency whose measured throughput is ``r`` (linear between points, through the origin). That is Little's
     law, ``L = r * W``, with the closed loop's ``W = c / X(c)``: a steady open load at the rate ``c`` clients
     reached holds ``c`` in flight. Arrivals' burstiness (a Poisson stream queues more) is left out.
   - Capacity is the highest measured images/s; more concurrency than where it is reached only queues. Beyond
     it the surplus joins a backlog shared by the ready pods (a Service spreads requests evenly); a saturated
     pod holds its saturation concurrency plus its share of the backlog, and the backlog drains at the
     pods' spare capacity when the load falls.
   - An engine holds at most ``max_pending_requests`` (running plus waiting) and refuses the rest at once
     (``UNAVAILABLE``); the backlog is capped at that, and what does not fit is counted as refused.
   - p99 latency of an interval: the measured p99 interpolated at the in-flight concurrency (the concurrency-1
     p99 below one request), plus, when saturated, the time a pod's backlog share takes to drain at capacity.

3. The HPA (:class:`HorizontalPodAutoscaler`), every sync period (15 s):
   ``desired = ceil(currentReplicas * currentMetric / target)``, no change while the ratio is within the
   tolerance (0.1); then the stabilization windows (scaling up: the lowest recommendation of the window;
   scaling down: the highest), then the scaling policies (``Pods`` / ``Percent`` per period, ``selectPolicy``
   ``Max``, ``Min`` or ``Disabled``), then ``minReplicas`` / ``maxReplicas``.
   The metric is in-flight requests per pod (``sdtriton_requests_running + sdtriton_requests_waiting``,
   averaged over the pods that report it). A new pod serves, and reports, only ``startup_s`` after the HPA adds
   it (image pull, engine load, warm-up): its ``sdtriton_*`` series appear when the pipeline model loads, so
   until then it is one of the HPA's *missing* pods: counted at 0 on a scale-up and at the target on a
   scale-down, the ratio recomputed, and no change when that flips the direction or falls within the
   tolerance. The HPA reads the metric as it is at the sync instant; a real chain (15 s scrape, rule
   evaluation, the metrics adapter) adds up to about 30 s, which acts much like a longer startup.
   Pods removed by a scale-down are the ones not ready first, then the newest (as a ReplicaSet chooses); their
   requests finish (graceful termination) and the Service stops sending them new ones at once.
"""

from __future__ import annotations

import argparse
import csv
import enum
import itertools
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdtriton.perf.model import BATCHING_ON

logger = logging.getLogger(__name__)

# The rows of an engine profile's ``engine_load_points.csv`` that describe one server at one concurrency.
SWEEP_SECTION = "sweep"  # as sdtriton.perf.report writes it
DEFAULT_VARIANT = BATCHING_ON
DEFAULT_LOAD_POINTS = Path(__file__).resolve().parents[1] / "perf" / "results" / "engine" / "engine_load_points.csv"
DEFAULT_OUTPUT_DIR = Path("outputs/scaling")

# The default SLO when none is given: p99 at most this many times the measured concurrency-1 p99.
DEFAULT_SLO_OVER_C1_P99 = 2.0
# The HPA controller's defaults (kube-controller-manager flags).
HPA_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
HPA_SYNC_PERIOD_S = 15.0  # --horizontal-pod-autoscaler-sync-period
# The export's default --max-pending-requests (EngineLimits.max_pending_requests): running plus waiting per pod.
DEFAULT_MAX_PENDING_PER_POD = 32
# Assumed, not measured: tritonserver start, model load and warm-up requests on a node that is already up.
DEFAULT_STARTUP_S = 60.0
DEFAULT_MIN_REPLICAS = 1
DEFAULT_MAX_REPLICAS = 10
# The built-in traces' request rates, in multiples of one replica's capacity.
BASE_LOAD_OVER_CAPACITY = 0.5
PEAK_LOAD_OVER_CAPACITY = 5.0
# Samples written to the CSV files, every this many seconds of simulated time.
CSV_EVERY_S = 5.0

CSV_NAME_TEMPLATE = "simulated_{trace}.csv"
PLOT_NAME = "scaling_simulation.png"
SUMMARY_NAME = "summary.md"
_CSV_COLUMNS = (
    "simulated",
    "t_s",
    "offered_rps",
    "ready_replicas",
    "desired_replicas",
    "recommended_replicas",
    "in_flight_per_pod",
    "queued",
    "refused_rps",
    "p99_s",
)


class ScalingInputError(ValueError):
    """Load points, settings or a trace the simulation cannot use; the message names the value."""


@dataclass(frozen=True)
class LoadPoint:
    """One server at one concurrency (a closed loop of that many clients), as a perf run measured it.

    Attributes:
        concurrency: clients, each sending its next request when the last one is answered.
        images_per_s: completed requests per second (one image each).
        p50_s: median latency, seconds.
        p99_s: 99th percentile latency, seconds.
    """

    concurrency: int
    images_per_s: float
    p50_s: float
    p99_s: float


_MS_PER_S = 1000.0


def read_load_points(
    path: Path, *, section: str = SWEEP_SECTION, variant: str = DEFAULT_VARIANT
) -> tuple[LoadPoint, ...]:
    """The measured (not simulated) load points of one server variant from an engine profile's CSV.

    Args:
        path: an ``engine_load_points.csv`` (columns section, variant, simulated, concurrency, images_per_s,
            p50_ms, p99_ms, ...).
        section: the CSV's section (``sweep``: one server, each level in turns with the other variant).
        variant: ``batching_on`` (the default export) or ``batching_off``.

    Returns:
        The points by ascending concurrency.

    Raises:
        ScalingInputError: a missing column, no matching row, a repeated concurrency or an unreadable number.
    """
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = {"section", "variant", "simulated", "concurrency", "images_per_s", "p50_ms", "p99_ms"} - set(
            reader.fieldnames or ()
        )
        if missing:
            raise ScalingInputError(f"{path}: no column {', '.join(sorted(missing))}")
        points = []
        for line, row in enumerate(reader, start=2):
            if row["section"] != section or row["variant"] != variant or row["simulated"].strip().lower() != "false":
                continue
            try:
                points.append(
                    LoadPoint(
                        concurrency=int(row["concurrency"]),
                        images_per_s=float(row["images_per_s"]),
                        p50_s=float(row["p50_ms"]) / _MS_PER_S,
                        p99_s=float(row["p99_ms"]) / _MS_PER_S,
                    )
                )
            except ValueError as error:
                raise ScalingInputError(f"{path}:{line}: {error}") from None
    if not points:
        raise ScalingInputError(f"{path}: no measured row of section {section!r}, variant {variant!r}")
    points.sort(key=lambda point: point.concurrency)
    return _checked(points)


def _checked(points: Sequence[LoadPoint]) -> tuple[LoadPoint, ...]:
    if not points:
        raise ScalingInputError("no load points")
    for point in points:
        if point.concurrency < 1 or point.images_per_s <= 0 or point.p99_s <= 0:
            raise ScalingInputError(f"load point {point}: concurrency, images/s and p99 must be positive")
    concurrencies = [point.concurrency for point in points]
    if concurrencies != sorted(set(concurrencies)):
        raise ScalingInputError(f"load points need distinct ascending concurrencies, got {concurrencies}")
    return tuple(points)


def _interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """``y`` at ``x``, linear between the points (``xs`` ascending), held at the end values outside them."""
    return float(np.interp(x, xs, ys))


def c1_p99_s(points: Sequence[LoadPoint]) -> float:
    """The p99 of the lowest concurrency measured (concurrency 1 in an engine profile)."""
    return _checked(points)[0].p99_s


def derive_target_in_flight(points: Sequence[LoadPoint], *, slo_p99_s: float) -> float:
    """The HPA target: the highest in-flight requests per pod whose p99 meets the SLO.

    Walks up the measured concurrencies to the first whose p99 is over ``slo_p99_s`` and interpolates linearly
    between it and the one before: where the p99 line crosses the SLO. When every point meets the SLO, the highest
    measured concurrency (no extrapolation past what was measured).

    Raises:
        ScalingInputError: the SLO is not positive, or even the lowest concurrency's p99 is over it.
    """
    points = _checked(points)
    if slo_p99_s <= 0:
        raise ScalingInputError(f"slo_p99_s must be positive, got {slo_p99_s}")
    if points[0].p99_s > slo_p99_s:
        raise ScalingInputError(
            f"slo_p99_s {slo_p99_s:g} s is below the p99 at concurrency {points[0].concurrency} "
            f"({points[0].p99_s:g} s): no in-flight target meets it"
        )
    for below, above in itertools.pairwise(points):
        if above.p99_s > slo_p99_s:
            share = (slo_p99_s - below.p99_s) / (above.p99_s - below.p99_s)
            return below.concurrency + share * (above.concurrency - below.concurrency)
    return float(points[-1].concurrency)


def kubernetes_quantity(value: float) -> str:
    """A target as the HPA's ``averageValue`` takes it: whole milli-units (``2.548`` -> ``2548m``, ``4`` -> ``4``)."""
    milli = math.floor(value * 1000 + 0.5)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


@dataclass(frozen=True)
class ReplicaModel:
    """One replica's load model from its load points (see the module's docstring).

    The rate-to-in-flight curve uses the points whose throughput is above every lower concurrency's, up to the
    highest throughput: capacity. A point past that (or one that measured less than a lower concurrency) shows
    queueing, not more capacity. The p99 curve uses every point.
    """

    points: tuple[LoadPoint, ...]
    _rising: tuple[LoadPoint, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = _checked(self.points)
        rising: list[LoadPoint] = []
        for point in points:
            if not rising or point.images_per_s > rising[-1].images_per_s:
                rising.append(point)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "_rising", tuple(rising))

    @property
    def capacity_rps(self) -> float:
        """The most requests per second one replica completes: the highest measured images/s."""
        return self._rising[-1].images_per_s

    @property
    def saturation_concurrency(self) -> int:
        """The concurrency at which the capacity was measured: in flight in a saturated pod, backlog aside."""
        return self._rising[-1].concurrency

    def in_flight_at(self, rate_per_pod_rps: float) -> float:
        """Requests in flight in a pod offered ``rate_per_pod_rps`` (Little's law over the load points).

        At or over capacity, the saturation concurrency: what queues beyond it is the caller's backlog.
        """
        if rate_per_pod_rps <= 0:
            return 0.0
        rates = [0.0, *(point.images_per_s for point in self._rising)]
        concurrencies = [0.0, *(float(point.concurrency) for point in self._rising)]
        return _interpolate(rate_per_pod_rps, rates, concurrencies)

    def p99_at(self, concurrency: float) -> float:
        """The measured p99 (seconds) interpolated at ``concurrency``; the lowest point's below it."""
        return _interpolate(
            concurrency, [float(point.concurrency) for point in self.points], [point.p99_s for point in self.points]
        )


class PolicyType(enum.Enum):
    """``HPAScalingPolicy.type``."""

    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(enum.Enum):
    """``HPAScalingRules.selectPolicy``: the policy allowing the most change (``Max``), the least, or none."""

    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` pods (or percent of the pods at the period's start) added or removed per ``period_s``."""

    type: PolicyType
    value: int
    period_s: float

    def __post_init__(self) -> None:
        if self.value < 1 or self.period_s <= 0:
            raise ScalingInputError(f"scaling policy {self}: value and period_s must be positive")

    def describe(self) -> str:
        if self.type is PolicyType.PERCENT:
            return f"{self.value}% per {self.period_s:g} s"
        return f"{self.value} pod{'' if self.value == 1 else 's'} per {self.period_s:g} s"


@dataclass(frozen=True)
class ScalingRules:
    """``HPAScalingRules`` of one direction: its stabilization window and policies."""

    stabilization_window_s: float
    policies: tuple[ScalingPolicy, ...]
    select_policy: SelectPolicy = SelectPolicy.MAX

    def __post_init__(self) -> None:
        if self.stabilization_window_s < 0:
            raise ScalingInputError(f"stabilization_window_s must be at least 0, got {self.stabilization_window_s}")
        if not self.policies and self.select_policy is not SelectPolicy.DISABLED:
            raise ScalingInputError("scaling rules need a policy unless selectPolicy is Disabled")

    def describe(self) -> str:
        policies = ", ".join(policy.describe() for policy in self.policies) or "none"
        return f"stabilization {self.stabilization_window_s:g} s; {policies} (selectPolicy {self.select_policy.value})"


# The Helm chart's behavior (issue 13): up at once, doubling per 30 s; down after 10 minutes, a pod per 2 minutes.
CHART_SCALE_UP = ScalingRules(stabilization_window_s=0, policies=(ScalingPolicy(PolicyType.PERCENT, 100, 30),))
CHART_SCALE_DOWN = ScalingRules(stabilization_window_s=600, policies=(ScalingPolicy(PolicyType.PODS, 1, 120),))


@dataclass(frozen=True, kw_only=True)
class HpaSettings:
    """An HPA on in-flight requests per pod (a ``Pods`` metric with an ``AverageValue`` target).

    Attributes:
        target_in_flight_per_pod: the target average value.
        min_replicas: ``minReplicas`` (at least 1).
        max_replicas: ``maxReplicas``.
        scale_up: ``behavior.scaleUp``.
        scale_down: ``behavior.scaleDown``.
        tolerance: no change while ``|metric / target - 1|`` is at most this.
        sync_period_s: how often the controller reconciles.
    """

    target_in_flight_per_pod: float
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    scale_up: ScalingRules = CHART_SCALE_UP
    scale_down: ScalingRules = CHART_SCALE_DOWN
    tolerance: float = HPA_TOLERANCE
    sync_period_s: float = HPA_SYNC_PERIOD_S

    def __post_init__(self) -> None:
        if self.target_in_flight_per_pod <= 0:
            raise ScalingInputError(f"target_in_flight_per_pod must be positive, got {self.target_in_flight_per_pod}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ScalingInputError(
                f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        if self.tolerance < 0 or self.sync_period_s <= 0:
            raise ScalingInputError("tolerance must be at least 0 and sync_period_s positive")


def metric_recommendation(
    *,
    current_replicas: int,
    metric_per_pod: float,
    target: float,
    tolerance: float = HPA_TOLERANCE,
    missing_pods: int = 0,
) -> int:
    """The replicas an ``AverageValue`` pods metric asks for, before stabilization, policies and bounds.

    ``ceil(ready * metric / target)`` over the ``current_replicas - missing_pods`` pods that report the metric,
    unchanged within the tolerance. Pods without the metric (``missing_pods``: not serving yet) count at 0 on a
    scale-up and at the target on a scale-down; if that flips the direction or lands within the tolerance, no
    change (Kubernetes' ``calcPlainMetricReplicas``).

    Raises:
        ScalingInputError: no pod reports the metric (the HPA leaves the scale alone then: callers check first).
    """
    ready = current_replicas - missing_pods
    if ready < 1:
        raise ScalingInputError(f"no pod reports the metric ({current_replicas} replicas, {missing_pods} missing)")
    ratio = metric_per_pod / target
    if missing_pods == 0:
        if abs(1.0 - ratio) <= tolerance:
            return current_replicas
        return math.ceil(ratio * ready)
    missing_value = target if ratio < 1.0 else 0.0
    new_ratio = (metric_per_pod * ready + missing_value * missing_pods) / (current_replicas * target)
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current_replicas
    replicas = math.ceil(new_ratio * current_replicas)
    if (new_ratio < 1.0 and replicas > current_replicas) or (new_ratio > 1.0 and replicas < current_replicas):
        return current_replicas
    return replicas


@dataclass(frozen=True)
class HpaDecision:
    """One sync: what the metric asked for and what the HPA set the scale to."""

    recommended_replicas: int
    desired_replicas: int


class HorizontalPodAutoscaler:
    """The HPA controller's state for one scale target: past recommendations and scale events.

    :meth:`sync` is one reconcile: metric recommendation, stabilization, scaling policies, bounds (Kubernetes'
    ``normalizeDesiredReplicasWithBehaviors``). Times are seconds of simulated time.
    """

    def __init__(self, settings: HpaSettings) -> None:
        self.settings = settings
        self._recommendations: list[tuple[float, int]] = []
        self._scale_up_events: list[tuple[float, int]] = []
        self._scale_down_events: list[tuple[float, int]] = []

    def sync(self, now_s: float, *, current_replicas: int, ready_replicas: int, metric_per_pod: float) -> HpaDecision:
        """Reconciles once: the replicas the scale target should have now.

        Args:
            now_s: the time of this sync.
            current_replicas: the scale's replicas (pods ready or starting).
            ready_replicas: pods that report the metric.
            metric_per_pod: the metric averaged over the reporting pods.
        """
        settings = self.settings
        if current_replicas > settings.max_replicas:
            return self._rescaled(now_s, current_replicas, settings.max_replicas, settings.max_replicas)
        if current_replicas < settings.min_replicas:
            return self._rescaled(now_s, current_replicas, settings.min_replicas, settings.min_replicas)
        if ready_replicas < 1:
            logger.debug("t=%g s: no pod reports the metric, scale left at %d", now_s, current_replicas)
            return HpaDecision(current_replicas, current_replicas)
        recommended = metric_recommendation(
            current_replicas=current_replicas,
            metric_per_pod=metric_per_pod,
            target=settings.target_in_flight_per_pod,
            tolerance=settings.tolerance,
            missing_pods=current_replicas - ready_replicas,
        )
        if not self._recommendations and settings.scale_down.stabilization_window_s > 0:
            self._recommendations.append((now_s, current_replicas))
        stabilized = self._stabilized(now_s, current_replicas, recommended)
        desired = self._rate_limited(now_s, current_replicas, stabilized)
        return self._rescaled(now_s, current_replicas, desired, recommended)

    def _stabilized(self, now_s: float, current: int, recommended: int) -> int:
        up_cutoff = now_s - self.settings.scale_up.stabilization_window_s
        down_cutoff = now_s - self.settings.scale_down.stabilization_window_s
        up = min([recommended, *(value for at, value in self._recommendations if at > up_cutoff)])
        down = max([recommended, *(value for at, value in self._recommendations if at > down_cutoff)])
        oldest_kept = min(up_cutoff, down_cutoff)
        self._recommendations = [(at, value) for at, value in self._recommendations if at > oldest_kept]
        self._recommendations.append((now_s, recommended))
        return min(max(current, up), down)

    @staticmethod
    def _changed_within(events: Iterable[tuple[float, int]], now_s: float, period_s: float) -> int:
        return sum(change for at, change in events if at > now_s - period_s)

    def _period_start(self, now_s: float, current: int, period_s: float) -> int:
        added = self._changed_within(self._scale_up_events, now_s, period_s)
        removed = self._changed_within(self._scale_down_events, now_s, period_s)
        return current - added + removed

    def _rate_limited(self, now_s: float, current: int, desired: int) -> int:
        settings = self.settings
        if desired > current:
            limit = self._policy_limit(settings.scale_up, now_s, current, growing=True)
            return min(desired, settings.max_replicas, max(limit, current))
        if desired < current:
            limit = self._policy_limit(settings.scale_down, now_s, current, growing=False)
            return max(desired, settings.min_replicas, min(limit, current))
        return desired

    def _policy_limit(self, rules: ScalingRules, now_s: float, current: int, *, growing: bool) -> int:
        """The furthest the policies let the replicas move now: up when ``growing``, else down."""
        if rules.select_policy is SelectPolicy.DISABLED:
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now_s, current, policy.period_s)
            if policy.type is PolicyType.PODS:
                proposals.append(start + policy.value if growing else start - policy.value)
            elif growing:  # rounded up, or a small scale would never grow
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        # Max: the policy that allows the biggest change; Min: the smallest.
        biggest = max if growing else min
        smallest = min if growing else max
        return biggest(proposals) if rules.select_policy is SelectPolicy.MAX else smallest(proposals)

    def _rescaled(self, now_s: float, current: int, desired: int, recommended: int) -> HpaDecision:
        if desired > current:
            self._scale_up_events.append((now_s, desired - current))
        elif desired < current:
            self._scale_down_events.append((now_s, current - desired))
        longest_s = max(
            (
                policy.period_s
                for rules in (self.settings.scale_up, self.settings.scale_down)
                for policy in rules.policies
            ),
            default=0.0,
        )
        self._scale_up_events = [(at, n) for at, n in self._scale_up_events if at > now_s - longest_s]
        self._scale_down_events = [(at, n) for at, n in self._scale_down_events if at > now_s - longest_s]
        return HpaDecision(recommended_replicas=recommended, desired_replicas=desired)


@dataclass(frozen=True)
class Trace:
    """Offered requests per second over time: linear between ``(time_s, rps)`` points.

    Attributes:
        name: ``ramp``, ``burst`` or the caller's.
        points: ``(time_s, requests_per_s)`` by ascending time; the first at 0 s, the last is the trace's end.
        rise_s: when the load starts to rise (the summary times scaling from it).
        fall_s: when it starts to fall back (the summary times the scale-in from it).
    """

    name: str
    points: tuple[tuple[float, float], ...]
    rise_s: float
    fall_s: float

    def __post_init__(self) -> None:
        times = [time_s for time_s, _ in self.points]
        if len(times) < 2 or times[0] != 0 or times != sorted(set(times)):
            raise ScalingInputError(f"trace {self.name!r}: need points from 0 s at ascending times, got {times}")
        if any(rate < 0 for _, rate in self.points):
            raise ScalingInputError(f"trace {self.name!r}: request rates must be at least 0")

    @property
    def duration_s(self) -> float:
        return self.points[-1][0]

    def rate_at(self, time_s: float) -> float:
        return _interpolate(time_s, [t for t, _ in self.points], [rate for _, rate in self.points])


def burst_trace(capacity_rps: float) -> Trace:
    """Half a replica's capacity, then at 2 min a step to 5 replicas' worth for 10 min, then back (45 min)."""
    base, peak = BASE_LOAD_OVER_CAPACITY * capacity_rps, PEAK_LOAD_OVER_CAPACITY * capacity_rps
    rise_s, fall_s = 120.0, 720.0
    return Trace(
        name="burst",
        points=((0.0, base), (rise_s, base), (rise_s + 1, peak), (fall_s, peak), (fall_s + 1, base), (2700.0, base)),
        rise_s=rise_s,
        fall_s=fall_s,
    )


def ramp_trace(capacity_rps: float) -> Trace:
    """Half a replica's capacity, a 20-minute ramp to 5 replicas' worth, 5 minutes there, 10 minutes down (65 min)."""
    base, peak = BASE_LOAD_OVER_CAPACITY * capacity_rps, PEAK_LOAD_OVER_CAPACITY * capacity_rps
    rise_s, top_s, fall_s, bottom_s = 120.0, 1320.0, 1620.0, 2220.0
    return Trace(
        name="ramp",
        points=((0.0, base), (rise_s, base), (top_s, peak), (fall_s, peak), (bottom_s, base), (3900.0, base)),
        rise_s=rise_s,
        fall_s=fall_s,
    )


TRACES = {"ramp": ramp_trace, "burst": burst_trace}


@dataclass(frozen=True, kw_only=True)
class SimulationOptions:
    """How the replicas behave beyond the load points.

    Attributes:
        startup_s: from the HPA adding a pod to its serving (and reporting the metric).
        max_pending_per_pod: running plus waiting requests a pod holds before refusing (None: no limit).
        step_s: the simulation's time step; the sync period must be a whole number of steps.
        initial_replicas: ready pods at 0 s (default: ``min_replicas``).
    """

    startup_s: float = DEFAULT_STARTUP_S
    max_pending_per_pod: int | None = DEFAULT_MAX_PENDING_PER_POD
    step_s: float = 1.0
    initial_replicas: int | None = None

    def __post_init__(self) -> None:
        if self.startup_s < 0 or self.step_s <= 0:
            raise ScalingInputError("startup_s must be at least 0 and step_s positive")
        if self.max_pending_per_pod is not None and self.max_pending_per_pod < 1:
            raise ScalingInputError(f"max_pending_per_pod must be at least 1, got {self.max_pending_per_pod}")


@dataclass(frozen=True)
class Sample:
    """The SIMULATED state over one time step (rates over it, levels at its end)."""

    t_s: float
    offered_rps: float
    ready_replicas: int
    desired_replicas: int
    recommended_replicas: int
    in_flight_per_pod: float
    queued: float
    refused_rps: float
    p99_s: float


@dataclass(frozen=True)
class SimulationSummary:
    """What one SIMULATED trace came to.

    Attributes:
        first_scale_up_s: from the trace's rise to the HPA's first scale-up (None: none).
        peak_ready_s: from the rise to the first time ready replicas reached ``max_ready_replicas``.
        slo_recovered_s: from the rise to p99 back within the SLO after its first excess (0: never over it;
            None: not back by the end).
        scale_in_s: from the trace's fall to the scale back at ``min_replicas`` (None: not by the end).
        share_over_slo: of the trace's time, the share with p99 over the SLO.
        episodes_over_slo: separate stretches of p99 over the SLO (more than one: the scale went back and forth).
        refused: requests refused (engine full) over the trace; ``offered`` all requests offered.
        replica_minutes: pods (ready or starting) times minutes: what the trace cost.
    """

    trace: str
    max_ready_replicas: int
    max_desired_replicas: int
    first_scale_up_s: float | None
    peak_ready_s: float
    slo_recovered_s: float | None
    scale_in_s: float | None
    worst_p99_s: float
    share_over_slo: float
    episodes_over_slo: int
    refused: float
    offered: float
    replica_minutes: float


@dataclass(frozen=True)
class SimulationResult:
    """A SIMULATED run of one trace: its inputs and a sample per time step."""

    trace: Trace
    model: ReplicaModel
    settings: HpaSettings
    options: SimulationOptions
    slo_p99_s: float
    samples: tuple[Sample, ...]

    def summary(self) -> SimulationSummary:
        samples, step_s = self.samples, self.options.step_s
        rise_s, fall_s = self.trace.rise_s, self.trace.fall_s
        max_ready = max(sample.ready_replicas for sample in samples)
        initial = self.options.initial_replicas or self.settings.min_replicas
        previous = [initial, *(sample.desired_replicas for sample in samples)]
        first_up = next(
            (
                sample.t_s - rise_s
                for sample, before in zip(samples, previous, strict=False)
                if sample.t_s >= rise_s and sample.desired_replicas > before
            ),
            None,
        )
        peak_ready_s = next(s.t_s for s in samples if s.ready_replicas == max_ready) - rise_s
        over = [s for s in samples if s.t_s >= rise_s and s.p99_s > self.slo_p99_s]
        if not over:
            recovered: float | None = 0.0
        else:
            recovered = next(
                (s.t_s - rise_s for s in samples if s.t_s > over[0].t_s and s.p99_s <= self.slo_p99_s), None
            )
        minimum = self.settings.min_replicas
        last_above = max((s.t_s for s in samples if s.desired_replicas != minimum), default=None)
        if samples[-1].desired_replicas != minimum:
            scale_in: float | None = None
        elif last_above is None or last_above < fall_s:
            scale_in = 0.0
        else:
            scale_in = last_above + step_s - fall_s
        return SimulationSummary(
            trace=self.trace.name,
            max_ready_replicas=max_ready,
            max_desired_replicas=max(sample.desired_replicas for sample in samples),
            first_scale_up_s=first_up,
            peak_ready_s=peak_ready_s,
            slo_recovered_s=recovered,
            scale_in_s=scale_in,
            worst_p99_s=max(sample.p99_s for sample in samples),
            share_over_slo=sum(sample.p99_s > self.slo_p99_s for sample in samples) / len(samples),
            episodes_over_slo=sum(
                later.p99_s > self.slo_p99_s >= earlier.p99_s for earlier, later in itertools.pairwise(samples)
            )
            + (samples[0].p99_s > self.slo_p99_s),
            refused=sum(sample.refused_rps for sample in samples) * step_s,
            offered=sum(sample.offered_rps for sample in samples) * step_s,
            replica_minutes=sum(sample.desired_replicas for sample in samples) * step_s / 60,
        )


def simulate(
    trace: Trace,
    model: ReplicaModel,
    settings: HpaSettings,
    *,
    slo_p99_s: float,
    options: SimulationOptions = SimulationOptions(),
) -> SimulationResult:
    """Replays ``trace`` against replicas of ``model`` scaled by an HPA with ``settings``: a SIMULATION.

    Each step: the offered rate is spread over the ready pods; the backlog grows by what exceeds their capacity
    (refused past ``max_pending_per_pod``) or drains by their spare capacity; in-flight per pod and the p99 follow
    from the model. On every sync period the HPA reads in-flight per ready pod and sets the replicas; a pod it adds
    serves after ``startup_s``.

    Raises:
        ScalingInputError: a sync period that is not a whole number of steps, or a pending limit below the
            replica's saturation concurrency.
    """
    step_s = options.step_s
    steps_per_sync = settings.sync_period_s / step_s
    if abs(steps_per_sync - round(steps_per_sync)) > 1e-9:
        raise ScalingInputError(f"sync_period_s {settings.sync_period_s:g} is not a multiple of step_s {step_s:g}")
    steps_per_sync = round(steps_per_sync)
    saturation = model.saturation_concurrency
    pending = options.max_pending_per_pod
    if pending is not None and pending < saturation:
        raise ScalingInputError(
            f"max_pending_per_pod {pending} is below the concurrency of the replica's capacity ({saturation})"
        )
    initial = settings.min_replicas if options.initial_replicas is None else options.initial_replicas
    if initial < 1:
        raise ScalingInputError(f"initial_replicas must be at least 1, got {initial}")
    # Pods ready at 0 s and scale-downs removing the latest to serve first keep at least one pod serving.
    ready_at_s = [0.0] * initial  # one entry per pod: when it serves
    hpa = HorizontalPodAutoscaler(settings)
    recommended = len(ready_at_s)
    queued = 0.0
    samples = []
    capacity = model.capacity_rps
    for index in range(math.floor(trace.duration_s / step_s) + 1):
        now_s = index * step_s
        offered = trace.rate_at(now_s)
        ready = sum(at <= now_s for at in ready_at_s)
        refused = 0.0
        spare = ready * capacity - offered
        if queued > 0 or spare < 0:
            queued = max(0.0, queued - spare * step_s)
            if pending is not None:
                room = ready * (pending - saturation)
                refused = max(0.0, queued - room) / step_s
                queued = min(queued, room)
        if queued > 0:
            in_flight = saturation + queued / ready
            p99_s = model.p99_at(saturation) + queued / ready / capacity
        else:
            in_flight = model.in_flight_at(offered / ready)
            p99_s = model.p99_at(in_flight)
        if index % steps_per_sync == 0:
            decision = hpa.sync(now_s, current_replicas=len(ready_at_s), ready_replicas=ready, metric_per_pod=in_flight)
            recommended = decision.recommended_replicas
            ready_at_s = _rescaled(ready_at_s, decision.desired_replicas, ready_when_added_s=now_s + options.startup_s)
        samples.append(
            Sample(
                t_s=now_s,
                offered_rps=offered,
                ready_replicas=ready,
                desired_replicas=len(ready_at_s),
                recommended_replicas=recommended,
                in_flight_per_pod=in_flight,
                queued=queued,
                refused_rps=refused,
                p99_s=p99_s,
            )
        )
    result = SimulationResult(
        trace=trace, model=model, settings=settings, options=options, slo_p99_s=slo_p99_s, samples=tuple(samples)
    )
    logger.info("SIMULATED %s trace: %d steps of %g s", trace.name, len(samples), step_s)
    return result


def _rescaled(ready_at_s: list[float], replicas: int, *, ready_when_added_s: float) -> list[float]:
    """Pods after a scale to ``replicas``: new ones serve later; removed ones are the latest to serve first."""
    if replicas >= len(ready_at_s):
        return ready_at_s + [ready_when_added_s] * (replicas - len(ready_at_s))
    return sorted(ready_at_s)[:replicas]


# Outputs: a CSV per trace, one plot, the summary. Every one says SIMULATION.


def write_csv(result: SimulationResult, path: Path, *, every_s: float = CSV_EVERY_S) -> Path:
    """The samples every ``every_s`` seconds; every row's ``simulated`` column is ``True``."""
    stride = max(1, round(every_s / result.options.step_s))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(_CSV_COLUMNS)
        for sample in result.samples[::stride]:
            writer.writerow(
                (
                    True,
                    f"{sample.t_s:g}",
                    f"{sample.offered_rps:.4f}",
                    sample.ready_replicas,
                    sample.desired_replicas,
                    sample.recommended_replicas,
                    f"{sample.in_flight_per_pod:.4f}",
                    f"{sample.queued:.3f}",
                    f"{sample.refused_rps:.4f}",
                    f"{sample.p99_s:.4f}",
                )
            )
    return path


def write_plot(results: Sequence[SimulationResult], path: Path) -> Path:
    """Per trace (a column): offered load and capacity, replicas, in-flight per pod, p99 against the SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(4, len(results), figsize=(7.5 * len(results), 12), sharex="col", squeeze=False)
    for column, result in enumerate(results):
        minutes = [sample.t_s / 60 for sample in result.samples]
        load_axis, replica_axis, in_flight_axis, p99_axis = axes[:, column]
        capacity = result.model.capacity_rps
        load_axis.plot(minutes, [s.offered_rps for s in result.samples], color="black", label="offered requests/s")
        load_axis.plot(
            minutes,
            [s.ready_replicas * capacity for s in result.samples],
            color="tab:green",
            label=f"ready capacity ({capacity:.2f}/s per replica)",
        )
        load_axis.plot(minutes, [s.refused_rps for s in result.samples], color="tab:red", label="refused requests/s")
        load_axis.set_ylabel("requests/s")
        load_axis.set_title(f"SIMULATION ({result.trace.name} trace): not measured on a cluster")
        replica_axis.step(minutes, [s.desired_replicas for s in result.samples], where="post", label="desired (HPA)")
        replica_axis.plot(minutes, [s.ready_replicas for s in result.samples], color="tab:green", label="ready")
        replica_axis.plot(
            minutes,
            [s.recommended_replicas for s in result.samples],
            ":",
            color="grey",
            label="metric's recommendation (clipped)",
        )
        replica_axis.axhline(result.settings.max_replicas, color="tab:red", linestyle="--", label="maxReplicas")
        # The raw recommendation of a saturated pod runs far past maxReplicas; the scale is what matters.
        replica_axis.set_ylim(0, result.settings.max_replicas * 1.3)
        replica_axis.set_ylabel("replicas")
        replica_axis.set_title(f"simulated replicas (pod startup {result.options.startup_s:g} s)")
        in_flight_axis.plot(
            minutes, [s.in_flight_per_pod for s in result.samples], color="tab:purple", label="in flight"
        )
        in_flight_axis.axhline(
            result.settings.target_in_flight_per_pod, color="black", linestyle="--", label="HPA target"
        )
        in_flight_axis.set_ylabel("requests per ready pod")
        in_flight_axis.set_title("simulated in-flight requests per pod (the HPA's metric)")
        p99_axis.plot(minutes, [s.p99_s for s in result.samples], color="tab:orange", label="p99 estimate")
        p99_axis.axhline(result.slo_p99_s, color="black", linestyle="--", label=f"SLO {result.slo_p99_s:.3g} s")
        p99_axis.set_ylabel("seconds")
        p99_axis.set_xlabel("minutes")
        p99_axis.set_title("simulated p99 latency")
        for axis in axes[:, column]:
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7, loc="upper right")
    figure.suptitle("SIMULATION of the Kubernetes HPA over measured single-replica load points")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.0f} s"


def summary_markdown(
    results: Sequence[SimulationResult], *, load_points_path: str, slo_note: str, target_note: str
) -> str:
    """The SIMULATION's summary: inputs, the model's rules, a row per trace."""
    first = results[0]
    model, settings, options = first.model, first.settings, first.options
    lines = [
        "# SIMULATION: the Kubernetes HPA scaling sdtriton replicas",
        "",
        "**Every number below is SIMULATED** by `sdtriton scale-sim` (`sdtriton/scaling.py`): Kubernetes' "
        "HorizontalPodAutoscaler algorithm replayed over a model of one replica built from measured load points. "
        "No cluster was run.",
        "",
        f"## Inputs (measured): one replica's load points, `{load_points_path}`",
        "",
        f"Rows of section `{SWEEP_SECTION}`, variant `{DEFAULT_VARIANT}`, not simulated: one server (the default "
        "export, step batching on) under a closed loop of `c` clients.",
        "",
        "| concurrency | images/s | p50 s | p99 s |",
        "|---:|---:|---:|---:|",
        *(f"| {p.concurrency} | {p.images_per_s:.3f} | {p.p50_s:.3f} | {p.p99_s:.3f} |" for p in model.points),
        "",
        f"- Replica capacity: **{model.capacity_rps:.3f} requests/s** (the highest measured images/s, at "
        f"concurrency {model.saturation_concurrency}).",
        f"- SLO: {slo_note}.",
        f"- HPA target, in-flight requests per pod: {target_note}.",
        "",
        "## Simulated HPA",
        "",
        f"- Metric: in-flight requests per pod (`sdtriton_requests_running + sdtriton_requests_waiting`), "
        f"`AverageValue` target **{settings.target_in_flight_per_pod:.3f}** "
        f"(`{kubernetes_quantity(settings.target_in_flight_per_pod)}`).",
        f"- minReplicas {settings.min_replicas}, maxReplicas {settings.max_replicas}; tolerance "
        f"{settings.tolerance:g}; sync every {settings.sync_period_s:g} s.",
        f"- scaleUp: {settings.scale_up.describe()}.",
        f"- scaleDown: {settings.scale_down.describe()}.",
        f"- A new pod serves {options.startup_s:g} s after the HPA adds it (assumed); until then it reports no "
        "metric and counts as the HPA's missing pod (0 on a scale-up, the target on a scale-down).",
        "- Each pod holds at most "
        + ("no limit of" if options.max_pending_per_pod is None else f"{options.max_pending_per_pod}")
        + " requests (running plus waiting, `max_pending_requests`); more are refused.",
        "",
        "## Simulated traces",
        "",
        f"Rates in multiples of one replica's capacity: {BASE_LOAD_OVER_CAPACITY:g}x at rest, "
        f"{PEAK_LOAD_OVER_CAPACITY:g}x at the peak. `burst`: a step up at 2 min, held 10 min, a step down. `ramp`: "
        "a 20-minute rise from 2 min, 5 minutes at the peak, a 10-minute fall. Times below are from the rise (scale "
        "in: from the start of the fall).",
        "",
        "| SIMULATED trace | max ready replicas | first scale-up | peak ready after | p99 back within SLO after "
        "| worst p99 | time p99 over SLO (stretches) | refused | scale-in done after | replica-minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        s = result.summary()
        lines.append(
            f"| {s.trace} | {s.max_ready_replicas} | {_seconds(s.first_scale_up_s, 'none')} "
            f"| {s.peak_ready_s:.0f} s | {_seconds(s.slo_recovered_s, 'not by the end')} | {s.worst_p99_s:.2f} s "
            f"| {s.share_over_slo:.1%} ({s.episodes_over_slo}) "
            f"| {s.refused:.0f} of {s.offered:.0f} ({s.refused / s.offered:.1%}) "
            f"| {_seconds(s.scale_in_s, 'not by the end')} | {s.replica_minutes:.0f} |"
        )
    lines += [
        "",
        f"![SIMULATION]({PLOT_NAME})",
        "",
        "CSV per trace: "
        + ", ".join(f"`{CSV_NAME_TEMPLATE.format(trace=r.trace.name)}`" for r in results)
        + f" (every {CSV_EVERY_S:g} s of simulated time; column `simulated` is True on every row).",
        "",
        "## What the SIMULATION leaves out",
        "",
        "- A pod's load is fluid: the closed loop's in-flight at the same rate (Little's law), no Poisson "
        "burstiness, and a backlog that drains at the pods' spare capacity.",
        "- The metric pipeline's delay (scrape, recording rule, metrics adapter: up to ~30 s), node provisioning "
        "and image pulls: add them to `--startup-s`.",
        "- Refused requests are not retried; a real client retrying them adds load.",
        "- The load points come from the machine of the perf run; a GPU replica has another curve: run "
        "`sdtriton perf --profile engine` there and pass its CSV with `--load-points`.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(
    results: Sequence[SimulationResult],
    directory: Path,
    *,
    load_points_path: str,
    slo_note: str,
    target_note: str,
) -> Mapping[str, Path]:
    """Writes the SIMULATION's CSVs (one per trace), plot and summary into ``directory``; returns their paths."""
    if not results:
        raise ScalingInputError("no simulated trace to write")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        result.trace.name: write_csv(result, directory / CSV_NAME_TEMPLATE.format(trace=result.trace.name))
        for result in results
    }
    paths["plot"] = write_plot(results, directory / PLOT_NAME)
    summary_path = directory / SUMMARY_NAME
    summary_path.write_text(
        summary_markdown(results, load_points_path=load_points_path, slo_note=slo_note, target_note=target_note)
    )
    paths["summary"] = summary_path
    logger.info("SIMULATION outputs in %s", directory)
    return paths


def _scale_sim(args: argparse.Namespace) -> int:
    load_points = args.load_points or DEFAULT_LOAD_POINTS
    try:
        shown_path = str(load_points.resolve().relative_to(Path.cwd()))
    except ValueError:
        shown_path = str(load_points)
    try:
        points = read_load_points(load_points)
        measured_c1_p99_s = c1_p99_s(points)
        if args.slo_p99_s is None:
            slo_p99_s = DEFAULT_SLO_OVER_C1_P99 * measured_c1_p99_s
            slo_note = (
                f"p99 <= {slo_p99_s:.3f} s ({DEFAULT_SLO_OVER_C1_P99:g}x the measured p99 at concurrency "
                f"{points[0].concurrency}, {measured_c1_p99_s:.3f} s)"
            )
        else:
            slo_p99_s = args.slo_p99_s
            slo_note = f"p99 <= {slo_p99_s:g} s (--slo-p99-s)"
        if args.target_in_flight is None:
            target = derive_target_in_flight(points, slo_p99_s=slo_p99_s)
            target_note = (
                f"{target:.3f} (`{kubernetes_quantity(target)}`), derived: the concurrency where the measured "
                "p99 crosses the SLO, linear between load points"
            )
        else:
            target = args.target_in_flight
            target_note = f"{target:g} (--target-in-flight)"
        model = ReplicaModel(points)
        settings = HpaSettings(
            target_in_flight_per_pod=target,
            min_replicas=DEFAULT_MIN_REPLICAS if args.min_replicas is None else args.min_replicas,
            max_replicas=DEFAULT_MAX_REPLICAS if args.max_replicas is None else args.max_replicas,
        )
        pending = DEFAULT_MAX_PENDING_PER_POD if args.max_pending_requests is None else args.max_pending_requests
        options = SimulationOptions(
            startup_s=DEFAULT_STARTUP_S if args.startup_s is None else args.startup_s,
            max_pending_per_pod=pending or None,
        )
        names = list(TRACES) if args.trace == "both" else [args.trace]
        results = [
            simulate(TRACES[name](model.capacity_rps), model, settings, slo_p99_s=slo_p99_s, options=options)
            for name in names
        ]
    except (OSError, ScalingInputError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    paths = write_outputs(results, args.output, load_points_path=shown_path, slo_note=slo_note, target_note=target_note)
    lines = [
        "SIMULATION: the Kubernetes HPA replayed over measured load points of one replica; no cluster was run",
        f"SLO: {slo_note}",
        f"SIMULATED HPA target, in-flight requests per pod: {target_note}",
    ]
    for result in results:
        summary = result.summary()
        recovered = "not by the end" if summary.slo_recovered_s is None else f"{summary.slo_recovered_s:.0f} s"
        first_up = "none" if summary.first_scale_up_s is None else f"{summary.first_scale_up_s:.0f} s"
        lines.append(
            f"SIMULATED {summary.trace}: max {summary.max_ready_replicas} ready replicas, first scale-up {first_up} "
            f"and peak replicas ready {summary.peak_ready_s:.0f} s after the rise, p99 within SLO again after "
            f"{recovered}; worst p99 {summary.worst_p99_s:.2f} s, p99 over SLO {summary.share_over_slo:.1%} of the "
            f"time in {summary.episodes_over_slo} stretch(es), refused "
            f"{summary.refused / summary.offered:.1%} of requests"
        )
    lines += [str(path.resolve()) for path in paths.values()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def add_scale_sim_command(commands: argparse._SubParsersAction) -> None:
    scale_sim = commands.add_parser(
        "scale-sim",
        help="SIMULATION of the Kubernetes HPA scaling replicas, from one replica's measured load points "
        "(perf/README.md)",
    )
    scale_sim.add_argument(
        "--load-points",
        type=Path,
        help="an engine profile's engine_load_points.csv; its measured sweep rows with step batching on are used "
        "(default: perf/results/engine/engine_load_points.csv)",
    )
    scale_sim.add_argument(
        "--slo-p99-s", type=float, help="p99 latency objective, seconds (default: 2x the measured concurrency-1 p99)"
    )
    scale_sim.add_argument(
        "--target-in-flight",
        type=float,
        help="the HPA's target in-flight requests per pod (default: where the measured p99 crosses the SLO)",
    )
    scale_sim.add_argument("--min-replicas", type=int, help="minReplicas (default 1)")
    scale_sim.add_argument("--max-replicas", type=int, help="maxReplicas (default 10)")
    scale_sim.add_argument(
        "--startup-s", type=float, help="seconds from the HPA adding a pod to its serving (default 60, assumed)"
    )
    scale_sim.add_argument(
        "--max-pending-requests",
        type=int,
        help="requests a pod holds before refusing, as exported (default 32; 0: no limit)",
    )
    scale_sim.add_argument("--trace", choices=["ramp", "burst", "both"], default="both", help="request-rate trace")
    scale_sim.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT_DIR, help="folder for the CSVs, plot and summary.md"
    )
    scale_sim.set_defaults(run=_scale_sim)
