"""The three paths timed at concurrency 1 on the same weights and request.

(a) diffusers' ``StableDiffusionPipeline`` in-process; (b) the served ONNX files driven by the serving code's
own loop (:func:`sdtriton.serving.denoise.generate_image` over ONNX Runtime sessions), no Triton: the floor
of what serving can cost; (c) the Triton path through the client. (b) also times each network call, and
(b) and (c) are also run at two step counts: the difference of their per-step slopes is what one BLS UNet call
costs, free of every fixed cost (model load, tokenizer, VAE, transport).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdtriton.perf.run import NetworkTimes, PathTiming, StepSlope
from sdtriton.perf.workload import RequestSpec, raw_inputs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from sdtriton.pipeline_config import PipelineConfig
    from sdtriton.serving.denoise import DiffusionComponents
    from sdtriton.serving.networks import OnnxRuntimeComponents

logger = logging.getLogger(__name__)

DIFFUSERS = "diffusers"
ONNX_LOOP = "onnx_loop"
TRITON = "triton"


def time_slope(
    run_with_steps: Callable[[int], Callable[[], object]], *, path: str, steps: tuple[int, int], runs: int
) -> StepSlope:
    """Runs at the two step counts in turns (low, high, low, ...), so a drifting background load hits both."""
    latencies: dict[int, list[float]] = {steps[0]: [], steps[1]: []}
    for _ in range(runs):
        for count in steps:
            run = run_with_steps(count)
            started = time.perf_counter()
            run()
            latencies[count].append((time.perf_counter() - started) * 1000.0)
    low, high = (
        PathTiming(path=path, num_inference_steps=count, latencies_ms=tuple(latencies[count])) for count in steps
    )
    slope = StepSlope(low=low, high=high)
    logger.info(
        "%s: %d steps %.1f ms, %d steps %.1f ms (medians of %d): %.3f ms/step",
        path,
        low.num_inference_steps,
        low.median_ms,
        high.num_inference_steps,
        high.median_ms,
        runs,
        slope.ms_per_step,
    )
    return slope


@dataclass(frozen=True)
class OnnxLoopResult:
    timing: PathTiming
    networks: NetworkTimes
    slope: StepSlope
    unet_calls_per_step: float
    image: np.ndarray


def _timed_runs(
    run: Callable[[], np.ndarray], *, path: str, steps: int, runs: int, warmup_runs: int
) -> tuple[PathTiming, np.ndarray]:
    image = np.zeros((0,), np.uint8)
    for _ in range(warmup_runs):
        image = run()
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        image = run()
        latencies.append((time.perf_counter() - started) * 1000.0)
    timing = PathTiming(path=path, num_inference_steps=steps, latencies_ms=tuple(latencies))
    logger.info(
        "%s, %d steps: median %.1f ms (min %.1f, max %.1f) over %d runs",
        path,
        steps,
        timing.median_ms,
        timing.min_ms,
        timing.max_ms,
        runs,
    )
    return timing, image


def time_diffusers(
    model_dir: Path, request: RequestSpec, *, runs: int, warmup_runs: int, gpu: bool = False
) -> tuple[PathTiming, np.ndarray]:
    """(a) ``StableDiffusionPipeline`` in this process, the request's scheduler swapped in as diffusers documents.

    With ``gpu``, the pipeline runs on ``cuda`` (fp32, as exported); latents are still drawn on the CPU
    generator, as the Triton pipeline draws them.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    from sdtriton.schedulers import build_scheduler, load_scheduler_overrides

    pipeline = StableDiffusionPipeline.from_pretrained(
        model_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    if gpu:
        pipeline = pipeline.to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    overrides = load_scheduler_overrides(model_dir)
    pipeline.scheduler = build_scheduler(pipeline.scheduler.config, request.scheduler, overrides)

    def run() -> np.ndarray:
        output = pipeline(
            request.prompt,
            negative_prompt=request.negative_prompt,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            width=request.width,
            height=request.height,
            generator=torch.Generator("cpu").manual_seed(request.seed),
        )
        return np.asarray(output.images[0])

    return _timed_runs(run, path=DIFFUSERS, steps=request.num_inference_steps, runs=runs, warmup_runs=warmup_runs)


class _TimedComponents:
    """A :class:`~sdtriton.serving.denoise.DiffusionComponents` that times each network call."""

    def __init__(self, inner: DiffusionComponents) -> None:
        self.inner = inner
        self.device = inner.device
        self.calls: dict[str, list[float]] = {"encode_text": [], "predict_noise": [], "decode_latents": []}

    def _timed(self, name: str, *args: Any) -> Any:
        started = time.perf_counter()
        output = getattr(self.inner, name)(*args)
        self.calls[name].append((time.perf_counter() - started) * 1000.0)
        return output

    def encode_text(self, encoder: str, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._timed("encode_text", encoder, input_ids)

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._timed("predict_noise", unet, inputs)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._timed("decode_latents", latents)

    def reset(self) -> None:
        for values in self.calls.values():
            values.clear()


# The version folder of every exported model (``sdtriton.export`` writes version 1 only).
_MODEL_VERSION = "1"


@dataclass(frozen=True)
class ServedFiles:
    """An exported repository's tokenizers, pipeline config and ONNX Runtime sessions, as the server loads them."""

    tokenizers: dict[str, PreTrainedTokenizerBase]
    config: PipelineConfig
    networks: OnnxRuntimeComponents


def load_served_files(repository: Path, *, gpu: bool = False) -> ServedFiles:
    """Loads what the served engine runs on: the tokenizers in ``pipeline/1`` (the engine tokenizes), its config,
    and a session per ONNX file. With ``gpu``, the sessions use ONNX Runtime's CUDA provider first, as
    ``export --gpu`` configures the served models.
    """
    from sdtriton import interface
    from sdtriton.pipeline_config import PipelineConfig
    from sdtriton.serving.networks import OnnxRuntimeComponents
    from sdtriton.serving.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER
    from sdtriton.serving.text import load_tokenizers

    pipeline_dir = repository / interface.PIPELINE_MODEL_NAME / _MODEL_VERSION
    providers = (CUDA_PROVIDER, CPU_PROVIDER) if gpu else (CPU_PROVIDER,)
    config = PipelineConfig.load(pipeline_dir)
    return ServedFiles(
        tokenizers=load_tokenizers(pipeline_dir, config),
        config=config,
        networks=OnnxRuntimeComponents.from_model_repository(repository, config, providers=providers),
    )


def _plain_loop_runner(
    tokenizers: Mapping[str, PreTrainedTokenizerBase], config: PipelineConfig, components: DiffusionComponents
) -> Callable[[RequestSpec], Callable[[], np.ndarray]]:
    """``runner(spec)()`` tokenizes, validates and generates one image as the served engine does, one at a time."""
    from sdtriton.serving.denoise import generate_image
    from sdtriton.serving.requests import parse_request

    def runner(spec: RequestSpec) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            (image,) = parse_request(raw_inputs(spec), config=config, tokenizers=tokenizers).images
            return generate_image(image=image, config=config, components=components)

        return run

    return runner


def time_plain_loop(
    served: ServedFiles, request: RequestSpec, *, runs: int, warmup_runs: int
) -> tuple[PathTiming, np.ndarray]:
    """(b) alone: the plain loop's latency on one request, one image at a time (no network timers, no slopes)."""
    run = _plain_loop_runner(served.tokenizers, served.config, served.networks)(request)
    return _timed_runs(run, path=ONNX_LOOP, steps=request.num_inference_steps, runs=runs, warmup_runs=warmup_runs)


def time_onnx_loop(
    repository: Path,
    request: RequestSpec,
    *,
    runs: int,
    warmup_runs: int,
    slope_steps: tuple[int, int],
    slope_runs: int,
    gpu: bool = False,
) -> OnnxLoopResult:
    """(b) The served ONNX files in ONNX Runtime, driven by the serving code's loop in this process.

    Each run tokenizes, validates and generates as the Triton pipeline does, with the same session options.
    The slope runs follow the timed ones on warm sessions, without warm-up of their own. With ``gpu``, the
    sessions use ONNX Runtime's CUDA provider first, as ``export --gpu`` configures the served models.
    """
    served = load_served_files(repository, gpu=gpu)
    components = _TimedComponents(served.networks)
    runner = _plain_loop_runner(served.tokenizers, served.config, components)

    def timed(spec: RequestSpec, *, runs: int, warmup_runs: int) -> tuple[PathTiming, np.ndarray]:
        return _timed_runs(
            runner(spec), path=ONNX_LOOP, steps=spec.num_inference_steps, runs=runs, warmup_runs=warmup_runs
        )

    warm_up = runner(request)
    for _ in range(warmup_runs):
        warm_up()
    components.reset()
    timing, image = timed(request, runs=runs, warmup_runs=0)
    calls = components.calls
    networks = NetworkTimes(
        encode_text_ms=sum(calls["encode_text"]) / runs,
        unet_ms_per_call=statistics.mean(calls["predict_noise"]),
        unet_calls_per_request=len(calls["predict_noise"]) // runs,
        decode_ms=sum(calls["decode_latents"]) / runs,
    )
    unet_calls: dict[int, int] = {}

    def counted(steps: int) -> Callable[[], np.ndarray]:
        run = runner(request.with_steps(steps))

        def run_and_count() -> np.ndarray:
            before = len(components.calls["predict_noise"])
            image = run()
            unet_calls[steps] = len(components.calls["predict_noise"]) - before
            return image

        return run_and_count

    slope = time_slope(counted, path=ONNX_LOOP, steps=slope_steps, runs=slope_runs)
    low_steps, high_steps = slope_steps
    calls_per_step = (unet_calls[high_steps] - unet_calls[low_steps]) / (high_steps - low_steps)
    return OnnxLoopResult(
        timing=timing,
        networks=networks,
        slope=slope,
        unet_calls_per_step=calls_per_step,
        image=image,
    )


class TritonPath:
    """(c) A running server (``grpc://host:port``), sent the request :class:`~sdtriton.client.StableDiffusionClient`
    sends (its own ``build_inputs``) through tritonclient's gRPC client, one at a time; images read as it reads them.
    """

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as triton

        from sdtriton.client import parse_url

        self._triton = triton
        self._client = triton.InferenceServerClient(parse_url(url).address)

    def runner(self, request: RequestSpec) -> Callable[[], np.ndarray]:
        from sdtriton import interface
        from sdtriton.client.client import build_inputs, read_result, requested_outputs

        inputs = build_inputs(
            self._triton,
            [request.prompt],
            **request.client_parameters(),
        )
        outputs = requested_outputs(self._triton)

        def run() -> np.ndarray:
            result = self._client.infer(interface.ENTRY_MODEL_NAME, inputs, outputs=outputs)
            return np.asarray(read_result(result).image)

        return run

    def time(self, request: RequestSpec, *, runs: int, warmup_runs: int) -> tuple[PathTiming, np.ndarray]:
        return _timed_runs(
            self.runner(request), path=TRITON, steps=request.num_inference_steps, runs=runs, warmup_runs=warmup_runs
        )

    def slope(self, request: RequestSpec, *, steps: tuple[int, int], runs: int) -> StepSlope:
        return time_slope(lambda count: self.runner(request.with_steps(count)), path=TRITON, steps=steps, runs=runs)

    def close(self) -> None:
        self._client.close()
