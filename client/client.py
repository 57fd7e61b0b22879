"""A typed client of the ``stable_diffusion`` model over Triton HTTP or gRPC, chosen by the URL's scheme.

Example:
    >>> from sdtriton.client import StableDiffusionClient
    >>> with StableDiffusionClient("grpc://127.0.0.1:8001") as client:
    ...     result = client.generate("a yellow star on a purple background", seed=7)
    >>> result.image.save("star.png")
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException

from sdtriton import interface
from sdtriton.client.exceptions import (
    InferenceError,
    InvalidRequestError,
    SdTritonError,
    ServerUnavailableError,
)

DEFAULT_URL = "http://127.0.0.1:8000"
_SCHEMES = ("http", "grpc")
_NUMPY_DTYPES = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}
_INVALID_ARG_STATUSES = {"400", "StatusCode.INVALID_ARGUMENT"}
_UNAVAILABLE_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}


@dataclass(frozen=True)
class GenerationResult:
    """Images in request order and the seed each was drawn with."""

    images: list[Image.Image]
    seeds: list[int]

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def seed(self) -> int:
        return self.seeds[0]


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "http" or "grpc"
    address: str  # host:port, as tritonclient wants it


def parse_url(url: str) -> Endpoint:
    """``http://host:port`` or ``grpc://host:port`` (no scheme: http)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"URL scheme must be one of {', '.join(_SCHEMES)}, got {parts.scheme!r} in {url!r}")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"URL must name a host and a port, got {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Endpoint(protocol=parts.scheme, address=f"{host}:{parts.port}")


def _per_item(name: str, value: Any, count: int) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{name} has {len(value)} values for {count} prompts")
    return list(value)


def build_inputs(
    triton: types.ModuleType,
    prompts: Sequence[str],
    **parameters: Any,
) -> list[Any]:
    """The request tensors for ``triton`` (``tritonclient.http`` or ``tritonclient.grpc``): [N, 1] each."""
    count = len(prompts)
    values = {interface.PROMPT.name: list(prompts)}
    for tensor in interface.PUBLIC_INPUTS[1:]:
        items = _per_item(tensor.name, parameters.pop(tensor.name, None), count)
        if items is not None:
            values[tensor.name] = items
    if parameters:
        raise TypeError(f"unknown parameters: {', '.join(sorted(parameters))}")
    inputs = []
    for tensor in interface.PUBLIC_INPUTS:
        if tensor.name not in values:
            continue
        items = values[tensor.name]
        if tensor.triton_dtype == "BYTES":
            items = [item.encode("utf-8") if isinstance(item, str) else item for item in items]
        array = np.array(items, dtype=_NUMPY_DTYPES[tensor.triton_dtype]).reshape(count, 1)
        infer_input = triton.InferInput(tensor.name, list(array.shape), tensor.triton_dtype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def requested_outputs(triton: types.ModuleType) -> list[Any]:
    return [triton.InferRequestedOutput(tensor.name) for tensor in interface.PUBLIC_OUTPUTS]


def read_result(result: Any) -> GenerationResult:
    pixels = result.as_numpy(interface.IMAGE.name)
    seeds = result.as_numpy(interface.USED_SEED.name)
    return GenerationResult(
        images=[Image.fromarray(np.ascontiguousarray(item), mode="RGB") for item in pixels],
        seeds=[int(seed) for seed in seeds.reshape(-1)],
    )


def wrap_error(error: Exception) -> SdTritonError:
    """The client's own exception for a tritonclient or transport error."""
    if isinstance(error, InferenceServerException):
        status = str(error.status())
        message = error.message() or str(error)
        if status in _INVALID_ARG_STATUSES:
            return InvalidRequestError(message)
        if status in _UNAVAILABLE_STATUSES:
            return ServerUnavailableError(message)
        return InferenceError(f"{message} (status {status})")
    if isinstance(error, OSError):
        return ServerUnavailableError(f"cannot reach the server: {error}")
    return InferenceError(str(error))


def _prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt must hold at least one prompt")
    return prompts


def _prepare(
    triton: types.ModuleType,
    endpoint: Endpoint,
    timeout_s: float | None,
    prompt: str | Sequence[str],
    **parameters: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """The request tensors and the infer() keyword arguments shared by the sync and async clients."""
    inputs = build_inputs(triton, _prompts(prompt), **parameters)
    kwargs: dict[str, Any] = {"outputs": requested_outputs(triton)}
    if endpoint.protocol == "grpc" and timeout_s is not None:
        kwargs["client_timeout"] = timeout_s
    return inputs, kwargs


def _transport(protocol: str, *, asynchronous: bool) -> types.ModuleType:
    if protocol == "grpc":
        if asynchronous:
            import tritonclient.grpc.aio as triton
        else:
            import tritonclient.grpc as triton
    elif asynchronous:
        import tritonclient.http.aio as triton
    else:
        import tritonclient.http as triton
    return triton


class StableDiffusionClient:
    """Generates images with a Triton server's ``stable_diffusion`` model.

    Args:
        url: ``http://host:port`` (Triton HTTP, default port 8000) or ``grpc://host:port`` (default 8001).
        model_name: the entry model.
        timeout_s: per-request timeout; None waits as long as the server takes.
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, model_name: str = interface.ENTRY_MODEL_NAME, timeout_s: float | None = None
    ) -> None:
        self.endpoint = parse_url(url)
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._triton = _transport(self.endpoint.protocol, asynchronous=False)
        if self.endpoint.protocol == "http":
            # The connection timeout bounds a whole generation over HTTP; default: a day.
            timeout = 86400.0 if timeout_s is None else timeout_s
            self._client = self._triton.InferenceServerClient(
                self.endpoint.address, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            self._client = self._triton.InferenceServerClient(self.endpoint.address)

    def __enter__(self) -> StableDiffusionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_ready(self) -> bool:
        """True if the server is live and the entry model is ready."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model_name))
        except Exception:
            return False

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | Sequence[int] | None = None,
        guidance_scale: float | Sequence[float] | None = None,
        seed: int | Sequence[int] | None = None,
        width: int | None = None,
        height: int | None = None,
        scheduler: str | Sequence[str] | None = None,
    ) -> GenerationResult:
        """Generates one image per prompt; an omitted parameter takes the model's default.

        Raises:
            InvalidRequestError: a parameter is out of its allowed range (the message names it).
            ServerUnavailableError: the server cannot be reached.
            InferenceError: the server failed to answer.
        """
        inputs, kwargs = _prepare(
            self._triton,
            self.endpoint,
            self.timeout_s,
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            width=width,
            height=height,
            scheduler=scheduler,
        )
        try:
            result = self._client.infer(self.model_name, inputs, **kwargs)
        except Exception as error:
            raise wrap_error(error) from error
        return read_result(result)


class AsyncStableDiffusionClient:
    """The asyncio twin of :class:`StableDiffusionClient`, with the same arguments and results."""

    def __init__(
        self, url: str = DEFAULT_URL, *, model_name: str = interface.ENTRY_MODEL_NAME, timeout_s: float | None = None
    ) -> None:
        self.endpoint = parse_url(url)
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._triton = _transport(self.endpoint.protocol, asynchronous=True)
        if self.endpoint.protocol == "http":
            self._client = self._triton.InferenceServerClient(
                self.endpoint.address, conn_timeout=86400.0 if timeout_s is None else timeout_s
            )
        else:
            self._client = self._triton.InferenceServerClient(self.endpoint.address)

    async def __aenter__(self) -> AsyncStableDiffusionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready() and await self._client.is_model_ready(self.model_name))
        except Exception:
            return False

    async def generate(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | Sequence[int] | None = None,
        guidance_scale: float | Sequence[float] | None = None,
        seed: int | Sequence[int] | None = None,
        width: int | None = None,
        height: int | None = None,
        scheduler: str | Sequence[str] | None = None,
    ) -> GenerationResult:
        """See :meth:`StableDiffusionClient.generate`."""
        inputs, kwargs = _prepare(
            self._triton,
            self.endpoint,
            self.timeout_s,
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            width=width,
            height=height,
            scheduler=scheduler,
        )
        try:
            result = await self._client.infer(self.model_name, inputs, **kwargs)
        except Exception as error:
            raise wrap_error(error) from error
        return read_result(result)
