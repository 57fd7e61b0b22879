"""The engine's own metrics: what it reports (:class:`EngineObserver`) and the one definition of every name.

The engine calls an :class:`EngineObserver` at the points an operator watches: the queue and running set after
each change, every UNet call, every iteration, every finished image, every request's end by state, every
refusal. The Triton adapter (``sdtriton.serving.triton_models``) implements the observer over Triton's custom
metrics (``pb_utils.MetricFamily``) with the specs below; tests use a recording one. This module imports no
``pb_utils``: the specs are also what the dashboard test checks ``monitoring/grafana_dashboard.json`` against.

Counters count from the model's load; rates, averages and quantiles come out in PromQL (``monitoring/README.md``).
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


class MetricKind(enum.Enum):
    """Triton's custom metric kinds (``pb_utils.MetricFamily.COUNTER`` / ``GAUGE`` / ``HISTOGRAM``)."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


# The label every sdtriton metric carries: the reporting model's name, prefix included (as Triton's ``model``).
MODEL_LABEL = "model"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its Prometheus name, kind, help text, labels beyond ``model``, histogram buckets.

    Attributes:
        name: the family's name as scraped (counters end in ``_total``; Triton adds no suffix).
        kind: counter, gauge or histogram.
        description: the ``# HELP`` text.
        labels: label names besides :data:`MODEL_LABEL`.
        buckets: a histogram's upper bounds, ascending (``+Inf`` is implied); empty for the other kinds.
    """

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith("sdtriton_"):
            raise ValueError(f"metric {self.name!r} must start with sdtriton_")
        if (self.kind is MetricKind.HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"metric {self.name!r}: buckets go with histograms, and only with them")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"metric {self.name!r}: buckets must ascend, got {self.buckets}")
        if self.kind is MetricKind.COUNTER and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")

    @property
    def series_names(self) -> tuple[str, ...]:
        """The names its samples are scraped under (a histogram's ``_bucket``, ``_sum`` and ``_count``)."""
        if self.kind is MetricKind.HISTOGRAM:
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.name,)


# A step on a GPU takes tens of milliseconds, on this CPU up to a second; an image seconds to minutes.
_STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_IMAGE_BUCKETS_S = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Rows of one UNet call: two per guided image, up to max_unet_rows.
_ROW_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)

REQUESTS_RUNNING = MetricSpec(
    "sdtriton_requests_running", MetricKind.GAUGE, "Requests the diffusion engine is denoising now."
)
REQUESTS_WAITING = MetricSpec(
    "sdtriton_requests_waiting", MetricKind.GAUGE, "Requests queued in the diffusion engine, not yet admitted."
)
PENDING_LIMIT = MetricSpec(
    "sdtriton_requests_pending_limit",
    MetricKind.GAUGE,
    "max_pending_requests: running plus waiting requests the engine holds before it refuses.",
)
UNET_BATCH_ROWS = MetricSpec(
    "sdtriton_unet_batch_rows",
    MetricKind.HISTOGRAM,
    "Rows of each UNet call (a guided image sends two).",
    labels=("unet",),
    buckets=_ROW_BUCKETS,
)
UNET_CALL_DURATION = MetricSpec(
    "sdtriton_unet_call_duration_seconds",
    MetricKind.HISTOGRAM,
    "Seconds of each UNet call, as the engine waits for it.",
    labels=("unet",),
    buckets=_STEP_BUCKETS_S,
)
STEP_DURATION = MetricSpec(
    "sdtriton_step_duration_seconds",
    MetricKind.HISTOGRAM,
    "Seconds of each engine iteration that advanced running images by one network evaluation "
    "(text encoding of admitted requests and decoding of finished images included).",
    buckets=_STEP_BUCKETS_S,
)
IMAGE_DURATION = MetricSpec(
    "sdtriton_image_duration_seconds",
    MetricKind.HISTOGRAM,
    "Seconds from a request's arrival at the engine to each of its images being answered.",
    buckets=_IMAGE_BUCKETS_S,
)
IMAGES = MetricSpec("sdtriton_images_total", MetricKind.COUNTER, "Images answered.")
STEPS = MetricSpec(
    "sdtriton_steps_total",
    MetricKind.COUNTER,
    "Denoising steps taken, one per image per network evaluation (as progress counts them: Heun's second halves and "
    "PNDM's repeated first timestep count).",
)
REQUESTS_ENDED = MetricSpec(
    "sdtriton_requests_ended_total",
    MetricKind.COUNTER,
    "Requests the engine ended, by state: finished, cancelled, expired (time budget), failed.",
    labels=("state",),
)
REJECTIONS = MetricSpec(
    "sdtriton_rejections_total",
    MetricKind.COUNTER,
    "Requests refused at once as the server was full (UNAVAILABLE), by the model that refused them: "
    "an entry refuses on its own when it alone holds max_pending_requests, the pipeline when its engine is full.",
)
CACHE_LOOKUPS = MetricSpec(
    "sdtriton_cache_lookups_total", MetricKind.COUNTER, "Lookups in a cache, by cache.", labels=("cache",)
)
CACHE_HITS = MetricSpec(
    "sdtriton_cache_hits_total", MetricKind.COUNTER, "Lookups in a cache that found their entry.", labels=("cache",)
)

ENGINE_METRICS: tuple[MetricSpec, ...] = (
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    PENDING_LIMIT,
    UNET_BATCH_ROWS,
    UNET_CALL_DURATION,
    STEP_DURATION,
    IMAGE_DURATION,
    IMAGES,
    STEPS,
    REQUESTS_ENDED,
    REJECTIONS,
    CACHE_LOOKUPS,
    CACHE_HITS,
)
"""Every sdtriton metric; the pipeline model creates them all, the entries :data:`REJECTIONS` alone."""

# The values of the ``state`` label of :data:`REQUESTS_ENDED` (``RequestState``'s final states).
ENDED_STATES = ("finished", "cancelled", "expired", "failed")


class EngineObserver(Protocol):
    """What the engine reports as it runs; every method is called outside the engine's lock, and may be called
    from the loop thread and from threads that submit. Durations are read from the engine's clock."""

    def requests_changed(self, *, running: int, waiting: int) -> None:
        """The running set or the queue changed; the counts are the latest."""

    def request_refused(self) -> None:
        """A request was refused at once: the engine was full or stopping."""

    def unet_called(self, *, unet: str, rows: int, duration_s: float) -> None:
        """One UNet call answered: its rows and how long the engine waited."""

    def iteration_done(self, *, steps: int, duration_s: float) -> None:
        """An iteration advanced ``steps`` images by one network evaluation each, in ``duration_s``."""

    def image_finished(self, *, duration_s: float) -> None:
        """An image was answered, ``duration_s`` after its request arrived."""

    def request_ended(self, *, state: str) -> None:
        """A request ended in ``state``, one of :data:`ENDED_STATES`."""

    def cache_lookup(self, *, cache: str, hit: bool) -> None:
        """A cache (``response`` or ``text_embedding``, sdtriton.serving.caches) was looked up, and whether it hit."""


class NoObserver:
    """The default observer: reports nothing."""

    def requests_changed(self, *, running: int, waiting: int) -> None:
        pass

    def request_refused(self) -> None:
        pass

    def unet_called(self, *, unet: str, rows: int, duration_s: float) -> None:
        pass

    def iteration_done(self, *, steps: int, duration_s: float) -> None:
        pass

    def image_finished(self, *, duration_s: float) -> None:
        pass

    def request_ended(self, *, state: str) -> None:
        pass

    def cache_lookup(self, *, cache: str, hit: bool) -> None:
        pass


class GuardedObserver:
    """Passes every report on to ``observer`` and never raises: a metric must not fail a request.

    The first failure of each method is logged with its traceback, later ones at debug level (one per step
    would flood the log).
    """

    def __init__(self, observer: EngineObserver) -> None:
        self._observer = observer
        self._lock = threading.Lock()
        self._failed: set[str] = set()

    def _call(self, method: str, **kwargs: object) -> None:
        try:
            getattr(self._observer, method)(**kwargs)
        except Exception:
            with self._lock:
                first = method not in self._failed
                self._failed.add(method)
            if first:
                logger.exception("metrics: %s failed; the engine goes on (later failures are logged at debug)", method)
            else:
                logger.debug("metrics: %s failed again", method, exc_info=True)

    def requests_changed(self, *, running: int, waiting: int) -> None:
        self._call("requests_changed", running=running, waiting=waiting)

    def request_refused(self) -> None:
        self._call("request_refused")

    def unet_called(self, *, unet: str, rows: int, duration_s: float) -> None:
        self._call("unet_called", unet=unet, rows=rows, duration_s=duration_s)

    def iteration_done(self, *, steps: int, duration_s: float) -> None:
        self._call("iteration_done", steps=steps, duration_s=duration_s)

    def image_finished(self, *, duration_s: float) -> None:
        self._call("image_finished", duration_s=duration_s)

    def request_ended(self, *, state: str) -> None:
        self._call("request_ended", state=state)

    def cache_lookup(self, *, cache: str, hit: bool) -> None:
        self._call("cache_lookup", cache=cache, hit=hit)
