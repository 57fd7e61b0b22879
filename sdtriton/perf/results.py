"""What one ``sdtriton perf`` run measured, and the numbers derived from it: ratios, BLS cost, time breakdown.

Pure: built by :mod:`sdtriton.perf.runner`, rendered by :mod:`sdtriton.perf.report`, checked by unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sdtriton.perf.run import MachineInfo, NetworkTimes, PathTiming, StepSlope
from sdtriton.perf.scenarios import LoadMode, LoadPoint, Protocol, Scenario
from sdtriton.perf.stats import ModelStats
from sdtriton.perf.workload import RequestSpec

# The goals of issue 3, on the default model at concurrency 1.
GOAL_TRITON_OVER_DIFFUSERS = 0.9
GOAL_TRITON_OVER_ONNX_LOOP = 1.1
GOAL_BLS_UNET_CALL_MS = 0.3


@dataclass(frozen=True)
class TritonBreakdown:
    """Triton's per-model statistics over the client-timed runs of the baseline request (deltas).

    ``entry`` (``stable_diffusion``) and ``pipeline`` answer from other threads (their ``execute`` forwards,
    or validates, tokenizes and submits to the engine, and returns): their statistics hold that ``execute``
    alone, not the life of the request.
    """

    entry: ModelStats
    pipeline: ModelStats
    text_encoder: ModelStats
    unet: ModelStats
    vae_decoder: ModelStats


def _difference_error(first: StepSlope, second: StepSlope, calls_per_step: float) -> float | None:
    errors = (first.error_ms_per_step, second.error_ms_per_step)
    if None in errors:
        return None
    return math.hypot(*errors) / calls_per_step


@dataclass(frozen=True)
class BlsProbe:
    """Both paths over the identity-UNet repository (:mod:`sdtriton.perf.identity`) at the slope step counts."""

    onnx_loop_slope: StepSlope
    triton_slope: StepSlope
    unet_calls_per_step: float

    @property
    def round_trip_ms(self) -> float:
        """One BLS UNet call with no compute behind it: Triton's per-step cost minus the plain loop's."""
        return (self.triton_slope.ms_per_step - self.onnx_loop_slope.ms_per_step) / self.unet_calls_per_step

    @property
    def round_trip_error_ms(self) -> float | None:
        return _difference_error(self.triton_slope, self.onnx_loop_slope, self.unet_calls_per_step)


@dataclass(frozen=True)
class PerfResult:
    """Everything one run measured.

    Attributes:
        profile: the profile's name (``perf/scenarios.json``).
        machine: where and when.
        request: the baseline request, run by every path.
        diffusers: (a), or None when skipped.
        onnx_loop: (b) on the request.
        onnx_loop_networks: (b)'s per-network times.
        onnx_loop_slope: (b) at the two slope step counts.
        unet_calls_per_step: UNet calls per denoising step (2 for Heun, 1 for most schedulers).
        triton_client: (c) through the client.
        triton_slope: (c) at the two slope step counts.
        triton_breakdown: Triton's per-model statistics over ``triton_client``'s runs.
        slope_unet_stats: the UNet model's statistics over ``triton_slope``'s runs.
        points: every perf_analyzer level measured.
        scenarios: the profile's scenarios, in order.
        baseline_input_data: the input-data file of ``request``.
        skipped: levels not run, each with the reason.
        max_pixel_difference: between the paths' images, by pair name.
        elapsed_s: the run's wall time.
        bls_probe: the identity-UNet measurement, or None when it did not run.
    """

    profile: str
    machine: MachineInfo
    request: RequestSpec
    diffusers: PathTiming | None
    onnx_loop: PathTiming
    onnx_loop_networks: NetworkTimes
    onnx_loop_slope: StepSlope
    unet_calls_per_step: float
    triton_client: PathTiming
    triton_slope: StepSlope
    triton_breakdown: TritonBreakdown
    slope_unet_stats: ModelStats
    points: tuple[LoadPoint, ...]
    scenarios: tuple[Scenario, ...]
    baseline_input_data: str
    skipped: tuple[str, ...] = ()
    max_pixel_difference: Mapping[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    bls_probe: BlsProbe | None = None

    @property
    def triton_concurrency_1(self) -> LoadPoint | None:
        """perf_analyzer at concurrency 1 on the baseline request, gRPC preferred: Triton end to end."""
        candidates = [
            (point, scenario)
            for scenario in self.scenarios
            if scenario.mode is LoadMode.CONCURRENCY
            for point in self.points
            if point.scenario == scenario.name and point.concurrency == 1
        ]
        baseline_input = [pair for pair in candidates if self._uses_baseline_request(pair[1])]
        ranked = sorted(baseline_input, key=lambda pair: pair[1].protocol is not Protocol.GRPC)
        return ranked[0][0] if ranked else None

    def _uses_baseline_request(self, scenario: Scenario) -> bool:
        return scenario.input_data == self.baseline_input_data

    @property
    def triton_end_to_end_ms(self) -> float:
        """perf_analyzer's p50 at concurrency 1 on the baseline request; the client's median if none ran."""
        point = self.triton_concurrency_1
        return point.p50_ms if point is not None else self.triton_client.median_ms

    @property
    def triton_over_onnx_loop(self) -> float:
        return self.triton_end_to_end_ms / self.onnx_loop.median_ms

    @property
    def triton_over_diffusers(self) -> float | None:
        return None if self.diffusers is None else self.triton_end_to_end_ms / self.diffusers.median_ms

    @property
    def unet_call_net_ms(self) -> float:
        """What serving adds per real UNet call: (Triton's per-step cost - the plain loop's) per call."""
        return (self.triton_slope.ms_per_step - self.onnx_loop_slope.ms_per_step) / self.unet_calls_per_step

    @property
    def unet_call_net_error_ms(self) -> float | None:
        return _difference_error(self.triton_slope, self.onnx_loop_slope, self.unet_calls_per_step)

    @property
    def bls_unet_call_ms(self) -> float | None:
        """The cost of one BLS UNet call: the identity-UNet round trip; None when the probe did not run."""
        return self.bls_probe.round_trip_ms if self.bls_probe is not None else None

    @property
    def unet_server_overhead_ms(self) -> float:
        """The UNet model's time in the server per call (queue + compute) minus ONNX Runtime's own run."""
        return self.slope_unet_stats.server_ms_per_request - self.onnx_loop_networks.unet_ms_per_call


@dataclass(frozen=True)
class BreakdownRow:
    part: str
    onnx_loop_ms: float | None
    triton_ms: float | None


def time_breakdown(result: PerfResult) -> list[BreakdownRow]:
    """Where one request's time goes on each path (ms per request), from timers and Triton's statistics."""
    loop = result.onnx_loop_networks
    stats = result.triton_breakdown
    calls = loop.unet_calls_per_request
    triton_unet = stats.unet.server_ms_per_request * calls
    triton_networks = stats.text_encoder.server_ms_per_request + triton_unet + stats.vae_decoder.server_ms_per_request
    executes_ms = stats.entry.server_ms_per_request + stats.pipeline.server_ms_per_request
    return [
        BreakdownRow("text encoder", loop.encode_text_ms, stats.text_encoder.server_ms_per_request),
        BreakdownRow(f"UNet ({calls} calls)", loop.unet_ms_per_call * calls, triton_unet),
        BreakdownRow("VAE decoder", loop.decode_ms, stats.vae_decoder.server_ms_per_request),
        BreakdownRow(
            "entry and pipeline `execute` (Triton: forward; validate, tokenize, submit to the engine)",
            None,
            executes_ms,
        ),
        BreakdownRow(
            "loop glue: scheduler, torch ops, validation, tokenizer (the plain loop's time outside the networks)",
            loop.other_ms(result.onnx_loop.mean_ms),
            None,
        ),
        BreakdownRow(
            "rest of Triton: the engine loop outside network calls (scheduler, torch ops), BLS hops, client, gRPC",
            None,
            result.triton_client.mean_ms - triton_networks - executes_ms,
        ),
        BreakdownRow("total (mean of the timed runs)", result.onnx_loop.mean_ms, result.triton_client.mean_ms),
    ]


def points_of(points: Sequence[LoadPoint], scenario_name: str) -> list[LoadPoint]:
    return sorted((point for point in points if point.scenario == scenario_name), key=lambda point: point.level)
