"""What each image sends to the text encoders, and the UNet conditioning of each denoising stage built from it.

The family of the exported model (never the request) decides, as its diffusers pipeline does:

- SD 1.x/2.x (``StableDiffusionPipeline.encode_prompt``): one text encoder; its last hidden state is the UNet's
  ``encoder_hidden_states``; an omitted negative prompt is encoded as "".
- SDXL (``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids``): both encoders' penultimate hidden
  states, concatenated, are ``encoder_hidden_states``; the second encoder's projected pooled output is
  ``text_embeds``; ``time_ids`` are (original size, crop top-left, target size) = (h, w, 0, 0, h, w); with
  ``force_zeros_for_empty_prompt`` an omitted negative prompt is zeros. The refiner stage
  (``StableDiffusionXLImg2ImgPipeline``) takes the second encoder alone and (original size, crop, aesthetic score).

Rows: with classifier-free guidance every conditioning has two rows, [negative, prompt]; without, one.

- SD 3 / 3.5 (``StableDiffusion3Pipeline.encode_prompt``): both CLIPs' penultimate hidden states, concatenated
  along the width and zero-padded to the transformer's ``joint_attention_dim``, then T5's last hidden state along
  the sequence (zeros of ``max_sequence_length`` rows without T5) are ``encoder_hidden_states``; both CLIPs'
  projected pooled outputs, concatenated, are ``pooled_projections``; an omitted negative prompt is "".
- FLUX.1 (``FluxPipeline.encode_prompt``, ``prepare_latents`` and step 5): T5's last hidden state is
  ``encoder_hidden_states``, CLIP's pooled output ``pooled_projections``; ``txt_ids`` zeros and ``img_ids`` the packed
  latent's (row, column) positions (``FluxPipeline._prepare_latent_image_ids``); a guidance-distilled transformer
  (FLUX.1-dev) gets ``guidance`` = the guidance scale. One row, the negative prompt unused, unless the request asks
  for true classifier-free guidance (``true_cfg_scale`` above 1 and a negative prompt sent, even ""; FluxPipeline's
  ``do_true_cfg``): then [negative, prompt] rows in one call (diffusers makes two), the same ``guidance`` and ids in
  both, combined as negative + true_cfg_scale * (prompt - negative).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdtriton.components import (
    LORA_SCALES_INPUT,
    REFINER_UNET_MODEL_NAME,
    T5_MODEL_NAME,
    TRANSFORMER_MODEL_NAME,
    UNET_MODEL_NAME,
)
from sdtriton.pipeline_config import FLUX_ID_AXES, FLUX_PACKING, FluxConfig, PipelineConfig, Sd3Config, SdxlConfig
from sdtriton.serving.validation import GenerationParams

# A text encoder's outputs for one image's rows, by output name (on the networks' device).
EncodedText = Mapping[str, torch.Tensor]
# SDXL's crop top-left default, as diffusers' (0, 0).
_CROP_TOP_LEFT = (0, 0)


@dataclass(frozen=True)
class ImageRequest:
    """One image of a request: validated parameters and the token ids of its prompts.

    Attributes:
        params: validated generation parameters.
        prompt_ids: text encoder model name -> [T] token ids of the prompt (by that encoder's tokenizer).
        negative_ids: the same for the negative prompt ("" where it was omitted).
        negative_given: whether the request sent a negative prompt (SDXL zeros an omitted one).
        input_image: image-to-image: the [H, W, 3] uint8 image to start from (None: text-to-image).
        mask_image: inpainting: the [H, W, 1] uint8 mask of ``input_image`` (None: none).
    """

    params: GenerationParams
    prompt_ids: Mapping[str, np.ndarray]
    negative_ids: Mapping[str, np.ndarray]
    negative_given: bool = True
    input_image: np.ndarray | None = None
    mask_image: np.ndarray | None = None


def text_ids_for(image: ImageRequest, encoder: str) -> np.ndarray:
    """The rows one image sends to ``encoder``: [negative, prompt] with guidance, else [prompt]."""
    prompt = image.prompt_ids[encoder]
    if image.params.uses_classifier_free_guidance:
        ids = np.stack([image.negative_ids[encoder], prompt])
    else:
        ids = prompt[None]
    return ids.astype(np.int64, copy=False)


def lora_scales_for(image: ImageRequest, config: PipelineConfig, component: str) -> np.ndarray | None:
    """The ``lora_scales`` rows one image sends to ``component`` (one per row of :func:`text_ids_for`, the same for
    both rows of a guided image, as diffusers' adapters act on the negative prompt too); None where the network takes
    none (no adapter has layers in it)."""
    if component not in config.lora_components():
        return None
    row = config.lora_scales(image.params.lora, image.params.lora_scale, component=component)
    rows = 2 if image.params.uses_classifier_free_guidance else 1
    return np.array([row] * rows, dtype=np.float32)


@dataclass(frozen=True)
class Stage:
    """One denoising stage of an image: which UNet it calls, with what conditioning, over which timesteps.

    Attributes:
        unet: the UNet model this stage calls.
        conditioning: the UNet's inputs besides ``sample`` and ``timestep``, [rows, ...] each.
        scheduler_config: the scheduler config of this stage's pipeline.
        scheduler_overrides: the model's own settings per scheduler key.
        denoising_end: stop when this fraction of the noise is removed (SDXL base before a refiner).
        denoising_start: start there, on the given latents, without adding noise (the refiner).
        set_begin_index: whether the pipeline tells the scheduler its first step index (SDXL pipelines do).
    """

    unet: str
    conditioning: Mapping[str, torch.Tensor]
    scheduler_config: Mapping[str, Any]
    scheduler_overrides: Mapping[str, Mapping[str, Any]]
    denoising_end: float | None = None
    denoising_start: float | None = None
    set_begin_index: bool = False


def stages_for(image: ImageRequest, config: PipelineConfig, encoded: Mapping[str, EncodedText]) -> list[Stage]:
    """The denoising stages of one image, given its text encoders' outputs (``encoded[encoder][output]``); a stage
    whose network carries LoRA adapters gets the image's ``lora_scales`` rows in its conditioning."""
    stages = []
    for stage in _family_stages(image, config, encoded):
        scales = lora_scales_for(image, config, stage.unet)
        if scales is not None:
            device = next(iter(stage.conditioning.values())).device
            conditioning = {**stage.conditioning, LORA_SCALES_INPUT: torch.from_numpy(scales).to(device)}
            stage = dataclasses.replace(stage, conditioning=conditioning)
        stages.append(stage)
    return stages


def _family_stages(image: ImageRequest, config: PipelineConfig, encoded: Mapping[str, EncodedText]) -> list[Stage]:
    if config.sd3 is not None:
        return [_sd3_stage(config, config.sd3, encoded)]
    if config.flux is not None:
        return [_flux_stage(image, config, config.flux, encoded)]
    if config.sdxl is None:
        return [
            Stage(
                unet=UNET_MODEL_NAME,
                conditioning={"encoder_hidden_states": encoded["text_encoder"]["last_hidden_state"]},
                scheduler_config=config.scheduler_config,
                scheduler_overrides=config.scheduler_overrides,
            )
        ]
    return _sdxl_stages(image, config, config.sdxl, encoded)


def _rows(
    image: ImageRequest, negative: tuple[float, ...], positive: tuple[float, ...], device: torch.device
) -> torch.Tensor:
    rows = [negative, positive] if image.params.uses_classifier_free_guidance else [positive]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def _zero_negative(image: ImageRequest, states: torch.Tensor, *, force_zeros: bool) -> torch.Tensor:
    """With guidance and no negative prompt sent, ``force_zeros_for_empty_prompt`` makes its row zeros."""
    if force_zeros and not image.negative_given and image.params.uses_classifier_free_guidance:
        states = states.clone()
        states[0] = 0.0
    return states


def _sdxl_stages(
    image: ImageRequest, config: PipelineConfig, sdxl: SdxlConfig, encoded: Mapping[str, EncodedText]
) -> list[Stage]:
    params = image.params
    size = (params.height, params.width)
    first, second = encoded["text_encoder"], encoded["text_encoder_2"]
    pooled = second["text_embeds"]
    device = pooled.device
    fraction = params.refiner_fraction
    base_time_ids = (*size, *_CROP_TOP_LEFT, *size)
    base = Stage(
        unet=UNET_MODEL_NAME,
        conditioning={
            "encoder_hidden_states": _zero_negative(
                image,
                torch.cat([first["penultimate_hidden_state"], second["penultimate_hidden_state"]], dim=-1),
                force_zeros=sdxl.force_zeros_for_empty_prompt,
            ),
            "text_embeds": _zero_negative(image, pooled, force_zeros=sdxl.force_zeros_for_empty_prompt),
            "time_ids": _rows(image, base_time_ids, base_time_ids, device),
        },
        scheduler_config=config.scheduler_config,
        scheduler_overrides=config.scheduler_overrides,
        denoising_end=1.0 - fraction if fraction > 0 else None,
        set_begin_index=True,
    )
    refiner = sdxl.refiner
    if fraction <= 0 or refiner is None:
        return [base]
    if refiner.requires_aesthetics_score:
        positive = (*size, *_CROP_TOP_LEFT, refiner.aesthetic_score)
        negative = (*size, *_CROP_TOP_LEFT, refiner.negative_aesthetic_score)
    else:
        positive = negative = base_time_ids
    force_zeros = refiner.force_zeros_for_empty_prompt
    refine = Stage(
        unet=REFINER_UNET_MODEL_NAME,
        conditioning={
            "encoder_hidden_states": _zero_negative(image, second["penultimate_hidden_state"], force_zeros=force_zeros),
            "text_embeds": _zero_negative(image, pooled, force_zeros=force_zeros),
            "time_ids": _rows(image, negative, positive, device),
        },
        scheduler_config=refiner.scheduler_config,
        scheduler_overrides=config.scheduler_overrides,
        denoising_start=1.0 - fraction,
        set_begin_index=True,
    )
    return [base, refine]


def _sd3_stage(config: PipelineConfig, sd3: Sd3Config, encoded: Mapping[str, EncodedText]) -> Stage:
    first, second = encoded["text_encoder"], encoded["text_encoder_2"]
    clip = torch.cat([first["penultimate_hidden_state"], second["penultimate_hidden_state"]], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, sd3.joint_attention_dim - clip.shape[-1]))
    if sd3.has_t5:
        t5 = encoded[T5_MODEL_NAME]["last_hidden_state"]
    else:
        t5 = clip.new_zeros((clip.shape[0], sd3.t5_max_length, sd3.joint_attention_dim))
    return Stage(
        unet=TRANSFORMER_MODEL_NAME,
        conditioning={
            "encoder_hidden_states": torch.cat([clip, t5], dim=-2),
            "pooled_projections": torch.cat([first["text_embeds"], second["text_embeds"]], dim=-1),
        },
        scheduler_config=config.scheduler_config,
        scheduler_overrides=config.scheduler_overrides,
    )


def _flux_stage(
    image: ImageRequest, config: PipelineConfig, flux: FluxConfig, encoded: Mapping[str, EncodedText]
) -> Stage:
    states = encoded["text_encoder_2"]["last_hidden_state"]
    rows, device = states.shape[0], states.device
    side = config.vae_scale_factor * FLUX_PACKING
    # [seq, 3] for the whole call; each image's rows carry it on the batch axis of the spec (the wrapper reads row 0).
    # Imported here: FluxPipeline's module imports transformers (about 4 s of every SD server's start otherwise).
    from diffusers import FluxPipeline

    img_ids = FluxPipeline._prepare_latent_image_ids(
        rows, image.params.height // side, image.params.width // side, device, torch.float32
    )
    # As FluxPipeline.encode_prompt: a zero position for every text token.
    txt_ids = torch.zeros(states.shape[1], FLUX_ID_AXES, dtype=torch.float32, device=device)
    conditioning = {
        "encoder_hidden_states": states,
        "pooled_projections": encoded["text_encoder"]["pooler_output"],
        "img_ids": img_ids.expand(rows, -1, -1),
        "txt_ids": txt_ids.expand(rows, -1, -1),
    }
    if flux.guidance_embeds:
        # As FluxPipeline: torch.full([1], guidance_scale, dtype=torch.float32), expanded to the batch.
        conditioning["guidance"] = torch.full([rows], image.params.guidance_scale, dtype=torch.float32, device=device)
    return Stage(
        unet=TRANSFORMER_MODEL_NAME,
        conditioning=conditioning,
        scheduler_config=config.scheduler_config,
        scheduler_overrides=config.scheduler_overrides,
        set_begin_index=True,  # FluxPipeline calls scheduler.set_begin_index(0)
    )
