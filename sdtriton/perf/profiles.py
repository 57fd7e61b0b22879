"""The profiles of ``sdtriton perf`` as data (``perf/scenarios.json``): a model, its base request and what is
measured on it.

A perf_analyzer :class:`Profile` holds the baseline (the three paths at concurrency 1) and load scenarios. Each
:class:`Scenario` is one protocol, one load mode and its levels: concurrencies, or request rates as fractions of
the peak throughput another scenario of the same run measured (so the same file suits this CPU and a GPU host).
Every level is one perf_analyzer run of a fixed number of requests (``--request-count``): slow requests never
leave a measurement window empty, and a profile's time is known.

An engine profile (an ``engine`` section) measures the diffusion engine rather than one request's cost:
how close the served throughput comes to the engine's own compute ceiling, what step-level batching buys at each
concurrency, whether short requests stay fast beside long ones, how a burst past the queue limit is refused,
how throughput scales on a simulated accelerator, and what the HTTP gateway costs against direct gRPC; a section
left out is not run.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sdtriton import interface
from sdtriton.serving.simulated import SimulatedLatency

# The repository's perf/ folder: scenarios.json and input_data/ (read by path; the package is installed editable).
DEFAULT_PERF_DIR = Path(__file__).resolve().parents[2] / "perf"
SCENARIOS_FILE_NAME = "scenarios.json"
INPUT_DATA_DIR_NAME = "input_data"
ENGINE_KEY = "engine"
# A GPU-like UNet: 10 ms a call plus 2 ms a batch row.
DEFAULT_SIMULATED_LATENCY = SimulatedLatency(fixed_ms=10.0, per_item_ms=2.0)


def _cli(help_text: str, *flags: str, **argparse_options: Any) -> dict[str, Any]:
    """A :class:`PerfOptions` field's ``perf`` command-line option (default: ``--name``, a path)."""
    return {"cli": {"flags": flags, "help": help_text, **(argparse_options or {"type": Path})}}


@dataclass(frozen=True)
class PerfOptions:
    """Options of ``sdtriton perf``, each field's help its command-line option's (None: the default said there)."""

    profile: str | None = field(
        default=None,
        metadata=_cli(
            "a profile of perf/scenarios.json: shapes (the default model; default once its weights exist), "
            "tiny (default until then), sd15 (heavy: SD 1.5 shapes, ~4 GB, bounded to 10 minutes), engine and "
            "transformer (the diffusion engine on the default model and on a tiny SD 3.5), gateway (the HTTP "
            "gateway against direct gRPC)",
            type=str,
        ),
    )
    output_dir: Path | None = field(
        default=None, metadata=_cli("results folder (default: outputs/perf/PROFILE)", "-o", "--output")
    )
    model_dir: Path | None = field(
        default=None, metadata=_cli("diffusers pipeline folder (default: made with make-tiny)", "--model")
    )
    repository: Path | None = field(
        default=None, metadata=_cli("model repository of --model (default: exported from it)")
    )
    work_dir: Path | None = field(
        default=None, metadata=_cli("keep made models here (default: a temporary folder, removed)")
    )
    perf_dir: Path = field(
        default=DEFAULT_PERF_DIR, metadata=_cli("scenarios.json and input_data/ (default: the repository's perf/)")
    )
    perf_analyzer: Path | None = field(default=None, metadata=_cli("the binary (default: tools/perf_analyzer or PATH)"))
    tritonserver: Path | None = field(default=None, metadata=_cli("a tritonserver binary (default: the pip wheel's)"))
    skip_diffusers: bool = field(
        default=False, metadata=_cli("leave out the in-process diffusers baseline", action="store_true")
    )
    gpu: bool = field(
        default=False, metadata=_cli("baselines on the GPU, for a repository exported with --gpu", action="store_true")
    )
    time_limit_s: float | None = field(default=None, metadata=_cli("overrides the profile's time limit", type=float))
    show_progress: bool = True  # progress bars over the loads


class Protocol(enum.Enum):
    HTTP = "http"
    GRPC = "grpc"


class LoadMode(enum.Enum):
    CONCURRENCY = "concurrency"
    REQUEST_RATE = "request_rate"


@dataclass(frozen=True)
class Scenario:
    """One load curve of perf_analyzer.

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
        bls_probe: also time both paths over an identity UNet (:func:`sdtriton.perf.repositories.identity_repository`).
    """

    input_data: str
    runs: int = 10
    warmup_runs: int = 2
    slope_steps: tuple[int, int] = (5, 40)
    slope_runs: int = 10
    bls_probe: bool = True


@dataclass(frozen=True)
class CeilingSpec:
    """(a) The engine in-process over ONNX Runtime (no Triton) against Triton on the same requests.

    Both sides run in turns while the batching-on server is up (idle when not measured): in-process at
    ``concurrency``, served at ``concurrency``, plain loop, served at concurrency 1, again, so that a drift of
    this machine's speed hits both sides of each ratio alike.

    Attributes:
        concurrency: requests kept in the in-process engine at once (a closed loop), the served concurrency it is
            compared with; the UNet then runs at the same batch in both.
        requests: requests timed at ``concurrency`` on each side, over all turns.
        warmup_requests: in-process requests run first, untimed (0: none).
        plain_loop_runs: timed runs of the plain loop (one image at a time), and served requests at concurrency 1,
            over all turns.
        plain_loop_warmup_runs: the plain loop's untimed runs first (0: none).
        turns: turns the measurements are split into.
    """

    concurrency: int = 8
    requests: int = 32
    warmup_requests: int = 8
    plain_loop_runs: int = 10
    plain_loop_warmup_runs: int = 2
    turns: int = 2


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


@dataclass(frozen=True)
class SweepSpec(_ClosedLoopLevels):
    """(b) Client threads over gRPC at each concurrency (``levels``, increasing), step batching on and off.

    Both servers are up together (``max_running_images`` ``batching_on`` and ``batching_off``, 1: one image per UNet
    call); each level runs on one, then the other, in ``turns`` turns; ``concurrency x requests_per_concurrency``
    requests a level, ``min_requests`` at least, over all turns.
    """

    levels: tuple[int, ...] = (1, 2, 4, 8)
    batching_on: int = 8
    batching_off: int = 1
    min_requests: int = 12
    requests_per_concurrency: int = 6
    turns: int = 2


@dataclass(frozen=True)
class MixedSpec:
    """(c) Short and long requests at once, on the batching-on server (client threads over gRPC).

    ``short_clients`` threads send short requests (``short_steps``) back to back while ``long_clients`` send
    ``long_requests_per_client`` long ones (``long_steps``) each; the mixed load ends with them. The reference load
    is ``short_only_requests`` short requests from as many threads as both classes (the same concurrency).
    """

    short_steps: int = 10
    long_steps: int = 150
    short_clients: int = 6
    long_clients: int = 2
    long_requests_per_client: int = 2
    short_only_requests: int = 48

    @property
    def concurrency(self) -> int:
        return self.short_clients + self.long_clients


@dataclass(frozen=True)
class BurstSpec:
    """(d) ``requests`` sent at once (an asyncio gRPC client each, released together) at a server whose engine holds
    at most ``max_pending_requests``, after ``warmup_bursts`` of the same size, not judged: the first burst after a
    server's start pays one-off costs (threads of the entry model and the gRPC server), measured 100 ms a refusal."""

    max_pending_requests: int = 4
    requests: int = 24
    warmup_bursts: int = 1


@dataclass(frozen=True)
class SimulatedSpec(_ClosedLoopLevels):
    """(e) The batching-on repository with the simulated accelerator's UNet (:mod:`sdtriton.serving.simulated`).

    Attributes:
        latency: the stand-in UNet's latency model, e.g. ``10ms+2ms``.
        levels: concurrencies; the first and the last give the scaling ratio.
        min_requests: requests of every level at least.
        requests_per_concurrency: ``concurrency x this`` requests when more than the minimum.
        in_process_requests: requests of the in-process runs that measure the non-UNet parts (the engine over ONNX
            Runtime with a UNet that takes no time) at the first and the last level, over all turns.
        turns: turns the levels (in-process, then served) are split into.
    """

    latency: SimulatedLatency = DEFAULT_SIMULATED_LATENCY
    levels: tuple[int, ...] = (1, 8)
    min_requests: int = 16
    requests_per_concurrency: int = 8
    in_process_requests: int = 16
    turns: int = 2


@dataclass(frozen=True)
class GatewaySpec(_ClosedLoopLevels):
    """(f) The base request through a real ``sdtriton gateway`` process (HTTP POSTs, client threads) and straight to
    the same server over gRPC (:class:`sdtriton.client.StableDiffusionClient`), at each level, in ``turns`` that
    alternate which side goes first; the last level's images/s ratio is judged."""

    levels: tuple[int, ...] = (1, 8)
    min_requests: int = 16
    requests_per_concurrency: int = 4
    turns: int = 4


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A profile: ``model`` is a ``sdtriton make-tiny`` profile or family (``tiny``, ``sd15``, ``sd35``: made at run
    time) or the built-in model ``shapes``; the base request is the first of ``input_data``; then its sections. A
    perf_analyzer profile has ``baseline`` and ``scenarios``, an engine profile (``engine`` in the file) any of the
    others; a section left out is None and not run."""

    name: str
    description: str
    model: str
    time_limit_s: float
    input_data: str
    baseline: BaselineSpec | None = None
    scenarios: tuple[Scenario, ...] = ()
    ceiling: CeilingSpec | None = None
    sweep: SweepSpec | None = None
    mixed: MixedSpec | None = None
    burst: BurstSpec | None = None
    simulated: SimulatedSpec | None = None
    gateway: GatewaySpec | None = None

    @property
    def engine(self) -> bool:
        """An engine profile (no perf_analyzer baseline)."""
        return self.baseline is None

    @property
    def engine_sections(self) -> tuple[str, ...]:
        """The engine sections this profile measures, in order."""
        return tuple(name for name in _SECTIONS if getattr(self, name) is not None)

    def input_data_files(self) -> list[str]:
        return sorted({self.input_data, *(scenario.input_data for scenario in self.scenarios)})

    def scenario(self, name: str) -> Scenario:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise KeyError(f"profile {self.name!r} has no scenario {name!r}")


_SECTIONS = {
    "ceiling": CeilingSpec,
    "sweep": SweepSpec,
    "mixed": MixedSpec,
    "burst": BurstSpec,
    "simulated": SimulatedSpec,
    "gateway": GatewaySpec,
}


def _positive(value: Any, where: str, *, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{where}: must be an integer >= {least}, got {value!r}")
    return value


def _increasing(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: must be a non-empty list, got {value!r}")
    levels = tuple(_positive(level, where) for level in value)
    if list(levels) != sorted(set(levels)):
        raise ValueError(f"{where}: must increase, got {list(levels)}")
    return levels


def _latency(value: Any, where: str) -> SimulatedLatency:
    try:
        return SimulatedLatency.parse(str(value))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


_SCENARIO_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "name": lambda value, _: str(value),
    "protocol": lambda value, _: Protocol(value),
    "mode": lambda value, _: LoadMode(value),
    "input_data": lambda value, _: str(value),
    "levels": lambda value, _: tuple(float(level) for level in value),
    "duration_s": lambda value, _: float(value),
    "rate_reference": lambda value, _: str(value),
}
# Warm-up counts may be 0 (no warm-up); every other count is at least 1.
_ENGINE_FIELDS = {
    "levels": _increasing,
    "latency": _latency,
    **dict.fromkeys(("warmup_bursts", "warmup_requests", "plain_loop_warmup_runs"), partial(_positive, least=0)),
}
_BASELINE_FIELDS = {
    "input_data": lambda value, _: str(value),
    "slope_steps": lambda value, _: tuple(int(steps) for steps in value),
    "warmup_runs": lambda value, _: int(value),
    "bls_probe": lambda value, _: bool(value),
}


def _parsed(cls: type, values: Mapping[str, Any], where: str, parsers: Mapping[str, Callable[[Any, str], Any]]) -> Any:
    """A spec dataclass from its JSON object: unknown keys refused, each value parsed (integers >= 1 by default)."""
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    return cls(**{key: parsers.get(key, _positive)(value, f"{where}.{key}") for key, value in values.items()})


def _scenario(values: Mapping[str, Any], where: str) -> Scenario:
    scenario = _parsed(Scenario, values, f"{where}, scenario {values.get('name')!r}", _SCENARIO_FIELDS)
    where = f"scenario {scenario.name!r}"
    if not scenario.levels or any(level <= 0 for level in scenario.levels):
        raise ValueError(f"{where}: levels must be positive, got {list(scenario.levels)}")
    if scenario.mode is LoadMode.CONCURRENCY and any(level != int(level) for level in scenario.levels):
        raise ValueError(f"{where}: concurrencies must be integers, got {list(scenario.levels)}")
    if scenario.mode is LoadMode.REQUEST_RATE and scenario.rate_reference is None:
        raise ValueError(f"{where}: request-rate mode needs a rate_reference scenario")
    return scenario


def _perf_profile(name: str, values: Mapping[str, Any], common: dict[str, Any]) -> Profile:
    where = f"profile {name!r}"
    baseline = _parsed(BaselineSpec, values["baseline"], f"{where}, baseline", _BASELINE_FIELDS)
    steps = baseline.slope_steps
    if len(steps) != 2 or not interface.MIN_INFERENCE_STEPS <= steps[0] < steps[1] <= interface.MAX_INFERENCE_STEPS:
        raise ValueError(f"{where}: slope_steps must be two increasing step counts, got {list(steps)}")
    scenarios = tuple(_scenario(scenario, where) for scenario in values["scenarios"])
    profile = Profile(**common, input_data=baseline.input_data, baseline=baseline, scenarios=scenarios)
    names = [scenario.name for scenario in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: scenario names must be unique, got {names}")
    for index, scenario in enumerate(scenarios):
        if scenario.rate_reference is not None:
            reference = profile.scenario(scenario.rate_reference)
            if reference.mode is not LoadMode.CONCURRENCY or names.index(reference.name) > index:
                raise ValueError(
                    f"scenario {scenario.name!r}: rate_reference must name an earlier concurrency scenario"
                )
    return profile


def _engine_profile(name: str, values: Mapping[str, Any], common: dict[str, Any]) -> Profile:
    where = f"profile {name!r}"
    unknown = set(values) - {"model", "description", "time_limit_s", ENGINE_KEY}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} beside {ENGINE_KEY!r}")
    engine = dict(values[ENGINE_KEY])
    if "input_data" not in engine:
        raise ValueError(f"{where}: {ENGINE_KEY}.input_data is required")
    input_data = str(engine.pop("input_data"))
    if set(engine) - set(_SECTIONS):
        raise ValueError(
            f"{where}: unknown engine sections {sorted(set(engine) - set(_SECTIONS))} (known: {sorted(_SECTIONS)})"
        )
    if not engine:
        raise ValueError(f"{where}: no engine section (known: {sorted(_SECTIONS)})")
    sections = {key: _parsed(_SECTIONS[key], engine[key], f"{where}, {key}", _ENGINE_FIELDS) for key in engine}
    profile = Profile(**common, input_data=input_data, **sections)
    mixed = profile.mixed
    if mixed is not None and max(mixed.short_steps, mixed.long_steps) > interface.MAX_INFERENCE_STEPS:
        steps = max(mixed.short_steps, mixed.long_steps)
        raise ValueError(f"{where}, mixed: steps at most {interface.MAX_INFERENCE_STEPS}, got {steps}")
    if mixed is not None and mixed.short_steps >= mixed.long_steps:
        raise ValueError(f"{where}, mixed: short_steps must be below long_steps")
    if profile.sweep is not None and profile.sweep.batching_off >= profile.sweep.batching_on:
        raise ValueError(f"{where}, sweep: batching_off must be below batching_on")
    if profile.simulated is not None and len(profile.simulated.levels) < 2:
        raise ValueError(f"{where}, simulated.levels: needs two concurrencies at least")
    return profile


def parse_profiles(text: str) -> dict[str, Profile]:
    """The profiles of a ``scenarios.json`` document, by name: engine profiles where an ``engine`` section is.

    A profile with ``"scenarios_from": OTHER`` takes OTHER's baseline, scenarios and time limit, and may
    override any of them: one definition serves models of the same geometry.
    """
    document = json.loads(text)["profiles"]
    profiles: dict[str, Profile] = {}
    for name, values in document.items():
        source = values.get("scenarios_from")
        if source is not None:
            if source not in document or "scenarios_from" in document[source]:
                raise ValueError(f"profile {name!r}: scenarios_from must name a profile defined in full")
            inherited = {key: value for key, value in document[source].items() if key not in ("model", "description")}
            values = {key: value for key, value in {**inherited, **values}.items() if key != "scenarios_from"}
        time_limit_s = float(values["time_limit_s"])
        if time_limit_s <= 0:
            raise ValueError(f"profile {name!r}: time_limit_s must be positive, got {time_limit_s}")
        common = {"name": name, "description": str(values.get("description", "")), "time_limit_s": time_limit_s}
        common["model"] = str(values.get("model", name))
        parse = _engine_profile if ENGINE_KEY in values else _perf_profile
        profiles[name] = parse(name, values, common)
    return profiles


def request_rates(fractions: Sequence[float], *, peak_throughput_per_s: float) -> tuple[float, ...]:
    """Absolute request rates (requests/s, 3 significant digits) for fractions of a peak throughput."""
    if peak_throughput_per_s <= 0:
        raise ValueError(f"the peak throughput must be positive, got {peak_throughput_per_s}")
    return tuple(float(f"{fraction * peak_throughput_per_s:.3g}") for fraction in fractions)


def load_profiles(perf_dir: Path) -> dict[str, Profile]:
    return parse_profiles((perf_dir / SCENARIOS_FILE_NAME).read_text())
