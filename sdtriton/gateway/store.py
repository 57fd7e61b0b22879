"""The job store: one small protocol over the durable state of the gateway's jobs, and its records.

Two implementations pass the same contract tests (``tests/integration/test_job_store.py``):
:class:`~sdtriton.gateway.sqlite_store.SqliteJobStore` (embedded, one file, the default) and
:class:`~sdtriton.gateway.redis_store.RedisJobStore` (several gateway replicas share one queue). The store owns
every change of a job's state; the :class:`~sdtriton.gateway.jobs.JobManager` drives it.

A job's life::

    queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
      │  ▲                │
      │  └───release──────┤ (a gateway stopping gracefully hands its job back)
      │                   └── lease expired: claimed again by the next gateway that asks (same request, same seed)
      └──request_cancel──▶ cancelled (at once; a running job is flagged and its owner stops it)

Claims are leases: the owner renews them while it runs the job; one whose lease ran out (its gateway died) is
claimed again by the next :meth:`JobStore.claim`, at most ``max_attempts`` times in all, then failed with
``job_interrupted``. Every call that changes a running job carries the claim's token, so an owner that lost its
claim (it stalled past its lease, another gateway took the job over) can neither renew, nor finish, nor release
it: a job is run to completion once.

Times are seconds since the epoch from the calling process's clock (``time.time()``): gateways sharing a store
need clocks in step to well under a lease (NTP does it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})

# How many times a job may be claimed (its first run and the runs that took it over from a dead gateway) before a
# claim fails it instead: a request that kills its gateway every time must not go round the replicas for ever.
DEFAULT_MAX_ATTEMPTS = 3
# How long a claim lasts without renewal: a dead gateway's jobs are taken over this long after its last renewal.
DEFAULT_LEASE_S = 30.0
JOB_ID_PREFIX = "job_"


class JobStoreError(Exception):
    """A job store could not do what was asked (bad arguments, an unreadable store)."""


@dataclass(frozen=True)
class ResultImage:
    """One image of a finished job, as listed in the job (its bytes are read with :meth:`JobStore.image`).

    Attributes:
        index: Its place in the job's result, from 0.
        format: ``png``, ``jpeg`` or ``webp``.
        seed: The seed it was drawn with.
        size_bytes: The length of its encoded bytes.
    """

    index: int
    format: str
    seed: int
    size_bytes: int


@dataclass(frozen=True)
class GeneratedImage:
    """One image a run produced, handed to :meth:`JobStore.finish` to be stored with the job."""

    data: bytes
    format: str
    seed: int


@dataclass(frozen=True)
class WebhookDelivery:
    """One attempt at POSTing a finished job to its webhook.

    Attributes:
        attempt: 1 for the first try.
        at: When the attempt started (seconds since the epoch).
        status_code: The receiver's HTTP status, or None when no response came (``error`` says why).
        error: Why the attempt failed, or None when the receiver answered 2xx.
        duration_s: How long the attempt took.
    """

    attempt: int
    at: float
    status_code: int | None
    error: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Job:
    """A snapshot of one job as the store holds it.

    Attributes:
        id: ``job_`` and 32 hex digits.
        status: One of :data:`JOB_STATUSES`.
        request: The request body as submitted, with its seed fixed at submit time.
        scope: Whom the job belongs to (a digest of the API key; ``""`` when the gateway is open); idempotency keys
            are unique within a scope.
        idempotency_key: The submit's ``Idempotency-Key``, if any.
        webhook: Where the finished job is POSTed, if anywhere.
        created_at, started_at, finished_at: Seconds since the epoch; ``started_at`` is the first claim's.
        step, total: The run's progress (0, 0 until its first step; ``total`` steps when it succeeded).
        error: The OpenAI-shaped error body (``message``, ``type``, ``param``, ``code``) of a failed or cancelled job.
        images: The result images of a succeeded job.
        deliveries: Every webhook delivery attempt, oldest first.
        owner: The gateway that holds (or last held) the job.
        lease_expires_at: When the running owner's claim runs out unless renewed.
        attempts: How many times the job has been claimed (a run taken over from a dead gateway counts again).
        cancel_requested: A cancel was asked while the job ran; its owner stops it.
    """

    id: str
    status: str
    request: Mapping[str, Any]
    scope: str
    idempotency_key: str | None
    webhook: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    step: int
    total: int
    error: Mapping[str, Any] | None
    images: tuple[ResultImage, ...] = ()
    deliveries: tuple[WebhookDelivery, ...] = ()
    owner: str | None = None
    lease_expires_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The job as clients see it (JSON-ready; no owner, lease, scope or idempotency key)."""
        return {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": {"step": self.step, "total": self.total},
            "request": dict(self.request),
            "error": dict(self.error) if self.error is not None else None,
            "images": [{"index": i.index, "format": i.format, "seed": i.seed} for i in self.images],
            "webhook": self.webhook,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Claim:
    """A job claimed for running, and the token every later change of it must carry."""

    job: Job
    token: str


@dataclass(frozen=True)
class LeaseStatus:
    """What :meth:`JobStore.renew` found: whether the claim is still held, and whether a cancel was asked."""

    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class Submitted:
    """What :meth:`JobStore.create` did: the job, and whether it is new (False: an idempotent resubmit)."""

    job: Job
    created: bool = field(default=True)


class JobStore(Protocol):
    """The durable state of the gateway's jobs. Every method is synchronous and safe to call from several threads
    and processes at once (the :class:`~sdtriton.gateway.jobs.JobManager` calls them through
    ``asyncio.to_thread``)."""

    def create(
        self,
        request: Mapping[str, Any],
        *,
        scope: str = "",
        idempotency_key: str | None = None,
        webhook: str | None = None,
    ) -> Submitted:
        """Queues a job for ``request`` (a JSON object whose seed the caller has fixed). With an
        ``idempotency_key`` already used in ``scope`` (by a job not yet expired), returns that job instead."""
        ...

    def get(self, job_id: str) -> Job | None:
        """The job, or None when there is none (never was, or expired)."""
        ...

    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this queued one (0: it is next); None when it is not queued."""
        ...

    def claim(self, owner: str, *, lease_s: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Claim | None:
        """Atomically takes the next runnable job for ``owner``: first a running job whose lease ran out (the
        earliest to run out), then the oldest queued job. The claim lasts ``lease_s`` unless renewed. A job found
        with a cancel asked is cancelled instead, and one already claimed ``max_attempts`` times is failed with
        ``job_interrupted``. None when nothing is runnable."""
        ...

    def renew(
        self, job_id: str, token: str, *, lease_s: float, step: int | None = None, total: int | None = None
    ) -> LeaseStatus:
        """Extends the claim by ``lease_s`` from now and records the progress, if the claim is still held."""
        ...

    def finish(
        self,
        job_id: str,
        token: str,
        *,
        status: str,
        images: Sequence[GeneratedImage] = (),
        error: Mapping[str, Any] | None = None,
        total: int | None = None,
    ) -> bool:
        """Ends a running job as ``status`` (succeeded with its ``images``, failed or cancelled with ``error``), if
        ``token`` still holds its claim; False (and no change) otherwise. ``total``: its steps as the run last saw
        them (a run shorter than the progress interval never renewed them; None: as stored). Finished jobs expire
        after the store's result TTL."""
        ...

    def release(self, job_id: str, token: str) -> bool:
        """Hands a running job back to the queue at its old place, not counting the attempt (a gateway stopping
        gracefully); a job with a cancel asked is cancelled instead. False when ``token`` no longer holds it."""
        ...

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancels a queued job at once; flags a running one for its owner to stop; leaves a finished one as it is.
        Returns the job after the change, or None when there is no such job."""
        ...

    def image(self, job_id: str, index: int) -> tuple[bytes, str] | None:
        """The bytes and format of a finished job's image ``index``, or None."""
        ...

    def list_recent(self, *, limit: int = 20, scope: str | None = None) -> list[Job]:
        """The newest jobs first (of ``scope`` only, when given), at most ``limit``."""
        ...

    def record_delivery(self, job_id: str, delivery: WebhookDelivery) -> bool:
        """Appends a webhook delivery attempt to the job's record; False when the job is gone."""
        ...

    def count_active(self) -> dict[str, int]:
        """How many jobs are queued and running right now: ``{"queued": n, "running": m}``."""
        ...

    def close(self) -> None:
        """Releases the store's connections."""
        ...


def cancelled_error() -> dict[str, Any]:
    """The error body of a cancelled job."""
    return {"message": "the job was cancelled", "type": "cancelled", "param": None, "code": "cancelled"}


def interrupted_error() -> dict[str, Any]:
    """The error body of a job whose gateway died under it on every one of its claims (its ``attempts``)."""
    return {
        "message": "the job was interrupted on each of its attempts (its gateway stopped while running it); "
        "not run again",
        "type": "server_error",
        "param": None,
        "code": "job_interrupted",
    }


def check_final_status(status: str) -> None:
    if status not in FINAL_STATUSES:
        raise JobStoreError(f"status must be one of {sorted(FINAL_STATUSES)}, got {status!r}")


def check_lease(lease_s: float) -> None:
    if not lease_s > 0:
        raise JobStoreError(f"lease_s must be > 0, got {lease_s}")


def encode_request(request: Mapping[str, Any]) -> str:
    """The request as stored: compact JSON of an object (anything else is refused)."""
    if not isinstance(request, Mapping):
        raise JobStoreError(f"a job's request must be a JSON object, got {type(request).__name__}")
    return json.dumps(dict(request), separators=(",", ":"), allow_nan=False)


def scope_digest(scope: str) -> str:
    """A short fixed-length name for a scope, for keys and indexes."""
    return hashlib.sha256(scope.encode()).hexdigest()[:32]
