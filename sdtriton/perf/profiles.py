"""The profiles of ``sdtriton perf`` as data (``perf/scenarios.json``): a model, its base request and what is
measured on it: a perf_analyzer profile's baseline (three paths at concurrency 1) and :class:`Scenario` load curves, or
an engine profile's sections (its ``engine`` object; a section left out is not run). A profile's ``loras`` are made
(``make_tiny_lora``'s options by adapter name) and exported with its model. Why levels are request counts and rates
fractions of a measured peak: perf/README.md."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as checked_dataclass

from sdtriton import interface
from sdtriton.serving.simulated import SimulatedLatency

# The repository's perf/ folder: scenarios.json and input_data/ (read by path; the package is installed editable).
DEFAULT_PERF_DIR = Path(__file__).resolve().parents[2] / "perf"
SCENARIOS_FILE_NAME = "scenarios.json"
INPUT_DATA_DIR_NAME = "input_data"
ENGINE_KEY = "engine"
# LoRA adapters to make and export with a profile's model: make_tiny_lora's options by adapter name.
Loras = Mapping[str, Mapping[str, Any]]
# A GPU-like UNet: 10 ms a call plus 2 ms a batch row.
DEFAULT_SIMULATED_LATENCY = SimulatedLatency(fixed_ms=10.0, per_item_ms=2.0)


def _increasing(levels: tuple[int, ...]) -> tuple[int, ...]:
    if list(levels) != sorted(set(levels)):
        raise ValueError("must increase")
    return levels


def _latency(value: Any) -> Any:
    return SimulatedLatency.parse(value) if isinstance(value, str) else value


# The specs of scenarios.json are checked as they are made: counts are integers >= 1, warm-up counts >= 0 (none).
_SPEC = ConfigDict(extra="forbid")
Count = Annotated[int, Field(strict=True, ge=1)]
Warmups = Annotated[int, Field(strict=True, ge=0)]
Levels = Annotated[tuple[Count, ...], Field(min_length=1), AfterValidator(_increasing)]
Latency = Annotated[SimulatedLatency, BeforeValidator(_latency)]


@dataclass(frozen=True)
class PerfOptions:
    """Options of ``sdtriton perf`` (``perf --help`` says each); None: the default named there."""

    profile: str | None = None
    output_dir: Path | None = None
    model_dir: Path | None = None
    repository: Path | None = None
    work_dir: Path | None = None
    perf_dir: Path = DEFAULT_PERF_DIR
    perf_analyzer: Path | None = None
    tritonserver: Path | None = None
    skip_diffusers: bool = False
    gpu: bool = False
    time_limit_s: float | None = None
    show_progress: bool = True  # progress bars over the loads


class Protocol(enum.Enum):
    HTTP = "http"
    GRPC = "grpc"


class LoadMode(enum.Enum):
    CONCURRENCY = "concurrency"
    REQUEST_RATE = "request_rate"


class _ClosedLoopLevels:
    """Closed-loop levels: ``concurrency x requests_per_concurrency`` requests a level, ``min_requests`` at least."""

    levels: tuple[int, ...]
    min_requests: int
    requests_per_concurrency: int

    def request_count(self, concurrency: int) -> int:
        return max(self.min_requests, concurrency * self.requests_per_concurrency)

    @property
    def requests(self) -> int:
        """Requests over every level."""
        return sum(map(self.request_count, self.levels))


@checked_dataclass(frozen=True, config=_SPEC)
class Scenario(_ClosedLoopLevels):
    """One load curve of perf_analyzer, over a file of ``perf/input_data/``: concurrencies (a closed loop), or request
    rates (open loop, Poisson arrivals) as fractions of the ``rate_reference`` scenario's peak throughput. A level
    sends ``concurrency x requests_per_concurrency`` or ``rate x duration_s`` requests, ``min_requests`` at least."""

    name: str
    protocol: Protocol
    mode: LoadMode
    input_data: str
    levels: Annotated[tuple[Annotated[float, Field(gt=0)], ...], Field(min_length=1)]
    min_requests: Count = 8
    requests_per_concurrency: Count = 4
    duration_s: float = 10.0
    rate_reference: str | None = None

    def __post_init__(self) -> None:
        if self.mode is LoadMode.CONCURRENCY and any(level != int(level) for level in self.levels):
            raise ValueError(f"concurrencies must be integers, got {list(self.levels)}")
        if self.mode is LoadMode.REQUEST_RATE and self.rate_reference is None:
            raise ValueError("request-rate mode needs a rate_reference scenario")

    def request_count(self, level: float) -> int:
        """Requests sent at ``level`` (a concurrency, or a rate in requests/s)."""
        if self.mode is LoadMode.CONCURRENCY:
            return super().request_count(int(level))
        return max(self.min_requests, math.ceil(level * self.duration_s))


@checked_dataclass(frozen=True, config=_SPEC)
class BaselineSpec:
    """The three paths at concurrency 1 on the first request of ``input_data``: ``runs`` timed after ``warmup_runs``
    (the median reported), and ``slope_runs`` at each of ``slope_steps`` (warm, no warm-up): the difference of the
    per-step slopes is what one BLS UNet call adds; ``bls_probe``: also over an identity UNet."""

    input_data: str
    runs: Count = 10
    warmup_runs: Warmups = 2
    slope_steps: tuple[int, int] = (5, 40)
    slope_runs: Count = 10
    bls_probe: bool = True

    def __post_init__(self) -> None:
        low, high = self.slope_steps
        if not interface.MIN_INFERENCE_STEPS <= low < high <= interface.MAX_INFERENCE_STEPS:
            raise ValueError(f"slope_steps must be two increasing step counts, got {list(self.slope_steps)}")


@checked_dataclass(frozen=True, config=_SPEC)
class CeilingSpec:
    """(a) The engine in-process over ONNX Runtime against Triton, ``concurrency`` requests at once on both sides (so
    the UNet runs the same batch), ``requests`` in all a side; and the plain loop against Triton at concurrency 1,
    ``plain_loop_runs`` each. In ``turns`` (in-process, served, plain loop, served at 1, again) while the batching-on
    server is up, so a drift of the machine's speed hits both sides of a ratio alike; warm-ups may be 0. ``input_data``:
    the requests, cycled in file order on every side (None: the profile's base request); a turn's requests a multiple
    of the file's and of ``concurrency``, and ``plain_loop_runs`` a turn of the file's, send each equally often."""

    input_data: str | None = None
    concurrency: Count = 8
    requests: Count = 32
    warmup_requests: Warmups = 8
    plain_loop_runs: Count = 10
    plain_loop_warmup_runs: Warmups = 2
    turns: Count = 2


@checked_dataclass(frozen=True, config=_SPEC)
class SweepSpec(_ClosedLoopLevels):
    """(b) Client threads over gRPC at each of ``levels`` on two servers up together, ``max_running_images``
    ``batching_on`` and ``batching_off`` (1: an image per UNet call); each level on one then the other, in turns."""

    levels: Levels = (1, 2, 4, 8)
    batching_on: Count = 8
    batching_off: Count = 1
    min_requests: Count = 12
    requests_per_concurrency: Count = 6
    turns: Count = 2

    def __post_init__(self) -> None:
        if self.batching_off >= self.batching_on:
            raise ValueError("batching_off must be below batching_on")


@checked_dataclass(frozen=True, config=_SPEC)
class MixedSpec:
    """(c) On the batching-on server, ``short_clients`` threads send short requests back to back while ``long_clients``
    send ``long_requests_per_client`` long ones each; the reference is ``short_only_requests`` short requests from as
    many threads as both classes."""

    short_steps: Count = 10
    long_steps: Annotated[int, Field(strict=True, ge=1, le=interface.MAX_INFERENCE_STEPS)] = 150
    short_clients: Count = 6
    long_clients: Count = 2
    long_requests_per_client: Count = 2
    short_only_requests: Count = 48

    def __post_init__(self) -> None:
        if self.short_steps >= self.long_steps:
            raise ValueError("short_steps must be below long_steps")

    @property
    def concurrency(self) -> int:
        return self.short_clients + self.long_clients


@checked_dataclass(frozen=True, config=_SPEC)
class BurstSpec:
    """(d) ``requests`` sent at once at a server that holds ``max_pending_requests``, after ``warmup_bursts`` of the
    same size, not judged: the first burst after a start pays one-off costs (threads), measured 100 ms a refusal."""

    max_pending_requests: Count = 4
    requests: Count = 24
    warmup_bursts: Warmups = 1


@checked_dataclass(frozen=True, config=_SPEC)
class SimulatedSpec(_ClosedLoopLevels):
    """(e) The batching-on repository with the stand-in UNet of :mod:`sdtriton.serving.simulated` (``latency``, e.g.
    ``10ms+2ms``); the first and last of ``levels`` give the scaling ratio, their non-UNet parts measured in-process
    with a zero-time UNet over ``in_process_requests``; in turns."""

    latency: Latency = DEFAULT_SIMULATED_LATENCY
    levels: Annotated[Levels, Field(min_length=2)] = (1, 8)  # two concurrencies at least
    min_requests: Count = 16
    requests_per_concurrency: Count = 8
    in_process_requests: Count = 16
    turns: Count = 2


@checked_dataclass(frozen=True, config=_SPEC)
class GatewaySpec(_ClosedLoopLevels):
    """(f) Client threads through a real ``sdtriton gateway`` process and straight to its server over gRPC, at each
    level, in turns that alternate which side goes first; the last level's images/s ratio is judged."""

    levels: Levels = (1, 8)
    min_requests: Count = 16
    requests_per_concurrency: Count = 4
    turns: Count = 4


@checked_dataclass(frozen=True, kw_only=True, config=_SPEC)
class Profile:
    """``model``: a make-tiny profile or family (made at run time) or the built-in ``shapes``; the base request is the
    first of ``input_data``. A perf_analyzer profile has ``baseline`` and ``scenarios``, an engine profile any of the
    other sections; a section left out is None."""

    name: str
    model: str
    time_limit_s: Annotated[float, Field(gt=0)]
    input_data: str
    description: str = ""
    baseline: BaselineSpec | None = None
    scenarios: tuple[Scenario, ...] = ()
    ceiling: CeilingSpec | None = None
    sweep: SweepSpec | None = None
    mixed: MixedSpec | None = None
    burst: BurstSpec | None = None
    simulated: SimulatedSpec | None = None
    gateway: GatewaySpec | None = None
    mixed_inputs: CeilingSpec | None = None  # (g) the ceiling again, over a file of mixed requests
    loras: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.baseline is None) == (not self.engine_sections):
            raise ValueError("a profile has a baseline and scenarios, or engine sections (and no baseline)")
        names = [scenario.name for scenario in self.scenarios]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario names must be unique, got {names}")
        for index, scenario in enumerate(self.scenarios):
            earlier = [s.name for s in self.scenarios[:index] if s.mode is LoadMode.CONCURRENCY]
            if scenario.rate_reference is not None and scenario.rate_reference not in earlier:
                raise ValueError(
                    f"scenario {scenario.name!r}: rate_reference must name an earlier concurrency scenario"
                )

    @property
    def engine(self) -> bool:
        return self.baseline is None

    @property
    def engine_sections(self) -> tuple[str, ...]:
        return tuple(name for name in ENGINE_SECTIONS if getattr(self, name) is not None)

    def input_data_files(self) -> list[str]:
        ceilings = (spec.input_data for spec in (self.ceiling, self.mixed_inputs) if spec and spec.input_data)
        return sorted({self.input_data, *ceilings, *(scenario.input_data for scenario in self.scenarios)})


ENGINE_SECTIONS = ("ceiling", "sweep", "mixed", "burst", "simulated", "gateway", "mixed_inputs")


def _parsed(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """A spec from its JSON object (unknown keys refused); an error names each bad field and what it allows."""
    try:
        return cls(**values)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            field = ", ".join([where, ".".join(map(str, problem["loc"]))] if problem["loc"] else [where])
            got = "" if problem["type"] == "value_error" else f", got {problem['input']!r}"
            problems.append(f"{field}: {problem['msg']}{got}")
        raise ValueError("; ".join(problems)) from None


def parse_profiles(text: str) -> dict[str, Profile]:
    """The profiles of a ``scenarios.json`` document, by name. ``"scenarios_from": OTHER`` takes OTHER's sections and
    time limit, each overridable: one definition serves models of the same geometry."""
    document = json.loads(text)["profiles"]
    profiles: dict[str, Profile] = {}
    for name, values in document.items():
        source = values.get("scenarios_from")
        if source is not None:
            if source not in document or "scenarios_from" in document[source]:
                raise ValueError(f"profile {name!r}: scenarios_from must name a profile defined in full")
            inherited = {key: value for key, value in document[source].items() if key not in ("model", "description")}
            values = {key: value for key, value in {**inherited, **values}.items() if key != "scenarios_from"}
        # An engine profile's sections and base request are in its "engine" object; a perf_analyzer profile's base
        # request is its baseline's.
        fields = {"name": name, "model": name, **values, **values.get(ENGINE_KEY, {})}
        fields.pop(ENGINE_KEY, None)
        fields.setdefault("input_data", values.get("baseline", {}).get("input_data"))
        profiles[name] = _parsed(Profile, fields, f"profile {name!r}")
    return profiles


def request_rates(fractions: Sequence[float], *, peak_throughput_per_s: float) -> tuple[float, ...]:
    """Absolute request rates (requests/s, 3 significant digits) for fractions of a peak throughput."""
    if peak_throughput_per_s <= 0:
        raise ValueError(f"the peak throughput must be positive, got {peak_throughput_per_s}")
    return tuple(float(f"{fraction * peak_throughput_per_s:.3g}") for fraction in fractions)


def load_profiles(perf_dir: Path) -> dict[str, Profile]:
    return parse_profiles((perf_dir / SCENARIOS_FILE_NAME).read_text())
