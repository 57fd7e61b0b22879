"""The txt2img pipeline of diffusers' ``StableDiffusionPipeline``, with its networks behind an interface.

The numbered steps follow ``StableDiffusionPipeline.__call__`` so that the same seed and parameters give
the same image: latents drawn by ``randn_tensor`` from ``torch.Generator("cpu").manual_seed(seed)``, the
same generator handed to the scheduler's ``step``, classifier-free guidance as one batch of
[negative, prompt], and the same post-processing to uint8. The networks are reached through
:class:`DiffusionComponents`: BLS calls inside Triton, ONNX Runtime sessions in the baselines.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from sdtriton.pipeline_config import PipelineConfig
from sdtriton.schedulers import build_scheduler
from sdtriton.serving.errors import RequestCancelledError
from sdtriton.serving.validation import GenerationParams

_DEVICE = torch.device("cpu")
# StableDiffusionPipeline's default eta: only DDIM reads it.
_ETA = 0.0


class DiffusionComponents(Protocol):
    """The three networks of the pipeline, called with numpy arrays."""

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """[B, T] int64 token ids -> [B, T, D] float32 last hidden state."""

    def predict_noise(self, sample: np.ndarray, timestep: np.ndarray, encoder_hidden_states: np.ndarray) -> np.ndarray:
        """[B, C, h, w] latents, [B] timesteps, [B, T, D] text states -> [B, C, h, w] noise prediction."""

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """[B, C, h, w] scaled latents -> [B, 3, H, W] image in -1..1."""


def _extra_step_kwargs(scheduler: object, generator: torch.Generator) -> dict[str, object]:
    # As StableDiffusionPipeline.prepare_extra_step_kwargs: pass what the scheduler's step accepts.
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, object] = {}
    if "eta" in accepted:
        kwargs["eta"] = _ETA
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def to_uint8_image(decoded: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in -1..1 -> [H, W, 3] uint8, as diffusers' VaeImageProcessor.postprocess + numpy_to_pil."""
    image = (decoded / 2 + 0.5).clamp(0, 1)
    pixels = image.permute(0, 2, 3, 1).float().numpy()[0]
    return (pixels * 255).round().astype("uint8")


def generate_image(
    *,
    input_ids: np.ndarray,
    negative_input_ids: np.ndarray,
    params: GenerationParams,
    config: PipelineConfig,
    components: DiffusionComponents,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> np.ndarray:
    """Generates one image; returns [H, W, 3] uint8.

    Args:
        input_ids: [T] token ids of the prompt, padded and truncated as diffusers does.
        negative_input_ids: [T] token ids of the negative prompt ("" when none was given).
        params: validated generation parameters.
        config: the exported model's geometry and scheduler config.
        components: the three networks.
        is_cancelled: polled before every denoising step.
    """
    do_guidance = params.uses_classifier_free_guidance

    # 1. Encode the prompt; with guidance, [negative, prompt] in one batch.
    ids = np.stack([negative_input_ids, input_ids]) if do_guidance else input_ids[None]
    prompt_embeds = components.encode_text(ids.astype(np.int64, copy=False))

    # 2. Prepare timesteps on a scheduler of this request's own.
    scheduler = build_scheduler(config.scheduler_config, params.scheduler, config.scheduler_overrides)
    scheduler.set_timesteps(params.num_inference_steps, device=_DEVICE)

    # 3. Prepare latents exactly as diffusers draws them.
    generator = torch.Generator("cpu").manual_seed(params.seed)
    shape = config.latent_shape(height=params.height, width=params.width)
    latents = randn_tensor(shape, generator=generator, device=_DEVICE, dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma
    extra_step_kwargs = _extra_step_kwargs(scheduler, generator)

    # 4. Denoise.
    for t in scheduler.timesteps:
        if is_cancelled():
            raise RequestCancelledError
        model_input = torch.cat([latents] * 2) if do_guidance else latents
        model_input = scheduler.scale_model_input(model_input, t)
        timestep = np.full((model_input.shape[0],), float(t), dtype=np.float32)
        noise_pred = torch.from_numpy(components.predict_noise(model_input.numpy(), timestep, prompt_embeds))
        if do_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + params.guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

    # 5. Decode and convert to uint8.
    decoded = components.decode_latents((latents / config.vae_scaling_factor).numpy())
    return to_uint8_image(torch.from_numpy(decoded))
