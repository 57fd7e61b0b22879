"""The gateway's Triton side: the served models, their readiness, and :meth:`Backend.generate`, which sends one
request through a model's ``<prefix>stable_diffusion_stream`` entry when progress is wanted, else through its
``<prefix>stable_diffusion`` entry (with the client's :class:`~sdtriton.client.AsyncStableDiffusionClient`).

Routes and the job manager call only this module's public API::

    backend = Backend("grpc://127.0.0.1:8001", models=settings.models, timeout_s=300)
    result = await backend.generate(
        GenerationRequest(prompt="a red circle", n=2, seed=7, inputs={"num_inference_steps": 20}),
        on_progress=lambda progress: ...,  # a Progress after every step (previews with preview_every)
        cancelled=event,  # an asyncio.Event: set, the engine stops at its next step
    )
    result.images, result.seeds  # PIL images in order, the seed of each

Failures are the client's typed exceptions (``InvalidRequestError`` naming the field, ``ServerBusyError``,
``RequestTimeoutError``, ``RequestCancelledError``, ...) and the gateway's ``GatewayError`` for an unknown model;
:mod:`sdtriton.gateway.errors` maps both to HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tritonclient.utils import InferenceServerException

from sdtriton import interface
from sdtriton.client import (
    AsyncStableDiffusionClient,
    GenerationResult,
    InferenceError,
    InvalidRequestError,
    Progress,
    RequestCancelledError,
    parse_url,
)
from sdtriton.client.client import wrap_error
from sdtriton.gateway.errors import unknown_model
from sdtriton.gateway.settings import ModelSettings
from sdtriton.server import ADMIN_KEY_ENVIRONMENT, AdminAccess

logger = logging.getLogger(__name__)

# What Backend.generate calls after each step (jobs.ProgressCallback is what a job's run reports to its manager).
ProgressListener = Callable[[Progress], Awaitable[None] | None]
_STREAM_SUFFIX = interface.STREAM_ENTRY_MODEL_NAME.removeprefix(interface.ENTRY_MODEL_NAME)
# How often an unknown model name makes the gateway look at Triton's repository again.
_REDISCOVER_AFTER_S = 1.0


# The engine inputs a GenerationRequest carries by name: every input of the entry but the prompt and the seed, which
# are its own fields (image i is drawn with seed + i): a new input of the interface is one here too.
_OWN_FIELDS = (interface.PROMPT.name, interface.SEED.name)
ENGINE_INPUTS: tuple[str, ...] = tuple(
    tensor.name for tensor in interface.ENTRY_INPUTS if tensor.name not in _OWN_FIELDS
)
# Where generate()'s keyword differs from the engine input's name (it takes the images as image=, mask=); the
# client's stream() takes every input by its own name.
_CLIENT_KEYWORDS = {interface.INPUT_IMAGE.name: "image", interface.MASK_IMAGE.name: "mask"}


@dataclass(frozen=True)
class GenerationRequest:
    """One generation of ``n`` images of one prompt, with the engine inputs ``inputs`` (by name, one of
    :data:`ENGINE_INPUTS` each; absent or None: the model's default), the same for every image.

    Image ``i`` is drawn with seed ``seed + i``, so a request with a fixed seed gives the same images every time
    (``seed`` None: one is drawn when the request is sent; :meth:`with_fixed_seed` draws it beforehand).

    Attributes:
        model: a served model's name or alias; None: the first served model.
        inputs: e.g. ``{"num_inference_steps": 20, "width": 64, "height": 64}``; ``input_image`` a PIL image,
            ``mask_image`` a greyscale ("L") PIL image of its size, 255 where it is redrawn.
        preview_every: with a progress callback, a preview of each image every this many steps (0/None: none).

    Raises:
        ValueError: ``inputs`` names something that is not an engine input.
    """

    prompt: str
    n: int = 1
    model: str | None = None
    seed: int | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    preview_every: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.inputs) - set(ENGINE_INPUTS))
        if unknown:
            raise ValueError(f"not engine inputs: {', '.join(unknown)} (they are {', '.join(ENGINE_INPUTS)})")

    def with_fixed_seed(self) -> GenerationRequest:
        """This request with its seed drawn now if it has none: sent again, it gives the same images."""
        if self.seed is not None:
            return self
        return replace(self, seed=secrets.randbelow(interface.MAX_SEED + 1))

    def item_seeds(self) -> list[int]:
        """The seed of each image (the request's seed must be fixed)."""
        if self.seed is None:
            raise ValueError("item_seeds() needs a fixed seed: call with_fixed_seed() first")
        return [(self.seed + index) % (interface.MAX_SEED + 1) for index in range(self.n)]


@dataclass(frozen=True)
class ServedModel:
    """A model the gateway serves: its Triton entry name, its aliases, the most images one request may ask, and
    what its export says of it (None: exported before entries carried a description)."""

    name: str
    aliases: tuple[str, ...]
    max_batch_size: int
    description: interface.ModelDescription | None = None

    @property
    def stream_name(self) -> str:
        return interface.stream_entry_name(self.name)

    def check_n(self, n: int) -> None:
        """Refuses more images than one request to this model may ask.

        Raises:
            InvalidRequestError: ``n`` is not in 1..max_batch_size.
        """
        if not 1 <= n <= self.max_batch_size:
            raise InvalidRequestError(f"n: must be in 1..{self.max_batch_size} for {self.name}, got {n}")


@dataclass(frozen=True)
class Readiness:
    """Whether Triton is ready, and each served model's streaming entry."""

    triton: bool
    models: dict[str, bool]

    @property
    def ready(self) -> bool:
        return self.triton and bool(self.models) and all(self.models.values())


class Backend:
    """The Triton server behind the gateway.

    Args:
        triton_url: ``grpc://host:port`` (streams need gRPC).
        models: the models to serve, in order (the first is the default); empty: every entry model Triton holds
            with a streaming twin, the unprefixed ``stable_diffusion`` first, then by name.
        timeout_s: each generation's time budget on the server; None: none.
    """

    def __init__(self, triton_url: str, *, models: Sequence[ModelSettings] = (), timeout_s: float | None = None):
        endpoint = parse_url(triton_url)
        if endpoint.protocol != "grpc":
            raise ValueError(f"the gateway streams over gRPC: --triton must be grpc://host:port, got {triton_url!r}")
        self.triton_url = triton_url
        self.timeout_s = timeout_s
        self._configured = tuple(models)
        self._address = endpoint.address
        self._admin: Any = None
        self._clients: dict[str, AsyncStableDiffusionClient] = {}
        # Each served model's stream entry: its max_batch_size and description, read from its config once.
        self._entry_configs: dict[str, tuple[int, interface.ModelDescription | None]] = {}
        self._discovered: tuple[ModelSettings, ...] = ()
        self._discovered_at = -float("inf")

    async def close(self) -> None:
        """Closes every connection to Triton."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def models(self) -> list[ServedModel]:
        """The served models, the default first.

        Raises:
            ServerUnavailableError: Triton cannot be reached (to list its models, or read a model's config).
        """
        return [await self._served(model) for model in await self._model_settings()]

    async def resolve(self, name: str | None) -> ServedModel:
        """The served model a request's ``model`` names (a name or an alias; None: the default).

        Raises:
            GatewayError: no served model has that name (404).
            ServerUnavailableError: Triton cannot be reached.
        """
        for refresh in (False, True):
            models = await self._model_settings(refresh=refresh)
            for model in models:
                if name is None or name == model.name or name in model.aliases:
                    return await self._served(model)
        raise unknown_model(str(name), [model.name for model in models])

    async def readiness(self) -> Readiness:
        """Whether Triton and each served model's streaming entry are ready (never raises)."""
        admin = self._admin_client()
        try:
            triton = bool(await admin.is_server_ready())
            models = await self._model_settings()
            states = {
                model.name: bool(await admin.is_model_ready(interface.stream_entry_name(model.name)))
                for model in models
            }
        except Exception as error:
            logger.debug("Triton is not ready: %s", error)
            return Readiness(triton=False, models={model.name: False for model in self._configured})
        return Readiness(triton=triton, models=states)

    async def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressListener | None = None,
        cancelled: asyncio.Event | None = None,
    ) -> GenerationResult:
        """Generates ``request.n`` images: through the model's streaming entry with ``on_progress`` or
        ``request.preview_every``, else through the entry that answers once.

        Args:
            request: the generation; a seed is drawn if it has none (``result.seeds`` says which).
            on_progress: called (and awaited, if it returns an awaitable) with a :class:`Progress` after every
                denoising step; its ``previews`` are set every ``request.preview_every`` steps.
            cancelled: when set, the request is cancelled on the server (which stops at its next step) and
                :class:`RequestCancelledError` is raised. Cancelling the calling task does the same.

        Returns:
            The images in order and the seed of each (``seed + i`` for image ``i``).

        Raises:
            GatewayError: unknown model (404).
            InvalidRequestError: a field out of range; the message starts with the field's name.
            ServerBusyError, ServerUnavailableError, RequestTimeoutError, RequestCancelledError, InferenceError:
                as :meth:`sdtriton.client.StableDiffusionClient.generate` raises them.
        """
        model = await self.resolve(request.model)
        model.check_n(request.n)
        request = request.with_fixed_seed()
        started = time.monotonic()
        client, prompts = self._client(model.name), [request.prompt] * request.n
        inputs = {name: value for name, value in request.inputs.items() if value is not None}
        inputs[interface.SEED.name] = request.item_seeds()
        if on_progress is None and not request.preview_every:
            # Nobody reads progress: the entry that answers once. Through the streaming entry, a response a step
            # cost this process 6-10 ms more CPU a 20-step request (21-26 ms against 15-16; measured 2026-12-06).
            keywords = {_CLIENT_KEYWORDS.get(name, name): value for name, value in inputs.items()}
            result = await _unless_cancelled(client.generate(prompts, **keywords), cancelled)
        else:
            # The stream takes the entry's tensors by their own names (the images as PIL images, as generate()).
            events = client.stream(prompts, preview_every=request.preview_every, **inputs)
            async with contextlib.aclosing(events):
                result = await _unless_cancelled(_follow(events, on_progress), cancelled)
        logger.info("%s: %d image(s) in %.2f s", model.name, request.n, time.monotonic() - started)
        return result

    async def _model_settings(self, *, refresh: bool = False) -> tuple[ModelSettings, ...]:
        if self._configured:
            return self._configured
        now = time.monotonic()
        if not self._discovered or (refresh and now - self._discovered_at >= _REDISCOVER_AFTER_S):
            self._discovered = await self._discover()
            self._discovered_at = now
        return self._discovered

    async def _discover(self) -> tuple[ModelSettings, ...]:
        """Every entry model of Triton whose streaming twin is loaded, read from Triton's repository index.

        ``sdtriton serve`` closes the index to callers without its admin key (sent when ``$SDTRITON_ADMIN_KEY`` is
        set); without it the gateway serves the unprefixed entry alone, and ``[[models]]`` in the config names
        others.
        """
        admin = self._admin_client()
        key = os.environ.get(ADMIN_KEY_ENVIRONMENT)
        headers = {AdminAccess(key=key).grpc_header: key} if key else None
        try:
            index = await admin.get_model_repository_index(headers=headers, as_json=True)
        except InferenceServerException as error:
            if "restricted" not in str(error):
                raise wrap_error(error) from error
            logger.warning(
                "Triton's repository index is closed (%s): serving %s only; name the models in the gateway's "
                "config ([[models]]) or set $%s",
                error.message(),
                interface.ENTRY_MODEL_NAME,
                ADMIN_KEY_ENVIRONMENT,
            )
            return (ModelSettings(interface.ENTRY_MODEL_NAME),)
        except Exception as error:
            raise wrap_error(error) from error
        loaded = {model["name"] for model in index.get("models", []) if model.get("state") == "READY"}
        entries = sorted(
            name.removesuffix(_STREAM_SUFFIX) for name in loaded if name.endswith(interface.STREAM_ENTRY_MODEL_NAME)
        )
        entries.sort(key=lambda name: name != interface.ENTRY_MODEL_NAME)
        return tuple(ModelSettings(name) for name in entries)

    async def _served(self, model: ModelSettings) -> ServedModel:
        if model.name not in self._entry_configs:
            stream_name = interface.stream_entry_name(model.name)
            try:
                config = (await self._admin_client().get_model_config(stream_name, as_json=True))["config"]
            except Exception as error:
                raise wrap_error(error) from error
            parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
            self._entry_configs[model.name] = (
                max(1, int(config.get("max_batch_size", 1))),
                interface.ModelDescription.from_parameters(parameters),
            )
        max_batch_size, description = self._entry_configs[model.name]
        return ServedModel(model.name, model.aliases, max_batch_size, description)

    def _admin_client(self) -> Any:  # tritonclient.grpc.aio.InferenceServerClient, imported when first needed
        if self._admin is None:
            import tritonclient.grpc.aio as triton

            self._admin = triton.InferenceServerClient(self._address)
        return self._admin

    def _client(self, model_name: str) -> AsyncStableDiffusionClient:
        if model_name not in self._clients:
            self._clients[model_name] = AsyncStableDiffusionClient(
                self.triton_url, model_name=model_name, timeout_s=self.timeout_s
            )
        return self._clients[model_name]


async def _follow(
    events: AsyncIterator[Progress | GenerationResult], on_progress: ProgressListener | None
) -> GenerationResult:
    async for event in events:
        if isinstance(event, GenerationResult):
            return event
        if on_progress is not None:
            called = on_progress(event)
            if inspect.isawaitable(called):
                await called
    raise InferenceError("the stream ended without an image")


async def _unless_cancelled(work: Awaitable[GenerationResult], cancelled: asyncio.Event | None) -> GenerationResult:
    """``work``'s result, or :class:`RequestCancelledError` as soon as ``cancelled`` is set (``work`` cancelled,
    which cancels the request on the server)."""
    if cancelled is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise RequestCancelledError("request cancelled")
    return task.result()
