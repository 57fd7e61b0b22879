"""FLUX.1 [dev] and [schnell]'s published configuration, as black-forest-labs's diffusers folders ship it.

Sources: ``black-forest-labs/FLUX.1-dev`` and ``black-forest-labs/FLUX.1-schnell`` on the Hugging Face Hub, their
``model_index.json`` (``FluxPipeline``) and component ``config.json`` files, and the model cards' example calls.
The two differ only in the transformer's ``guidance_embeds`` (dev is guidance-distilled: the guidance scale is an
input of the transformer, embedded like the timestep, so a step is one row, not a CFG pair) and in how they are
called. Read by the planner (:mod:`sdtriton.plan`); defaults the configs leave out are diffusers' and
transformers' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtriton.sd3 import SD3_TEXT_ENCODER_3, SD3_VAE
from sdtriton.sd15 import SD15_TEXT_ENCODER

# transformer/config.json (FluxTransformer2DModel): 19 double-stream (MMDiT) blocks, then 38 single-stream blocks,
# 24 heads of 128 (3072 wide), RoPE over (16, 56, 56) axes of the 3-d position ids. in_channels 64 are the 16
# latent channels packed 2x2 by FluxPipeline._pack_latents; patch_size 1 inside the transformer.
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# FLUX.1-schnell/transformer/config.json: the same, timestep-distilled, without the guidance embedder.
FLUX_SCHNELL_TRANSFORMER: dict[str, Any] = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}
# FluxPipeline packs 2x2 latent patches into one token (in_channels = 4 x the VAE's 16 latent channels).
FLUX_LATENT_PACKING = 2
# FluxPipeline.default_sample_size: 128 latents a side, 1024 px.
FLUX_DEFAULT_SAMPLE_SIZE = 128
# text_encoder: CLIPTextModel, openai/clip-vit-large-patch14's text tower (its pooled output only).
FLUX_TEXT_ENCODER: dict[str, Any] = dict(SD15_TEXT_ENCODER)
# text_encoder_2: T5EncoderModel, google/t5-v1_1-xxl's encoder (d_model 4096, d_ff 10240, 24 layers, 64 heads,
# vocab 32128), the same as SD 3's text_encoder_3.
FLUX_TEXT_ENCODER_2: dict[str, Any] = dict(SD3_TEXT_ENCODER_3)
# vae/config.json: SD 3's 16-channel AutoencoderKL architecture with FLUX's own latent statistics.
FLUX_VAE: dict[str, Any] = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}


@dataclass(frozen=True)
class FluxCall:
    """One published FLUX.1 model and how it is called.

    Attributes:
        transformer: its transformer/config.json.
        steps: denoising steps.
        max_sequence_length: T5 tokens (the transformer's text tokens).
    """

    transformer: dict[str, Any]
    steps: int
    max_sequence_length: int


# dev: FluxPipeline.__call__'s defaults (28 steps, guidance_scale 3.5 embedded, max_sequence_length 512);
# schnell: its model card's call (4 steps, guidance_scale 0.0, max_sequence_length 256).
FLUX_CALLS: dict[str, FluxCall] = {
    "flux-dev": FluxCall(FLUX_DEV_TRANSFORMER, steps=28, max_sequence_length=512),
    "flux-schnell": FluxCall(FLUX_SCHNELL_TRANSFORMER, steps=4, max_sequence_length=256),
}
