"""Stable Diffusion 3 / 3.5's published configuration, as stabilityai's diffusers folders ship it.

One copy, read by ``make-tiny --family sd3|sd35`` (:mod:`sdtriton.tiny`: the scheduler and the VAE's latent
settings, at a tiny size) and by the TensorRT dry-run tests (the full SD 3.5 Medium and Large geometry from these
configs alone, no weights). Defaults the configs leave out are diffusers' and transformers' own.
"""

from __future__ import annotations

from typing import Any

from sdtriton.sd15 import SD15_TEXT_ENCODER

# stabilityai/stable-diffusion-3-medium-diffusers and stable-diffusion-3.5-{medium,large}:
# scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler, no dynamic shifting).
SD3_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
# The SD3 VAE (16 latent channels, no quant convs), the same in SD 3 Medium and SD 3.5 Medium/Large:
# vae/config.json. Latents are de-normalized as latents / scaling_factor + shift_factor before decoding.
SD3_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "latents_mean": None,
    "latents_std": None,
}
# text_encoder: CLIP ViT-L/14 with its projection (CLIPTextModelWithProjection), SD 1.5's text tower.
SD3_TEXT_ENCODER: dict[str, Any] = dict(SD15_TEXT_ENCODER)
# text_encoder_2: OpenCLIP ViT-bigG/14 with its projection, as in SDXL's text_encoder_2.
SD3_TEXT_ENCODER_2: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
# text_encoder_3: google/t5-v1_1-xxl's encoder (T5EncoderModel, 4.7 B parameters).
SD3_TEXT_ENCODER_3: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
# transformer/config.json (SD3Transformer2DModel). SD 3.5 Medium: MMDiT-X, dual attention in its first 13 blocks,
# RMS q/k norm, a 384-wide position table (latents up to 768 = images up to 6144 px a side).
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
# SD 3.5 Large (and Large Turbo): 38 blocks of 38 heads, RMS q/k norm, no dual attention, a 192-wide table.
SD35_LARGE_TRANSFORMER: dict[str, Any] = {
    **SD35_MEDIUM_TRANSFORMER,
    "num_layers": 38,
    "num_attention_heads": 38,
    "caption_projection_dim": 2432,
    "pos_embed_max_size": 192,
    "dual_attention_layers": (),
}
# Published pipelines by name: their transformer; every other part is the same in all of them.
SD3_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "sd35-medium": SD35_MEDIUM_TRANSFORMER,
    "sd35-large": SD35_LARGE_TRANSFORMER,
}
# T5's tokenizer length in the published tokenizer_3/tokenizer_config.json (the pipeline's max_sequence_length,
# 256 by default, is what it is called with).
T5_MODEL_MAX_LENGTH = 512
