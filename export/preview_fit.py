"""Fits a model's latent-to-RGB preview projection at export, from a few samples of the model itself.

The source pipeline draws a handful of seeded images with its own scheduler (few steps, small size, the
served default guidance), the VAE decodes their final latents, and
:func:`sdtriton.serving.preview.fit_latent_rgb_projection` fits the map; the serving loop then shows
``latents_to_preview`` of its latents without calling the VAE.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    FluxPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from sdtriton.interface import DEFAULT_GUIDANCE_SCALE
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.preview import fit_latent_rgb_projection, preview_mean_abs_error

logger = logging.getLogger(__name__)

# Plain words any SD model knows, eight different colours in all (the 'shapes' palette, each once). Four
# samples keep export under a second for the small models; on 'shapes', eight did no better on held-out
# images (34 vs 31 / 255 mean error) and took twice as long.
PREVIEW_FIT_PROMPTS: tuple[str, ...] = (
    "a red circle on a blue background",
    "a yellow square on a black background",
    "a green triangle on a white background",
    "a purple star on an orange background",
)
PREVIEW_FIT_SEED = 0
PREVIEW_FIT_STEPS = 8
# Models whose default size is above this are sampled at their minimum size instead, to keep export fast.
MAX_DEFAULT_FIT_SIZE_PX = 128
# ... but never below this: FLUX's size step (VAE factor x 2) can be a few pixels, too few latent pixels to fit
# the C + 1 unknowns per colour from.
MIN_FIT_SIZE_PX = 32


@dataclass(frozen=True)
class PreviewFit:
    """A fitted projection and how well it reproduces the samples it was fitted on."""

    projection: np.ndarray  # [C + 1, 3] float32, last row the bias
    mean_abs_error: float  # 0..255 units, against the decoded images area-downsampled to latent size
    num_samples: int
    height: int
    width: int


def preview_fit_size(config: PipelineConfig) -> tuple[int, int]:
    """(height, width) to sample at: the default size when small, else the model's minimum size (at least
    :data:`MIN_FIT_SIZE_PX`, in its size steps)."""
    if max(config.default_height, config.default_width) > MAX_DEFAULT_FIT_SIZE_PX:
        side = max(config.min_size, -(-MIN_FIT_SIZE_PX // config.size_multiple) * config.size_multiple)
        return side, side
    return config.default_height, config.default_width


def sample_final_latents(
    pipeline: StableDiffusionPipeline,
    *,
    prompts: Sequence[str],
    seed: int,
    height: int,
    width: int,
    num_inference_steps: int = PREVIEW_FIT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
    """Final latents of the pipeline's own samples and their decoded images.

    Args:
        pipeline: A diffusers Stable Diffusion pipeline (its own scheduler is used).
        prompts: One sample per prompt, drawn in one batch.
        seed: Seed of the CPU ``torch.Generator`` that draws the initial noise.
        height: Image height in pixels.
        width: Image width in pixels.
        num_inference_steps: Denoising steps.
        guidance_scale: Classifier-free guidance scale.

    Returns:
        (latents [N, C, h, w] as the loop holds them, images [N, 3, H, W] in -1..1), both float32 numpy.
    """
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    inputs = {}
    if isinstance(pipeline, StableDiffusionInpaintPipeline | StableDiffusionXLInpaintPipeline):
        # An inpainting model draws only with an image and a mask: a blank one, repainted whole from noise.
        inputs = {
            "image": Image.new("RGB", (width, height)),
            "mask_image": Image.new("L", (width, height), 255),
            "strength": 1.0,
        }
    latents = pipeline(
        prompt=list(prompts),
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="latent",
        **inputs,
    ).images
    if isinstance(pipeline, FluxPipeline):
        # FLUX's loop holds them packed; the preview projects them unpacked, as the pipeline decodes them.
        latents = FluxPipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor)
    with torch.no_grad():
        # As the pipeline decodes them: SD 3's and FLUX's VAE shift latents (shift_factor), SD's and SDXL's have none.
        shift = getattr(pipeline.vae.config, "shift_factor", None) or 0.0
        images = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor + shift, return_dict=False)[0]
    return latents.float().cpu().numpy(), images.float().cpu().numpy()


def fit_preview_projection(
    pipeline: StableDiffusionPipeline,
    config: PipelineConfig,
    *,
    prompts: Sequence[str] = PREVIEW_FIT_PROMPTS,
    seed: int = PREVIEW_FIT_SEED,
    num_inference_steps: int = PREVIEW_FIT_STEPS,
) -> PreviewFit:
    """Samples the pipeline at :func:`preview_fit_size` and fits the latent-to-RGB preview projection.

    Args:
        pipeline: The source pipeline being exported.
        config: Its pipeline config (sizes).
        prompts: Prompts of the samples, one each.
        seed: Seed of the samples' initial noise.
        num_inference_steps: Denoising steps per sample.

    Returns:
        The projection and its mean absolute error on the samples, in 0..255 units.
    """
    height, width = preview_fit_size(config)
    latents, images = sample_final_latents(
        pipeline, prompts=prompts, seed=seed, height=height, width=width, num_inference_steps=num_inference_steps
    )
    projection = fit_latent_rgb_projection(latents, images)
    error = preview_mean_abs_error(latents, images, projection)
    logger.debug(
        "preview projection fitted on %d samples at %dx%d: mean |preview - image| = %.2f / 255",
        len(prompts),
        height,
        width,
        error,
    )
    return PreviewFit(projection=projection, mean_abs_error=error, num_samples=len(prompts), height=height, width=width)
