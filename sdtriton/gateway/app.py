"""The gateway's FastAPI app: OpenAI's images API in front of Triton, with health, readiness and metrics.

:func:`create_app` builds it from :class:`~sdtriton.gateway.settings.GatewaySettings`. Routes parse the body
(pydantic, :mod:`sdtriton.gateway.schema`), call :class:`~sdtriton.gateway.backend.Backend` and let every failure
reach the handlers installed here, which answer it through :func:`sdtriton.gateway.errors.answer`'s one table.

Other route groups plug in with ``app.include_router(router, dependencies=V1_DEPENDENCIES,
responses=ERROR_RESPONSES)``; they find the backend, the settings, the image store, the metrics registry and the
job manager on ``request.app.state`` (``backend``, ``settings``, ``images``, ``metrics.registry``, ``jobs``), and
the caller's API key id on ``request.state.key_id`` (when the gateway has keys). The durable jobs
(:mod:`sdtriton.gateway.job_routes`) are such a group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import sdtriton
from sdtriton.client import SdTritonError
from sdtriton.gateway import errors, playground
from sdtriton.gateway.access import RateLimiter, find_key
from sdtriton.gateway.backend import Backend
from sdtriton.gateway.errors import GatewayError
from sdtriton.gateway.images import MEDIA_TYPES, ImageStore
from sdtriton.gateway.job_routes import include_job_routes, running_jobs
from sdtriton.gateway.metrics import GatewayMetrics, MetricsMiddleware
from sdtriton.gateway.runner import encode_images
from sdtriton.gateway.schema import (
    ErrorResponse,
    Health,
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    ReadinessReport,
)
from sdtriton.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# How often a generation checks whether its HTTP client has gone (then the engine's work is cancelled).
_DISCONNECT_POLL_S = 0.25
IMAGES_FOLDER = "images"
_REQUEST_PARTS = ("body", "path", "query", "header", "cookie")
_ERROR_STATUSES = {
    400: "A field is out of range or malformed; `param` names it.",
    401: "Missing or unknown API key.",
    404: "Unknown model, route, image or job.",
    413: "The request body is larger than the gateway allows.",
    429: "The key's rate limit is reached; retry after Retry-After seconds.",
    errors.STATUS_CANCELLED: "The request was cancelled (the client left, or the engine cancelled it).",
    500: "The engine failed the request.",
    503: "The engine is busy or draining, or Triton is unreachable; retry after Retry-After seconds.",
    504: "The request's time budget ran out.",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in _ERROR_STATUSES.items()
}
_bearer = HTTPBearer(auto_error=False, description="An API key of the gateway (--api-keys-file, $SDTRITON_API_KEYS).")


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> None:
    """The API routes' gate: a known API key when keys are configured, then the caller's rate limit.

    Raises:
        GatewayError: 401 without a known key, 429 (with Retry-After) over the rate limit.
    """
    settings: GatewaySettings = request.app.state.settings
    limits = settings.limits
    rate_per_s, burst = limits.rate_limit_per_s, limits.rate_limit_burst
    if settings.api_keys:
        key = find_key(settings.api_keys, credentials.credentials) if credentials is not None else None
        if key is None:
            why = "no API key sent" if credentials is None else "unknown API key"
            raise GatewayError(errors.INVALID_API_KEY, f"{why}: send Authorization: Bearer <key>")
        caller = key.key_id
        request.state.key_id = key.key_id  # whom the caller's jobs belong to
        rate_per_s = key.rate_limit_per_s or rate_per_s
        burst = key.rate_limit_burst or burst
    else:
        caller = f"address {request.client.host if request.client else 'unknown'}"
    if rate_per_s is None:
        return
    wait_s = request.app.state.limiter.take(caller, rate_per_s=rate_per_s, burst=burst)
    if wait_s > 0:
        retry_after_s = max(1, math.ceil(wait_s))
        raise GatewayError(
            errors.RATE_LIMITED,
            f"rate limit reached: {rate_per_s:g} requests/s, bursts of {burst}; retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )


# Every /v1 route but image downloads (their URLs are capabilities, fetched by browsers without a key).
V1_DEPENDENCIES = [Depends(authorize)]
v1 = APIRouter(prefix="/v1", dependencies=V1_DEPENDENCIES, responses=ERROR_RESPONSES)
probes = APIRouter()


def create_app(settings: GatewaySettings, *, backend: Backend | None = None) -> FastAPI:
    """The gateway app.

    Args:
        settings: the gateway's settings.
        backend: the Triton side; None: a :class:`Backend` of ``settings`` made when the app starts (its gRPC
            channels belong to the serving event loop), closed when it stops.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = backend is None
        app.state.backend = (
            Backend(settings.triton_url, models=settings.models, timeout_s=settings.limits.timeout_s)
            if own
            else backend
        )
        try:
            async with running_jobs(app, app.state.backend):
                yield
        finally:
            if own:
                await app.state.backend.close()

    app = FastAPI(
        title="sdtriton gateway",
        version=sdtriton.__version__,
        description="OpenAI's images API in front of Stable Diffusion served on Triton.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.metrics = GatewayMetrics()
    app.state.images = ImageStore(settings.data_dir / IMAGES_FOLDER)
    app.state.limiter = RateLimiter()
    app.state.started = int(time.time())
    app.include_router(v1)
    include_job_routes(app, dependencies=V1_DEPENDENCIES, responses=ERROR_RESPONSES)
    app.include_router(probes)
    app.include_router(playground.router)
    _install_error_handlers(app, retry_after_s=settings.limits.retry_after_s)
    # Added innermost first: metrics see every answer (413s, CORS refusals), CORS headers go on errors too.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.limits.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "Location"],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.openapi = lambda: _openapi(app)
    return app


@v1.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    summary="Generate images from a prompt (OpenAI's images API)",
)
async def generate_images(body: ImageGenerationRequest, request: Request) -> ImagesResponse:
    return await _images(body, request)


@v1.post(
    "/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    summary="Redraw an image, or the transparent area of its mask, from a prompt (OpenAI's images API)",
)
async def edit_images(
    body: Annotated[ImageEditRequest, Form(media_type="multipart/form-data")], request: Request
) -> ImagesResponse:
    return await _images(body, request)


async def _images(body: ImageRequest, request: Request) -> ImagesResponse:
    """The images of ``body`` on its model, answered inline or as URLs."""
    backend: Backend = request.app.state.backend
    model = await backend.resolve(body.model)
    # Off the event loop: the body's images are decoded here.
    generation = await asyncio.to_thread(body.generation, model=model.name)
    cancelled = asyncio.Event()
    result = await _cancel_on_disconnect(request, backend.generate(generation, cancelled=cancelled), cancelled)
    files = await encode_images(result, body)
    data = []
    for file, seed in zip(files, result.seeds, strict=True):
        if body.response_format == "url":
            image_id = await asyncio.to_thread(request.app.state.images.save, file, body.output_format)
            data.append(ImageData(url=str(request.url_for("get_image", image_id=image_id)), seed=seed))
        else:
            data.append(ImageData(b64_json=base64.b64encode(file).decode("ascii"), seed=seed))
    width, height = result.image.size
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        model=model.name,
        output_format=body.output_format,
        size=f"{width}x{height}",
    )


@v1.get("/models", response_model=ModelList, summary="The served models (OpenAI's model list)")
async def list_models(request: Request) -> ModelList:
    models = await request.app.state.backend.models()
    created = request.app.state.started
    return ModelList(data=[ModelCard.of(model, created=created) for model in models])


@probes.get(
    "/v1/images/{image_id}",
    response_class=FileResponse,
    responses={
        200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}, "description": "The image file."},
        404: ERROR_RESPONSES[404],
    },
    summary="An image answered as a URL (no API key: the URL is the capability)",
)
async def get_image(image_id: str, request: Request) -> FileResponse:
    found = request.app.state.images.find(image_id)
    if found is None:
        raise GatewayError(errors.NOT_FOUND, f"image_id: no image {image_id!r} here", param="image_id")
    path, media_type = found
    return FileResponse(path, media_type=media_type)


@probes.get("/healthz", response_model=Health, summary="The gateway process is up")
async def healthz() -> Health:
    return Health()


@probes.get(
    "/readyz",
    response_model=ReadinessReport,
    responses={503: {"model": ReadinessReport, "description": "Triton or a model is not ready."}},
    summary="Triton and every served model are ready",
)
async def readyz(request: Request) -> JSONResponse:
    readiness = await request.app.state.backend.readiness()
    report = ReadinessReport(ready=readiness.ready, triton=readiness.triton, models=readiness.models)
    return JSONResponse(report.model_dump(), status_code=200 if readiness.ready else 503)


@probes.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus' text format."}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    # Off the event loop: the job counts are read from the job store as the registry is collected.
    text = await asyncio.to_thread(generate_latest, request.app.state.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def _cancel_on_disconnect(request: Request, work: Awaitable[_T], cancelled: asyncio.Event) -> _T:
    """``work``'s result; ``cancelled`` is set when the HTTP client goes away first (its answer then is 499)."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(_DISCONNECT_POLL_S)
        logger.info("the client of %s left: cancelling its generation", request.url.path)
        cancelled.set()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    finally:
        watcher.cancel()


def _install_error_handlers(app: FastAPI, *, retry_after_s: int) -> None:
    def respond(error: Exception) -> JSONResponse:
        answered = errors.answer(error, retry_after_s=retry_after_s)
        return JSONResponse(answered.body, status_code=answered.status, headers=answered.headers)

    async def known(request: Request, error: Exception) -> JSONResponse:
        return respond(error)

    async def invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return respond(_validation_error(error))

    async def framework(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        kind = errors.status_kind(error.status_code)
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(
            errors.error_body(kind, message, None), status_code=error.status_code, headers=error.headers
        )

    app.add_exception_handler(GatewayError, known)
    app.add_exception_handler(SdTritonError, known)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, framework)
    app.add_exception_handler(Exception, known)


def _validation_error(error: RequestValidationError) -> GatewayError:
    """pydantic's refusal as a 400 that names the (first) bad field, as the engine's refusals do."""
    problems = []
    param = None
    for problem in error.errors():
        # A body that is not JSON is located at the character where parsing stopped: no field to name.
        where = () if problem["type"] == "json_invalid" else problem["loc"]
        # pydantic locates a field after where it came from: ("body", "n"), ("path", "index"), ("query", "limit").
        location = [str(part) for part in where[1:]] if where and where[0] in _REQUEST_PARTS else list(map(str, where))
        name = ".".join(location) or "body"
        param = param or (name if location else None)
        problems.append(f"{name}: {problem['msg'].removeprefix('Value error, ')}")
    return GatewayError(errors.INVALID_VALUE, "; ".join(problems), param=param)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, without its 422 answers: this gateway refuses a malformed body with 400."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in document.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema


class BodyLimitMiddleware:
    """Refuses a request body over ``max_body_bytes`` with 413 when its route reads it: at once from its
    Content-Length, else as the body arrives (a chunked upload is cut off where it passes the limit)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = int(declared) if declared.isdigit() else 0

        async def limited() -> Message:
            nonlocal received
            message: Message = {}
            if received <= self.max_body_bytes:
                message = await receive()
                if message["type"] == "http.request" and not declared.isdigit():
                    received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                # FastAPI re-raises an HTTPException met while reading the body, so the route's handlers answer
                # it (and the metrics count it under the route).
                raise HTTPException(413, f"the most this gateway takes is {self.max_body_bytes} bytes")
            return message

        await self.app(scope, limited, send)
