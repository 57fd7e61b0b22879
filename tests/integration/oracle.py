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
