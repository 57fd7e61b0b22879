"""``sdtriton make-tiny``: a seeded, byte-for-byte reproducible Stable Diffusion pipeline with random weights.

It has the full SD architecture (CLIP text encoder with the real CLIP tokenizer, a cross-attention UNet,
a KL autoencoder, the SD 1.5 scheduler) at a size that runs in milliseconds on a CPU. Random weights draw
noise, but noise is exactly what parity with diffusers needs: every weight and every scheduler step
shows up in the pixels. The ``sd15`` profile has the real SD 1.5 shapes (about 4 GB in fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdtriton.tokenizer_files import CLIP_MODEL_MAX_LENGTH, CLIP_VOCAB_SIZE, build_clip_tokenizer

logger = logging.getLogger(__name__)

# Stable Diffusion 1.5's own scheduler config.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


@dataclass(frozen=True)
class TinyProfile:
    """Component configs of one generated pipeline."""

    text_encoder: dict[str, Any]
    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD15_SCHEDULER_CONFIG))


# CLIP text-encoder settings every model made here shares: the real CLIP vocabulary and special tokens.
CLIP_TOKEN_CONFIG: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "max_position_embeddings": CLIP_MODEL_MAX_LENGTH,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "hidden_act": "quick_gelu",
}

PROFILES: dict[str, TinyProfile] = {
    # Shapes of diffusers' own tiny test pipeline: 64x64 images, a latent of 4x32x32.
    "tiny": TinyProfile(
        text_encoder={
            **CLIP_TOKEN_CONFIG,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
        unet={
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (32, 64),
            "layers_per_block": 2,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        vae={
            "sample_size": 64,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
            "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
            "latent_channels": 4,
            "norm_num_groups": 32,
        },
    ),
    # Stable Diffusion 1.5's architecture with random weights: real-model compute for load tests.
    "sd15": TinyProfile(
        text_encoder={
            **CLIP_TOKEN_CONFIG,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "projection_dim": 768,
        },
        unet={
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "down_block_types": (
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        vae={
            "sample_size": 512,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "latent_channels": 4,
        },
    ),
}


def build_tiny_pipeline(*, profile: str = "tiny", seed: int = 0) -> StableDiffusionPipeline:
    """Builds a random-weight SD pipeline; the same profile and seed give the same weights."""
    spec = PROFILES[profile]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**spec.text_encoder)).eval()
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**spec.unet).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**spec.vae).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(spec.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny(output_dir: Path, *, profile: str = "tiny", seed: int = 0) -> Path:
    """Writes a diffusers pipeline folder loadable by ``StableDiffusionPipeline.from_pretrained``."""
    pipeline = build_tiny_pipeline(profile=profile, seed=seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    logger.info("wrote the %s pipeline (seed %d) to %s", profile, seed, output_dir)
    return output_dir
