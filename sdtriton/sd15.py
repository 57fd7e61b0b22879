"""Stable Diffusion 1.5's published configuration, as ``runwayml/stable-diffusion-v1-5`` ships it.

One copy, read by the planner (:mod:`sdtriton.plan` sizes SD 1.5, and SDXL from the text encoder and VAE it
shares) and by ``make-tiny``'s ``sd15`` profile (:mod:`sdtriton.tiny`: these shapes with random weights).
Defaults the configs leave out are diffusers' and transformers' own.
"""

from __future__ import annotations

from typing import Any

# CLIP ViT-L/14's text tower: openai/clip-vit-large-patch14 config.json (text_config), as shipped in
# runwayml/stable-diffusion-v1-5/text_encoder/config.json and stabilityai/stable-diffusion-xl-base-1.0/text_encoder.
SD15_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# runwayml/stable-diffusion-v1-5/unet/config.json (diffusers 0.6.0 era).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # the legacy name: 8 heads (of 40, 80, 160 channels)
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
}
# The SD VAE (AutoencoderKL, f=8): runwayml/stable-diffusion-v1-5/vae/config.json; SDXL's vae/config.json has
# the same architecture with scaling_factor 0.13025 and force_upcast true.
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# runwayml/stable-diffusion-v1-5/scheduler/scheduler_config.json (PNDMScheduler).
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
