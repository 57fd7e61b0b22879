"""The paths a request can take, timed on the same weights and request: (a) diffusers in-process; (b) the plain loop,
the serving code's own loop over ONNX Runtime sessions of the served files, no Triton: the floor of what serving can
cost; (c) Triton through the client. (b) and (c) also run at two step counts: the difference of their per-step
slopes is what one BLS UNet call costs, free of every fixed cost.

The engine profile also drives the engine in this process (:func:`run_closed_loop`), with the served repository's
limits, so that its UNet calls batch as the server's do; with ``zero_time_unet`` the UNet answers zeros at once.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from sdtriton import interface
from sdtriton.perf.model import DIFFUSERS, IN_PROCESS, ONNX_LOOP, Load, NetworkTimes, Outcome, RequestRecord, StepSlope
from sdtriton.perf.profiles import BaselineSpec
from sdtriton.perf.workload import RequestSpec, raw_inputs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from sdtriton.client import StableDiffusionClient
    from sdtriton.pipeline_config import PipelineConfig
    from sdtriton.serving.denoise import DiffusionComponents
    from sdtriton.serving.engine import EngineLimits
    from sdtriton.serving.networks import OnnxRuntimeComponents

logger = logging.getLogger(__name__)

# ``sdtriton.export`` writes version 1 only.
_MODEL_VERSION = "1"

Runner = Callable[[RequestSpec], Callable[[], np.ndarray]]


def in_turns_ms(calls: Sequence[Callable[[], object]], *, runs: int) -> list[list[float]]:
    """Each call's times (ms) over ``runs`` rounds of every call in turn, so a drifting background load hits all."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, call_times in zip(calls, times, strict=True):
            started = time.perf_counter()
            call()
            call_times.append((time.perf_counter() - started) * 1000.0)
    return times


def timed_runs(run: Callable[[], np.ndarray], *, path: str, steps: int, runs: int, warmup_runs: int = 0):
    """``runs`` timed runs after ``warmup_runs``: their timing and the last image."""
    for _ in range(warmup_runs):
        run()
    images: list[np.ndarray] = []
    (latencies,) = in_turns_ms([lambda: images.append(run())], runs=runs)
    timing = Load.timed(path, steps, latencies)
    logger.info("%s, %d steps: median %.1f ms over %d runs", path, steps, timing.median_ms, runs)
    return timing, images[-1]


def time_slope(runner: Runner, request: RequestSpec, *, path: str, steps: tuple[int, int], runs: int) -> StepSlope:
    """Runs at the two step counts in turns (low, high, low, ...)."""
    latencies = in_turns_ms([runner(request.with_steps(count)) for count in steps], runs=runs)
    slope = StepSlope(*(Load.timed(path, count, ms) for count, ms in zip(steps, latencies, strict=True)))
    logger.info("%s: %.3f ms/step between %d and %d steps (medians of %d)", path, slope.ms_per_step, *steps, runs)
    return slope


def time_diffusers(model_dir: Path, request: RequestSpec, *, runs: int, warmup_runs: int, gpu: bool = False):
    """(a) ``StableDiffusionPipeline``, the request's scheduler swapped in; with ``gpu`` on ``cuda`` (fp32, as
    exported), latents still drawn on the CPU generator as the Triton pipeline draws them."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdtriton.schedulers import build_scheduler, load_scheduler_overrides

    pipeline = StableDiffusionPipeline.from_pretrained(
        model_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    ).to("cuda" if gpu else "cpu")
    pipeline.set_progress_bar_config(disable=True)
    overrides = load_scheduler_overrides(model_dir)
    pipeline.scheduler = build_scheduler(pipeline.scheduler.config, request.scheduler, overrides)
    options = {name: getattr(request, name) for name in ("negative_prompt", "num_inference_steps", "guidance_scale")}

    def run() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(request.seed)
        output = pipeline(request.prompt, **options, width=request.width, height=request.height, generator=generator)
        return np.asarray(output.images[0])

    return timed_runs(run, path=DIFFUSERS, steps=request.num_inference_steps, runs=runs, warmup_runs=warmup_runs)


class InstrumentedNetworks:
    """Times every network call by name (``encode_text``, ``encode_image``, ``predict_noise``, ``decode_latents``) and
    counts the UNet's batch rows; ``zero_time_unet``: the UNet answers zeros at once (an infinitely fast
    accelerator)."""

    def __init__(self, inner: Any, *, zero_time_unet: bool = False) -> None:
        self.inner = inner
        self.device = inner.device
        self.zero_time_unet = zero_time_unet
        self.calls_ms: defaultdict[str, list[float]] = defaultdict(list)
        self.unet_rows = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self.inner, name)

        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            output = call(*args)
            self.calls_ms[name].append((time.perf_counter() - started) * 1000.0)
            return output

        return timed

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # The denoiser's first input is its latents: the UNet's ``sample``, a transformer's ``hidden_states``.
        sample = next(iter(inputs.values()))
        self.unet_rows += int(sample.shape[0])
        if self.zero_time_unet:
            import torch

            self.calls_ms["predict_noise"].append(0.0)
            return torch.zeros_like(sample)
        return self.__getattr__("predict_noise")(unet, inputs)


@dataclass(frozen=True)
class ServedFiles:
    """An exported repository's tokenizers, pipeline config and ONNX Runtime sessions, as the pipeline model loads
    them (CUDA first with ``gpu``, as ``export --gpu`` configures the served models)."""

    tokenizers: dict[str, PreTrainedTokenizerBase]
    config: PipelineConfig
    networks: OnnxRuntimeComponents

    @classmethod
    def load(cls, repository: Path, *, gpu: bool = False) -> ServedFiles:
        from sdtriton.pipeline_config import PipelineConfig
        from sdtriton.serving.networks import OnnxRuntimeComponents
        from sdtriton.serving.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER
        from sdtriton.serving.text import load_tokenizers

        pipeline_dir = repository / interface.PIPELINE_MODEL_NAME / _MODEL_VERSION
        providers = (CUDA_PROVIDER, CPU_PROVIDER) if gpu else (CPU_PROVIDER,)
        config = PipelineConfig.load(pipeline_dir)
        networks = OnnxRuntimeComponents.from_model_repository(repository, config, providers=providers)
        return cls(tokenizers=load_tokenizers(pipeline_dir, config), config=config, networks=networks)

    def plain_loop(self, networks: DiffusionComponents | None = None) -> Runner:
        """``runner(spec)()`` tokenizes, validates and generates one image as the pipeline does, alone."""
        from sdtriton.serving.denoise import generate_image
        from sdtriton.serving.requests import parse_request

        def runner(spec: RequestSpec) -> Callable[[], np.ndarray]:
            def run() -> np.ndarray:
                (image,) = parse_request(raw_inputs(spec), config=self.config, tokenizers=self.tokenizers).images
                return generate_image(image=image, config=self.config, components=networks or self.networks)

            return run

        return runner


@dataclass(frozen=True)
class OnnxLoopResult:
    timing: Load
    networks: NetworkTimes
    slope: StepSlope
    unet_calls_per_step: float
    image: np.ndarray


def time_onnx_loop(repository: Path, request: RequestSpec, spec: BaselineSpec, *, gpu: bool = False) -> OnnxLoopResult:
    """(b) The plain loop, each network call timed; the slope runs follow on warm sessions, no warm-up of their own."""
    served, runs, (low, high) = ServedFiles.load(repository, gpu=gpu), spec.runs, spec.slope_steps
    for _ in range(spec.warmup_runs):
        served.plain_loop()(request)()
    networks = InstrumentedNetworks(served.networks)
    plain_loop = served.plain_loop(networks)
    timing, image = timed_runs(plain_loop(request), path=ONNX_LOOP, steps=request.num_inference_steps, runs=runs)
    calls = networks.calls_ms
    times = NetworkTimes(
        encode_text_ms=sum(calls["encode_text"]) / runs,
        unet_ms_per_call=statistics.mean(calls["predict_noise"]),
        unet_calls_per_request=len(calls["predict_noise"]) // runs,
        decode_ms=sum(calls["decode_latents"]) / runs,
    )
    counting = {steps: InstrumentedNetworks(served.networks) for steps in (low, high)}

    def runner(one: RequestSpec) -> Callable[[], np.ndarray]:  # on its step count's own networks: its UNet calls
        return served.plain_loop(counting[one.num_inference_steps])(one)

    slope = time_slope(runner, request, path=ONNX_LOOP, steps=spec.slope_steps, runs=spec.slope_runs)
    low_calls, high_calls = (len(counting[steps].calls_ms["predict_noise"]) / spec.slope_runs for steps in (low, high))
    return OnnxLoopResult(timing, times, slope, (high_calls - low_calls) / (high - low), image)


def client_runner(client: StableDiffusionClient) -> Runner:
    """(c) Triton through ``client``: ``runner(spec)()`` sends one request and waits for its image."""
    return lambda spec: lambda: np.asarray(client.generate(spec.prompt, **spec.client_parameters()).image)


class InProcessEngineError(RuntimeError):
    """A request of the in-process engine failed."""


class _Sink:
    """Notes when and how its request ended: ``(key, finished at, error or None)``."""

    def __init__(self, key: int, ended: list[tuple[int, float, Exception | None]]) -> None:
        self.key, self.ended = key, ended

    def progress(self, progress: object) -> None:
        pass

    def finish(self, result: object) -> None:
        self.fail(None)

    def fail(self, error: Exception | None) -> None:
        self.ended.append((self.key, time.perf_counter(), error))


def run_closed_loop(
    served: ServedFiles,
    limits: EngineLimits,
    mix: Sequence[RequestSpec],
    *,
    concurrency: int,
    requests: int,
    zero_time_unet: bool = False,
    description: str = "in-process engine",
    show_progress: bool = True,
) -> Load:
    """Times ``requests`` of ``mix`` (cycled; several: each recorded as its kind), ``concurrency`` in the engine at once
    over ``served``'s networks, each parsed and tokenized from its raw inputs as the pipeline model does: from the
    first ``concurrency`` submitted together to the last one finished.

    Raises:
        InProcessEngineError: a request failed, or the engine went idle before the last one.
    """
    from sdtriton.serving.engine import DiffusionEngine, EngineRequest
    from sdtriton.serving.requests import parse_request

    config, tokenizers, raws = served.config, served.tokenizers, [raw_inputs(request) for request in mix]
    kinds = [IN_PROCESS] if len(mix) == 1 else [request.kind for request in mix]
    counting = InstrumentedNetworks(served.networks, zero_time_unet=zero_time_unet)
    engine = DiffusionEngine(config=config, networks=counting, limits=limits)
    ended: list[tuple[int, float, Exception | None]] = []
    sent_at: list[float] = []
    records: list[RequestRecord] = []
    with tqdm(total=requests, desc=description, unit="image", disable=not show_progress) as progress:
        started = time.perf_counter()
        while len(records) < requests:
            while len(sent_at) < min(requests, len(records) + concurrency):
                images = parse_request(raws[len(sent_at) % len(mix)], config=config, tokenizers=tokenizers).images
                engine.submit(EngineRequest(key=len(sent_at), images=images, sink=_Sink(len(sent_at), ended)))
                sent_at.append(time.perf_counter())
            if engine.counts() == (0, 0) and not ended:
                raise InProcessEngineError(f"the engine went idle after {len(records)} of {requests} requests")
            engine.step()
            for key, finished, error in ended:
                if error is not None:
                    raise InProcessEngineError(f"an in-process engine request failed: {error!r}") from error
                latency_ms = (finished - sent_at[key]) * 1000.0
                kind = kinds[key % len(mix)]
                records.append(RequestRecord(IN_PROCESS, kind, key, sent_at[key] - sent_at[0], latency_ms, Outcome.OK))
            progress.update(len(ended))
            ended.clear()
        elapsed_s = time.perf_counter() - started
    unet_calls = len(counting.calls_ms["predict_noise"])
    steps = mix[0].num_inference_steps
    return Load(IN_PROCESS, concurrency, tuple(records), elapsed_s, steps, unet_calls, counting.unet_rows)
