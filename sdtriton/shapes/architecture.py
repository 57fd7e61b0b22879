"""The ``shapes`` model's component configs: the SD architecture, sized for a 64x64 world and a 2-core CPU."""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdtriton.shapes.world import IMAGE_SIZE
from sdtriton.tiny import CLIP_TOKEN_CONFIG, SD15_SCHEDULER_CONFIG

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


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def new_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))


def new_scheduler() -> DPMSolverMultistepScheduler:
    """The model's own scheduler: DPM-Solver++ 2M over SD 1.5's training schedule."""
    return DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER_CONFIG)
