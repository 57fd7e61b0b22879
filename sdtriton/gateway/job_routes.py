"""``/v1/jobs``: durable image jobs over HTTP, on the :class:`~sdtriton.gateway.jobs.JobManager`.

A job is a generations body queued in the job store (SQLite, or Redis shared by replicas) and run by a worker of
whichever gateway claims it; it outlives the request that submitted it and the gateway that ran it::

    POST   /v1/jobs                          202 {id, object: "job", status: "queued", queue_position, ...}
    GET    /v1/jobs/{id}                     the job: status, step of total_steps, error, data: [{url, seed}]
    GET    /v1/jobs?limit=N                  the caller's newest jobs
    GET    /v1/jobs/{id}/events              server-sent events: status, progress (with previews), done
    DELETE /v1/jobs/{id}                     cancels it (a running one stops in the engine at its next step)
    GET    /v1/jobs/{id}/images/{index}      an image's file (no API key: the job id is the capability)

Jobs belong to the API key that submitted them (its :attr:`~sdtriton.gateway.access.ApiKey.key_id`; everyone's
on a gateway without keys): another key's job is answered 404, and ``Idempotency-Key`` is unique per key.
:func:`running_jobs` opens the store and runs the manager for the app's lifetime; :func:`include_job_routes` adds
the routes and the jobs' metrics to an app.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sdtriton.gateway import errors
from sdtriton.gateway.backend import Backend
from sdtriton.gateway.errors import GatewayError
from sdtriton.gateway.images import MEDIA_TYPES
from sdtriton.gateway.jobs import JobEvent, JobManager, UnknownJobError, open_store
from sdtriton.gateway.runner import job_runner
from sdtriton.gateway.schema import (
    ErrorResponse,
    JobCreateRequest,
    JobError,
    JobImage,
    JobList,
    JobObject,
    JobProgress,
)
from sdtriton.gateway.settings import GatewaySettings
from sdtriton.gateway.store import QUEUED, Job, WebhookDelivery
from sdtriton.gateway.webhooks import BLOCKED, WebhookSender, webhook_url_problem

logger = logging.getLogger(__name__)

# A comment line every this many seconds keeps an idle event stream open through proxies.
HEARTBEAT_S = 15.0
# How long DELETE waits for a running job to stop before answering it still running (cancel asked).
CANCEL_WAIT_S = 5.0
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
MAX_IDEMPOTENCY_KEY_CHARS = 255
EVENT_STREAM = "text/event-stream"
# The download routes' failures but 404 (their own): a malformed index, a gateway starting or stopping.
_DOWNLOAD_ERRORS = (400, 503)

router = APIRouter(prefix="/v1/jobs")
# Image downloads carry no API key: browsers fetch them as <img src>, and the job id (128 random bits) is the
# capability, as for /v1/images/{image_id}.
downloads = APIRouter()

JobId = Annotated[str, Path(description="The job's id (job_ and 32 hex digits).")]


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """One kind of server-sent event: its name, and its data as JSON text of the schema ``data``."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


_JOB_SCHEMA = {"$ref": "#/components/schemas/JobObject"}
# The schema of each event (what OpenAPI 3.2 calls itemSchema; before 3.2 an event stream's schema is per event).
_EVENT_SCHEMA = {
    "oneOf": [
        _event("status", _JOB_SCHEMA),
        _event("progress", JobProgress.model_json_schema()),
        _event("done", _JOB_SCHEMA),
    ]
}


def include_job_routes(app: FastAPI, *, dependencies: list[Any], responses: dict[int | str, Any]) -> None:
    """Adds the job routes to ``app`` (behind ``dependencies``, but for image downloads) and the jobs' metrics to
    its registry (``app.state.metrics.registry``)."""
    app.include_router(router, dependencies=dependencies, responses=responses)
    app.include_router(downloads, responses={status: responses[status] for status in _DOWNLOAD_ERRORS})
    registry = app.state.metrics.registry
    registry.register(_JobCounts(app))
    app.state.webhook_attempts = Counter(
        "sdtriton_gateway_webhook_deliveries",
        "Webhook delivery attempts by outcome: delivered (2xx), refused (another status), unreachable (no answer), "
        "blocked (the URL's host resolved to a refused address at delivery)",
        ("outcome",),
        registry=registry,
    )


@contextlib.asynccontextmanager
async def running_jobs(app: FastAPI, backend: Backend) -> AsyncIterator[JobManager]:
    """Opens the job store of ``app.state.settings`` and runs a :class:`JobManager` on ``backend`` (as
    ``app.state.jobs``) until the context ends; then running jobs are handed back to the queue."""
    settings: GatewaySettings = app.state.settings
    options = settings.jobs
    store = open_store(options.store_url_in(settings.data_dir), result_ttl_s=options.result_ttl_s)
    webhooks = None
    if options.webhook_secret:
        attempts = app.state.webhook_attempts
        webhooks = WebhookSender(
            options.webhook_secret,
            payload=lambda job: job_object(job).model_dump(mode="json"),
            on_attempt=lambda delivery: attempts.labels(_delivery_outcome(delivery)).inc(),
            url_problem=functools.partial(webhook_url_problem, allow_private=options.webhook_allow_private),
        )
    manager = JobManager(
        store,
        job_runner(backend),
        workers=options.workers,
        lease_s=options.lease_s,
        webhooks=webhooks,
        describe_error=errors.describe,
    )
    try:
        await manager.start()
        app.state.jobs = manager
        logger.info("jobs in %s, %d worker(s), leases of %g s", type(store).__name__, options.workers, options.lease_s)
        yield manager
    finally:
        app.state.jobs = None
        await manager.stop()
        await asyncio.to_thread(store.close)


def job_object(job: Job, *, queue_position: int | None = None) -> JobObject:
    """``job`` as the routes (and its webhook) answer it; ``queue_position`` for a queued job."""
    return JobObject(
        id=job.id,
        status=job.status,
        model=job.request.get("model"),
        created=int(job.created_at),
        started=_whole_s(job.started_at),
        finished=_whole_s(job.finished_at),
        step=job.step,
        total_steps=job.total,
        queue_position=queue_position if job.status == QUEUED else None,
        error=JobError(**job.error) if job.error is not None else None,
        data=[
            JobImage(url=image_url(job.id, image.index), seed=image.seed, output_format=image.format)
            for image in job.images
        ],
        attempts=job.attempts,
        webhook=job.webhook,
        webhook_deliveries=len(job.deliveries),
        webhook_delivered=any(delivery.ok for delivery in job.deliveries),
    )


def image_url(job_id: str, index: int) -> str:
    """Where image ``index`` of a job is fetched (relative to the gateway)."""
    return f"/v1/jobs/{job_id}/images/{index}"


@router.post(
    "",
    status_code=202,
    response_model=JobObject,
    responses={200: {"model": JobObject, "description": "An Idempotency-Key seen before: its job, unchanged."}},
    summary="Queue a generation as a durable job (answers at once)",
)
async def submit_job(
    body: JobCreateRequest,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="A repeated submit with the same key (per API key) answers the first job instead of a new one.",
        ),
    ] = None,
) -> JobObject:
    jobs = _manager(request)
    if body.webhook is not None:
        await _check_webhook(request, body.webhook)
    model = await request.app.state.backend.resolve(body.model)
    model.check_n(body.n)
    # Refused now rather than failed later: images that are not PNG files, or do not fit each other or the size.
    await asyncio.to_thread(body.generation, model=model.name)
    submitted = await jobs.submit(
        body.stored(model=model.name), scope=_scope(request), idempotency_key=idempotency_key, webhook=body.webhook
    )
    job = submitted.job
    response.status_code = 202 if submitted.created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    logger.info("job %s %s (%s)", job.id, "queued" if submitted.created else "resubmitted", model.name)
    if submitted.created:
        # The job as submitted: queued, at its place then (0 if a worker has taken it already).
        return job_object(job, queue_position=await jobs.queue_position(job.id) or 0)
    return await _answer(jobs, job)


@router.get("", response_model=JobList, summary="The caller's newest jobs")
async def list_jobs(
    request: Request, limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT
) -> JobList:
    jobs = _manager(request)
    return JobList(data=[await _answer(jobs, job) for job in await jobs.recent(limit=limit, scope=_scope(request))])


@router.get("/{job_id}", response_model=JobObject, summary="A job: its state, progress, error or images")
async def get_job(job_id: JobId, request: Request) -> JobObject:
    jobs = _manager(request)
    return await _answer(jobs, await _owned(request, jobs, job_id))


@router.delete(
    "/{job_id}",
    response_model=JobObject,
    summary="Cancel a job (a queued one never starts; a running one stops in the engine at its next step)",
)
async def cancel_job(job_id: JobId, request: Request) -> JobObject:
    jobs = _manager(request)
    await _owned(request, jobs, job_id)
    job = await jobs.cancel(job_id)
    if job is not None and not job.finished:
        job = await _final(jobs, job_id, timeout_s=CANCEL_WAIT_S) or job
    if job is None:
        raise _not_found(job_id)
    return await _answer(jobs, job)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {EVENT_STREAM: {"schema": _EVENT_SCHEMA}},
            "description": "Server-sent events: `status` (the job object), `progress` ({step, total_steps, preview: "
            "a data: URL on the gateway that runs the job, every few steps}), then `done` (the final job object), "
            f"after which the stream ends; a comment line every {HEARTBEAT_S:g} s.",
        }
    },
    summary="Follow a job: its status, each step (with previews) and its end, as server-sent events",
)
async def job_events(job_id: JobId, request: Request) -> StreamingResponse:
    jobs = _manager(request)
    await _owned(request, jobs, job_id)
    return StreamingResponse(
        _event_stream(jobs, job_id),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@downloads.get(
    "/v1/jobs/{job_id}/images/{index}",
    response_class=Response,
    responses={
        200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}, "description": "The image file."},
        404: {"model": ErrorResponse, "description": "No such job, or it has no image at this index (yet)."},
    },
    summary="An image of a succeeded job (no API key: the job id is the capability)",
)
async def get_job_image(
    job_id: JobId, index: Annotated[int, Path(ge=0, description="The image's place, from 0.")], request: Request
) -> Response:
    found = await _manager(request).image(job_id, index)
    if found is None:
        raise GatewayError(errors.NOT_FOUND, f"index: job {job_id!r} has no image {index}", param="index")
    data, output_format = found
    return Response(data, media_type=MEDIA_TYPES[output_format])


async def _event_stream(jobs: JobManager, job_id: str) -> AsyncIterator[str]:
    """The job's events as server-sent events, with a heartbeat comment whenever none came for HEARTBEAT_S."""
    events = jobs.events(job_id)
    pending: asyncio.Future[JobEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
            if not done:
                yield ": heartbeat\n\n"
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return  # the job expired meanwhile
            pending = None
            yield _sse(event)
            if event.kind == "final":
                return
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()


def _sse(event: JobEvent) -> str:
    if event.kind == "progress":
        name = "progress"
        preview = None
        if event.preview is not None:
            encoded = base64.b64encode(event.preview).decode("ascii")
            preview = f"data:{MEDIA_TYPES[event.preview_format or 'png']};base64,{encoded}"
        progress = JobProgress(step=event.step, total_steps=event.total, preview=preview)
        data: dict[str, Any] = progress.model_dump(exclude_none=True)
    else:
        name = "status" if event.kind == "status" else "done"
        assert event.job is not None  # status and final events carry the job
        data = job_object(event.job, queue_position=event.queue_position).model_dump(mode="json")
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _final(jobs: JobManager, job_id: str, *, timeout_s: float) -> Job | None:
    """The job once it is finished, or None when it is not within ``timeout_s``."""
    with contextlib.suppress(TimeoutError, UnknownJobError):
        async with asyncio.timeout(timeout_s), contextlib.aclosing(jobs.events(job_id)) as events:
            async for event in events:
                if event.kind == "final":
                    return event.job
    return None


async def _check_webhook(request: Request, url: str) -> None:
    settings: GatewaySettings = request.app.state.settings
    if not settings.jobs.webhook_secret:
        raise GatewayError(
            errors.INVALID_VALUE,
            "webhook: this gateway signs no webhooks (start it with --webhook-secret); submit without one",
            param="webhook",
        )
    problem = await asyncio.to_thread(webhook_url_problem, url, allow_private=settings.jobs.webhook_allow_private)
    if problem is not None:
        raise GatewayError(errors.INVALID_VALUE, f"webhook: {problem}", param="webhook")


async def _owned(request: Request, jobs: JobManager, job_id: str) -> Job:
    """The caller's job ``job_id``; another key's is as unknown as a job that never was."""
    job = await jobs.get(job_id)
    if job is None or job.scope != _scope(request):
        raise _not_found(job_id)
    return job


async def _answer(jobs: JobManager, job: Job) -> JobObject:
    """``job`` with its place in the queue; read again if it left the queue meanwhile."""
    if job.status != QUEUED:
        return job_object(job)
    position = await jobs.queue_position(job.id)
    if position is None:
        job = await jobs.get(job.id) or job
    return job_object(job, queue_position=position)


def _scope(request: Request) -> str:
    """Whom the caller's jobs belong to: its API key's id (set by the API key check), "" without keys."""
    return getattr(request.state, "key_id", "")


def _manager(request: Request) -> JobManager:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise GatewayError(errors.SERVER_BUSY, "jobs: the gateway is starting or stopping; retry")
    return jobs


def _not_found(job_id: str) -> GatewayError:
    return GatewayError(errors.JOB_NOT_FOUND, f"job_id: no job {job_id!r} here (or it expired)", param="job_id")


def _whole_s(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def _delivery_outcome(delivery: WebhookDelivery) -> str:
    if delivery.ok:
        return "delivered"
    if delivery.status_code is not None:
        return "refused"
    return BLOCKED if (delivery.error or "").startswith(f"{BLOCKED}:") else "unreachable"


class _JobCounts(Collector):
    """``sdtriton_gateway_jobs{state}``: jobs queued and running in the whole store, read at each scrape (from the
    scrape's thread: the metrics route collects off the event loop)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read at scrape time only; registering must not touch the store

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sdtriton_gateway_jobs", "Jobs in the job store by state (queued, running; all replicas)", labels=["state"]
        )
        jobs: JobManager | None = getattr(self._app.state, "jobs", None)
        if jobs is not None:
            try:
                counts = jobs.store.count_active()
            except Exception:
                logger.warning("reading the job counts for /metrics failed", exc_info=True)
                counts = {}
            for state, count in sorted(counts.items()):
                family.add_metric([state], count)
        return [family]
