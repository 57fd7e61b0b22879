"""The engine profiles of ``sdtriton perf`` (``perf/scenarios.json`` entries with an ``engine`` section).

An engine profile measures the diffusion engine (:mod:`sdtriton.serving.engine`) rather than one request's
cost: how close the served throughput comes to the engine's own compute ceiling, what step-level batching
buys at each concurrency, whether short requests stay fast beside long ones, how a burst past the queue
limit is refused, and how throughput scales on a simulated accelerator. Each part is one section of the
profile; the base request of every part is the first request of ``input_data``.

Pure: parsing and checks only; :mod:`sdtriton.perf.engine_runner` runs the sections.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtriton import interface
from sdtriton.perf.scenarios import ENGINE_KEY, SCENARIOS_FILE_NAME
from sdtriton.perf.simulated import SimulatedLatency

# A GPU-like UNet: 10 ms a call plus 2 ms a batch row.
DEFAULT_SIMULATED_LATENCY = SimulatedLatency(fixed_ms=10.0, per_item_ms=2.0)


@dataclass(frozen=True)
class CeilingSpec:
    """(a) The engine in-process over ONNX Runtime (no Triton) against Triton on the same requests.

    Both sides run in turns while the batching-on server is up (idle when not measured): in-process at
    ``concurrency``, served at ``concurrency``, plain loop, served at concurrency 1, again, so that a drift of
    this machine's speed hits both sides of each ratio alike.

    Attributes:
        concurrency: requests kept in the in-process engine at once (a closed loop), the served
            concurrency it is compared with; the UNet then runs at the same batch in both.
        requests: requests timed at ``concurrency`` on each side, over all turns.
        warmup_requests: in-process requests run first, untimed.
        plain_loop_runs: timed runs of the plain loop (one image at a time), and served requests at
            concurrency 1, over all turns.
        plain_loop_warmup_runs: the plain loop's untimed runs first.
        turns: turns the measurements are split into.
    """

    concurrency: int = 8
    requests: int = 32
    warmup_requests: int = 8
    plain_loop_runs: int = 10
    plain_loop_warmup_runs: int = 2
    turns: int = 2


@dataclass(frozen=True)
class SweepSpec:
    """(b) Client threads over gRPC at each concurrency, with step batching on and off.

    Both servers are up together; each level runs on one, then the other, in ``turns`` turns.

    Attributes:
        levels: concurrencies, in increasing order.
        batching_on: ``max_running_images`` of the batching-on repository.
        batching_off: ``max_running_images`` of the batching-off repository (1: one image per UNet call).
        min_requests: requests of every level at least (over all turns).
        requests_per_concurrency: ``concurrency x this`` requests when more than the minimum.
        turns: turns the levels are split into.
    """

    levels: tuple[int, ...] = (1, 2, 4, 8)
    batching_on: int = 8
    batching_off: int = 1
    min_requests: int = 12
    requests_per_concurrency: int = 6
    turns: int = 2

    def request_count(self, concurrency: int) -> int:
        return max(self.min_requests, concurrency * self.requests_per_concurrency)


@dataclass(frozen=True)
class MixedSpec:
    """(c) Short and long requests at once, on the batching-on server (client threads over gRPC).

    Attributes:
        short_steps: steps of a short request.
        long_steps: steps of a long request.
        short_clients: threads sending short requests back to back while the long clients run.
        long_clients: threads sending long requests back to back.
        long_requests_per_client: long requests each long client sends; the mixed load ends with them.
        short_only_requests: requests of the reference load: ``short_clients + long_clients`` threads, all
            short (the same concurrency, no long request).
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
    """(d) Requests sent at once at a server whose engine holds at most ``max_pending_requests``.

    Attributes:
        max_pending_requests: the burst repository's engine limit (running plus queued requests).
        requests: requests sent at once (an asyncio gRPC client each, released together).
        warmup_bursts: bursts of the same size sent first, not judged: the first burst after a server's start
            pays one-off costs (threads of the entry model and the gRPC server), measured 100 ms a refusal here.
    """

    max_pending_requests: int = 4
    requests: int = 24
    warmup_bursts: int = 1


@dataclass(frozen=True)
class SimulatedSpec:
    """(e) The batching-on repository with the simulated accelerator's UNet (:mod:`sdtriton.perf.simulated`).

    Attributes:
        latency: the stand-in UNet's latency model, e.g. ``10ms+2ms``.
        levels: concurrencies; the first and the last give the scaling ratio.
        min_requests: requests of every level at least.
        requests_per_concurrency: ``concurrency x this`` requests when more than the minimum.
        in_process_requests: requests of the in-process runs that measure the non-UNet parts (the engine
            over ONNX Runtime with a UNet that takes no time) at the first and the last level, over all turns.
        turns: turns the levels (in-process, then served) are split into.
    """

    latency: SimulatedLatency = DEFAULT_SIMULATED_LATENCY
    levels: tuple[int, ...] = (1, 8)
    min_requests: int = 16
    requests_per_concurrency: int = 8
    in_process_requests: int = 16
    turns: int = 2

    def request_count(self, concurrency: int) -> int:
        return max(self.min_requests, concurrency * self.requests_per_concurrency)


@dataclass(frozen=True)
class EngineProfile:
    """A model and the engine sections measured on it; a section left out of the profile is None."""

    name: str
    description: str
    model: str
    input_data: str
    time_limit_s: float
    ceiling: CeilingSpec | None = None
    sweep: SweepSpec | None = None
    mixed: MixedSpec | None = None
    burst: BurstSpec | None = None
    simulated: SimulatedSpec | None = None


def _positive(profile: str, section: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"profile {profile!r}, {section}.{name}: must be an integer >= 1, got {value!r}")
    return value


def _levels(profile: str, section: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"profile {profile!r}, {section}.levels: must be a non-empty list, got {values!r}")
    levels = tuple(_positive(profile, section, "levels", value) for value in values)
    if list(levels) != sorted(set(levels)):
        raise ValueError(f"profile {profile!r}, {section}.levels: must increase, got {list(levels)}")
    return levels


def _section(profile: str, name: str, cls: type, values: Mapping[str, Any]) -> Any:
    """A spec dataclass from its JSON object: unknown keys refused, integers checked >= 1."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"profile {profile!r}, {name}: unknown keys {sorted(unknown)} (known: {sorted(fields)})")
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key == "levels":
            parsed[key] = _levels(profile, name, value)
        elif key == "latency":
            try:
                parsed[key] = SimulatedLatency.parse(str(value))
            except ValueError as error:
                raise ValueError(f"profile {profile!r}, {name}.latency: {error}") from None
        elif key == "warmup_bursts" and value == 0:
            parsed[key] = 0
        else:
            parsed[key] = _positive(profile, name, key, value)
    return cls(**parsed)


def _check(profile: EngineProfile) -> EngineProfile:
    name = profile.name
    mixed = profile.mixed
    if mixed is not None:
        for field in ("short_steps", "long_steps"):
            steps = getattr(mixed, field)
            if steps > interface.MAX_INFERENCE_STEPS:
                raise ValueError(
                    f"profile {name!r}, mixed.{field}: at most {interface.MAX_INFERENCE_STEPS}, got {steps}"
                )
        if mixed.short_steps >= mixed.long_steps:
            raise ValueError(f"profile {name!r}, mixed: short_steps must be below long_steps")
    if profile.sweep is not None and profile.sweep.batching_off >= profile.sweep.batching_on:
        raise ValueError(f"profile {name!r}, sweep: batching_off must be below batching_on")
    if profile.simulated is not None and len(profile.simulated.levels) < 2:
        raise ValueError(f"profile {name!r}, simulated.levels: needs two concurrencies at least")
    return profile


_SECTIONS: dict[str, type] = {
    "ceiling": CeilingSpec,
    "sweep": SweepSpec,
    "mixed": MixedSpec,
    "burst": BurstSpec,
    "simulated": SimulatedSpec,
}


def parse_engine_profile(name: str, values: Mapping[str, Any]) -> EngineProfile:
    """One profile: ``{"model", "description", "time_limit_s", "engine": {"input_data", SECTION: {...}}}``."""
    unknown = set(values) - {"model", "description", "time_limit_s", ENGINE_KEY}
    if unknown:
        raise ValueError(f"profile {name!r}: unknown keys {sorted(unknown)} beside {ENGINE_KEY!r}")
    engine = dict(values[ENGINE_KEY])
    if "input_data" not in engine:
        raise ValueError(f"profile {name!r}: {ENGINE_KEY}.input_data is required")
    input_data = str(engine.pop("input_data"))
    unknown = set(engine) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"profile {name!r}: unknown engine sections {sorted(unknown)} (known: {sorted(_SECTIONS)})")
    if not engine:
        raise ValueError(f"profile {name!r}: no engine section (known: {sorted(_SECTIONS)})")
    sections = {key: _section(name, key, cls, engine[key]) for key, cls in _SECTIONS.items() if key in engine}
    time_limit_s = float(values["time_limit_s"])
    if time_limit_s <= 0:
        raise ValueError(f"profile {name!r}: time_limit_s must be positive, got {time_limit_s}")
    return _check(
        EngineProfile(
            name=name,
            description=str(values.get("description", "")),
            model=str(values.get("model", name)),
            input_data=input_data,
            time_limit_s=time_limit_s,
            **sections,
        )
    )


def is_engine_profile(values: Mapping[str, Any]) -> bool:
    return ENGINE_KEY in values


def parse_engine_profiles(text: str) -> dict[str, EngineProfile]:
    """The engine profiles of a ``scenarios.json`` document, by name (the perf_analyzer ones are left out)."""
    document = json.loads(text)["profiles"]
    return {name: parse_engine_profile(name, values) for name, values in document.items() if is_engine_profile(values)}


def load_engine_profiles(perf_dir: Path) -> dict[str, EngineProfile]:
    return parse_engine_profiles((perf_dir / SCENARIOS_FILE_NAME).read_text())
