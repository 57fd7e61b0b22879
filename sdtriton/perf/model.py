"""One model of a perf run, filled by both profiles and rendered by :mod:`sdtriton.perf.report`: the machine, what
was sent, each path's timings, and the ratios judged against the goals. Latencies in ms, throughputs in images/s."""

from __future__ import annotations

import enum
import math
import operator
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdtriton import interface
from sdtriton.components import TEXT_ENCODER, UNET, VAE_DECODER
from sdtriton.perf.workload import RequestSpec
from sdtriton.server import ModelStats
from sdtriton.serving.simulated import SimulatedLatency

if TYPE_CHECKING:  # the profiles import pydantic, which `sdtriton --help` (through sdtriton.scaling) need not load
    from sdtriton.perf.profiles import BurstSpec, MixedSpec, Scenario

# The goals of issue 3 (the perf_analyzer profile), on the default model at concurrency 1: at most.
GOAL_TRITON_OVER_DIFFUSERS = 0.9
GOAL_TRITON_OVER_ONNX_LOOP = 1.1
GOAL_BLS_UNET_CALL_MS = 0.3
# The goals of the engine profile, on the default model.
GOAL_SERVED_OVER_CEILING = 0.90  # served images/s at the ceiling's concurrency over the in-process engine's: at least
GOAL_C1_OVER_PLAIN_LOOP = 1.05  # served p50 at concurrency 1 over the plain loop's median: at most
GOAL_SHORT_P99_OVER_SHORT_ONLY = 2.0  # short requests' p99 beside long ones over their p99 alone: under
GOAL_REFUSAL_MS = 50.0  # every refused request of a burst answered within: under
GOAL_SIMULATED_SHARE_OF_ALLOWED = 0.90  # simulated c_high/c_low throughput ratio over what the model allows: at least
GOAL_GATEWAY_OVER_DIRECT = 0.95  # images/s through the HTTP gateway over direct gRPC, at the highest level: at least

# Loads and request classes: the paths timed one request at a time, the in-process engine, the served loads.
DIFFUSERS = "diffusers"
ONNX_LOOP = "onnx_loop"
TRITON = "triton"
IN_PROCESS = "in_process_engine"
BATCHING_ON = "batching_on"
BATCHING_OFF = "batching_off"
CEILING_SERVED = "ceiling_served"  # the batching-on server's loads measured in turns with the in-process ceiling
MIXED_INPUTS_SERVED = "mixed_inputs_served"  # the same over the mixed inputs (text, img2img, inpaint, adapters)
SIMULATED = "simulated"
DIRECT_GRPC = "direct_grpc"  # the gateway section's two sides: the client straight to Triton, HTTP to the gateway
GATEWAY_HTTP = "gateway_http"
SHORT = "short"
LONG = "long"
BURST = "burst"
BURST_WARMUP = "burst_warmup"
# The server message of a request the engine refused because it was full (sdtriton.serving.errors.ServerBusyError).
BUSY_MESSAGE_PREFIX = "server busy"
# The client exceptions of an UNAVAILABLE answer (``ServerBusyError`` is the newer client's subclass).
UNAVAILABLE_ERROR_TYPES = frozenset({"ServerUnavailableError", "ServerBusyError"})
# Load averages above this share of the cores mean other work shared the CPU during the run.
BUSY_LOAD_PER_CORE = 0.25
_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)


@dataclass(frozen=True)
class MachineInfo:
    """Where and when a run happened; load averages show whether other processes shared the CPU."""

    started_utc: str
    hostname: str
    cpu_model: str
    cpu_count: int
    memory_gib: float
    triton_version: str
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gpu: bool = False  # baselines on the GPU (``--gpu``)

    @classmethod
    def here(cls, *, started_utc: str, triton_version: str, load_before: tuple[float, float, float], gpu: bool):
        cpu_model, memory_gib = platform.processor() or platform.machine(), 0.0
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
            cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
            meminfo = Path("/proc/meminfo").read_text().splitlines()
            memory_gib = next(int(line.split()[1]) / 2**20 for line in meminfo if line.startswith("MemTotal:"))
        except (OSError, StopIteration):
            pass
        cpus, load_after = os.cpu_count() or 1, os.getloadavg()
        return cls(
            started_utc, platform.node(), cpu_model, cpus, memory_gib, triton_version, load_before, load_after, gpu
        )

    @property
    def busy_at_start(self) -> bool:
        return self.load_average_before[0] > BUSY_LOAD_PER_CORE * self.cpu_count


@dataclass(frozen=True)
class Load:
    """Requests of one path, variant or request class at one concurrency, a record each, and the wall time from the
    first sent to the last answer: a path timed one request at a time (:meth:`timed`), a closed loop of clients (or of
    requests in the in-process engine, whose UNet calls and batch rows are counted), or one class of a load.
    Throughput is completed requests over ``duration_s``; percentiles (numpy's linear) are the completed requests'."""

    variant: str
    concurrency: int
    records: tuple[RequestRecord, ...]
    duration_s: float
    steps: int = 0
    unet_calls: int = 0
    unet_rows: int = 0

    @classmethod
    def timed(cls, path: str, steps: int, latencies_ms: Sequence[float]) -> Load:
        starts_s = np.cumsum([0.0, *latencies_ms]) / 1000.0
        records = (
            RequestRecord(path, path, 0, start, ms, Outcome.OK)
            for start, ms in zip(starts_s[:-1], latencies_ms, strict=True)
        )
        return cls(path, 1, tuple(records), float(starts_s[-1]), steps)

    @property
    def latencies_ms(self) -> tuple[float, ...]:
        return tuple(record.latency_ms for record in self.records if record.outcome is Outcome.OK)

    def percentile_ms(self, q: float) -> float:
        """NaN for a load none of whose requests succeeded (its failures are in the report)."""
        latencies = self.latencies_ms
        return float(np.percentile(latencies, q)) if latencies else math.nan

    @property
    def median_ms(self) -> float:
        return self.percentile_ms(50)

    p50_ms = median_ms

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    @property
    def mean_ms(self) -> float:
        latencies = self.latencies_ms
        return statistics.mean(latencies) if latencies else math.nan

    @property
    def median_standard_error_ms(self) -> float | None:
        """Standard error of the median (normal approximation: 1.2533 sigma / sqrt(n)); None for one run."""
        if len(self.latencies_ms) < 2:
            return None
        return _MEDIAN_SE_FACTOR * statistics.stdev(self.latencies_ms) / math.sqrt(len(self.latencies_ms))

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def failed(self) -> int:
        return len(self.records) - self.completed

    @property
    def images_per_s(self) -> float:
        return self.completed / self.duration_s

    @property
    def rows_per_unet_call(self) -> float:
        return self.unet_rows / self.unet_calls if self.unet_calls else 0.0

    def of_class(self, request_class: str) -> Load:
        records = tuple(record for record in self.records if record.request_class == request_class)
        return Load(request_class, self.concurrency, records, self.duration_s)

    @classmethod
    def merged(cls, parts: Sequence[Load]) -> Load:
        """Turns of one variant and concurrency as one: records joined, durations, calls and rows added."""
        if not parts or len({(part.variant, part.concurrency, part.steps) for part in parts}) != 1:
            raise ValueError("merge one or more turns of one variant and concurrency")
        records = tuple(record for part in parts for record in part.records)
        sums = {name: sum(getattr(part, name) for part in parts) for name in ("duration_s", "unet_calls", "unet_rows")}
        return cls(parts[0].variant, parts[0].concurrency, records, steps=parts[0].steps, **sums)


@dataclass(frozen=True)
class StepSlope:
    """A path at two step counts: its cost per denoising step, fixed costs cancelled."""

    low: Load
    high: Load

    @property
    def steps(self) -> int:
        return self.high.steps - self.low.steps  # the profile's slope_steps increase

    @property
    def ms_per_step(self) -> float:
        return (self.high.median_ms - self.low.median_ms) / self.steps

    @property
    def error_ms_per_step(self) -> float | None:
        """One standard error of :attr:`ms_per_step`, or None when a side has a single run."""
        low, high = self.low.median_standard_error_ms, self.high.median_standard_error_ms
        return None if low is None or high is None else math.hypot(low, high) / self.steps


def per_call_difference(served: StepSlope, loop: StepSlope, calls_per_step: float) -> tuple[float, float | None]:
    """What serving adds per UNet call: (the served per-step cost - the plain loop's) per call, and its error."""
    errors = (served.error_ms_per_step, loop.error_ms_per_step)
    error = None if None in errors else math.hypot(*errors) / calls_per_step
    return (served.ms_per_step - loop.ms_per_step) / calls_per_step, error


@dataclass(frozen=True)
class NetworkTimes:
    """Where the plain loop's time goes: means over its timed runs (ms), as Triton's statistics are means."""

    encode_text_ms: float
    unet_ms_per_call: float
    unet_calls_per_request: int
    decode_ms: float

    def other_ms(self, total_ms: float) -> float:
        return total_ms - self.encode_text_ms - self.unet_ms_per_call * self.unet_calls_per_request - self.decode_ms


@dataclass(frozen=True)
class LoadPoint:
    """One level of one scenario, as perf_analyzer measured it."""

    scenario: str
    protocol: str
    mode: str
    level: float
    request_count: int
    throughput_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float
    server_compute_ms: float

    @property
    def concurrency(self) -> int | None:
        from sdtriton.perf.profiles import LoadMode

        return int(self.level) if self.mode == LoadMode.CONCURRENCY.value else None


class Outcome(enum.Enum):
    OK = "ok"  # an image came back
    REFUSED = "refused"  # UNAVAILABLE "server busy": the engine was full, nothing was started
    FAILED = "failed"  # any other error


def classify_error(message: str) -> Outcome:
    return Outcome.REFUSED if message.lstrip().lower().startswith(BUSY_MESSAGE_PREFIX) else Outcome.FAILED


@dataclass(frozen=True)
class RequestRecord:
    """One request: its load (``mixed``, ``burst``...) and class (``short``, ``long``...), its client, its start from
    the load's start, its latency to the answer, and an error's message and client exception class name."""

    load: str
    request_class: str
    client: int
    started_s: float
    latency_ms: float
    outcome: Outcome
    message: str = ""
    error_type: str = ""


@dataclass(frozen=True)
class GoalRow:
    """One goal, what was measured against it, and whether it was met (None: not measured)."""

    measure: str
    measured: str
    goal: str
    met: bool | None
    simulated: bool = False
    missed: str = "MISSED"  # the verdict when missed

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else "met" if self.met else self.missed


_COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


def _met(value: float | None, sign: str, goal: float) -> bool | None:
    return None if value is None else _COMPARISONS[sign](value, goal)


def _ratio_goal(measure: str, value: float | None, sign: str, goal: float, unit: str = "x", **row: Any) -> GoalRow:
    measured = "" if value is None else f"{value:.3f}{unit}"
    return GoalRow(measure, measured, f"{sign} {goal}{unit}", _met(value, sign, goal), **row)


@dataclass(frozen=True, kw_only=True)
class Run:
    """What every profile's run has: the machine, the base request (the first of ``input_data``), what was not run
    and why, the wall time, and other processes' CPU time (None: not measured)."""

    profile: str
    machine: MachineInfo
    request: RequestSpec
    input_data: str
    skipped: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    other_cpu_s: float | None = None

    def goal_rows(self) -> list[GoalRow]:
        raise NotImplementedError

    @property
    def other_cpu_share(self) -> float | None:
        if self.other_cpu_s is None or self.elapsed_s <= 0:
            return None
        return self.other_cpu_s / (self.elapsed_s * self.machine.cpu_count)


@dataclass(frozen=True, kw_only=True)
class PerfResult(Run):
    """The perf_analyzer profile: the three paths at concurrency 1, (a) diffusers (None: skipped), (b) the plain loop,
    (c) Triton through the client, and (b) and (c) at the slope's two step counts; Triton's per-model statistics
    over (c)'s runs and the UNet's over its slope runs; perf_analyzer's levels; the images' largest differences;
    and both paths' slopes over the identity UNet (None: the probe did not run)."""

    diffusers: Load | None
    onnx_loop: Load
    onnx_loop_networks: NetworkTimes
    onnx_loop_slope: StepSlope
    unet_calls_per_step: float
    triton_client: Load
    triton_slope: StepSlope
    triton_breakdown: Mapping[str, ModelStats]
    slope_unet_stats: ModelStats
    points: tuple[LoadPoint, ...]
    scenarios: tuple[Scenario, ...]
    max_pixel_difference: Mapping[str, int] = field(default_factory=dict)
    probe_loop_slope: StepSlope | None = None
    probe_triton_slope: StepSlope | None = None

    @property
    def triton_concurrency_1(self) -> LoadPoint | None:
        """perf_analyzer at concurrency 1 on the base request, gRPC preferred: Triton end to end."""
        from sdtriton.perf.profiles import LoadMode, Protocol

        base = [s for s in self.scenarios if s.mode is LoadMode.CONCURRENCY and s.input_data == self.input_data]
        ordered = sorted(base, key=lambda scenario: scenario.protocol is not Protocol.GRPC)  # stable: file order next
        points = (p for s in ordered for p in self.points if p.scenario == s.name and p.concurrency == 1)
        return next(points, None)

    def points_of(self, scenario_name: str) -> list[LoadPoint]:
        return sorted((point for point in self.points if point.scenario == scenario_name), key=lambda p: p.level)

    @property
    def triton_end_to_end_ms(self) -> float:
        """perf_analyzer's p50 at concurrency 1; the client's median if none ran."""
        point = self.triton_concurrency_1
        return point.p50_ms if point is not None else self.triton_client.median_ms

    @property
    def triton_over_onnx_loop(self) -> float:
        return self.triton_end_to_end_ms / self.onnx_loop.median_ms

    @property
    def triton_over_diffusers(self) -> float | None:
        return None if self.diffusers is None else self.triton_end_to_end_ms / self.diffusers.median_ms

    @property
    def unet_call_net(self) -> tuple[float, float | None]:
        return per_call_difference(self.triton_slope, self.onnx_loop_slope, self.unet_calls_per_step)

    @property
    def bls_round_trip(self) -> tuple[float, float | None] | None:
        if self.probe_triton_slope is None or self.probe_loop_slope is None:
            return None
        return per_call_difference(self.probe_triton_slope, self.probe_loop_slope, self.unet_calls_per_step)

    def time_breakdown(self) -> list[tuple[str, float | None, float | None]]:
        """(part, plain loop ms, Triton ms): where one request's time goes, from timers and Triton's statistics."""
        loop, calls = self.onnx_loop_networks, self.onnx_loop_networks.unet_calls_per_request
        stats = {name: stats.ms_per_request() for name, stats in self.triton_breakdown.items()}
        text, unet, vae = stats[TEXT_ENCODER.model_name], stats[UNET.model_name] * calls, stats[VAE_DECODER.model_name]
        executes_ms = stats[interface.ENTRY_MODEL_NAME] + stats[interface.PIPELINE_MODEL_NAME]
        rest_ms = self.triton_client.mean_ms - text - unet - vae - executes_ms
        execute = "entry and pipeline `execute` (Triton: forward; validate, tokenize, submit to the engine)"
        glue = "loop glue: scheduler, torch ops, validation, tokenizer (the plain loop's time outside the networks)"
        rest = "rest of Triton: the engine loop outside network calls (scheduler, torch ops), BLS hops, client, gRPC"
        return [
            ("text encoder", loop.encode_text_ms, text),
            (f"UNet ({calls} calls)", loop.unet_ms_per_call * calls, unet),
            ("VAE decoder", loop.decode_ms, vae),
            (execute, None, executes_ms),
            (glue, loop.other_ms(self.onnx_loop.mean_ms), None),
            (rest, None, rest_ms),
            ("total (mean of the timed runs)", self.onnx_loop.mean_ms, self.triton_client.mean_ms),
        ]

    def goal_rows(self) -> list[GoalRow]:
        """The goals of issue 3 (set for the default model at concurrency 1), a miss said with its size."""
        bls_call_ms = self.bls_round_trip and self.bls_round_trip[0]
        measures = (
            ("Triton / plain ONNX loop", self.triton_over_onnx_loop, "<=", GOAL_TRITON_OVER_ONNX_LOOP, "x"),
            ("Triton / diffusers", self.triton_over_diffusers, "<=", GOAL_TRITON_OVER_DIFFUSERS, "x"),
            ("one BLS UNet call (identity UNet)", bls_call_ms, "<", GOAL_BLS_UNET_CALL_MS, " ms"),
        )
        rows = []
        for measure, value, sign, goal, unit in measures:
            missed = "" if value is None else f"missed by {value - goal:.3g}{unit} ({value / goal:.2f}x the goal)"
            rows.append(_ratio_goal(measure, value, sign, goal, unit, missed=missed))
        return rows


@dataclass(frozen=True)
class CeilingResult:
    """(a) The in-process engine and the plain loop against the server at the ceiling's concurrency and at 1,
    measured in turns; ``turn_ratios``: each turn's served/in-process images/s (their spread: the machine's drift)."""

    in_process: Load
    served: Load
    plain_loop: Load
    served_one: Load
    turn_ratios: tuple[float, ...] = ()

    @property
    def served_over_ceiling(self) -> float:
        return self.served.images_per_s / self.in_process.images_per_s

    @property
    def one_over_plain_loop(self) -> float:
        return self.served_one.p50_ms / self.plain_loop.median_ms

    def kinds(self) -> dict[str, tuple[Load, Load, Load]]:
        """By request kind (the class of a mixed load's records) in the order sent, its in-process, served and
        served-at-1 requests."""
        sent = sorted(self.in_process.records, key=lambda record: record.client)  # the in-process engine's keys
        names = dict.fromkeys(record.request_class for record in sent)
        return {
            name: (self.in_process.of_class(name), self.served.of_class(name), self.served_one.of_class(name))
            for name in names
        }


def _ceiling_goals(letter: str, what: str, ceiling: CeilingResult | None) -> list[GoalRow]:
    """The two goals of a ceiling section."""
    served, level = f"({letter}) {what}served", ceiling.in_process.concurrency if ceiling else "?"
    ratios = (ceiling.served_over_ceiling, ceiling.one_over_plain_loop) if ceiling else (None, None)
    return [
        _ratio_goal(
            f"{served} / in-process engine images/s at concurrency {level}", ratios[0], ">=", GOAL_SERVED_OVER_CEILING
        ),
        _ratio_goal(f"{served} p50 at concurrency 1 / plain loop median", ratios[1], "<=", GOAL_C1_OVER_PLAIN_LOOP),
    ]


@dataclass(frozen=True)
class MixedResult:
    """(c) Short and long requests together, and short requests alone at the same concurrency."""

    spec: MixedSpec
    mixed: Load
    short_only: Load

    @property
    def short_p99_ratio(self) -> float | None:
        short = self.mixed.of_class(SHORT)
        if not short.completed or not self.short_only.completed:
            return None
        return short.p99_ms / self.short_only.p99_ms


@dataclass(frozen=True)
class BurstResult:
    """(d) Requests sent at once past the engine's ``max_pending_requests``, after untimed warm-up bursts."""

    spec: BurstSpec
    records: tuple[RequestRecord, ...]
    warmup_records: tuple[RequestRecord, ...] = ()

    def latencies_ms(self, outcome: Outcome, *, warmup: bool = False) -> list[float]:
        return [r.latency_ms for r in (self.warmup_records if warmup else self.records) if r.outcome is outcome]

    def count(self, outcome: Outcome) -> int:
        return len(self.latencies_ms(outcome))

    @property
    def accepted(self) -> int:
        return len(self.records) - self.count(Outcome.REFUSED)

    @property
    def refused_as_unavailable(self) -> int:
        return sum(r.outcome is Outcome.REFUSED and r.error_type in UNAVAILABLE_ERROR_TYPES for r in self.records)

    @property
    def max_refusal_ms(self) -> float | None:
        return max(self.latencies_ms(Outcome.REFUSED), default=None)


def allowed_images_per_s(
    latency: SimulatedLatency, *, concurrency: int, rows_per_image: int, unet_calls_per_image: float, non_unet_s: float
) -> float:
    """What the latency model allows at ``concurrency``: the images advance together, each UNet evaluation one call of
    ``concurrency * rows_per_image`` rows, and their other work (``non_unet_s`` an image, measured at the same
    concurrency: text encoder, VAE, scheduler, glue) runs on the CPU beside it, not overlapped."""
    if non_unet_s < 0:
        raise ValueError(f"non_unet_s must be >= 0, got {non_unet_s}")
    return concurrency / (
        unet_calls_per_image * latency.call_s(concurrency * rows_per_image) + concurrency * non_unet_s
    )


@dataclass(frozen=True)
class SimulatedResult:
    """(e) The simulated accelerator (a sleeping UNet: every number SIMULATED): UNet rows (2 with guidance) and calls
    an image, every level, and the in-process engine with a zero-time UNet at the lowest and highest level."""

    latency: SimulatedLatency
    rows_per_image: int
    unet_calls_per_image: float
    points: tuple[Load, ...]
    non_unet_low: Load
    non_unet_high: Load

    @property
    def low(self) -> Load:
        return min(self.points, key=lambda point: point.concurrency)

    @property
    def high(self) -> Load:
        return max(self.points, key=lambda point: point.concurrency)

    @property
    def measured_ratio(self) -> float:
        return self.high.images_per_s / self.low.images_per_s

    @property
    def unet_only_allowed_ratio(self) -> float:
        ratio = self.latency.throughput_ratio
        return ratio(self.high.concurrency, self.rows_per_image) / ratio(self.low.concurrency, self.rows_per_image)

    def allowed_images_per_s(self, run: Load) -> float:
        return allowed_images_per_s(
            self.latency,
            concurrency=run.concurrency,
            rows_per_image=self.rows_per_image,
            unet_calls_per_image=self.unet_calls_per_image,
            non_unet_s=1.0 / run.images_per_s,
        )

    @property
    def allowed_ratio(self) -> float:
        """The latency model's ratio with the non-UNet parts counted at their in-process cost."""
        return self.allowed_images_per_s(self.non_unet_high) / self.allowed_images_per_s(self.non_unet_low)

    @property
    def share_of_allowed(self) -> float:
        return self.measured_ratio / self.allowed_ratio

    @property
    def share_of_unet_only_allowed(self) -> float:
        return self.measured_ratio / self.unet_only_allowed_ratio


@dataclass(frozen=True)
class GatewayResult:
    """(f) The same requests straight to Triton over gRPC and through the HTTP gateway, turns merged; ``turn_ratios``:
    each turn's gateway/direct images/s at the highest level; ``gateway_cpu_ms``: the gateway process's CPU time per
    request during the direct side's loads (idle) and its own (serving)."""

    direct: tuple[Load, ...]
    gateway: tuple[Load, ...]
    turn_ratios: tuple[float, ...] = ()
    gateway_cpu_ms: tuple[float, float] | None = None

    def levels(self) -> list[tuple[Load, Load, float, float]]:
        """(direct, gateway, gateway/direct images/s, p50 overhead ms) at each level both sides completed requests."""
        gateway = {load.concurrency: load for load in self.gateway if load.completed}
        pairs = [(d, gateway[d.concurrency]) for d in self.direct if d.completed and d.concurrency in gateway]
        return [
            (d, g, g.images_per_s / d.images_per_s, g.p50_ms - d.p50_ms)
            for d, g in sorted(pairs, key=lambda p: p[0].concurrency)
        ]

    @property
    def over_direct(self) -> float | None:
        return self.levels()[-1][2] if self.levels() else None


_SECTION_LETTERS = dict(
    zip(("ceiling", "sweep", "mixed", "burst", "simulated", "gateway", "mixed_inputs"), "abcdefg", strict=True)
)


@dataclass(frozen=True, kw_only=True)
class EngineResult(Run):
    """The engine profile; a section that did not run is None. ``planned``: the profile's sections, shown in the
    summary run or not; the others are shown when they ran."""

    ceiling: CeilingResult | None = None
    sweep: tuple[Load, ...] = ()
    mixed: MixedResult | None = None
    burst: BurstResult | None = None
    simulated: SimulatedResult | None = None
    gateway: GatewayResult | None = None
    mixed_inputs: CeilingResult | None = None
    planned: tuple[str, ...] = ("ceiling", "sweep", "mixed", "burst", "simulated")

    def shown(self, section: str) -> bool:
        return section in self.planned or bool(getattr(self, section))

    def sweep_point(self, variant: str, concurrency: int) -> Load | None:
        points = (p for p in self.sweep if (p.variant, p.concurrency) == (variant, concurrency) and p.completed)
        return next(points, None)

    def on_off_ratios(self) -> list[tuple[int, float]]:
        """(concurrency, batching-on images/s over batching-off) at every level both measured."""
        pairs = [(self.sweep_point(BATCHING_ON, c), self.sweep_point(BATCHING_OFF, c)) for c in self.levels()]
        return [(on.concurrency, on.images_per_s / off.images_per_s) for on, off in pairs if on and off]

    def levels(self) -> list[int]:
        return sorted({point.concurrency for point in self.sweep})

    def goal_rows(self) -> list[GoalRow]:
        mixed, burst, simulated, gateway = self.mixed, self.burst, self.simulated, self.gateway
        short = "(c) short requests' p99 beside long ones / short requests alone"
        rows = _ceiling_goals("a", "", self.ceiling)
        rows.append(_ratio_goal(short, mixed and mixed.short_p99_ratio, "<", GOAL_SHORT_P99_OVER_SHORT_ONLY))
        slowest = burst.max_refusal_ms if burst else None
        measured = "" if slowest is None else f"{slowest:.1f} ms ({burst.count(Outcome.REFUSED)} refused)"
        goal, met = f"< {GOAL_REFUSAL_MS:g} ms each", _met(slowest, "<", GOAL_REFUSAL_MS)
        rows.append(GoalRow("(d) slowest refusal of the burst", measured, goal, met))
        refused, completed = (burst.count(Outcome.REFUSED), burst.count(Outcome.OK)) if burst else (0, 0)
        counts = [(burst.refused_as_unavailable, refused), (completed, burst.accepted)] if burst else []
        for measure, (count, total) in zip(_BURST_ALL, counts or [(0, 0)] * 2, strict=True):
            rows.append(
                GoalRow(measure, f"{count} of {total}" if counts else "", "all", count == total if total else None)
            )
        shares = (simulated.share_of_allowed, simulated.share_of_unet_only_allowed) if simulated else (None, None)
        for measure, share in zip(_SIMULATED_GOALS, shares, strict=True):
            goal, met = f">= {GOAL_SIMULATED_SHARE_OF_ALLOWED:.0%}", _met(share, ">=", GOAL_SIMULATED_SHARE_OF_ALLOWED)
            rows.append(GoalRow(f"(e) SIMULATED: {measure}", "" if share is None else f"{share:.1%}", goal, met, True))
        level = gateway.levels()[-1][0].concurrency if gateway and gateway.levels() else "?"
        measure = f"(f) gateway / direct gRPC images/s at concurrency {level}"
        rows.append(_ratio_goal(measure, gateway.over_direct if gateway else None, ">=", GOAL_GATEWAY_OVER_DIRECT))
        rows += _ceiling_goals("g", "mixed inputs: ", self.mixed_inputs)
        shown = {letter for section, letter in _SECTION_LETTERS.items() if self.shown(section)}
        return [row for row in rows if row.measure[1] in shown]


_BURST_ALL = (
    "(d) refusals answered UNAVAILABLE (the client's `ServerUnavailableError`)",
    "(d) every accepted request of the burst completed",
)
_SIMULATED_GOALS = (
    "measured c_high/c_low images/s over the allowed ratio (non-UNet parts counted)",
    "the same over the UNet-alone ratio (`SimulatedLatency.throughput_ratio`, stricter)",
)
