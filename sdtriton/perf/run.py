"""What every profile's run is made of: where and when it ran, and each path's timings.

Pure, and shared: the perf_analyzer profile's :class:`~sdtriton.perf.results.PerfResult` and the engine
profile's :class:`~sdtriton.perf.engine_results.EngineResult` are both built from these; the baselines
(:mod:`sdtriton.perf.baselines`) fill them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
# Load averages above this share of the cores mean other work shared the CPU during the run.
BUSY_LOAD_PER_CORE = 0.25


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

    @property
    def busy_at_start(self) -> bool:
        """The 1-minute load average when the run started says other work was using the CPU."""
        return self.load_average_before[0] > BUSY_LOAD_PER_CORE * self.cpu_count


@dataclass(frozen=True)
class PathTiming:
    """Wall-clock latencies of one path on one request, in ms, in run order."""

    path: str
    num_inference_steps: int
    latencies_ms: tuple[float, ...]

    @property
    def mean_ms(self) -> float:
        return statistics.mean(self.latencies_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def median_standard_error_ms(self) -> float | None:
        """Standard error of the median (normal approximation: 1.2533 sigma / sqrt(n)); None for one run."""
        if len(self.latencies_ms) < 2:
            return None
        return _MEDIAN_SE_FACTOR * statistics.stdev(self.latencies_ms) / math.sqrt(len(self.latencies_ms))

    @property
    def min_ms(self) -> float:
        return min(self.latencies_ms)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms)


@dataclass(frozen=True)
class StepSlope:
    """A path at two step counts: its cost per denoising step, fixed costs cancelled."""

    low: PathTiming
    high: PathTiming

    @property
    def ms_per_step(self) -> float:
        steps = self.high.num_inference_steps - self.low.num_inference_steps
        if steps <= 0:
            raise ValueError("the high step count must exceed the low one")
        return (self.high.median_ms - self.low.median_ms) / steps

    @property
    def error_ms_per_step(self) -> float | None:
        """One standard error of :attr:`ms_per_step`, or None when a side has a single run."""
        low, high = self.low.median_standard_error_ms, self.high.median_standard_error_ms
        if low is None or high is None:
            return None
        return math.hypot(low, high) / (self.high.num_inference_steps - self.low.num_inference_steps)


@dataclass(frozen=True)
class NetworkTimes:
    """Where the plain loop's time goes: means over its timed runs (ms), as Triton's statistics are means."""

    encode_text_ms: float
    unet_ms_per_call: float
    unet_calls_per_request: int
    decode_ms: float

    def other_ms(self, total_ms: float) -> float:
        """Tokenizer, validation, scheduler steps and torch glue: the loop's time outside the networks."""
        return total_ms - self.encode_text_ms - self.unet_ms_per_call * self.unet_calls_per_request - self.decode_ms
