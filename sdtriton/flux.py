"""FLUX.1's published configuration, as black-forest-labs' diffusers folders (FLUX.1-dev, FLUX.1-schnell) ship it.

Sources: ``black-forest-labs/FLUX.1-dev`` and ``black-forest-labs/FLUX.1-schnell`` on the Hugging Face Hub, their
``model_index.json`` (``FluxPipeline``) and component ``config.json`` files, and the model cards' example calls.
One copy, read by ``make-tiny --family flux-dev|flux-schnell`` (:mod:`sdtriton.tiny`: the schedulers and the VAE's
latent settings, at a tiny size), by the TensorRT dry-run tests (FLUX.1's full geometry from these configs alone,
no weights) and by the planner (:mod:`sdtriton.plan`). Defaults the configs leave out are diffusers' and
transformers' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtriton.sd3 import SD3_TEXT_ENCODER_3, SD3_VAE
from sdtriton.sd15 import SD15_TEXT_ENCODER

# FLUX.1-dev's scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler): dynamic shifting, mu from the
# packed image's sequence length between base_image_seq_len (256, a 512 px image) and max_image_seq_len (4096, 1024 px).
FLUX_DEV_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FLUX.1-schnell's (timestep-distilled): no dynamic shifting and no shift; the same base/max settings, unused.
FLUX_SCHNELL_SCHEDULER_CONFIG: dict[str, Any] = {
    **FLUX_DEV_SCHEDULER_CONFIG,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}
# The FLUX VAE (16 latent channels, no quant convs, SD 3's layout): vae/config.json. Latents are de-normalized as
# latents / scaling_factor + shift_factor before decoding.
FLUX_VAE: dict[str, Any] = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
# text_encoder: CLIP ViT-L/14 (CLIPTextModel, its pooled output only), SD 1.5's text tower.
FLUX_TEXT_ENCODER: dict[str, Any] = dict(SD15_TEXT_ENCODER)
# text_encoder_2: google/t5-v1_1-xxl's encoder, as SD 3's text_encoder_3.
FLUX_TEXT_ENCODER_2: dict[str, Any] = dict(SD3_TEXT_ENCODER_3)
# transformer/config.json (FluxTransformer2DModel) of FLUX.1-dev: 19 double-stream and 38 single-stream blocks, the
# 2x2-packed latents (64 = 16 channels x 4) as its input, rotary positions (no table: any size), guidance embedding.
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# FLUX.1-schnell: the same transformer without the guidance embedding.
FLUX_SCHNELL_TRANSFORMER: dict[str, Any] = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}
# Published pipelines by name: their transformer and scheduler; every other part is the same in both.
FLUX_PIPELINES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "flux-dev": (FLUX_DEV_TRANSFORMER, FLUX_DEV_SCHEDULER_CONFIG),
    "flux-schnell": (FLUX_SCHNELL_TRANSFORMER, FLUX_SCHNELL_SCHEDULER_CONFIG),
}
# FLUX.1-schnell is timestep-distilled for few steps: its model card samples with num_inference_steps=4 (and
# max_sequence_length=256); FluxPipeline.__call__'s own default, 28, is FLUX.1-dev's.
TIMESTEP_DISTILLED_DEFAULT_STEPS = 4
# FluxPipeline packs 2x2 latent patches into one token (in_channels = 4 x the VAE's 16 latent channels).
FLUX_LATENT_PACKING = 2
# FluxPipeline.default_sample_size: 128 latents a side, 1024 px.
FLUX_DEFAULT_SAMPLE_SIZE = 128


@dataclass(frozen=True)
class FluxCall:
    """One published FLUX.1 model and how it is called (the planner's sizing).

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
    "flux-schnell": FluxCall(FLUX_SCHNELL_TRANSFORMER, steps=TIMESTEP_DISTILLED_DEFAULT_STEPS, max_sequence_length=256),
}
