"""The diffusers oracle: what StableDiffusionPipeline (and its img2img and other families' pipelines) draws for a seed
and parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from sdtriton.schedulers import build_scheduler, load_scheduler_overrides

# Images may differ by rounding of ONNX Runtime against torch, at most this much per pixel.
MAX_PIXEL_DIFFERENCE = 2


class BaseNetworkSession:
    """An exported network's ONNX Runtime session run as the base network diffusers' pipeline holds: where it was
    exported with LoRA adapters, its rows are sent none (``lora_scales`` zeros)."""

    def __init__(self, path) -> None:
        import onnxruntime as ort

        from sdtriton.components import LORA_SCALES_INPUT

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._lora = {tensor.name: tensor for tensor in self.session.get_inputs()}.get(LORA_SCALES_INPUT)

    def run(self, outputs, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._lora is not None:
            rows = len(next(iter(inputs.values())))
            inputs = {**inputs, self._lora.name: np.zeros((rows, self._lora.shape[-1]), dtype=np.float32)}
        return self.session.run(outputs, inputs)


def diffusers_image(
    pipeline,
    prompt: str,
    *,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    model_scheduler_settings: bool = True,
) -> np.ndarray:
    """[H, W, 3] uint8 image of diffusers with ``scheduler`` swapped in as diffusers documents.

    The model's own settings for that scheduler (its ``sdtriton_scheduler_overrides.json``) apply on top of its
    scheduler config, as they do in the served pipeline, unless ``model_scheduler_settings`` is False.
    """
    return _pipeline_image(
        pipeline,
        prompt,
        seed=seed,
        scheduler=scheduler,
        model_scheduler_settings=model_scheduler_settings,
        negative_prompt=negative_prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
    )


def _pipeline_image(
    pipeline, prompt: str, *, seed: int, scheduler: str | None, model_scheduler_settings: bool = True, **call
) -> np.ndarray:
    """The first image of ``pipeline(prompt, **call)`` with the seed's generator and ``scheduler`` swapped in."""
    with _scheduler_swapped(pipeline, scheduler, model_scheduler_settings=model_scheduler_settings):
        image = pipeline(prompt, generator=torch.Generator("cpu").manual_seed(seed), **call).images[0]
    return np.asarray(image)


@contextlib.contextmanager
def _scheduler_swapped(pipeline, scheduler: str | None, *, model_scheduler_settings: bool = True) -> Iterator[None]:
    """``pipeline`` with the scheduler a request's key names, built from its own (and the model's settings for it)."""
    original = pipeline.scheduler
    if scheduler is not None:
        overrides = load_scheduler_overrides(pipeline.name_or_path) if model_scheduler_settings else {}
        pipeline.scheduler = build_scheduler(original.config, scheduler, overrides)
    try:
        yield
    finally:
        pipeline.scheduler = original


def img2img_diffusers_image(
    pipeline,
    prompt: str,
    *,
    image: Image.Image,
    strength: float,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    scheduler: str | None = None,
) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusionImg2ImgPipeline`` (``pipeline``) from ``image``, with ``scheduler``
    swapped in as :func:`diffusers_image` does."""
    return _pipeline_image(
        pipeline,
        prompt,
        seed=seed,
        scheduler=scheduler,
        image=image,
        strength=strength,
        negative_prompt=negative_prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )


def start_picture(width: int, height: int, variant: int = 0) -> Image.Image:
    """A smooth picture (a gradient and a disc, not noise) to start image-to-image from; ``variant`` tints it."""
    rows, columns = np.mgrid[0:height, 0:width]
    disc = (rows - height / 2) ** 2 + (columns - width / 3) ** 2 < (height / 4) ** 2
    blue = np.full_like(rows, 60 + 40 * variant)
    pixels = np.stack([columns * 255 // width, rows * 255 // height, blue], axis=-1)
    pixels[disc] = (250, 220, 30)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return int(np.max(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def sdxl_diffusers_image(
    base,
    prompt: str,
    *,
    seed: int,
    num_inference_steps: int,
    refiner=None,
    refiner_fraction: float = 0.0,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    image: Image.Image | None = None,
    strength: float | None = None,
) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusionXLPipeline``; with ``refiner_fraction``, diffusers' base+refiner
    recipe: the base to ``denoising_end = 1 - fraction`` as latents, the refiner from ``denoising_start`` there,
    one generator passed to both, ``scheduler`` swapped into both with the base model's own scheduler settings.
    With ``image``, the base is ``StableDiffusionXLImg2ImgPipeline`` on the base's modules (image-to-image from it
    at ``strength``), the rest the same."""
    pipelines = [base] if refiner is None else [base, refiner]
    originals = [pipeline.scheduler for pipeline in pipelines]
    if scheduler is not None:
        overrides = load_scheduler_overrides(base.name_or_path)
        for pipeline in pipelines:
            pipeline.scheduler = build_scheduler(pipeline.scheduler.config, scheduler, overrides)
    generator = torch.Generator("cpu").manual_seed(seed)
    common = {
        "negative_prompt": negative_prompt,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "generator": generator,
    }
    first, start = base, {"width": width, "height": height}
    if image is not None:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        first, start = StableDiffusionXLImg2ImgPipeline.from_pipe(base), {"image": image, "strength": strength}
    try:
        if not refiner_fraction:
            result = first(prompt, **start, **common).images[0]
        else:
            split = 1.0 - float(np.float32(refiner_fraction))
            latents = first(prompt, **start, denoising_end=split, output_type="latent", **common).images
            result = refiner(prompt, image=latents, denoising_start=split, **common).images[0]
    finally:
        for pipeline, original in zip(pipelines, originals, strict=True):
            pipeline.scheduler = original
    return np.asarray(result)


def sd3_diffusers_scheduler(pipeline, scheduler: str | None):
    """The scheduler a request's key names, built from the SD 3 pipeline's own config as diffusers documents it:
    the multistep solvers on flow sigmas with the model's shift (written out here, not taken from sdtriton)."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        FlowMatchHeunDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    config = pipeline.scheduler.config
    flow_sigmas = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": config.shift}
    built = {
        None: lambda: pipeline.scheduler,
        "flow_euler": lambda: FlowMatchEulerDiscreteScheduler.from_config(config),
        "flow_heun": lambda: FlowMatchHeunDiscreteScheduler.from_config(config),
        "dpmpp_2m": lambda: DPMSolverMultistepScheduler.from_config(config, **flow_sigmas),
        "unipc": lambda: UniPCMultistepScheduler.from_config(config, **flow_sigmas),
    }
    return built[scheduler]()


def flow_diffusers_image(pipeline, prompt: str, *, seed: int, scheduler: str | None = None, **call) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusion3Pipeline`` or ``FluxPipeline`` with the scheduler a request's key
    names swapped in (:func:`sd3_diffusers_scheduler`); ``call``'s arguments go to the pipeline's ``__call__``, whose
    own defaults apply where one is None (guidance, size, negative prompt)."""
    original = pipeline.scheduler
    pipeline.scheduler = sd3_diffusers_scheduler(pipeline, scheduler)
    given = {name: value for name, value in call.items() if value is not None}
    try:
        image = pipeline(prompt, generator=torch.Generator("cpu").manual_seed(seed), **given).images[0]
    finally:
        pipeline.scheduler = original
    return np.asarray(image)
