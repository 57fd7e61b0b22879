"""What an engine profile measured, and the numbers judged against its goals: ratios, percentiles, classes.

Pure: built by :mod:`sdtriton.perf.engine_runner`, rendered by :mod:`sdtriton.perf.engine_report`, checked by
unit tests. Throughputs are images per second; latencies milliseconds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sdtriton.perf.engine_scenarios import BurstSpec, MixedSpec
from sdtriton.perf.run import MachineInfo, PathTiming
from sdtriton.perf.simulated import SimulatedLatency
from sdtriton.perf.workload import RequestSpec

# The goals of the engine work (issue of commit cf8d572's follow-up), on the default model.
GOAL_SERVED_OVER_CEILING = 0.90  # served images/s at the ceiling's concurrency over the in-process engine's: at least
GOAL_C1_OVER_PLAIN_LOOP = 1.05  # served p50 at concurrency 1 over the plain loop's median: at most
GOAL_SHORT_P99_OVER_SHORT_ONLY = 2.0  # short requests' p99 beside long ones over their p99 alone: under
GOAL_REFUSAL_MS = 50.0  # every refused request of a burst answered within: under
GOAL_SIMULATED_SHARE_OF_ALLOWED = 0.90  # simulated c_high/c_low throughput ratio over what the model allows: at least

BATCHING_ON = "batching_on"
BATCHING_OFF = "batching_off"
# The batching-on server's loads measured in turns with the in-process ceiling.
CEILING_SERVED = "ceiling_served"
SIMULATED = "simulated"
SHORT = "short"
LONG = "long"
BURST = "burst"
BURST_WARMUP = "burst_warmup"
# The server message of a request the engine refused because it was full (sdtriton.serving.errors.ServerBusyError).
BUSY_MESSAGE_PREFIX = "server busy"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks (numpy's default method).

    Raises:
        ValueError: no values, or ``q`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Outcome(enum.Enum):
    """How one client request ended."""

    OK = "ok"  # an image came back
    REFUSED = "refused"  # UNAVAILABLE "server busy": the engine was full, nothing was started
    FAILED = "failed"  # any other error


@dataclass(frozen=True)
class RequestRecord:
    """One request sent by a client thread.

    Attributes:
        load: the load it belonged to (``mixed``, ``short_only``, ``burst``).
        request_class: ``short``, ``long`` or ``burst``.
        client: the thread that sent it.
        started_s: when it was sent, from the start of the load.
        latency_ms: from sending to the answer (image or error).
        outcome: image, refusal or failure.
        message: the error's message, if any.
        error_type: the client exception's class name, if any (``ServerUnavailableError`` for ``UNAVAILABLE``).
    """

    load: str
    request_class: str
    client: int
    started_s: float
    latency_ms: float
    outcome: Outcome
    message: str = ""
    error_type: str = ""


# The client exceptions of an UNAVAILABLE answer (``ServerBusyError`` is the newer client's subclass).
UNAVAILABLE_ERROR_TYPES = frozenset({"ServerUnavailableError", "ServerBusyError"})


def classify_error(message: str) -> Outcome:
    """A refusal when the server said it was full (its message starts ``server busy``), else a failure."""
    return Outcome.REFUSED if message.lstrip().lower().startswith(BUSY_MESSAGE_PREFIX) else Outcome.FAILED


def split_by_class(records: Iterable[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Records by request class, in their order."""
    classes: dict[str, list[RequestRecord]] = {}
    for record in records:
        classes.setdefault(record.request_class, []).append(record)
    return classes


@dataclass(frozen=True)
class LatencySummary:
    """Latencies of the completed requests of one class over a load, and their rate."""

    count: int
    failed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float

    @classmethod
    def of(cls, records: Sequence[RequestRecord], *, duration_s: float) -> LatencySummary:
        """Summarizes one class's records (one image per request) over a load of ``duration_s``.

        Raises:
            ValueError: no request completed, or a duration that is not positive.
        """
        if duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        latencies = [record.latency_ms for record in records if record.outcome is Outcome.OK]
        if not latencies:
            raise ValueError("no request of this class completed")
        return cls(
            count=len(latencies),
            failed=sum(record.outcome is not Outcome.OK for record in records),
            p50_ms=percentile(latencies, 50),
            p90_ms=percentile(latencies, 90),
            p99_ms=percentile(latencies, 99),
            mean_ms=sum(latencies) / len(latencies),
            images_per_s=len(latencies) / duration_s,
        )


def summarize_classes(records: Sequence[RequestRecord], *, duration_s: float) -> dict[str, LatencySummary]:
    return {
        name: LatencySummary.of(group, duration_s=duration_s)
        for name, group in split_by_class(records).items()
        if any(record.outcome is Outcome.OK for record in group)
    }


@dataclass(frozen=True)
class LevelResult:
    """One closed-loop level: ``concurrency`` client threads over gRPC, each sending its requests back to back.

    Throughput is the completed requests over the level's wall time, from the first request sent to the last
    answer, as the in-process ceiling is timed.
    """

    variant: str
    concurrency: int
    records: tuple[RequestRecord, ...]
    duration_s: float

    @property
    def completed(self) -> int:
        return sum(record.outcome is Outcome.OK for record in self.records)

    @property
    def failed(self) -> int:
        return len(self.records) - self.completed

    @property
    def summary(self) -> LatencySummary:
        """Raises ValueError when no request completed."""
        return LatencySummary.of(self.records, duration_s=self.duration_s)

    @property
    def images_per_s(self) -> float:
        return self.completed / self.duration_s

    @property
    def p50_ms(self) -> float:
        return self.summary.p50_ms

    @property
    def p99_ms(self) -> float:
        return self.summary.p99_ms

    @classmethod
    def merged(cls, parts: Sequence[LevelResult]) -> LevelResult:
        """Turns of one variant and concurrency as one level: their records, their durations added."""
        if not parts or len({(part.variant, part.concurrency) for part in parts}) != 1:
            raise ValueError("merge one or more turns of one variant and concurrency")
        return cls(
            variant=parts[0].variant,
            concurrency=parts[0].concurrency,
            records=tuple(record for part in parts for record in part.records),
            duration_s=sum(part.duration_s for part in parts),
        )


@dataclass(frozen=True)
class InProcessRun:
    """The engine driven in this process (no Triton) as a closed loop of ``concurrency`` requests."""

    concurrency: int
    requests: int
    elapsed_s: float
    unet_calls: int
    unet_rows: int

    @property
    def images_per_s(self) -> float:
        return self.requests / self.elapsed_s

    @property
    def rows_per_unet_call(self) -> float:
        return self.unet_rows / self.unet_calls if self.unet_calls else 0.0

    @classmethod
    def merged(cls, runs: Sequence[InProcessRun]) -> InProcessRun:
        """Runs at one concurrency (turns) as one: their requests, time, calls and rows added."""
        if not runs or len({run.concurrency for run in runs}) != 1:
            raise ValueError("merge one or more runs of one concurrency")
        return cls(
            concurrency=runs[0].concurrency,
            requests=sum(run.requests for run in runs),
            elapsed_s=sum(run.elapsed_s for run in runs),
            unet_calls=sum(run.unet_calls for run in runs),
            unet_rows=sum(run.unet_rows for run in runs),
        )


@dataclass(frozen=True)
class CeilingResult:
    """(a) The in-process engine and the plain loop against the server, measured in turns.

    Attributes:
        in_process: the in-process engine at the ceiling's concurrency, over all turns.
        served: the server at the same concurrency, over all turns.
        plain_loop: the plain loop, one image at a time, every timed run.
        served_one: the server at concurrency 1, over all turns.
        turn_ratios: served/in-process images/s of each turn (their spread shows the machine's drift).
    """

    in_process: InProcessRun
    served: LevelResult
    plain_loop: PathTiming
    served_one: LevelResult
    turn_ratios: tuple[float, ...] = ()

    @property
    def served_over_ceiling(self) -> float:
        return self.served.images_per_s / self.in_process.images_per_s

    @property
    def one_over_plain_loop(self) -> float:
        return self.served_one.p50_ms / self.plain_loop.median_ms


@dataclass(frozen=True)
class MixedResult:
    """(c) Short and long requests together, and short requests alone at the same concurrency."""

    spec: MixedSpec
    mixed: tuple[RequestRecord, ...]
    mixed_duration_s: float
    short_only: tuple[RequestRecord, ...]
    short_only_duration_s: float

    @property
    def mixed_classes(self) -> dict[str, LatencySummary]:
        return summarize_classes(self.mixed, duration_s=self.mixed_duration_s)

    @property
    def short_only_summary(self) -> LatencySummary:
        return LatencySummary.of(self.short_only, duration_s=self.short_only_duration_s)

    @property
    def short_p99_ratio(self) -> float | None:
        """Short requests' p99 beside long ones over their p99 alone; None when a side has no completed one."""
        short = self.mixed_classes.get(SHORT)
        if short is None or not any(record.outcome is Outcome.OK for record in self.short_only):
            return None
        return short.p99_ms / self.short_only_summary.p99_ms

    @property
    def failures(self) -> int:
        return sum(record.outcome is not Outcome.OK for record in (*self.mixed, *self.short_only))


@dataclass(frozen=True)
class BurstResult:
    """(d) Requests sent at once past the engine's ``max_pending_requests``."""

    spec: BurstSpec
    records: tuple[RequestRecord, ...]
    warmup_records: tuple[RequestRecord, ...] = ()  # the untimed bursts before, in order

    @property
    def warmup_max_refusal_ms(self) -> float | None:
        refusals = [r.latency_ms for r in self.warmup_records if r.outcome is Outcome.REFUSED]
        return max(refusals) if refusals else None

    def _with(self, outcome: Outcome) -> list[RequestRecord]:
        return [record for record in self.records if record.outcome is outcome]

    @property
    def completed(self) -> int:
        return len(self._with(Outcome.OK))

    @property
    def refused(self) -> int:
        return len(self._with(Outcome.REFUSED))

    @property
    def failed(self) -> int:
        """Accepted requests that ended in an error: every accepted request should complete."""
        return len(self._with(Outcome.FAILED))

    @property
    def accepted(self) -> int:
        return self.completed + self.failed

    @property
    def refused_as_unavailable(self) -> int:
        """Refusals the client raised as ``UNAVAILABLE`` (:class:`ServerUnavailableError`), as they should be."""
        return sum(record.error_type in UNAVAILABLE_ERROR_TYPES for record in self._with(Outcome.REFUSED))

    @property
    def refusal_ms(self) -> list[float]:
        return [record.latency_ms for record in self._with(Outcome.REFUSED)]

    @property
    def max_refusal_ms(self) -> float | None:
        return max(self.refusal_ms) if self.refusal_ms else None


def allowed_images_per_s(
    latency: SimulatedLatency,
    *,
    concurrency: int,
    rows_per_image: int,
    unet_calls_per_image: float,
    non_unet_s_per_image: float,
) -> float:
    """What the latency model allows at ``concurrency``, with the non-UNet parts at their measured cost.

    ``concurrency`` images advance together: each of their ``unet_calls_per_image`` evaluations is one UNet
    call of ``concurrency * rows_per_image`` rows (:meth:`SimulatedLatency.call_s`), and the rest of their work
    (text encoder, VAE decoder, scheduler steps, glue: ``non_unet_s_per_image`` each, measured with the same
    ``concurrency``) runs on the CPU beside it, not overlapped.
    """
    if non_unet_s_per_image < 0:
        raise ValueError(f"non_unet_s_per_image must be >= 0, got {non_unet_s_per_image}")
    batch_s = unet_calls_per_image * latency.call_s(concurrency * rows_per_image)
    return concurrency / (batch_s + concurrency * non_unet_s_per_image)


@dataclass(frozen=True)
class SimulatedResult:
    """(e) The simulated accelerator (a sleeping UNet; every number here is SIMULATED).

    Attributes:
        latency: the stand-in UNet's latency model.
        rows_per_image: UNet rows per image (2 with classifier-free guidance).
        unet_calls_per_image: UNet evaluations per image (the request's steps for one-call schedulers).
        low, high: the lowest and highest concurrency (client threads over gRPC).
        points: every level measured.
        non_unet_low, non_unet_high: the in-process engine with a UNet that takes no time, at the same two
            concurrencies: the text encoder, VAE decoder, scheduler steps and glue, per image.
    """

    latency: SimulatedLatency
    rows_per_image: int
    unet_calls_per_image: float
    low: LevelResult
    high: LevelResult
    points: tuple[LevelResult, ...]
    non_unet_low: InProcessRun
    non_unet_high: InProcessRun

    @property
    def low_concurrency(self) -> int:
        return self.low.concurrency

    @property
    def high_concurrency(self) -> int:
        return self.high.concurrency

    @property
    def measured_ratio(self) -> float:
        return self.high.images_per_s / self.low.images_per_s

    @property
    def unet_only_allowed_ratio(self) -> float:
        """The latency model's ratio for the UNet alone (:meth:`SimulatedLatency.throughput_ratio`)."""
        return self.latency.throughput_ratio(self.high_concurrency, self.rows_per_image) / (
            self.latency.throughput_ratio(self.low_concurrency, self.rows_per_image)
        )

    def allowed_images_per_s(self, run: InProcessRun) -> float:
        return allowed_images_per_s(
            self.latency,
            concurrency=run.concurrency,
            rows_per_image=self.rows_per_image,
            unet_calls_per_image=self.unet_calls_per_image,
            non_unet_s_per_image=1.0 / run.images_per_s,
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
class EngineResult:
    """Everything one engine profile run measured; a section that did not run is None (see ``skipped``)."""

    profile: str
    machine: MachineInfo
    request: RequestSpec
    input_data: str
    ceiling: CeilingResult | None
    sweep: tuple[LevelResult, ...]
    mixed: MixedResult | None
    burst: BurstResult | None
    simulated: SimulatedResult | None
    skipped: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    other_cpu_s: float | None = None  # CPU time of processes not this run's (None: not measured)

    @property
    def other_cpu_share(self) -> float | None:
        """Other processes' CPU time over the run, as a share of every core's time."""
        if self.other_cpu_s is None or self.elapsed_s <= 0:
            return None
        return self.other_cpu_s / (self.elapsed_s * self.machine.cpu_count)

    def sweep_point(self, variant: str, concurrency: int) -> LevelResult | None:
        for point in self.sweep:
            if point.variant == variant and point.concurrency == concurrency and point.completed:
                return point
        return None

    @property
    def served_over_ceiling(self) -> float | None:
        return None if self.ceiling is None else self.ceiling.served_over_ceiling

    @property
    def c1_over_plain_loop(self) -> float | None:
        return None if self.ceiling is None else self.ceiling.one_over_plain_loop

    def on_off_ratios(self) -> list[tuple[int, float]]:
        """(concurrency, batching-on images/s over batching-off) at every level both measured."""
        ratios = []
        for point in sorted(self.sweep, key=lambda p: p.concurrency):
            if point.variant != BATCHING_ON or not point.completed:
                continue
            off = self.sweep_point(BATCHING_OFF, point.concurrency)
            if off is not None:
                ratios.append((point.concurrency, point.images_per_s / off.images_per_s))
        return ratios


@dataclass(frozen=True)
class GoalRow:
    """One goal: what was measured against it; ``met`` None when not measured."""

    measure: str
    measured: str
    goal: str
    met: bool | None
    simulated: bool = False

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else "MISSED"


def _at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def _below(value: float | None, goal: float) -> bool | None:
    return None if value is None else value < goal


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}x"


def goal_rows(result: EngineResult) -> list[GoalRow]:
    """Every goal of the engine profile, in section order."""
    rows = []
    concurrency = result.ceiling.in_process.concurrency if result.ceiling is not None else None
    rows.append(
        GoalRow(
            f"(a) served / in-process engine images/s at concurrency {concurrency or '?'}",
            _x(result.served_over_ceiling),
            f">= {GOAL_SERVED_OVER_CEILING}x",
            _at_least(result.served_over_ceiling, GOAL_SERVED_OVER_CEILING),
        )
    )
    rows.append(
        GoalRow(
            "(a) served p50 at concurrency 1 / plain loop median",
            _x(result.c1_over_plain_loop),
            f"<= {GOAL_C1_OVER_PLAIN_LOOP}x",
            _at_most(result.c1_over_plain_loop, GOAL_C1_OVER_PLAIN_LOOP),
        )
    )
    ratio = result.mixed.short_p99_ratio if result.mixed is not None else None
    rows.append(
        GoalRow(
            "(c) short requests' p99 beside long ones / short requests alone",
            _x(ratio),
            f"< {GOAL_SHORT_P99_OVER_SHORT_ONLY}x",
            _below(ratio, GOAL_SHORT_P99_OVER_SHORT_ONLY),
        )
    )
    burst = result.burst
    slowest = burst.max_refusal_ms if burst is not None else None
    rows.append(
        GoalRow(
            "(d) slowest refusal of the burst",
            "" if slowest is None else f"{slowest:.1f} ms ({burst.refused} refused)",
            f"< {GOAL_REFUSAL_MS:g} ms each",
            _below(slowest, GOAL_REFUSAL_MS),
        )
    )
    rows.append(
        GoalRow(
            "(d) refusals answered UNAVAILABLE (the client's `ServerUnavailableError`)",
            "" if burst is None else f"{burst.refused_as_unavailable} of {burst.refused}",
            "all",
            None if burst is None or burst.refused == 0 else burst.refused_as_unavailable == burst.refused,
        )
    )
    rows.append(
        GoalRow(
            "(d) every accepted request of the burst completed",
            "" if burst is None else f"{burst.completed} of {burst.accepted}",
            "all",
            None if burst is None or burst.accepted == 0 else burst.failed == 0,
        )
    )
    simulated = result.simulated
    rows.append(
        GoalRow(
            "(e) SIMULATED: measured c_high/c_low images/s over the allowed ratio (non-UNet parts counted)",
            "" if simulated is None else f"{simulated.share_of_allowed:.1%}",
            f">= {GOAL_SIMULATED_SHARE_OF_ALLOWED:.0%}",
            None if simulated is None else simulated.share_of_allowed >= GOAL_SIMULATED_SHARE_OF_ALLOWED,
            simulated=True,
        )
    )
    rows.append(
        GoalRow(
            "(e) SIMULATED: the same over the UNet-alone ratio (`SimulatedLatency.throughput_ratio`, stricter)",
            "" if simulated is None else f"{simulated.share_of_unet_only_allowed:.1%}",
            f">= {GOAL_SIMULATED_SHARE_OF_ALLOWED:.0%}",
            None if simulated is None else simulated.share_of_unet_only_allowed >= GOAL_SIMULATED_SHARE_OF_ALLOWED,
            simulated=True,
        )
    )
    return rows
