"""The diffusion engine driven in this process, no Triton: the compute ceiling of the served engine.

A closed loop keeps ``concurrency`` requests in the engine, as that many clients would: a request that ends
is replaced before the next step. The engine runs with the served repository's own limits over ONNX Runtime
sessions of its ONNX files, so its UNet calls have the batch the server's have at the same concurrency.
:class:`ZeroTimeUNet` answers the UNet at once with zeros: the engine's time without the UNet (text encoder,
VAE decoder, scheduler steps and glue), which the simulated-accelerator section counts beside the modelled UNet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sdtriton.perf.engine_results import InProcessRun
from sdtriton.perf.workload import RequestSpec, raw_inputs
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.engine import DiffusionEngine, EngineLimits, EngineNetworks, EngineRequest, Finished, Progress
from sdtriton.serving.requests import parse_request


class CountingNetworks:
    """Passes every call on; counts UNet calls and their rows."""

    def __init__(self, inner: EngineNetworks) -> None:
        self.inner = inner
        self.device = inner.device
        self.unet_calls = 0
        self.unet_rows = 0

    def encode_text(self, encoder: str, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner.encode_text(encoder, input_ids)

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.unet_calls += 1
        self.unet_rows += int(inputs["sample"].shape[0])
        return self.inner.predict_noise(unet, inputs)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.decode_latents(latents)


class ZeroTimeUNet:
    """The real text encoder and VAE decoder; a UNet that answers zeros at once (an infinitely fast accelerator)."""

    def __init__(self, inner: EngineNetworks) -> None:
        self.inner = inner
        self.device = inner.device

    def encode_text(self, encoder: str, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner.encode_text(encoder, input_ids)

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.zeros_like(inputs["sample"])

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.decode_latents(latents)


class _Sink:
    def __init__(self, on_end: Callable[[Exception | None], None]) -> None:
        self._on_end = on_end

    def progress(self, progress: Progress) -> None:
        pass

    def finish(self, result: Finished) -> None:
        self._on_end(None)

    def fail(self, error: Exception) -> None:
        self._on_end(error)


class InProcessEngineError(RuntimeError):
    """A request of the in-process engine failed."""


def run_closed_loop(
    *,
    config: PipelineConfig,
    tokenizers: Any,
    networks: EngineNetworks,
    limits: EngineLimits,
    request: RequestSpec,
    concurrency: int,
    requests: int,
    warmup_requests: int = 0,
    description: str = "in-process engine",
    show_progress: bool = True,
) -> InProcessRun:
    """Runs ``warmup_requests`` then times ``requests`` of ``request``, ``concurrency`` in the engine at once.

    Each submitted request is parsed and tokenized from its raw inputs, as the pipeline model does. The timed
    run starts with ``concurrency`` requests submitted together and ends when the last one finishes.

    Raises:
        InProcessEngineError: a request failed.
        ValueError: ``concurrency`` or ``requests`` below 1.
    """
    if concurrency < 1 or requests < 1:
        raise ValueError(f"concurrency and requests must be at least 1, got {concurrency} and {requests}")
    counting = CountingNetworks(networks)
    engine = DiffusionEngine(config=config, networks=counting, limits=limits)
    raw = raw_inputs(request)
    if warmup_requests:
        _closed_loop(engine, raw, config, tokenizers, concurrency=concurrency, requests=warmup_requests, progress=None)
    counting.unet_calls = counting.unet_rows = 0
    with tqdm(total=requests, desc=description, unit="image", disable=not show_progress) as progress:
        started = time.perf_counter()
        _closed_loop(engine, raw, config, tokenizers, concurrency=concurrency, requests=requests, progress=progress)
        elapsed_s = time.perf_counter() - started
    return InProcessRun(
        concurrency=concurrency,
        requests=requests,
        elapsed_s=elapsed_s,
        unet_calls=counting.unet_calls,
        unet_rows=counting.unet_rows,
    )


def _closed_loop(
    engine: DiffusionEngine,
    raw: dict[str, np.ndarray],
    config: PipelineConfig,
    tokenizers: Any,
    *,
    concurrency: int,
    requests: int,
    progress: tqdm | None,
) -> None:
    sent = 0
    ended: list[Exception | None] = []

    def submit() -> None:
        nonlocal sent
        parsed = parse_request(raw, config=config, tokenizers=tokenizers)
        engine.submit(EngineRequest(key=sent, images=parsed.images, sink=_Sink(ended.append)))
        sent += 1

    for _ in range(min(concurrency, requests)):
        submit()
    done = 0
    while done < requests:
        engine.step()
        while ended:
            error = ended.pop()
            if error is not None:
                raise InProcessEngineError(f"an in-process engine request failed: {error!r}") from error
            done += 1
            if progress is not None:
                progress.update()
            if sent < requests:
                submit()
        if done < requests and engine.counts() == (0, 0):
            raise InProcessEngineError(f"the engine went idle after {done} of {requests} requests")
