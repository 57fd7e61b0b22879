"""Profiles and scenarios of ``sdtriton perf`` (``perf/scenarios.json``), perf_analyzer's command lines and CSV.

A :class:`Profile` names a model (``sdtriton make-tiny --profile``), the baseline request and its load
scenarios. Each :class:`Scenario` is one protocol, one load mode and its levels: concurrencies, or request
rates as fractions of the peak throughput another scenario of the same run measured (so the same file
suits this CPU and a GPU host). Every level is one perf_analyzer run of a fixed number of requests
(``--request-count``): slow requests never leave a measurement window empty, and a profile's time is known.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtriton import interface

SCENARIOS_FILE_NAME = "scenarios.json"
# A profile with this key measures the diffusion engine (sdtriton.perf.engine_scenarios), not perf_analyzer curves.
ENGINE_KEY = "engine"
INPUT_DATA_DIR_NAME = "input_data"
_US_PER_MS = 1000.0


class Protocol(enum.Enum):
    HTTP = "http"
    GRPC = "grpc"


class LoadMode(enum.Enum):
    CONCURRENCY = "concurrency"
    REQUEST_RATE = "request_rate"


@dataclass(frozen=True)
class Scenario:
    """One load curve.

    Attributes:
        name: unique within its profile; names the CSV rows and the plot's lines.
        protocol: HTTP or gRPC.
        mode: concurrency (closed loop) or request rate (open loop, Poisson arrivals).
        input_data: a file name under ``perf/input_data/``.
        levels: concurrencies, or request rates as fractions of ``rate_reference``'s peak throughput.
        min_requests: requests of every level at least.
        requests_per_concurrency: concurrency mode: ``concurrency x this`` requests when more than the minimum.
        duration_s: request-rate mode: ``rate x this`` requests when more than the minimum.
        rate_reference: request-rate mode: the concurrency scenario whose peak throughput scales ``levels``.
    """

    name: str
    protocol: Protocol
    mode: LoadMode
    input_data: str
    levels: tuple[float, ...]
    min_requests: int = 8
    requests_per_concurrency: int = 4
    duration_s: float = 10.0
    rate_reference: str | None = None

    def request_count(self, level: float) -> int:
        """Requests sent at ``level`` (a concurrency, or an absolute rate in requests/s)."""
        if self.mode is LoadMode.CONCURRENCY:
            return max(self.min_requests, int(level) * self.requests_per_concurrency)
        return max(self.min_requests, math.ceil(level * self.duration_s))


@dataclass(frozen=True)
class BaselineSpec:
    """How the in-process baselines and the Triton path are timed at concurrency 1.

    Attributes:
        input_data: the file whose first request all three paths run.
        runs: timed runs of each path (after ``warmup_runs``); the median is reported.
        warmup_runs: untimed runs first.
        slope_steps: two step counts: the per-step cost of each path is the slope between them, and the
            difference of slopes is the cost one BLS UNet call adds.
        slope_runs: timed runs at each slope step count (on warm sessions, no warm-up).
        bls_probe: also time both paths over an identity UNet (:mod:`sdtriton.perf.identity`).
    """

    input_data: str
    runs: int = 10
    warmup_runs: int = 2
    slope_steps: tuple[int, int] = (5, 40)
    slope_runs: int = 10
    bls_probe: bool = True


@dataclass(frozen=True)
class Profile:
    """A model and what ``sdtriton perf`` measures on it.

    ``model`` is a ``sdtriton make-tiny`` profile (``tiny``, ``sd15``: made at run time) or the built-in
    model name ``shapes``.
    """

    name: str
    description: str
    model: str
    baseline: BaselineSpec
    scenarios: tuple[Scenario, ...]
    time_limit_s: float

    def scenario(self, name: str) -> Scenario:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise KeyError(f"profile {self.name!r} has no scenario {name!r}")

    def input_data_files(self) -> list[str]:
        return sorted({self.baseline.input_data, *(scenario.input_data for scenario in self.scenarios)})


def _scenario_from_json(values: Mapping[str, Any]) -> Scenario:
    known = {
        "name",
        "protocol",
        "mode",
        "input_data",
        "levels",
        "min_requests",
        "requests_per_concurrency",
        "duration_s",
        "rate_reference",
    }
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"scenario {values.get('name')!r}: unknown keys {sorted(unknown)}")
    scenario = Scenario(
        name=str(values["name"]),
        protocol=Protocol(values["protocol"]),
        mode=LoadMode(values["mode"]),
        input_data=str(values["input_data"]),
        levels=tuple(float(level) for level in values["levels"]),
        min_requests=int(values.get("min_requests", Scenario.min_requests)),
        requests_per_concurrency=int(values.get("requests_per_concurrency", Scenario.requests_per_concurrency)),
        duration_s=float(values.get("duration_s", Scenario.duration_s)),
        rate_reference=values.get("rate_reference"),
    )
    if not scenario.levels or any(level <= 0 for level in scenario.levels):
        raise ValueError(f"scenario {scenario.name!r}: levels must be positive, got {list(scenario.levels)}")
    if scenario.mode is LoadMode.CONCURRENCY and any(level != int(level) for level in scenario.levels):
        raise ValueError(f"scenario {scenario.name!r}: concurrencies must be integers, got {list(scenario.levels)}")
    if scenario.mode is LoadMode.REQUEST_RATE and scenario.rate_reference is None:
        raise ValueError(f"scenario {scenario.name!r}: request-rate mode needs a rate_reference scenario")
    return scenario


def _profile_from_json(name: str, values: Mapping[str, Any]) -> Profile:
    baseline = values["baseline"]
    slope = tuple(int(steps) for steps in baseline.get("slope_steps", BaselineSpec.slope_steps))
    if len(slope) != 2 or not interface.MIN_INFERENCE_STEPS <= slope[0] < slope[1] <= interface.MAX_INFERENCE_STEPS:
        raise ValueError(f"profile {name!r}: slope_steps must be two increasing step counts, got {list(slope)}")
    profile = Profile(
        name=name,
        description=str(values.get("description", "")),
        model=str(values.get("model", name)),
        baseline=BaselineSpec(
            input_data=str(baseline["input_data"]),
            runs=int(baseline.get("runs", BaselineSpec.runs)),
            warmup_runs=int(baseline.get("warmup_runs", BaselineSpec.warmup_runs)),
            slope_steps=(slope[0], slope[1]),
            slope_runs=int(baseline.get("slope_runs", BaselineSpec.slope_runs)),
            bls_probe=bool(baseline.get("bls_probe", BaselineSpec.bls_probe)),
        ),
        scenarios=tuple(_scenario_from_json(scenario) for scenario in values["scenarios"]),
        time_limit_s=float(values["time_limit_s"]),
    )
    names = [scenario.name for scenario in profile.scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"profile {name!r}: scenario names must be unique, got {names}")
    for scenario in profile.scenarios:
        if scenario.rate_reference is not None:
            reference = profile.scenario(scenario.rate_reference)
            if reference.mode is not LoadMode.CONCURRENCY or names.index(reference.name) > names.index(scenario.name):
                raise ValueError(
                    f"scenario {scenario.name!r}: rate_reference must name an earlier concurrency scenario"
                )
    return profile


def parse_profiles(text: str) -> dict[str, Profile]:
    """The profiles of a ``scenarios.json`` document, by name.

    A profile with ``"scenarios_from": OTHER`` takes OTHER's baseline, scenarios and time limit, and may
    override any of them: one definition serves models of the same geometry. Engine profiles (an
    ``engine`` section) are left out: :func:`sdtriton.perf.engine_scenarios.parse_engine_profiles` reads them.
    """
    document = json.loads(text)["profiles"]
    profiles = {}
    for name, values in document.items():
        if ENGINE_KEY in values:
            continue  # an engine profile: sdtriton.perf.engine_scenarios reads it
        source = values.get("scenarios_from")
        if source is not None:
            if source not in document or "scenarios_from" in document[source]:
                raise ValueError(f"profile {name!r}: scenarios_from must name a profile defined in full")
            values = {**{k: v for k, v in document[source].items() if k not in ("model", "description")}, **values}
        profiles[name] = _profile_from_json(name, {k: v for k, v in values.items() if k != "scenarios_from"})
    return profiles


def load_profiles(perf_dir: Path) -> dict[str, Profile]:
    return parse_profiles((perf_dir / SCENARIOS_FILE_NAME).read_text())


def request_rates(fractions: Sequence[float], *, peak_throughput_per_s: float) -> tuple[float, ...]:
    """Absolute request rates (requests/s, 3 significant digits) for fractions of a peak throughput."""
    if peak_throughput_per_s <= 0:
        raise ValueError(f"the peak throughput must be positive, got {peak_throughput_per_s}")
    return tuple(float(f"{fraction * peak_throughput_per_s:.3g}") for fraction in fractions)


def perf_analyzer_command(
    scenario: Scenario,
    level: float,
    *,
    binary: str | Path,
    address: str,
    input_data_path: Path,
    csv_path: Path,
) -> list[str]:
    """perf_analyzer's arguments for one level: ``address`` is ``host:port`` of the scenario's protocol."""
    command = [
        str(binary),
        "-m",
        interface.ENTRY_MODEL_NAME,
        "-i",
        scenario.protocol.value,
        "-u",
        address,
        "-b",
        "1",
        "--input-data",
        str(input_data_path),
        "--request-count",
        str(scenario.request_count(level)),
        "-f",
        str(csv_path),
    ]
    if scenario.mode is LoadMode.CONCURRENCY:
        concurrency = int(level)
        command += ["--concurrency-range", f"{concurrency}:{concurrency}:1"]
    else:
        # Open loop: requests leave on a Poisson clock whether or not earlier ones returned.
        command += [
            "--request-rate-range",
            f"{level:g}:{level:g}:1",
            "--request-distribution",
            "poisson",
            "--async",
            "--max-threads",
            "16",
        ]
    return command


@dataclass(frozen=True)
class LoadPoint:
    """One level of one scenario, as perf_analyzer measured it (latencies in ms)."""

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
        return int(self.level) if self.mode == LoadMode.CONCURRENCY.value else None


# perf_analyzer's CSV columns (microseconds) whose sum is its average client latency.
_LATENCY_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)
_SERVER_COMPUTE = ("Server Compute Input", "Server Compute Infer", "Server Compute Output")


def parse_perf_analyzer_csv(text: str, scenario: Scenario, *, request_count: int) -> list[LoadPoint]:
    """The rows of perf_analyzer's ``-f`` CSV (one per level) as load points."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer's CSV has no rows")
    level_column = "Concurrency" if scenario.mode is LoadMode.CONCURRENCY else "Request Rate"
    points = []
    for row in rows:
        try:
            points.append(
                LoadPoint(
                    scenario=scenario.name,
                    protocol=scenario.protocol.value,
                    mode=scenario.mode.value,
                    level=float(row[level_column]),
                    request_count=request_count,
                    throughput_per_s=float(row["Inferences/Second"]),
                    p50_ms=float(row["p50 latency"]) / _US_PER_MS,
                    p90_ms=float(row["p90 latency"]) / _US_PER_MS,
                    p95_ms=float(row["p95 latency"]) / _US_PER_MS,
                    p99_ms=float(row["p99 latency"]) / _US_PER_MS,
                    avg_ms=sum(float(row[column]) for column in _LATENCY_PARTS) / _US_PER_MS,
                    server_queue_ms=float(row["Server Queue"]) / _US_PER_MS,
                    server_compute_ms=sum(float(row[column]) for column in _SERVER_COMPUTE) / _US_PER_MS,
                )
            )
        except KeyError as error:
            raise ValueError(f"perf_analyzer's CSV lacks the column {error} (has {sorted(row)})") from None
    return points


def peak_throughput(points: Sequence[LoadPoint], scenario_name: str) -> float | None:
    """The highest throughput a scenario reached, or None if it has no points."""
    values = [point.throughput_per_s for point in points if point.scenario == scenario_name]
    return max(values) if values else None
