"""The diffusers oracle: what StableDiffusionPipeline draws for a seed and parameters."""

from __future__ import annotations

import numpy as np
import torch

from sdtriton.schedulers import build_scheduler, load_scheduler_overrides

# Images may differ by rounding of ONNX Runtime against torch, at most this much per pixel.
MAX_PIXEL_DIFFERENCE = 2


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
    original = pipeline.scheduler
    if scheduler is not None:
        overrides = load_scheduler_overrides(pipeline.name_or_path) if model_scheduler_settings else {}
        pipeline.scheduler = build_scheduler(original.config, scheduler, overrides)
    try:
        image = pipeline(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
    finally:
        pipeline.scheduler = original
    return np.asarray(image)


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
) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusionXLPipeline``; with ``refiner_fraction``, diffusers' base+refiner
    recipe: the base to ``denoising_end = 1 - fraction`` as latents, the refiner from ``denoising_start`` there,
    one generator passed to both, ``scheduler`` swapped into both with the base model's own scheduler settings."""
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
    try:
        if not refiner_fraction:
            image = base(prompt, width=width, height=height, **common).images[0]
        else:
            split = 1.0 - float(np.float32(refiner_fraction))
            latents = base(
                prompt, width=width, height=height, denoising_end=split, output_type="latent", **common
            ).images
            image = refiner(prompt, image=latents, denoising_start=split, **common).images[0]
    finally:
        for pipeline, original in zip(pipelines, originals, strict=True):
            pipeline.scheduler = original
    return np.asarray(image)


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
