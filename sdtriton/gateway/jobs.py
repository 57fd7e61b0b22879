"""The job manager: durable jobs run by asyncio workers, with progress events, cancel and webhooks.

A :class:`JobManager` sits between the gateway's routes and a :class:`~sdtriton.gateway.store.JobStore`. Routes
call :meth:`JobManager.submit`, :meth:`~JobManager.get`, :meth:`~JobManager.cancel`, :meth:`~JobManager.image`,
:meth:`~JobManager.recent` and iterate :meth:`~JobManager.events`; its workers claim jobs from the store (this
gateway's or another replica's submits alike) and run each through the injected ``run``::

    async def run(request: dict, on_progress, cancelled: asyncio.Event) -> list[tuple[bytes, str, int]]:
        ...  # on_progress(step, total, preview=None, preview_format="png") after each step, on the loop's thread;
        ...  # stop (raise) soon after `cancelled` is set; return each image's (bytes, format, seed)

While a job runs, its worker renews the claim's lease (every ``min(lease_s / 3, poll_s)``, and with the progress
as it comes), which also reads the store's cancel flag: a ``DELETE`` answered by any replica stops the run within
a poll. A gateway that dies mid-job stops renewing; when the lease has run out, the next gateway to claim takes
the job over and runs its request again, with the seed fixed at submit (the same image). The store's
compare-and-set on the claim token keeps a stalled first owner from finishing it too.

Events: subscribers on the replica that runs a job get every step (with previews) as it happens, one that joins
mid-run the latest preview first; on any other replica :meth:`~JobManager.events` polls the store every ``poll_s``
(steps, no previews). Either way the last event is the job's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sdtriton import interface
from sdtriton.gateway.store import (
    CANCELLED,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Claim,
    GeneratedImage,
    Job,
    JobStore,
    Submitted,
    WebhookDelivery,
    cancelled_error,
)
from sdtriton.gateway.webhooks import WebhookSender

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.5
# The fewest seconds between two progress writes of one job to the store (steps can be faster than that).
DEFAULT_PROGRESS_INTERVAL_S = 0.2
# How long :meth:`JobManager.stop` lets webhook deliveries in flight go on before cancelling them.
DEFAULT_STOP_TIMEOUT_S = 5.0
# Progress events a slow subscriber may have waiting; past that the oldest are dropped (the final one never is).
_SUBSCRIBER_BACKLOG = 64
SEED_FIELD = "seed"


class ProgressCallback(Protocol):
    def __call__(self, step: int, total: int, preview: bytes | None = None, preview_format: str = "png") -> None: ...


Runner = Callable[[dict[str, Any], ProgressCallback, asyncio.Event], Awaitable[Sequence[tuple[bytes, str, int]]]]


class UnknownJobError(KeyError):
    """No job has this id (it never existed, or it expired)."""


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream.

    Attributes:
        kind: ``status`` (the job is queued, with its place, or running: each attempt starts with one),
            ``progress`` (a step done) or ``final`` (succeeded, failed or cancelled: always the last event).
        job_id, status, step, total: The job's state as of this event.
        preview: A progress event's preview image, on the replica that runs the job, when the run sends one.
        preview_format: The preview's format (``png``, ``jpeg``).
        queue_position: Queued jobs ahead of this one, on status events of a queued job.
        job: The job's snapshot, on status and final events.
    """

    kind: str
    job_id: str
    status: str
    step: int
    total: int
    preview: bytes | None = None
    preview_format: str | None = None
    queue_position: int | None = None
    job: Job | None = None


def fix_seed(request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` with its ``seed`` drawn now when it has none, so that every run of the job draws the same image."""
    fixed = dict(request)
    if fixed.get(SEED_FIELD) is None:
        fixed[SEED_FIELD] = secrets.randbelow(interface.MAX_SEED + 1)
    return fixed


def default_error(error: BaseException) -> dict[str, Any]:
    """The error body of a run that raised ``error``, when the manager is given no ``describe_error``."""
    return {"message": "the job failed: internal error", "type": "server_error", "param": None, "code": None}


def open_store(url: str, *, result_ttl_s: float | None = None, prefix: str | None = None) -> JobStore:
    """The job store at ``url``: ``redis://...`` / ``rediss://...`` / ``unix://...`` for Redis (``result_ttl_s``
    default 1 h, key ``prefix`` default ``sdtriton:jobs:``), ``sqlite:///path`` or a plain file path for SQLite
    (kept for ever unless ``result_ttl_s``)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from sdtriton.gateway.redis_store import DEFAULT_PREFIX, DEFAULT_RESULT_TTL_S, RedisJobStore

        return RedisJobStore(
            url,
            result_ttl_s=DEFAULT_RESULT_TTL_S if result_ttl_s is None else result_ttl_s,
            prefix=DEFAULT_PREFIX if prefix is None else prefix,
        )
    from sdtriton.gateway.sqlite_store import SqliteJobStore

    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    return SqliteJobStore(Path(path), result_ttl_s=result_ttl_s)


@dataclass(eq=False)
class _Running:
    """A job this manager runs now."""

    claim: Claim
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    step: int = 0
    total: int = 0
    cancel_requested: bool = False
    lost: bool = False
    ended: bool = False
    latest_preview: JobEvent | None = None  # the last progress event with a preview, for subscribers joining late

    @property
    def job_id(self) -> str:
        return self.claim.job.id


class JobManager:
    """Runs the store's jobs on this event loop and serves their state and events.

    Args:
        store: Where jobs live (shared with the other replicas).
        run: Runs one request (see the module's docstring); it gets a copy of the job's request.
        owner_id: This gateway's name in the store (default ``host:pid:random``).
        workers: How many jobs this gateway runs at once.
        lease_s: How long a claim lasts without renewal: a dead gateway's job is taken over this long after its
            last renewal.
        poll_s: How often idle workers look for jobs submitted elsewhere, running jobs renew their lease and read
            the cancel flag, and :meth:`events` reads the store for jobs run elsewhere.
        max_attempts: A job's claims in all before it is failed as interrupted.
        webhooks: Delivers finished jobs' webhooks; None refuses jobs with a webhook.
        describe_error: The OpenAI-shaped error body (``message``, ``type``, ``param``, ``code``) of a run that
            raised; default :func:`default_error`, which tells nothing of the exception.
        progress_interval_s: The fewest seconds between two progress writes of a job to the store.
    """

    def __init__(
        self,
        store: JobStore,
        run: Runner,
        *,
        owner_id: str | None = None,
        workers: int = 1,
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = DEFAULT_POLL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        webhooks: WebhookSender | None = None,
        describe_error: Callable[[BaseException], Mapping[str, Any]] = default_error,
        progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
    ):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if not lease_s > 0 or not poll_s > 0:
            raise ValueError(f"lease_s and poll_s must be > 0, got {lease_s} and {poll_s}")
        self.store = store
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.workers = workers
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.progress_interval_s = progress_interval_s
        self._run = run
        self._webhooks = webhooks
        self._describe_error = describe_error
        self._running: dict[str, _Running] = {}
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = {}
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    # Life.

    async def start(self) -> None:
        """Starts the workers (on the running event loop)."""
        self._stopping = False
        self._worker_tasks = [
            asyncio.create_task(self._work(), name=f"job-worker-{index}") for index in range(self.workers)
        ]

    async def stop(self, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stops the workers: running jobs are cancelled here and handed back to the queue (another replica, or
        this one restarted, runs them); webhook deliveries get ``timeout_s`` to end."""
        self._stopping = True
        self._wake.set()
        for task in self._worker_tasks:
            task.cancel()
        await asyncio.gather(*self._worker_tasks, return_exceptions=True)
        self._worker_tasks = []
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> JobManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # What the routes call.

    async def submit(
        self,
        request: Mapping[str, Any],
        *,
        scope: str = "",
        idempotency_key: str | None = None,
        webhook: str | None = None,
    ) -> Submitted:
        """Queues ``request`` (its seed fixed now, see :func:`fix_seed`) for ``scope`` (a digest of the caller's API
        key); a repeated ``idempotency_key`` in the same scope returns the first job (``created`` False)."""
        if webhook is not None and self._webhooks is None:
            raise ValueError("this gateway has no webhook secret configured: jobs with a webhook are refused")
        submitted = await asyncio.to_thread(
            self.store.create, fix_seed(request), scope=scope, idempotency_key=idempotency_key, webhook=webhook
        )
        self._wake.set()
        return submitted

    async def get(self, job_id: str) -> Job | None:
        """The job, or None when there is none."""
        return await asyncio.to_thread(self.store.get, job_id)

    async def queue_position(self, job_id: str) -> int | None:
        """Queued jobs ahead of this queued one; None when it is not queued."""
        return await asyncio.to_thread(self.store.queue_position, job_id)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancels the job: a queued one at once, a running one at its run's next step (here or on the replica
        that runs it); a finished one is left as it was. Returns the job after the change, None if unknown."""
        job = await asyncio.to_thread(self.store.request_cancel, job_id)
        running = self._running.get(job_id)
        if running is not None:
            running.cancel_requested = True
            running.cancelled.set()
        if job is not None and job.finished:
            self._publish(job.id, _final_event(job))
        return job

    async def image(self, job_id: str, index: int) -> tuple[bytes, str] | None:
        """The bytes and format of image ``index`` of a succeeded job, or None."""
        return await asyncio.to_thread(self.store.image, job_id, index)

    async def recent(self, *, limit: int = 20, scope: str | None = None) -> list[Job]:
        """The newest jobs first (of ``scope`` only, when given)."""
        return await asyncio.to_thread(self.store.list_recent, limit=limit, scope=scope)

    async def counts(self) -> dict[str, int]:
        """Jobs queued and running in the whole store: ``{"queued": n, "running": m}``."""
        return await asyncio.to_thread(self.store.count_active)

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The job's events: a status event first, progress as steps are done, then the final event, after which
        the iterator ends. Raises :class:`UnknownJobError` (before any event) when there is no such job; ends
        early if the job expires meanwhile."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            job = await self.get(job_id)
            if job is None:
                raise UnknownJobError(job_id)
            if job.finished:
                yield _final_event(job)
                return
            event = await self._status_event(job)
            yield event
            seen = _Seen.of(event)
            # Run here and past a preview: a subscriber joining now sees the latest at once, not at the next one.
            running = self._running.get(job_id)
            if running is not None and running.latest_preview is not None and seen.is_new(running.latest_preview):
                yield running.latest_preview
            while True:
                local = await _within(queue.get(), self.poll_s)
                if local is not None and local.kind != "final":
                    if seen.is_new(local):
                        yield local
                    continue
                if local is None and job_id in self._running:
                    continue  # run here: its steps come through the queue
                job = await self.get(job_id)
                if job is None:
                    return
                status = await self._status_event(job)
                job = status.job or job  # as the status read it: it may have left the queue since
                if job.finished:
                    yield _final_event(job)
                    return
                for event in (status, _progress_event(job)):
                    if seen.is_new(event):
                        yield event
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[job_id]

    # Workers.

    async def _work(self) -> None:
        while not self._stopping:
            try:
                claim = await self._claim()
            except Exception:
                logger.exception("claiming a job failed; trying again in %.1f s", self.poll_s)
                await asyncio.sleep(self.poll_s)
                continue
            if claim is None:
                await _within(self._wake.wait(), self.poll_s)
                self._wake.clear()
                continue
            await self._run_claim(claim)

    async def _claim(self) -> Claim | None:
        """The next job for this gateway. A claim made as the worker is cancelled is handed back at once, not left
        to wait out its lease."""
        claiming = asyncio.ensure_future(
            asyncio.to_thread(self.store.claim, self.owner_id, lease_s=self.lease_s, max_attempts=self.max_attempts)
        )
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                claim = await claiming
                if claim is not None:
                    await self._hand_back(_Running(claim))
            raise

    async def _run_claim(self, claim: Claim) -> None:
        """Runs one claimed job to its one end: finished in the store, handed back to the queue (the manager
        stops), or dropped (the claim was lost to another gateway, which finishes it)."""
        job = claim.job
        running = _Running(claim)
        self._running[job.id] = running
        logger.info("job %s: attempt %d on %s", job.id, job.attempts, self.owner_id)
        self._publish(job.id, await self._status_event(job))
        keeper = asyncio.create_task(self._keep_lease(running), name=f"lease-{job.id}")
        hand_back, interrupted = False, False
        status, images, error = FAILED, [], None
        try:
            results = await self._run(dict(job.request), self._progress_callback(running), running.cancelled)
            status, images = SUCCEEDED, [GeneratedImage(data, fmt, seed) for data, fmt, seed in results]
        except asyncio.CancelledError:
            interrupted = True
            if running.cancel_requested:
                status, error = CANCELLED, cancelled_error()
            else:
                hand_back = True
        except Exception as e:
            if running.cancel_requested:
                status, error = CANCELLED, cancelled_error()
            elif self._stopping:
                hand_back = True
            elif not running.lost:
                logger.exception("job %s failed", job.id)
                status, error = FAILED, self._error_body(e)
        finally:
            running.ended = True
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            del self._running[job.id]
        if running.lost:
            logger.warning("job %s: the claim was lost (another gateway took it over); this run is dropped", job.id)
        elif hand_back:
            await self._hand_back(running)
        else:
            await self._finish(running, status=status, images=images, error=error)
        if interrupted and not self._stopping:
            raise asyncio.CancelledError

    def _error_body(self, error: Exception) -> dict[str, Any]:
        try:
            return dict(self._describe_error(error))
        except Exception:
            logger.exception("describing the error of a job failed")
            return default_error(error)

    async def _finish(
        self, running: _Running, *, status: str, images: Sequence[GeneratedImage], error: Mapping[str, Any] | None
    ) -> None:
        claim = running.claim
        done = await asyncio.to_thread(
            self.store.finish,
            claim.job.id,
            claim.token,
            status=status,
            images=images,
            error=error,
            total=running.total or None,
        )
        if not done:
            logger.warning("job %s: claim lost before it finished as %s; result dropped", claim.job.id, status)
            return
        job = await self.get(claim.job.id)
        if job is None:
            return
        logger.info("job %s %s after %d attempt(s)", job.id, job.status, job.attempts)
        self._publish(job.id, _final_event(job))
        if job.webhook and self._webhooks is not None:
            task = asyncio.create_task(self._deliver(self._webhooks, job), name=f"webhook-{job.id}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _hand_back(self, running: _Running) -> None:
        claim = running.claim
        try:
            released = await asyncio.to_thread(self.store.release, claim.job.id, claim.token)
        except Exception:
            logger.exception("job %s: handing it back failed; it is taken over when its lease runs out", claim.job.id)
            return
        logger.info("job %s handed back to the queue (%s)", claim.job.id, "done" if released else "claim lost")

    async def _deliver(self, webhooks: WebhookSender, job: Job) -> None:
        async def record(delivery: WebhookDelivery) -> None:
            await asyncio.to_thread(self.store.record_delivery, job.id, delivery)

        try:
            await webhooks.deliver(job, record)
        except Exception:
            logger.exception("job %s: delivering its webhook failed", job.id)

    async def _keep_lease(self, running: _Running) -> None:
        """Renews the claim with the latest progress, at least every ``min(lease_s / 3, poll_s)`` and at most every
        ``progress_interval_s``; reads the cancel flag on the way. A claim found lost stops the run."""
        claim = running.claim
        interval_s = min(self.lease_s / 3, self.poll_s)
        loop = asyncio.get_running_loop()
        while not running.ended:
            last = loop.time()
            await _within(running.progressed.wait(), interval_s)
            spacing_s = self.progress_interval_s - (loop.time() - last)
            if spacing_s > 0:
                await asyncio.sleep(spacing_s)
            running.progressed.clear()
            try:
                lease = await asyncio.to_thread(
                    self.store.renew,
                    claim.job.id,
                    claim.token,
                    lease_s=self.lease_s,
                    step=running.step,
                    total=running.total,
                )
            except Exception:
                logger.exception("job %s: renewing its lease failed; trying again", claim.job.id)
                continue
            if not lease.held:
                running.lost = True
                running.cancelled.set()
                return
            if lease.cancel_requested and not running.cancel_requested:
                logger.info("job %s: cancel asked (through the store)", claim.job.id)
                running.cancel_requested = True
                running.cancelled.set()

    def _progress_callback(self, running: _Running) -> ProgressCallback:
        def on_progress(step: int, total: int, preview: bytes | None = None, preview_format: str = "png") -> None:
            running.step, running.total = step, total
            running.progressed.set()
            event = JobEvent(
                kind="progress",
                job_id=running.job_id,
                status=RUNNING,
                step=step,
                total=total,
                preview=preview,
                preview_format=preview_format if preview is not None else None,
            )
            if preview is not None:
                running.latest_preview = event
            self._publish(running.job_id, event)

        return on_progress

    # Events.

    def _publish(self, job_id: str, event: JobEvent) -> None:
        for queue in self._subscribers.get(job_id, ()):
            if queue.qsize() >= _SUBSCRIBER_BACKLOG:
                queue.get_nowait()
            queue.put_nowait(event)

    async def _status_event(self, job: Job) -> JobEvent:
        position = await self.queue_position(job.id) if job.status == QUEUED else None
        if job.status == QUEUED and position is None:
            # It left the queue between the two reads (claimed, or cancelled): the job as it is now, not a queued
            # job without a place in the queue (a stream sent that status, then done: 1 run in 12 of a unit test).
            job = await self.get(job.id) or job
        return JobEvent(
            kind="status",
            job_id=job.id,
            status=job.status,
            step=job.step,
            total=job.total,
            queue_position=position,
            job=job,
        )


async def _within(awaitable: Awaitable[Any], timeout_s: float) -> Any:
    """``awaitable``'s result, or None when it is not done within ``timeout_s`` (then it is cancelled). Not
    ``asyncio.wait_for``: Python 3.11's swallows a cancel of the caller that comes as the awaitable completes
    (seen here: a lease keeper that ignored its cancel and held its worker for ever)."""
    future = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait([future], timeout=timeout_s)
    finally:
        if not future.done():
            future.cancel()
    return future.result() if done else None


def _final_event(job: Job) -> JobEvent:
    return JobEvent(kind="final", job_id=job.id, status=job.status, step=job.step, total=job.total, job=job)


def _progress_event(job: Job) -> JobEvent:
    return JobEvent(kind="progress", job_id=job.id, status=job.status, step=job.step, total=job.total)


@dataclass
class _Seen:
    """What a subscriber has been sent: a status or step already sent is not sent again."""

    status: str
    queue_position: int | None
    attempts: int
    step: int

    @classmethod
    def of(cls, event: JobEvent) -> _Seen:
        return cls(event.status, event.queue_position, event.job.attempts if event.job else 0, -1)

    def is_new(self, event: JobEvent) -> bool:
        if event.kind == "status":
            attempts = event.job.attempts if event.job is not None else self.attempts
            key = (event.status, event.queue_position, attempts)
            if key == (self.status, self.queue_position, self.attempts):
                return False
            if attempts != self.attempts or event.status != self.status:
                self.step = -1  # a new attempt counts its steps from the start
            self.status, self.queue_position, self.attempts = key
            return True
        if event.status != RUNNING or event.step <= self.step or event.step == 0:
            return False
        self.step = event.step
        return True
