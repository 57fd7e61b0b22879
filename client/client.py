"""A typed client of the ``stable_diffusion`` model over Triton HTTP or gRPC, chosen by the URL's scheme.

Example:
    >>> from sdtriton.client import RetryPolicy, StableDiffusionClient
    >>> with StableDiffusionClient("grpc://127.0.0.1:8001", retry=RetryPolicy(deadline_s=120)) as client:
    ...     result = client.generate("a yellow star on a purple background", seed=7)
    >>> result.image.save("star.png")

Retries (off unless a :class:`RetryPolicy` is given) resend only what never started, or whose work died with the
server: ``UNAVAILABLE`` (the engine's "server busy" refusal, a server that is not up, restarting or shutting
down) and connection errors. A request is deterministic once its seed is fixed, so the client draws the seed
before the first attempt when the caller sent none, and a retried request gives the image the first would have.
Never retried: ``INVALID_ARG``, a time budget the server enforced, a cancel, other server failures, and a
stream that has already delivered progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import random
import re
import secrets
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from sdtriton import interface
from sdtriton.client.exceptions import (
    InferenceError,
    InvalidRequestError,
    RequestCancelledError,
    RequestTimeoutError,
    RetriesExhaustedError,
    SdTritonError,
    ServerBusyError,
    ServerUnavailableError,
)

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
_SCHEMES = ("http", "grpc")
# How much longer than the server-side budget the transport waits, so that the server's error comes first.
_TRANSPORT_GRACE_S = 5.0
# How long a stream that failed to start waits for the callback that carries the failure's status.
_STREAM_ERROR_WAIT_S = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is sent again, how long to wait between attempts, and when to give up.

    Only errors that are safe to repeat are retried (see the module's docstring); the wait before attempt n + 1
    is ``min(max_backoff_s, initial_backoff_s * backoff_multiplier ** (n - 1))``, scaled by a random factor in
    ``1 - jitter .. 1 + jitter`` so that clients refused together do not come back together.

    Attributes:
        max_attempts: requests sent in all, the first included; None: as many as ``deadline_s`` allows.
        deadline_s: the whole call's time limit, waits and attempts included; None: none. Each attempt's time
            budget on the server (the client's ``timeout_s``) is cut to what is left of it, so the call ends by
            then, with :class:`RetriesExhaustedError`.
        initial_backoff_s: the wait before the second attempt.
        max_backoff_s: the longest wait between two attempts.
        backoff_multiplier: each wait is this many times the one before (up to ``max_backoff_s``).
        jitter: the share by which a wait is randomly lengthened or shortened, 0..1.
        jitter_seed: seeds the jitter's random source, for a reproducible schedule; None: a fresh random one.
    """

    max_attempts: int | None = None
    deadline_s: float | None = 60.0
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2
    jitter_seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is None and self.deadline_s is None:
            raise ValueError("a RetryPolicy needs max_attempts or deadline_s (or both)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.deadline_s is not None and not (self.deadline_s > 0 and math.isfinite(self.deadline_s)):
            raise ValueError(f"deadline_s must be a positive number of seconds, got {self.deadline_s}")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 <= initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s} and {self.max_backoff_s}"
            )
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier must be at least 1, got {self.backoff_multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in 0..1, got {self.jitter}")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (1: the second attempt), jitter drawn from ``rng``."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.backoff_multiplier ** (retry - 1))
        return min(self.max_backoff_s, base * rng.uniform(1 - self.jitter, 1 + self.jitter))


def is_retryable(error: SdTritonError) -> bool:
    """True for the errors a :class:`RetryPolicy` resends: the server refused or could not take the request.

    A server-enforced time budget (``RequestTimeoutError``, also ``UNAVAILABLE`` on the wire) is not: the
    request ran as long as it was allowed to.
    """
    return isinstance(error, ServerUnavailableError) and not isinstance(
        error, RequestTimeoutError | RetriesExhaustedError
    )


class _Attempts:
    """One call's retry bookkeeping: attempts made, time spent, each attempt's budget, the wait before the next."""

    def __init__(self, policy: RetryPolicy | None, timeout_s: float | None) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.count = 0
        self.started = time.monotonic()
        self._rng = random.Random(policy.jitter_seed if policy is not None else None)
        self._budget_cut = False

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def begin(self) -> float | None:
        """Counts an attempt; returns its time budget on the server: ``timeout_s``, cut to the deadline's rest."""
        self.count += 1
        if self.policy is None or self.policy.deadline_s is None:
            return self.timeout_s
        remaining_s = max(1e-3, self.policy.deadline_s - self.elapsed_s())
        self._budget_cut = self.timeout_s is None or remaining_s < self.timeout_s
        return remaining_s if self._budget_cut else self.timeout_s

    def retry_after_s(self, error: SdTritonError) -> float | None:
        """Seconds to wait before resending after ``error``; None: not retried (the caller re-raises ``error``).

        Raises:
            RetriesExhaustedError: the error is retried, but attempts or time ran out (``from error``).
        """
        policy = self.policy
        if policy is None:
            return None
        if isinstance(error, RequestTimeoutError) and self._budget_cut:
            self._give_up(f"its deadline of {policy.deadline_s:g} s ran out during the attempt", error)
        if not is_retryable(error):
            return None
        if policy.max_attempts is not None and self.count >= policy.max_attempts:
            self._give_up(f"the retry policy allows {policy.max_attempts} attempts", error)
        delay_s = policy.backoff_s(self.count, self._rng)
        if policy.deadline_s is not None and self.elapsed_s() + delay_s >= policy.deadline_s:
            self._give_up(f"its deadline of {policy.deadline_s:g} s leaves no time for another attempt", error)
        # No request text in the log: prompts may be private.
        logger.warning(
            "attempt %d failed after %.1f s with %s (%s); retrying in %.2f s",
            self.count,
            self.elapsed_s(),
            type(error).__name__,
            error,
            delay_s,
        )
        return delay_s

    def _give_up(self, reason: str, error: SdTritonError) -> NoReturn:
        raise RetriesExhaustedError(
            reason, attempts=self.count, elapsed_s=self.elapsed_s(), last_error=error
        ) from error


def _with_client_seed(prompt: str | Sequence[str], seed: Any, policy: RetryPolicy | None) -> Any:
    """``seed``, or, when retries are on and none was sent, one drawn here per prompt: a retry repeats the image."""
    if seed is not None or policy is None:
        return seed
    seeds = [secrets.randbelow(interface.MAX_SEED + 1) for _ in _prompts(prompt)]
    return seeds[0] if len(seeds) == 1 else seeds


def _request_parameters(
    prompt: str | Sequence[str], arguments: Mapping[str, Any], policy: RetryPolicy | None
) -> dict[str, Any]:
    """Every input of the entry but the prompt, taken by name from ``generate``'s ``arguments`` (the input image from
    its ``image``, the mask from its ``mask``), in the interface's order; the seed as :func:`_with_client_seed` makes
    it. Both clients build their requests with this."""
    named = {
        **arguments,
        interface.INPUT_IMAGE.name: arguments["image"],
        interface.MASK_IMAGE.name: arguments["mask"],
    }
    parameters = {tensor.name: named[tensor.name] for tensor in interface.ENTRY_INPUTS[1:]}
    parameters[interface.SEED.name] = _with_client_seed(prompt, parameters[interface.SEED.name], policy)
    return parameters


def _stream_parameters(
    endpoint: Endpoint,
    prompt: str | Sequence[str],
    preview_every: int | None,
    parameters: dict[str, Any],
    policy: RetryPolicy | None,
) -> dict[str, Any]:
    """A stream's parameters: ``preview_every`` among them, the seed as :func:`_with_client_seed` makes it, an
    ``image`` and a ``mask`` (as :meth:`StableDiffusionClient.generate` takes them) as the ``input_image`` and
    ``mask_image`` tensors.

    Raises:
        ValueError: ``endpoint`` is not gRPC (HTTP cannot stream a decoupled model).
    """
    if endpoint.protocol != "grpc":
        raise ValueError("progress streaming needs a grpc:// URL (HTTP cannot stream a decoupled model)")
    for argument, tensor in (("image", interface.INPUT_IMAGE), ("mask", interface.MASK_IMAGE)):
        if argument in parameters:
            parameters[tensor.name] = parameters.pop(argument)
    if preview_every is not None:
        parameters["preview_every"] = preview_every
    parameters["seed"] = _with_client_seed(prompt, parameters.get("seed"), policy)
    return parameters


def _as_client_error(error: Exception) -> SdTritonError:
    if isinstance(error, SdTritonError):
        return error
    wrapped = wrap_error(error)
    wrapped.__cause__ = error
    return wrapped


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
class Progress:
    """Progress of a streamed request after a denoising step.

    Attributes:
        steps_done: network evaluations done, per image (second-order schedulers evaluate twice a step).
        total_steps: network evaluations in all, per image.
        elapsed_s: seconds since the server took the request.
        previews: a cheap preview per image (at latent resolution), when one was due; else None.
    """

    steps_done: list[int]
    total_steps: list[int]
    elapsed_s: float
    previews: list[Image.Image] | None = None

    @property
    def fraction(self) -> float:
        """Share of the request's work done, 0..1."""
        return sum(self.steps_done) / max(1, sum(self.total_steps))


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


def _pixels(image: Image.Image | np.ndarray, channels: int) -> np.ndarray:
    """A picture as the server takes it: [H, W, 3] uint8 RGB for an input image, [H, W, 1] gray for a mask (a PIL
    image of another mode is converted as diffusers converts it; a mask's [H, W] array gains its axis)."""
    if isinstance(image, Image.Image):
        pixels = np.asarray(image.convert("RGB" if channels == interface.INPUT_IMAGE.dims[-1] else "L"))
    else:
        pixels = np.asarray(image)
    return pixels[..., None] if channels == 1 and pixels.ndim == 2 else pixels


def build_inputs(
    triton: types.ModuleType,
    prompts: Sequence[str],
    *,
    tensors: Sequence[interface.PublicTensor] = interface.ENTRY_INPUTS,
    **parameters: Any,
) -> list[Any]:
    """The request tensors for ``triton`` (``tritonclient.http`` or ``tritonclient.grpc``): [N, 1] each, the input
    image [N, H, W, 3] (one image for every prompt, or one per prompt)."""
    count = len(prompts)
    values = {interface.PROMPT.name: list(prompts)}
    for tensor in tensors[1:]:
        items = _per_item(tensor.name, parameters.pop(tensor.name, None), count)
        if items is not None:
            values[tensor.name] = items
    if parameters:
        raise TypeError(f"unknown parameters: {', '.join(sorted(parameters))}")
    inputs = []
    for tensor in tensors:
        if tensor.name not in values:
            continue
        items = values[tensor.name]
        if tensor.triton_dtype == "BYTES":
            items = [item.encode("utf-8") if isinstance(item, str) else item for item in items]
        if len(tensor.dims) > 1:
            pixels = [_pixels(item, tensor.dims[-1]) for item in items]
            array = np.stack(pixels).astype(triton_to_np_dtype(tensor.triton_dtype), copy=False)
        else:
            array = np.array(items, dtype=triton_to_np_dtype(tensor.triton_dtype)).reshape(count, 1)
        infer_input = triton.InferInput(tensor.name, list(array.shape), tensor.triton_dtype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def requested_outputs(
    triton: types.ModuleType, tensors: Sequence[interface.PublicTensor] = interface.PUBLIC_OUTPUTS
) -> list[Any]:
    return [triton.InferRequestedOutput(tensor.name) for tensor in tensors]


def read_result(result: Any) -> GenerationResult:
    pixels = result.as_numpy(interface.IMAGE.name)
    seeds = result.as_numpy(interface.USED_SEED.name)
    return GenerationResult(
        images=[Image.fromarray(np.ascontiguousarray(item), mode="RGB") for item in pixels],
        seeds=[int(seed) for seed in seeds.reshape(-1)],
    )


def read_progress(result: Any) -> Progress:
    previews = result.as_numpy(interface.PREVIEW.name)
    return Progress(
        steps_done=[int(v) for v in result.as_numpy(interface.STEP.name).reshape(-1)],
        total_steps=[int(v) for v in result.as_numpy(interface.TOTAL_STEPS.name).reshape(-1)],
        elapsed_s=float(result.as_numpy(interface.ELAPSED_MS.name).reshape(-1)[0]) / 1000.0,
        previews=None
        if previews is None
        else [Image.fromarray(np.ascontiguousarray(item), mode="RGB") for item in previews],
    )


def read_stream_event(result: Any) -> Progress | GenerationResult:
    """A response of the streaming entry: the images once it carries them, else the progress."""
    if result.as_numpy(interface.IMAGE.name) is not None:
        return read_result(result)
    return read_progress(result)


# A server error's class, read from the server's own message first, then from the status. The status alone is
# ambiguous: over HTTP Triton answers 400 for INVALID_ARG and CANCELLED alike (and older Tritons for every error),
# 503 for a busy server and an expired request alike, and an error inside a gRPC stream carries no status at all.
# The messages are this server's own (sdtriton.serving.errors, the Triton adapters' error responses).
_PUBLIC_INPUT_NAMES = "|".join(re.escape(tensor.name) for tensor in interface.STREAM_INPUTS)
_SERVER_MESSAGES: tuple[tuple[re.Pattern[str], type[SdTritonError]], ...] = (
    (re.compile(r"request cancelled\Z"), RequestCancelledError),
    (re.compile(r"\S+: internal error \(see the server log\)\Z"), InferenceError),
    (re.compile(r"timeout: "), RequestTimeoutError),
    (re.compile(r"server (busy|draining): "), ServerBusyError),
    (re.compile(r"model process died: "), ServerUnavailableError),
    # A refused input is named first: "width: must be ...", "width x height: must be at most ... pixels".
    (re.compile(rf"({_PUBLIC_INPUT_NAMES})( x ({_PUBLIC_INPUT_NAMES}))?: "), InvalidRequestError),
)
# Statuses as tritonclient spells them: HTTP status codes, gRPC StatusCode names.
_STATUSES: dict[str, type[SdTritonError]] = {
    "400": InvalidRequestError,
    "StatusCode.INVALID_ARGUMENT": InvalidRequestError,
    "503": ServerUnavailableError,
    "StatusCode.UNAVAILABLE": ServerUnavailableError,
    "StatusCode.DEADLINE_EXCEEDED": RequestTimeoutError,
    "StatusCode.CANCELLED": RequestCancelledError,
}


def _server_error_class(status: str | None, message: str) -> type[SdTritonError] | None:
    """The client's exception class for a server's answer; None where neither message nor status says."""
    for pattern, error_class in _SERVER_MESSAGES:
        if pattern.match(message):
            return error_class
    return _STATUSES.get(str(status))


def wrap_error(error: Exception) -> SdTritonError:
    """The client's own exception for a tritonclient or transport error."""
    if isinstance(error, InferenceServerException):
        status = error.status()
        message = error.message() or str(error)
        error_class = _server_error_class(status, message)
        if error_class is None:
            return InferenceError(f"{message} (status {status})")
        return error_class(message)
    if isinstance(error, TimeoutError):
        # The transport's own time limit (timeout_s plus a grace): not a refusal, so never retried.
        return RequestTimeoutError(f"no answer from the server in time: {error}")
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
    *,
    stream: bool = False,
    **parameters: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """The request tensors and the infer() keyword arguments shared by the sync and async clients."""
    input_tensors = interface.STREAM_INPUTS if stream else interface.ENTRY_INPUTS
    output_tensors = interface.STREAM_OUTPUTS if stream else interface.PUBLIC_OUTPUTS
    inputs = build_inputs(triton, _prompts(prompt), tensors=input_tensors, **parameters)
    kwargs: dict[str, Any] = {"outputs": requested_outputs(triton, output_tensors)}
    if timeout_s is not None:
        # The server's budget (Triton's request timeout, in microseconds) ends the work, queued or running,
        # with a clear error; the transport waits a little longer so that this error is what arrives.
        kwargs["timeout"] = max(1, round(timeout_s * 1e6))
        if endpoint.protocol == "grpc" and not stream:
            kwargs["client_timeout"] = timeout_s + _TRANSPORT_GRACE_S
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


def _grpc_channel_args(triton: types.ModuleType, policy: RetryPolicy | None) -> list[tuple[str, Any]] | None:
    """tritonclient's own channel options, with gRPC's reconnect backoff (up to 120 s) held to the policy's.

    After failed connects a gRPC channel waits out its own backoff before it dials again, and fails every call
    until then: without this a server back after a restart may go unseen for longer than the policy waits.
    """
    if policy is None:
        return None
    keepalive = triton.KeepAliveOptions()
    reconnect_ms = max(1, round(1000 * policy.max_backoff_s))
    return [
        ("grpc.max_send_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", max(1, round(1000 * policy.initial_backoff_s))),
        ("grpc.min_reconnect_backoff_ms", max(1, round(1000 * policy.initial_backoff_s))),
        ("grpc.max_reconnect_backoff_ms", reconnect_ms),
    ]


class StableDiffusionClient:
    """Generates images with a Triton server's ``stable_diffusion`` model.

    Args:
        url: ``http://host:port`` (Triton HTTP, default port 8000) or ``grpc://host:port`` (default 8001).
        model_name: the entry model (``<prefix>stable_diffusion`` for a repository exported with ``--model-prefix``;
            streaming goes to its twin, ``<prefix>stable_diffusion_stream``).
        timeout_s: per-request timeout; None waits as long as the server takes.
        retry: resend refused or unreachable requests under this policy (:meth:`generate` and :meth:`stream`;
            not :meth:`submit`); None (the default): every error is raised at once.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model_name: str = interface.ENTRY_MODEL_NAME,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint = parse_url(url)
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry = retry
        self._triton = _transport(self.endpoint.protocol, asynchronous=False)
        if self.endpoint.protocol == "http":
            # The connection timeout bounds a whole generation over HTTP; default: a day.
            timeout = 86400.0 if timeout_s is None else timeout_s + _TRANSPORT_GRACE_S
            self._client = self._triton.InferenceServerClient(
                self.endpoint.address, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            self._client = self._triton.InferenceServerClient(
                self.endpoint.address, channel_args=_grpc_channel_args(self._triton, retry)
            )

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
        refiner_fraction: float | Sequence[float] | None = None,
        true_cfg_scale: float | Sequence[float] | None = None,
        skip_layer_guidance_scale: float | Sequence[float] | None = None,
        skip_layer_guidance_start: float | Sequence[float] | None = None,
        skip_layer_guidance_stop: float | Sequence[float] | None = None,
        vae_tiling: bool | Sequence[bool] | None = None,
        image: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray] | None = None,
        mask: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray] | None = None,
        strength: float | Sequence[float] | None = None,
        lora: str | Sequence[str] | None = None,
        lora_scale: float | Sequence[float] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        preview_every: int | None = None,
    ) -> GenerationResult:
        """Generates one image per prompt; an omitted parameter takes the model's default.

        Over gRPC the call can be interrupted: Ctrl-C (or any exception while waiting) cancels the request
        on the server, which stops its work at the next denoising step.

        With a retry policy, a refused or unreachable request is sent again (see :class:`RetryPolicy`); when
        ``seed`` is None the client draws one first, so every attempt asks for the same image.

        Args:
            refiner_fraction: SDXL with a refiner: the share of the denoising the refiner does (0 or None: off).
            true_cfg_scale: FLUX: true classifier-free guidance, on above 1 when ``negative_prompt`` is given (an
                empty string counts, None does not), as ``FluxPipeline``'s; other families take 1 or None only.
            skip_layer_guidance_scale: SD 3 exported with ``--skip-guidance-layers``: ``StableDiffusion3Pipeline``'s
                skip-layer guidance (0 or None: off); ``skip_layer_guidance_start``/``_stop``: its window, shares of
                the steps (None: the pipeline's 0.01 and 0.2).
            vae_tiling: True: decode in overlapping tiles, as diffusers' ``vae.enable_tiling()``; False: in one
                call (refused above the export's ``--vae-tile-above``); None: tiles above that size.
            image: image-to-image: the image to start from (a PIL image, or [H, W, 3] uint8 RGB pixels), one for
                every prompt or one per prompt; the images are drawn at its size (SD 1.x/2.x and SDXL).
            mask: inpainting, with ``image``: which of its pixels are redrawn (a PIL image, converted to gray as
                diffusers does, or [H, W] / [H, W, 1] uint8; 128..255 repaint, below keep), of the image's size, one
                for every prompt or one per prompt (every family; an SD/SDXL inpainting model needs one).
            strength: with ``image``: how much of the denoising is redone, above 0 and at most 1 (None: 0.8, as
                ``StableDiffusionImg2ImgPipeline``; with ``mask``, the inpainting pipeline's: SD 1.0, SDXL 0.9999,
                SD 3 and FLUX 0.6);
                ``int(num_inference_steps x strength)`` steps run.
            lora: the LoRA adapter of each image, one the repository was exported with (``export --lora``); None or
                "": none. ``lora_scale``: its weight, as diffusers' ``set_adapters([lora], [lora_scale])`` (None: 1).
            on_progress: called after every denoising step with a :class:`Progress` (gRPC streaming only).
            preview_every: with ``on_progress``, a cheap preview of each image every this many steps.

        Raises:
            InvalidRequestError: a parameter is out of its allowed range (the message names it).
            ServerBusyError: the server holds as many requests as it may; nothing was started.
            RequestTimeoutError: ``timeout_s`` ran out; the server stopped the work.
            RetriesExhaustedError: the retry policy ran out of attempts or time (names both and the last error).
            ServerUnavailableError: the server cannot be reached.
            InferenceError: the server failed to answer.
        """
        parameters = _request_parameters(prompt, locals(), self.retry)
        if on_progress is not None or preview_every:
            for event in self.stream(prompt, preview_every=preview_every, **parameters):
                if isinstance(event, GenerationResult):
                    return event
                if on_progress is not None:
                    on_progress(event)
            raise InferenceError("the stream ended without an image")
        attempts = _Attempts(self.retry, self.timeout_s)
        while True:
            timeout_s = attempts.begin()
            try:
                return self._generate_once(prompt, timeout_s, parameters)
            except SdTritonError as error:
                delay_s = attempts.retry_after_s(error)
                if delay_s is None:
                    raise
            time.sleep(delay_s)

    def _generate_once(
        self, prompt: str | Sequence[str], timeout_s: float | None, parameters: dict[str, Any]
    ) -> GenerationResult:
        if self.endpoint.protocol == "grpc":
            pending = self._submit(prompt, timeout_s, parameters)
            try:
                return pending.result()
            except BaseException:
                pending.cancel()
                raise
        inputs, kwargs = _prepare(self._triton, self.endpoint, timeout_s, prompt, **parameters)
        try:
            result = self._client.infer(self.model_name, inputs, **kwargs)
        except Exception as error:
            raise wrap_error(error) from error
        return read_result(result)

    def submit(self, prompt: str | Sequence[str], **parameters: Any) -> PendingGeneration:
        """Starts a generation without waiting (gRPC only); the parameters are those of :meth:`generate`.

        Not retried: the caller holds the request (``cancel()``) and decides whether to send it again.

        Returns:
            A :class:`PendingGeneration`: ``result()`` waits for the images, ``cancel()`` stops the server's work.
        """
        if self.endpoint.protocol != "grpc":
            raise ValueError("submit() and cancellation need a grpc:// URL")
        return self._submit(prompt, self.timeout_s, parameters)

    def _submit(
        self, prompt: str | Sequence[str], timeout_s: float | None, parameters: dict[str, Any]
    ) -> PendingGeneration:
        inputs, kwargs = _prepare(self._triton, self.endpoint, timeout_s, prompt, **parameters)
        pending = PendingGeneration()
        pending._context = self._client.async_infer(self.model_name, inputs, pending._complete, **kwargs)
        return pending

    def stream(
        self, prompt: str | Sequence[str], *, preview_every: int | None = None, **parameters: Any
    ) -> Iterator[Progress | GenerationResult]:
        """Generates through ``stable_diffusion_stream`` (gRPC only): a :class:`Progress` after every step,
        then the :class:`GenerationResult`. Leaving the loop early (``break``, an exception, Ctrl-C) cancels
        the request on the server.

        With a retry policy, an attempt that fails before its first event is sent again; once progress has been
        delivered an error is raised, not retried: starting over would show the caller its steps going back.
        """
        parameters = _stream_parameters(self.endpoint, prompt, preview_every, parameters, self.retry)
        attempts = _Attempts(self.retry, self.timeout_s)
        while True:
            timeout_s = attempts.begin()
            delivered = False
            try:
                with contextlib.closing(self._stream_once(prompt, timeout_s, parameters)) as events:
                    for event in events:
                        delivered = True
                        yield event
                return
            except SdTritonError as error:
                delay_s = None if delivered else attempts.retry_after_s(error)
                if delay_s is None:
                    raise
            time.sleep(delay_s)

    def _stream_once(
        self, prompt: str | Sequence[str], timeout_s: float | None, parameters: dict[str, Any]
    ) -> Iterator[Progress | GenerationResult]:
        inputs, kwargs = _prepare(self._triton, self.endpoint, timeout_s, prompt, stream=True, **parameters)
        events: queue.Queue[tuple[Any, Any]] = queue.Queue()
        wait_s = None if timeout_s is None else timeout_s + _TRANSPORT_GRACE_S
        try:
            self._client.start_stream(callback=lambda result, error: events.put((result, error)))
        except Exception as error:
            raise wrap_error(error) from error
        finished = False
        try:
            try:
                self._client.async_stream_infer(interface.stream_entry_name(self.model_name), inputs, **kwargs)
            except Exception as error:
                finished = True
                # A stream that failed at once (no server) refuses the request with "no longer in valid state";
                # the failure itself (UNAVAILABLE) went to the callback.
                with contextlib.suppress(queue.Empty):
                    _, cause = events.get(timeout=_STREAM_ERROR_WAIT_S)
                    if cause is not None:
                        raise wrap_error(cause) from cause
                raise wrap_error(error) from error
            while True:
                try:
                    result, error = events.get(timeout=wait_s)
                except queue.Empty:
                    raise RequestTimeoutError(f"no answer within {timeout_s} s") from None
                if error is not None:
                    finished = True
                    raise wrap_error(error) from error
                event = read_stream_event(result)
                finished = isinstance(event, GenerationResult)
                yield event
                if finished:
                    return
        finally:
            self._client.stop_stream(cancel_requests=not finished)


class PendingGeneration:
    """A generation under way on the server (from :meth:`StableDiffusionClient.submit`)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._error: Exception | None = None
        self._context: Any = None

    def _complete(self, result: Any, error: Exception | None) -> None:
        self._result, self._error = result, error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Cancels the request: the server ends it at its next denoising step."""
        if self._context is not None and not self._done.is_set():
            self._context.cancel()

    def result(self, timeout_s: float | None = None) -> GenerationResult:
        """Waits for the images; raises the client's own exceptions, as :meth:`StableDiffusionClient.generate`."""
        if not self._done.wait(timeout_s):
            raise TimeoutError(f"no answer within {timeout_s} s")
        if self._error is not None:
            raise wrap_error(self._error) from self._error
        return read_result(self._result)


class AsyncStableDiffusionClient:
    """The asyncio twin of :class:`StableDiffusionClient`, with the same arguments (``retry`` too) and results."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model_name: str = interface.ENTRY_MODEL_NAME,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint = parse_url(url)
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry = retry
        self._triton = _transport(self.endpoint.protocol, asynchronous=True)
        if self.endpoint.protocol == "http":
            self._client = self._triton.InferenceServerClient(
                self.endpoint.address, conn_timeout=86400.0 if timeout_s is None else timeout_s + _TRANSPORT_GRACE_S
            )
        else:
            self._client = self._triton.InferenceServerClient(
                self.endpoint.address, channel_args=_grpc_channel_args(self._triton, retry)
            )

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
        refiner_fraction: float | Sequence[float] | None = None,
        true_cfg_scale: float | Sequence[float] | None = None,
        skip_layer_guidance_scale: float | Sequence[float] | None = None,
        skip_layer_guidance_start: float | Sequence[float] | None = None,
        skip_layer_guidance_stop: float | Sequence[float] | None = None,
        vae_tiling: bool | Sequence[bool] | None = None,
        image: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray] | None = None,
        mask: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray] | None = None,
        strength: float | Sequence[float] | None = None,
        lora: str | Sequence[str] | None = None,
        lora_scale: float | Sequence[float] | None = None,
    ) -> GenerationResult:
        """See :meth:`StableDiffusionClient.generate`."""
        parameters = _request_parameters(prompt, locals(), self.retry)
        attempts = _Attempts(self.retry, self.timeout_s)
        while True:
            timeout_s = attempts.begin()
            inputs, kwargs = _prepare(self._triton, self.endpoint, timeout_s, prompt, **parameters)
            try:
                result = await self._client.infer(self.model_name, inputs, **kwargs)
            except Exception as error:
                client_error = _as_client_error(error)
                delay_s = attempts.retry_after_s(client_error)
                if delay_s is None:
                    raise client_error from error
                await asyncio.sleep(delay_s)
                continue
            return read_result(result)

    async def stream(
        self, prompt: str | Sequence[str], *, preview_every: int | None = None, **parameters: Any
    ) -> AsyncIterator[Progress | GenerationResult]:
        """The asyncio twin of :meth:`StableDiffusionClient.stream` (gRPC only), retried the same way: a
        :class:`Progress` after every step, then the :class:`GenerationResult`.

        Closing the iterator early (``aclose()``, leaving ``async with contextlib.aclosing(...)``) or cancelling
        the task that reads it cancels the request on the server, which stops at its next denoising step.
        """
        parameters = _stream_parameters(self.endpoint, prompt, preview_every, parameters, self.retry)
        attempts = _Attempts(self.retry, self.timeout_s)
        while True:
            timeout_s = attempts.begin()
            delivered = False
            try:
                async with contextlib.aclosing(self._stream_once(prompt, timeout_s, parameters)) as events:
                    async for event in events:
                        delivered = True
                        yield event
                return
            except SdTritonError as error:
                delay_s = None if delivered else attempts.retry_after_s(error)
                if delay_s is None:
                    raise
            await asyncio.sleep(delay_s)

    async def _stream_once(
        self, prompt: str | Sequence[str], timeout_s: float | None, parameters: dict[str, Any]
    ) -> AsyncIterator[Progress | GenerationResult]:
        import grpc

        inputs, kwargs = _prepare(self._triton, self.endpoint, timeout_s, prompt, stream=True, **parameters)
        request = {"model_name": interface.stream_entry_name(self.model_name), "inputs": inputs, **kwargs}

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        # The whole stream's transport limit: the server's budget ends the work first, with its own error.
        wait_s = None if timeout_s is None else timeout_s + _TRANSPORT_GRACE_S
        responses = self._client.stream_infer(requests(), stream_timeout=wait_s)
        finished = False
        try:
            while True:
                try:
                    result, error = await anext(responses)
                except StopAsyncIteration:
                    finished = True
                    raise InferenceError("the stream ended without an image") from None
                except grpc.RpcError as rpc_error:
                    # The stream itself failed (no server, the transport's limit): its status says which.
                    finished = True
                    cause = InferenceServerException(
                        msg=rpc_error.details() or str(rpc_error), status=str(rpc_error.code())
                    )
                    raise wrap_error(cause) from rpc_error
                if error is not None:
                    finished = True
                    raise wrap_error(error) from error
                event = read_stream_event(result)
                finished = isinstance(event, GenerationResult)
                yield event
                if finished:
                    return
        finally:
            if not finished:
                responses.cancel()
