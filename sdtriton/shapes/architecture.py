"""The ``shapes`` model's component configs: the SD architecture, sized for a 64x64 world and a 2-core CPU."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from transformers import CLIPTextConfig, CLIPTextModel

from sdtriton.sd15 import SD15_SCHEDULER_CONFIG
from sdtriton.shapes.world import IMAGE_SIZE
from sdtriton.tiny import CLIP_TOKEN_CONFIG

TEXT_HIDDEN_SIZE = 64
VAE_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    # Three blocks: a scale factor of 4, latents of 4x16x16.
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 4,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 128),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TEXT_HIDDEN_SIZE,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **CLIP_TOKEN_CONFIG,
    "hidden_size": TEXT_HIDDEN_SIZE,
    "intermediate_size": 4 * TEXT_HIDDEN_SIZE,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": TEXT_HIDDEN_SIZE,
}


# The noise at the last training step, as diffusers' own ``rescale_betas_zero_snr`` leaves it (alpha_bar = 2^-24):
# small enough that no layout leaks through it, finite so that every scheduler's sigmas stay finite.
TERMINAL_ALPHA_BAR = 2.0**-24


def zero_terminal_snr_betas(config: dict[str, Any] = SD15_SCHEDULER_CONFIG) -> list[float]:
    """SD 1.5's betas rescaled to (almost) zero terminal SNR (Lin et al. 2023), as an explicit list.

    Only some diffusers schedulers take ``rescale_betas_zero_snr``; every one takes ``trained_betas``, so the
    schedule is written out and all eight schedulers a request may name sample the schedule the model learned.
    """
    betas = (
        torch.linspace(
            config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"], dtype=torch.float64
        )
        ** 2
    )
    alphas_cumprod = torch.cumprod(1.0 - rescale_zero_terminal_snr(betas), dim=0)
    alphas_cumprod[-1] = TERMINAL_ALPHA_BAR
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1.0 - alphas_cumprod / previous).tolist()


# The model's noise schedule and parametrisation. With SD 1.5's schedule (alpha_bar 0.0047 at t=999) a
# 16x16 latent keeps its layout visible through the noise, so an epsilon model learned to sharpen the blob
# it saw and never to draw the shape the caption names (measured: shape at chance). Zero terminal SNR
# removes the leak, v-prediction keeps the last step well posed, and "trailing" spacing starts sampling there.
SCHEDULER_CONFIG: dict[str, Any] = {
    **SD15_SCHEDULER_CONFIG,
    "trained_betas": zero_terminal_snr_betas(),
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}

# Settings of this model's own for some schedulers (written beside its scheduler config, applied by the served
# pipeline and the diffusers oracle alike). Started at t=999 (sigma 4096, then 40) Heun's trapezoid step and
# LMS's 4th-order extrapolation in sigma turn an O(1) change of the predicted image into ~50x that in the
# latents (measured: colour 12% and 38% on 16 prompts). "leading" starts at t=951 (sigma 42; signal 0.024, no
# layout leak), which mends Heun (colour 100%, shape 88%); LMS also needs the smaller first steps of Karras
# sigmas. PNDM's PLMS has no such setting: see tests/integration/test_shapes_adherence.py.
SCHEDULER_OVERRIDES: dict[str, dict[str, Any]] = {
    "heun": {"timestep_spacing": "leading"},
    "lms": {"timestep_spacing": "leading", "use_karras_sigmas": True},
}


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def new_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))


def new_scheduler() -> DPMSolverMultistepScheduler:
    """The model's own scheduler: DPM-Solver++ 2M over the model's training schedule."""
    return DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG)
