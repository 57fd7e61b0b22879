"""``sdtriton make-tiny``: a seeded, byte-for-byte reproducible Stable Diffusion pipeline with random weights.

It has the full SD architecture (CLIP text encoder with the real CLIP tokenizer, a cross-attention UNet,
a KL autoencoder, the SD 1.5 scheduler) at a size that runs in milliseconds on a CPU. Random weights draw
noise, but noise is exactly what parity with diffusers needs: every weight and every scheduler step
shows up in the pixels. The ``sd15`` profile has the real SD 1.5 shapes (about 4 GB in fp32).

``--family sdxl`` makes a tiny SDXL base (``CLIPTextModel`` + ``CLIPTextModelWithProjection``, a UNet with
``addition_embed_type="text_time"``, a VAE with SDXL's scaling factor and ``force_upcast``) and
``--family sdxl-refiner`` its refiner (second encoder only, ``requires_aesthetics_score``), whose second text
encoder and VAE are the base's own weights, as diffusers' base+refiner recipe shares them.

``--family sd3`` makes a tiny ``StableDiffusion3Pipeline`` (two ``CLIPTextModelWithProjection``, a
``T5EncoderModel`` with a T5 tokenizer built here, an ``SD3Transformer2DModel``, a 16-channel VAE with SD 3's
``scaling_factor``/``shift_factor``, SD 3's published ``FlowMatchEulerDiscreteScheduler`` config), and
``--family sd35`` the same with SD 3.5 Medium's transformer features (``dual_attention_layers``, RMS q/k norm);
``--without-t5`` leaves ``text_encoder_3`` out (``None``, as diffusers allows: its states are then zeros).

``--family sd-inpaint`` and ``--family sdxl-inpaint`` make the tiny SD and SDXL with a dedicated inpainting UNet
(9 input channels: latents, mask, masked-image latents) saved as ``StableDiffusionInpaintPipeline`` and
``StableDiffusionXLInpaintPipeline``, as inpainting checkpoints are; the other components are the plain ones' own.

``--family flux-dev`` makes a tiny ``FluxPipeline`` (``CLIPTextModel`` for the pooled text, ``T5EncoderModel`` with
the same local T5 tokenizer, a ``FluxTransformer2DModel`` with ``guidance_embeds``, a 16-channel VAE with FLUX's
``scaling_factor``/``shift_factor``, FLUX.1-dev's published scheduler config with dynamic shifting), and
``--family flux-schnell`` the same without the guidance embedding and with FLUX.1-schnell's scheduler config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from sdtriton.flux import FLUX_DEV_SCHEDULER_CONFIG, FLUX_SCHNELL_SCHEDULER_CONFIG, FLUX_VAE
from sdtriton.schedulers import save_scheduler_overrides
from sdtriton.sd3 import SD3_SCHEDULER_CONFIG, SD3_VAE, T5_MODEL_MAX_LENGTH
from sdtriton.sd15 import SD15_SCHEDULER_CONFIG, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
from sdtriton.tokenizer_files import (
    CLIP_MODEL_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    T5_SPECIAL_TOKENS,
    build_clip_tokenizer,
    build_t5_tokenizer,
)

logger = logging.getLogger(__name__)


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
    "sd15": TinyProfile(text_encoder={**SD15_TEXT_ENCODER, **CLIP_TOKEN_CONFIG}, unet=SD15_UNET, vae=SD15_VAE),
}


def _unet_in_channels(latent_channels: int, *, inpainting: bool) -> int:
    # An inpainting UNet takes the latents, the mask and the masked image's latents (StableDiffusionInpaintPipeline).
    return 2 * latent_channels + 1 if inpainting else latent_channels


def build_tiny_pipeline(
    *, profile: str = "tiny", seed: int = 0, inpainting: bool = False
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """Builds a random-weight SD pipeline; the same profile and seed give the same weights. ``inpainting``: with a
    9-channel UNet, as a ``StableDiffusionInpaintPipeline``."""
    spec = PROFILES[profile]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**spec.text_encoder)).eval()
    torch.manual_seed(seed + 1)
    in_channels = _unet_in_channels(spec.vae["latent_channels"], inpainting=inpainting)
    unet = UNet2DConditionModel(**{**spec.unet, "in_channels": in_channels}).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**spec.vae).eval()
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(spec.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# SDXL base 1.0's own scheduler config (EulerDiscreteScheduler, "leading" spacing, steps_offset 1).
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
# The tiny SDXL's two encoders differ in width (and the pooled projection in its own), so that a mix-up of
# the two, or of hidden and pooled states, fails loudly instead of passing by equal shapes.
_SDXL_TEXT_ENCODER = {
    **CLIP_TOKEN_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "hidden_act": "gelu",
}
_SDXL_TEXT_ENCODER_2 = {
    **CLIP_TOKEN_CONFIG,
    "hidden_size": 48,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": 40,
    "hidden_act": "gelu",
}
_SDXL_ADDITION_TIME_EMBED_DIM = 8
_SDXL_VAE = {**PROFILES["tiny"].vae, "scaling_factor": 0.13025, "force_upcast": True}
FAMILIES = ("sd", "sd-inpaint", "sdxl", "sdxl-inpaint", "sdxl-refiner", "sd3", "sd35", "flux-dev", "flux-schnell")
# The tiny SDXL's own scheduler settings (sdtriton.schedulers.SCHEDULER_OVERRIDES_FILE_NAME). SDXL's Euler config
# has no clip_sample, so DDIM built from it clips the predicted sample to -1..1; with random weights that makes
# DDIM chaotic (measured: a 1e-5 change of one UNet output moved pixels by 141 of 255, against 1 for every other
# scheduler), which no parity check could survive. Trained SDXL weights predict samples inside the range.
SDXL_SCHEDULER_OVERRIDES = {"ddim": {"clip_sample": False}}
# Text-encoder pad tokens of SDXL: the first encoder pads with <|endoftext|>, the second (OpenCLIP) with "!".
SDXL_TOKENIZER_2_PAD_TOKEN = "!"


def _sdxl_unet(*, cross_attention_dim: int, time_ids: int, seed: int, in_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_ADDITION_TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=_SDXL_ADDITION_TIME_EMBED_DIM * time_ids
        + _SDXL_TEXT_ENCODER_2["projection_dim"],
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    ).eval()


def _sdxl_shared_parts(seed: int) -> tuple[CLIPTextModelWithProjection, AutoencoderKL]:
    """The second text encoder and the VAE, which base and refiner share (same seed, same weights)."""
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_SDXL_TEXT_ENCODER_2)).eval()
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(**_SDXL_VAE).eval()
    return text_encoder_2, vae


def build_tiny_sdxl_pipeline(
    *, seed: int = 0, inpainting: bool = False
) -> StableDiffusionXLPipeline | StableDiffusionXLInpaintPipeline:
    """A random-weight SDXL base: two text encoders, a text_time UNet, SDXL's VAE settings and scheduler.
    ``inpainting``: with a 9-channel UNet, as a ``StableDiffusionXLInpaintPipeline``."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_SDXL_TEXT_ENCODER)).eval()
    text_encoder_2, vae = _sdxl_shared_parts(seed)
    unet = _sdxl_unet(
        cross_attention_dim=_SDXL_TEXT_ENCODER["hidden_size"] + _SDXL_TEXT_ENCODER_2["hidden_size"],
        time_ids=6,  # original size, crop top-left, target size
        seed=seed + 2,
        in_channels=_unet_in_channels(_SDXL_VAE["latent_channels"], inpainting=inpainting),
    )
    pipeline_class = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token=SDXL_TOKENIZER_2_PAD_TOKEN),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )


def build_tiny_sdxl_refiner(*, seed: int = 0) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner of :func:`build_tiny_sdxl_pipeline` with the same seed: second encoder only, aesthetic score."""
    text_encoder_2, vae = _sdxl_shared_parts(seed)
    unet = _sdxl_unet(
        cross_attention_dim=_SDXL_TEXT_ENCODER_2["hidden_size"],
        time_ids=5,  # original size, crop top-left, aesthetic score
        seed=seed + 4,
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=build_clip_tokenizer(pad_token=SDXL_TOKENIZER_2_PAD_TOKEN),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,  # as stabilityai/stable-diffusion-xl-refiner-1.0
        add_watermarker=False,
    )


# The tiny SD 3's three encoders differ in width (CLIPs 32 and 48 wide, pooled 32 and 40; T5 88 wide, above the
# CLIPs' 80 that diffusers pads to it), so that a mix-up of encoders, or of hidden and pooled states, fails loudly.
_SD3_TEXT_ENCODER = {**_SDXL_TEXT_ENCODER, "num_hidden_layers": 2, "hidden_act": "quick_gelu"}
_SD3_TEXT_ENCODER_2 = {**_SDXL_TEXT_ENCODER_2, "num_hidden_layers": 2}
# T5 v1.1's layout (gated GELU, relative position buckets), two small layers.
_SD3_T5 = {
    "d_model": 88,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "is_encoder_decoder": False,
    "pad_token_id": T5_SPECIAL_TOKENS.index("<pad>"),
    "eos_token_id": T5_SPECIAL_TOKENS.index("</s>"),
}
# 64x64 images (latents 16x32x32, 16x16 patches of 2x2); the 24-patch position table caps latents at 48 a side
# (96 px), below the 2x size factor's 128 px, so that the table is what bounds the size, as export must find.
_SD3_TRANSFORMER = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": SD3_VAE["latent_channels"],
    "out_channels": SD3_VAE["latent_channels"],
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": _SD3_T5["d_model"],
    "caption_projection_dim": 32,  # = heads x head dim, as every published SD 3 transformer
    "pooled_projection_dim": _SD3_TEXT_ENCODER["projection_dim"] + _SD3_TEXT_ENCODER_2["projection_dim"],
    "pos_embed_max_size": 24,
}
# SD 3.5 Medium's features: dual attention (MMDiT-X) in the first block, RMS q/k norm.
_SD35_TRANSFORMER = {**_SD3_TRANSFORMER, "dual_attention_layers": (0,), "qk_norm": "rms_norm"}
# SD 3's VAE settings (16 channels, scaling and shift factors, no quant convs) at the tiny VAE's size.
_SD3_VAE = {
    **PROFILES["tiny"].vae,
    **{key: SD3_VAE[key] for key in ("latent_channels", "scaling_factor", "shift_factor", "force_upcast")},
    **{key: SD3_VAE[key] for key in ("use_quant_conv", "use_post_quant_conv")},
}
SD3_TRANSFORMERS = {"sd3": _SD3_TRANSFORMER, "sd35": _SD35_TRANSFORMER}


def build_tiny_sd3_pipeline(*, family: str = "sd3", seed: int = 0, t5: bool = True) -> StableDiffusion3Pipeline:
    """A random-weight SD 3 (``sd3``) or SD 3.5 (``sd35``: dual attention, RMS q/k norm); without ``t5``, no
    ``text_encoder_3``/``tokenizer_3`` (diffusers then conditions on zeros in their place)."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**_SD3_TEXT_ENCODER)).eval()
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_SD3_TEXT_ENCODER_2)).eval()
    text_encoder_3 = tokenizer_3 = None
    if t5:
        tokenizer_3 = build_t5_tokenizer(model_max_length=T5_MODEL_MAX_LENGTH)
        torch.manual_seed(seed + 2)
        text_encoder_3 = T5EncoderModel(T5Config(**_SD3_T5, vocab_size=len(tokenizer_3))).eval()
    torch.manual_seed(seed + 3)
    transformer = SD3Transformer2DModel(**SD3_TRANSFORMERS[family]).eval()
    torch.manual_seed(seed + 4)
    vae = AutoencoderKL(**_SD3_VAE).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(pad_token=SDXL_TOKENIZER_2_PAD_TOKEN),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


# The tiny FLUX's CLIP (pooled output 32 wide) and T5 (88 wide, SD 3's tiny T5) differ in width, so that a mix-up of
# pooled and sequence states fails loudly. Its transformer takes the 2x2-packed 16-channel latents (64 wide), one
# double- and one single-stream block of 2 heads of 16 (rotary axes 4 + 6 + 6 = 16, as the head dim must split).
_FLUX_TEXT_ENCODER = {**_SD3_TEXT_ENCODER}
_FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": FLUX_VAE["latent_channels"] * 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _SD3_T5["d_model"],
    "pooled_projection_dim": _FLUX_TEXT_ENCODER["hidden_size"],
    "axes_dims_rope": (4, 6, 6),
}
# FLUX's VAE settings (16 channels, its scaling and shift factors, no quant convs) at the tiny VAE's size.
_FLUX_VAE = {**_SD3_VAE, **{key: FLUX_VAE[key] for key in ("scaling_factor", "shift_factor")}}
# Each tiny FLUX: whether its transformer embeds the guidance scale (dev) or not (schnell), and its scheduler config.
FLUX_VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "flux-dev": (True, FLUX_DEV_SCHEDULER_CONFIG),
    "flux-schnell": (False, FLUX_SCHNELL_SCHEDULER_CONFIG),
}


def build_tiny_flux_pipeline(*, family: str = "flux-dev", seed: int = 0) -> FluxPipeline:
    """A random-weight FLUX.1: ``flux-dev`` (guidance-distilled: a guidance embedding, dynamic shifting) or
    ``flux-schnell`` (no guidance embedding, FLUX.1-schnell's unshifted scheduler)."""
    guidance_embeds, scheduler_config = FLUX_VARIANTS[family]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_FLUX_TEXT_ENCODER)).eval()
    tokenizer_2 = build_t5_tokenizer(model_max_length=T5_MODEL_MAX_LENGTH)
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(**_SD3_T5, vocab_size=len(tokenizer_2))).eval()
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(**_FLUX_TRANSFORMER, guidance_embeds=guidance_embeds).eval()
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(**_FLUX_VAE).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def make_tiny(output_dir: Path, *, profile: str = "tiny", seed: int = 0, family: str = "sd", t5: bool = True) -> Path:
    """Writes a diffusers pipeline folder loadable by its pipeline class's ``from_pretrained``.

    Args:
        family: ``sd`` (``StableDiffusionPipeline``, shapes of ``profile``), ``sdxl``
            (``StableDiffusionXLPipeline``), ``sd-inpaint`` / ``sdxl-inpaint`` (their inpainting pipelines, a 9-channel
            UNet), ``sdxl-refiner`` (``StableDiffusionXLImg2ImgPipeline``), or ``sd3`` /
            ``sd35`` (``StableDiffusion3Pipeline``), or ``flux-dev`` / ``flux-schnell`` (``FluxPipeline``).
        t5: ``sd3``/``sd35`` only: with ``text_encoder_3`` (T5); without, it is ``None`` in the folder.
    """
    pipeline: DiffusionPipeline
    if not t5 and family not in SD3_TRANSFORMERS:
        raise ValueError(f"only an SD 3 family ({', '.join(SD3_TRANSFORMERS)}) can leave T5 out, not {family!r}")
    if family in ("sd", "sd-inpaint"):
        pipeline = build_tiny_pipeline(profile=profile, seed=seed, inpainting=family == "sd-inpaint")
    elif family in ("sdxl", "sdxl-inpaint"):
        pipeline = build_tiny_sdxl_pipeline(seed=seed, inpainting=family == "sdxl-inpaint")
    elif family == "sdxl-refiner":
        pipeline = build_tiny_sdxl_refiner(seed=seed)
    elif family in SD3_TRANSFORMERS:
        pipeline = build_tiny_sd3_pipeline(family=family, seed=seed, t5=t5)
    elif family in FLUX_VARIANTS:
        pipeline = build_tiny_flux_pipeline(family=family, seed=seed)
    else:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    if family in ("sdxl", "sdxl-inpaint", "sdxl-refiner"):
        save_scheduler_overrides(output_dir, SDXL_SCHEDULER_OVERRIDES)
    logger.info("wrote the %s pipeline (seed %d) to %s", profile if family == "sd" else family, seed, output_dir)
    return output_dir


# Layers a tiny LoRA adapts: the attention projections of the UNet (diffusers' own LoRA scripts' targets), with
# ``conv`` the ResNet convolutions too (kohya's LoCon), and CLIP's attention projections. An SD 3 / FLUX transformer's
# joint attention has its text stream's projections beside them (diffusers' train_dreambooth_lora_sd3/flux targets).
_LORA_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_LORA_TRANSFORMER_TARGETS = (*_LORA_UNET_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_LORA_CONV_TARGETS = ("conv1", "conv2")
_LORA_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def make_tiny_lora(
    model_dir: Path,
    output_dir: Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 4.0,
    text_encoders: tuple[str, ...] = (),
    conv: bool = False,
) -> Path:
    """A random non-zero LoRA adapter of a tiny pipeline (its UNet, or SD 3's / FLUX's transformer), saved by
    diffusers' own ``save_lora_weights`` (with peft's config as its metadata, so ``lora_alpha`` travels); returns the
    safetensors file.

    Args:
        rank / alpha: peft's ``r`` and ``lora_alpha`` (the update is scaled by alpha / rank).
        text_encoders: the CLIP text encoders (``text_encoder``; SDXL's and SD 3's ``text_encoder_2`` too) whose
            attention it adapts too.
        conv: adapt the UNet's ResNet convolutions too (Conv2d LoRA layers); a transformer has none.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = DiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    denoiser = "unet" if hasattr(pipeline, "unet") else "transformer"
    if denoiser == "unet":
        targets = [*_LORA_UNET_TARGETS, *(_LORA_CONV_TARGETS if conv else ())]
    elif conv:
        raise ValueError(f"{model_dir}: conv adapts a UNet's convolutions; this pipeline has a transformer")
    else:
        targets = list(_LORA_TRANSFORMER_TARGETS)
    denoiser_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    getattr(pipeline, denoiser).add_adapter(denoiser_config)
    saved: dict[str, Any] = {
        f"{denoiser}_lora_layers": get_peft_model_state_dict(getattr(pipeline, denoiser)),
        f"{denoiser}_lora_adapter_metadata": denoiser_config.to_dict(),
    }
    for encoder in text_encoders:
        text_config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(_LORA_TEXT_TARGETS), init_lora_weights=False
        )
        getattr(pipeline, encoder).add_adapter(text_config)
        saved[f"{encoder}_lora_layers"] = get_peft_model_state_dict(getattr(pipeline, encoder))
        saved[f"{encoder}_lora_adapter_metadata"] = text_config.to_dict()
    output_dir.mkdir(parents=True, exist_ok=True)
    type(pipeline).save_lora_weights(output_dir, weight_name=LORA_WEIGHT_NAME, **saved)
    logger.info("wrote a LoRA (rank %d, seed %d) of %s to %s", rank, seed, model_dir, output_dir)
    return output_dir / LORA_WEIGHT_NAME
