"""What the serving pipeline must know about one exported model, read from the source pipeline once.

``sdtriton export`` derives a :class:`PipelineConfig` from the diffusers folder (channel counts, VAE scale
factor, scaling factor, tokenizer length, default scheduler) and writes it beside the pipeline model;
the pipeline model, the rendered Triton configs and the TensorRT profiles all read it back. Nothing
model-specific is hard-coded anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtriton import interface

PIPELINE_CONFIG_FILE_NAME = "pipeline_config.json"
DEFAULT_NUM_INFERENCE_STEPS = 30
PREVIEW_RGB_CHANNELS = 3


# Request limits: the defaults of an export, and how far an export may raise them.
DEFAULT_MAX_INFERENCE_STEPS = interface.MAX_INFERENCE_STEPS
HARD_MAX_INFERENCE_STEPS = 1000  # a scheduler's training timesteps
DEFAULT_MAX_PROMPT_BYTES = interface.MAX_PROMPT_BYTES
HARD_MAX_PROMPT_BYTES = 65536

SD_FAMILY = "sd"
SDXL_FAMILY = "sdxl"
SD3_FAMILY = "sd3"
FLUX_FAMILY = "flux"
# The inpainting pipelines' default strength by family (StableDiffusionInpaintPipeline's 1.0,
# StableDiffusionXLInpaintPipeline's 0.9999, StableDiffusion3InpaintPipeline's and FluxInpaintPipeline's 0.6).
INPAINT_STRENGTH_DEFAULTS: dict[str, float] = {SD_FAMILY: 1.0, SDXL_FAMILY: 0.9999, SD3_FAMILY: 0.6, FLUX_FAMILY: 0.6}
FAMILIES = (SD_FAMILY, SDXL_FAMILY, SD3_FAMILY, FLUX_FAMILY)
# FluxPipeline packs the latents in 2x2 patches (``_pack_latents``): sides are multiples of VAE factor x 2.
FLUX_PACKING = 2
# Transformer rows of an SD 3 image in skip-layer guidance's window: negative, prompt, and the prompt skipping layers.
SKIP_LAYER_GUIDANCE_ROWS = 3
# Coordinates of each token's rotary position (``img_ids``/``txt_ids``: a zero, the row, the column).
FLUX_ID_AXES = 3


@dataclass(frozen=True)
class SdxlRefinerConfig:
    """An SDXL refiner exported beside its base (``export --refiner``), read from its own pipeline folder.

    It shares the base's second text encoder and VAE, as diffusers' base+refiner recipe does.

    Attributes:
        text_hidden_size: width of its UNet's ``encoder_hidden_states`` (the second encoder's hidden size).
        time_ids: entries of its ``time_ids``: 5 with an aesthetic score, else 6 (as the base).
        requires_aesthetics_score: its pipeline's ``requires_aesthetics_score``.
        force_zeros_for_empty_prompt: its pipeline's own setting (False for stabilityai's refiner 1.0).
        scheduler_config: its own scheduler config.
        aesthetic_score / negative_aesthetic_score: diffusers' defaults for the positive and negative rows.
    """

    text_hidden_size: int
    time_ids: int
    requires_aesthetics_score: bool
    force_zeros_for_empty_prompt: bool
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


@dataclass(frozen=True)
class SdxlConfig:
    """What an SDXL base adds to the geometry: two text encoders, pooled text embeddings, size conditioning.

    Attributes:
        text_hidden_sizes: widths of the penultimate hidden states of ``text_encoder`` and ``text_encoder_2``
            (their concatenation is the UNet's ``encoder_hidden_states``).
        pooled_size: width of ``text_encoder_2``'s projected pooled output (the UNet's ``text_embeds``).
        time_ids: entries of the UNet's ``time_ids`` (original size, crop top-left, target size: 6).
        force_zeros_for_empty_prompt: the pipeline's setting: an omitted negative prompt is zeros, not "".
        refiner: the refiner stage, when one was exported.
    """

    text_hidden_sizes: tuple[int, int]
    pooled_size: int
    time_ids: int = 6
    force_zeros_for_empty_prompt: bool = True
    refiner: SdxlRefinerConfig | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SdxlConfig:
        refiner = values.get("refiner")
        return cls(
            **{
                **values,
                "text_hidden_sizes": tuple(values["text_hidden_sizes"]),
                "refiner": None if refiner is None else SdxlRefinerConfig(**refiner),
            }
        )


@dataclass(frozen=True)
class Sd3Config:
    """What an SD 3 / 3.5 pipeline (``StableDiffusion3Pipeline``) adds: a patchified transformer with a bounded
    position table, three text encoders, pooled text, flow matching, a shifted VAE latent.

    The transformer's ``encoder_hidden_states`` are [CLIP states; T5 states] along the sequence: both CLIPs'
    penultimate hidden states concatenated along the width and zero-padded to ``joint_attention_dim``
    (``text_max_length`` rows), then T5's last hidden state (``t5_max_length`` rows; zeros without T5).
    ``pooled_projections`` are both CLIPs' projected pooled outputs, concatenated.

    Attributes:
        text_hidden_sizes: widths of ``text_encoder`` and ``text_encoder_2`` (CLIP with projection).
        pooled_sizes: widths of their projected pooled outputs (``text_embeds``).
        t5_hidden_size: ``text_encoder_3``'s width (``d_model``), or None for a pipeline without T5.
        t5_max_length: T5's token rows, the pipeline's ``max_sequence_length`` (its ``__call__`` default unless
            export sets it).
        joint_attention_dim: the transformer's text width (T5's width where T5 is present).
        patch_size: the transformer's patch side, in latent pixels.
        pos_embed_max_size: the side of its position table, in patches: the largest latent side is this x patch.
        vae_shift_factor: the VAE's ``shift_factor``: latents are decoded as latents / scaling + shift.
        default_guidance_scale: the pipeline's ``__call__`` default.
        skip_guidance_layers: the transformer blocks a skip-layer guidance row skips (``StableDiffusion3Pipeline``'s
            ``skip_guidance_layers``), chosen at export (``--skip-guidance-layers``); empty: no skip-layer guidance.
        scheduler_names: the flow schedulers ``StableDiffusion3Pipeline`` runs on this model's scheduler config
            (found at export: all but ``flow_heun`` under dynamic shifting, whose ``set_timesteps`` takes no ``mu``).
    """

    text_hidden_sizes: tuple[int, int]
    pooled_sizes: tuple[int, int]
    t5_hidden_size: int | None
    t5_max_length: int
    joint_attention_dim: int
    patch_size: int
    pos_embed_max_size: int
    vae_shift_factor: float
    default_guidance_scale: float
    skip_guidance_layers: tuple[int, ...] = ()
    scheduler_names: tuple[str, ...] = interface.FLOW_SCHEDULER_NAMES

    def __post_init__(self) -> None:
        if self.t5_hidden_size is not None and self.t5_hidden_size != self.joint_attention_dim:
            raise ValueError(
                f"T5's width {self.t5_hidden_size} must be the transformer's joint_attention_dim "
                f"{self.joint_attention_dim} (their states are joined along the sequence)"
            )
        if sum(self.text_hidden_sizes) > self.joint_attention_dim:
            raise ValueError(
                f"the CLIP states ({' + '.join(map(str, self.text_hidden_sizes))} wide) must fit the transformer's "
                f"joint_attention_dim {self.joint_attention_dim} (diffusers zero-pads them to it)"
            )

    @property
    def has_t5(self) -> bool:
        return self.t5_hidden_size is not None

    @property
    def pooled_projection_dim(self) -> int:
        return sum(self.pooled_sizes)

    def max_latent_side(self) -> int:
        """The largest latent side the position table takes (diffusers' ``PatchEmbed.cropped_pos_embed``)."""
        return self.pos_embed_max_size * self.patch_size

    def axis_sizes(self, *, clip_length: int) -> dict[str, int]:
        """Sizes of the fixed axes of the family's component specs (see :mod:`sdtriton.components`)."""
        return {
            "hidden_1": self.text_hidden_sizes[0],
            "hidden_2": self.text_hidden_sizes[1],
            "pooled_1": self.pooled_sizes[0],
            "pooled_2": self.pooled_sizes[1],
            "t5_sequence": self.t5_max_length,
            "t5_hidden": self.t5_hidden_size or self.joint_attention_dim,
            "joint_sequence": clip_length + self.t5_max_length,
            "joint_hidden": self.joint_attention_dim,
            "pooled": self.pooled_projection_dim,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Sd3Config:
        return cls(
            **{
                **values,
                "text_hidden_sizes": tuple(values["text_hidden_sizes"]),
                "pooled_sizes": tuple(values["pooled_sizes"]),
                "skip_guidance_layers": tuple(values.get("skip_guidance_layers", ())),
                "scheduler_names": tuple(values.get("scheduler_names", interface.FLOW_SCHEDULER_NAMES)),
            }
        )


@dataclass(frozen=True)
class FluxConfig:
    """What a FLUX.1 pipeline (``FluxPipeline``) adds: 2x2-packed latents with rotary positions (no size table),
    CLIP's pooled output and T5's states as the text, flow matching, a shifted VAE latent, guidance embedded in the
    transformer (dev) or none (schnell), never classifier-free rows.

    The transformer takes the packed latents [B, (h/2)(w/2), 4C], T5's last hidden state (``encoder_hidden_states``,
    ``t5_max_length`` rows), CLIP's pooled output (``pooled_projections``), ``timestep`` = t / 1000, the token
    positions ``img_ids`` / ``txt_ids`` and, when guidance-distilled, ``guidance`` = the guidance scale.

    Attributes:
        pooled_size: CLIP's width (``CLIPTextModel.pooler_output``), the transformer's ``pooled_projection_dim``.
        t5_hidden_size: T5's width (``d_model``), the transformer's ``joint_attention_dim``.
        t5_max_length: T5's token rows, the pipeline's ``max_sequence_length`` (its ``__call__`` default 512 unless
            export sets it; FLUX.1-schnell's model card uses 256).
        guidance_embeds: whether the transformer embeds the guidance scale (FLUX.1-dev) or ignores it (schnell).
        vae_shift_factor: the VAE's ``shift_factor``: latents are decoded as latents / scaling + shift.
        default_guidance_scale: the pipeline's ``__call__`` default (3.5) when guidance is embedded, else 0 (none).
        scheduler_names: the flow schedulers that reproduce ``FluxPipeline`` on this model's scheduler config (it
            passes ``sigmas=`` and ``mu=`` to ``set_timesteps``; found at export by running diffusers' own
            ``retrieve_timesteps`` as the pipeline does).
    """

    pooled_size: int
    t5_hidden_size: int
    t5_max_length: int
    guidance_embeds: bool
    vae_shift_factor: float
    default_guidance_scale: float
    scheduler_names: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scheduler_names) - set(interface.FLOW_SCHEDULER_NAMES))
        if unknown or not self.scheduler_names:
            raise ValueError(
                f"scheduler_names must be some of {', '.join(interface.FLOW_SCHEDULER_NAMES)}, got "
                f"{list(self.scheduler_names)}"
            )

    def axis_sizes(self, *, latent_channels: int) -> dict[str, int]:
        """Sizes of the fixed axes of the family's component specs (see :mod:`sdtriton.components`)."""
        return {
            "pooled": self.pooled_size,
            "t5_sequence": self.t5_max_length,
            "t5_hidden": self.t5_hidden_size,
            "packed_channels": latent_channels * FLUX_PACKING**2,
            "id_axes": FLUX_ID_AXES,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FluxConfig:
        return cls(**{**values, "scheduler_names": tuple(values["scheduler_names"])})


# diffusers' AutoencoderKL.tile_overlap_factor: an attribute its __init__ sets to this, not a config key.
VAE_TILE_OVERLAP_FACTOR = 0.25


@dataclass(frozen=True)
class VaeTiling:
    """The tiles of a tiled VAE decode and encode, as ``AutoencoderKL.enable_tiling()`` makes diffusers compute them.

    Attributes:
        sample_size: a tile's side in pixels, the VAE config's ``sample_size`` (diffusers' ``tile_sample_min_size``).
        latent_size: a tile's side in latents, ``sample_size / 2 ** (down blocks - 1)`` (``tile_latent_min_size``).
        tile_above_px: images wider or taller than this are decoded in tiles whatever the request says (export
            ``--vae-tile-above``; default ``sample_size``); 0: only requests that send ``vae_tiling`` true.
        overlap_factor: the share of a tile its neighbours overlap (``tile_overlap_factor``).
    """

    sample_size: int
    latent_size: int
    tile_above_px: int
    overlap_factor: float = VAE_TILE_OVERLAP_FACTOR

    def __post_init__(self) -> None:
        if self.tile_above_px < 0:
            raise ValueError(f"tile_above_px must be at least 0 (0: only per request), got {self.tile_above_px}")
        if int(self.latent_size * (1 - self.overlap_factor)) < 1:
            raise ValueError(f"a VAE tile of {self.latent_size} latents a side leaves no stride between tiles")

    @classmethod
    def of_vae(cls, vae_config: Any) -> VaeTiling:
        """As ``AutoencoderKL.__init__`` derives them (a list ``sample_size``: its first side)."""
        sample_size = vae_config.sample_size
        side = int(sample_size[0] if isinstance(sample_size, list | tuple) else sample_size)
        return cls(
            sample_size=side,
            latent_size=int(side / 2 ** (len(vae_config.block_out_channels) - 1)),
            tile_above_px=side,
        )

    def always_above(self, *, width: int, height: int) -> bool:
        """Whether an image of this size is decoded in tiles whatever its request says."""
        return 0 < self.tile_above_px < max(width, height)

    def splits(self, *, latent_height: int, latent_width: int) -> bool:
        """diffusers' ``_decode``: latents larger than one tile on either side are decoded in tiles."""
        return latent_height > self.latent_size or latent_width > self.latent_size


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter exported into the networks (``sdtriton export --lora NAME=PATH``).

    Attributes:
        name: what a request's ``lora`` names it by; its column in every adapted network's ``lora_scales`` input is
            its place in :attr:`PipelineConfig.loras`.
        components: the networks (model names) it has layers in: the UNet or transformer, text encoders.
    """

    name: str
    components: tuple[str, ...]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraAdapter:
        return cls(name=str(values["name"]), components=tuple(values["components"]))


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for, set at export (the fields of the same names of :class:`PipelineConfig`)."""

    max_inference_steps: int = DEFAULT_MAX_INFERENCE_STEPS
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES
    max_pixels: int | None = None


@dataclass(frozen=True)
class PipelineConfig:
    """Geometry and defaults of one exported model (SD 1.x/2.x, SDXL with ``sdxl`` set, SD 3 / 3.5 with ``sd3``
    set, FLUX.1 with ``flux`` set)."""

    latent_channels: int
    vae_scale_factor: int
    size_multiple: int
    default_height: int
    default_width: int
    max_height: int
    max_width: int
    vae_scaling_factor: float
    text_max_length: int
    text_hidden_size: int
    default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    # The model's own settings per scheduler key (see sdtriton.schedulers.SCHEDULER_OVERRIDES_FILE_NAME).
    scheduler_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Latents -> preview RGB, [C + 1][3] (last row: bias), fitted at export; empty: the model has no previews.
    latent_rgb_projection: list[list[float]] = field(default_factory=list)
    # The VAE's own settings: fp32 decoding under fp16 engines (SDXL's VAE overflows in fp16), and a per-channel
    # latent mean and std where the VAE has them (the latents are then de-normalized as diffusers does).
    vae_force_upcast: bool = False
    vae_latents_mean: list[float] | None = None
    vae_latents_std: list[float] | None = None
    sdxl: SdxlConfig | None = None
    sd3: Sd3Config | None = None
    flux: FluxConfig | None = None
    # One image size only (the default): engines built with static spatial shapes (export --trt-static-shapes)
    # take no other, so requests of another size are refused by name.
    fixed_size: bool = False
    # Per-request limits set at export (sdtriton export --max-steps/--max-prompt-bytes/--max-pixels), enforced with
    # INVALID_ARG naming the field: denoising steps, UTF-8 bytes of each prompt, width x height of each image
    # (None: max_width x max_height, the sides' own limit).
    max_inference_steps: int = DEFAULT_MAX_INFERENCE_STEPS
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES
    max_pixels: int | None = None
    # Tiled VAE decoding (None: a repository exported before it, which decodes every image in one call).
    vae_tiling: VaeTiling | None = None
    # LoRA adapters exported into the networks, in the order of their lora_scales columns (empty: none).
    loras: tuple[LoraAdapter, ...] = ()
    # The UNet's input channels where they are not the latents' (None): a dedicated inpainting UNet takes
    # latents + mask + masked-image latents (StableDiffusionInpaintPipeline's 9 = 4 + 1 + 4).
    unet_in_channels: int | None = None

    @property
    def inpainting_unet(self) -> bool:
        """Whether the UNet is a dedicated inpainting one (it then needs a mask_image in every request)."""
        return self.unet_in_channels == inpainting_unet_channels(self.latent_channels)

    @property
    def lora_names(self) -> tuple[str, ...]:
        return tuple(adapter.name for adapter in self.loras)

    def lora_components(self) -> frozenset[str]:
        """The networks some adapter has layers in: those take a ``lora_scales`` input."""
        return frozenset(name for adapter in self.loras for name in adapter.components)

    def lora_scales(self, lora: str | None, scale: float, *, component: str) -> list[float]:
        """One row of ``component``'s ``lora_scales``: ``scale`` in the column of the adapter ``lora`` where it has
        layers in that network, 0 elsewhere (and everywhere without an adapter)."""
        return [scale if adapter.name == lora and component in adapter.components else 0.0 for adapter in self.loras]

    def lora_touches(self, lora: str | None, component: str) -> bool:
        """Whether the adapter ``lora`` has layers in ``component`` (its outputs then depend on the adapter)."""
        return any(adapter.name == lora and component in adapter.components for adapter in self.loras)

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        """The schedulers a request may name for this model: for SD 3 and FLUX the flow-matching ones their pipeline
        runs on the model's scheduler config (found at export), else SD's."""
        if self.flux is not None:
            return self.flux.scheduler_names
        return self.sd3.scheduler_names if self.sd3 is not None else interface.SCHEDULER_NAMES

    @property
    def default_guidance_scale(self) -> float:
        """The guidance a request omitting it gets: its diffusers pipeline's ``__call__`` default."""
        if self.flux is not None:
            return self.flux.default_guidance_scale
        return self.sd3.default_guidance_scale if self.sd3 is not None else interface.DEFAULT_GUIDANCE_SCALE

    @property
    def classifier_free_guidance(self) -> bool:
        """Whether ``guidance_scale`` > 1 means classifier-free guidance ([negative, prompt] rows). FLUX's guidance is
        embedded in the transformer (dev) or absent (schnell): one row, the negative prompt unused."""
        return self.flux is None

    @property
    def flow_matching(self) -> bool:
        """Whether the model is a flow-matching transformer (SD 3, FLUX): latents drawn unscaled, no
        ``scale_model_input``, nothing but the sample passed to the scheduler's ``step``."""
        return self.sd3 is not None or self.flux is not None

    @property
    def vae_shift_factor(self) -> float:
        """The VAE's ``shift_factor`` (SD 3, FLUX), added after dividing by the scaling factor; 0 elsewhere."""
        for family in (self.sd3, self.flux):
            if family is not None:
                return family.vae_shift_factor
        return 0.0

    @property
    def default_inpaint_strength(self) -> float:
        """The strength of an inpainting request without one: its pipeline's ``__call__`` default."""
        return INPAINT_STRENGTH_DEFAULTS[self.family]

    @property
    def family(self) -> str:
        if self.flux is not None:
            return FLUX_FAMILY
        if self.sd3 is not None:
            return SD3_FAMILY
        return SDXL_FAMILY if self.sdxl is not None else SD_FAMILY

    @property
    def description(self) -> interface.ModelDescription:
        """What a caller is told of this model (its entries' config parameters, the gateway's ``GET /v1/models``)."""
        return interface.ModelDescription(
            family=self.family,
            scheduler_names=self.scheduler_names,
            default_width=self.default_width,
            default_height=self.default_height,
            size_multiple=self.size_multiple,
            default_num_inference_steps=self.default_num_inference_steps,
            max_inference_steps=self.max_inference_steps,
        )

    @property
    def has_refiner(self) -> bool:
        return self.sdxl is not None and self.sdxl.refiner is not None

    def __post_init__(self) -> None:
        if not 1 <= self.max_inference_steps <= HARD_MAX_INFERENCE_STEPS:
            raise ValueError(
                f"max_inference_steps must be in 1..{HARD_MAX_INFERENCE_STEPS}, got {self.max_inference_steps}"
            )
        if not 1 <= self.max_prompt_bytes <= HARD_MAX_PROMPT_BYTES:
            raise ValueError(f"max_prompt_bytes must be in 1..{HARD_MAX_PROMPT_BYTES}, got {self.max_prompt_bytes}")
        if not 1 <= self.default_num_inference_steps <= self.max_inference_steps:
            raise ValueError(
                f"default_num_inference_steps must be in 1..max_inference_steps ({self.max_inference_steps}), got "
                f"{self.default_num_inference_steps}"
            )
        default_pixels = self.default_width * self.default_height
        if self.max_pixels is not None and self.max_pixels < default_pixels:
            raise ValueError(
                f"max_pixels must allow the default image ({self.default_width} x {self.default_height} = "
                f"{default_pixels} pixels), got {self.max_pixels}"
            )
        projection = self.latent_rgb_projection
        if not projection:
            return
        rows, columns = len(projection), sorted({len(row) for row in projection})
        if rows != self.latent_channels + 1 or columns != [PREVIEW_RGB_CHANNELS]:
            raise ValueError(
                f"latent_rgb_projection must be empty or [{self.latent_channels + 1}][{PREVIEW_RGB_CHANNELS}] "
                f"(a row per latent channel, then the bias), got {rows} rows of {columns} values"
            )
        if not all(math.isfinite(value) for row in projection for value in row):
            raise ValueError("latent_rgb_projection holds NaN or infinite values")

    @property
    def min_size(self) -> int:
        return self.size_multiple

    @property
    def pixel_limit(self) -> int:
        """Most pixels (width x height) one image may have."""
        return self.max_width * self.max_height if self.max_pixels is None else self.max_pixels

    def latent_shape(self, *, height: int, width: int) -> tuple[int, int, int, int]:
        """Shape of one item's latents, [1, C, H/f, W/f], as diffusers draws them."""
        return (1, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown pipeline config keys: {sorted(unknown)}")
        if values.get("sdxl") is not None:
            values["sdxl"] = SdxlConfig.from_dict(values["sdxl"])
        if values.get("sd3") is not None:
            values["sd3"] = Sd3Config.from_dict(values["sd3"])
        if values.get("flux") is not None:
            values["flux"] = FluxConfig.from_dict(values["flux"])
        if values.get("vae_tiling") is not None:
            values["vae_tiling"] = VaeTiling(**values["vae_tiling"])
        values["loras"] = tuple(LoraAdapter.from_dict(adapter) for adapter in values.get("loras", ()))
        return cls(**values)

    def save(self, directory: Path) -> Path:
        path = directory / PIPELINE_CONFIG_FILE_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: Path) -> PipelineConfig:
        return cls.from_json((directory / PIPELINE_CONFIG_FILE_NAME).read_text())


def inpainting_unet_channels(latent_channels: int) -> int:
    """The input channels of a dedicated inpainting UNet: latents, the mask, the masked image's latents."""
    return 2 * latent_channels + 1


def _unet_in_channels(unet_config: Any, vae_config: Any) -> int | None:
    """None for a UNet that takes the latents alone; the channel count of an inpainting UNet (as
    ``StableDiffusionInpaintPipeline`` checks them: 4 or latents + mask + masked-image latents)."""
    latent_channels = int(vae_config.latent_channels)
    in_channels = int(unet_config.in_channels)
    if in_channels == latent_channels:
        return None
    if in_channels != inpainting_unet_channels(latent_channels):
        raise ValueError(
            f"the UNet takes {in_channels} channels: it must take the VAE's {latent_channels} latent channels, or "
            f"{inpainting_unet_channels(latent_channels)} (an inpainting UNet: latents, mask, masked-image latents)"
        )
    return in_channels


def pipeline_config_from_components(
    *,
    unet_config: Any,
    vae_config: Any,
    text_encoder_config: Any,
    tokenizer_max_length: int,
    scheduler_config: dict[str, Any],
    scheduler_overrides: dict[str, dict[str, Any]] | None = None,
    max_size_factor: int = 2,
    default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    sdxl: SdxlConfig | None = None,
    limits: RequestLimits | None = None,
) -> PipelineConfig:
    """Derives the config the way diffusers' ``StableDiffusionPipeline`` derives the same numbers.

    For SDXL, ``sdxl`` carries what the second encoder and the size conditioning add, and the UNet's
    ``encoder_hidden_states`` width is its ``cross_attention_dim`` (both encoders' widths together).
    """
    if getattr(unet_config, "time_cond_proj_dim", None) is not None:
        raise ValueError("UNets with a guidance embedding (time_cond_proj_dim, e.g. LCM) are not supported")
    vae_scale_factor = _vae_scale_factor(vae_config)
    unet_downsamplings = len(unet_config.down_block_types) - 1
    default_size = unet_config.sample_size * vae_scale_factor
    return PipelineConfig(
        latent_channels=int(vae_config.latent_channels),
        unet_in_channels=_unet_in_channels(unet_config, vae_config),
        vae_scale_factor=vae_scale_factor,
        size_multiple=vae_scale_factor * 2**unet_downsamplings,
        default_height=default_size,
        default_width=default_size,
        max_height=default_size * max_size_factor,
        max_width=default_size * max_size_factor,
        text_max_length=int(tokenizer_max_length),
        text_hidden_size=int(unet_config.cross_attention_dim if sdxl is not None else text_encoder_config.hidden_size),
        default_num_inference_steps=default_num_inference_steps,
        scheduler_config={k: v for k, v in dict(scheduler_config).items()},
        scheduler_overrides={name: dict(settings) for name, settings in (scheduler_overrides or {}).items()},
        sdxl=sdxl,
        **_vae_settings(vae_config),
        **dataclasses.asdict(limits or RequestLimits()),
    )


def sd3_pipeline_config(
    *,
    transformer_config: Any,
    vae_config: Any,
    tokenizer_max_length: int,
    scheduler_config: dict[str, Any],
    sd3: Sd3Config,
    default_num_inference_steps: int,
    scheduler_overrides: dict[str, dict[str, Any]] | None = None,
    max_size_factor: int = 2,
    limits: RequestLimits | None = None,
) -> PipelineConfig:
    """Derives an SD 3 config as ``StableDiffusion3Pipeline`` does: the native size is the transformer's
    ``sample_size`` x the VAE scale factor, sides are multiples of the VAE scale factor x ``patch_size``
    (``check_inputs``), and no latent side may exceed the position table (``pos_embed_max_size`` patches)."""
    vae_scale_factor = _vae_scale_factor(vae_config)
    size_multiple = vae_scale_factor * sd3.patch_size
    default_size = transformer_config.sample_size * vae_scale_factor
    table_limit = sd3.max_latent_side() * vae_scale_factor
    max_size = min(default_size * max_size_factor, table_limit) // size_multiple * size_multiple
    if max_size < default_size:
        raise ValueError(
            f"the transformer's position table ({sd3.pos_embed_max_size} patches of {sd3.patch_size}) is smaller "
            f"than its native {default_size} px"
        )
    return PipelineConfig(
        latent_channels=int(transformer_config.in_channels),
        vae_scale_factor=vae_scale_factor,
        size_multiple=size_multiple,
        default_height=default_size,
        default_width=default_size,
        max_height=max_size,
        max_width=max_size,
        text_max_length=int(tokenizer_max_length),
        text_hidden_size=sd3.joint_attention_dim,
        default_num_inference_steps=default_num_inference_steps,
        scheduler_config=dict(scheduler_config),
        scheduler_overrides={name: dict(settings) for name, settings in (scheduler_overrides or {}).items()},
        sd3=sd3,
        **_vae_settings(vae_config),
        **dataclasses.asdict(limits or RequestLimits()),
    )


def flux_pipeline_config(
    *,
    vae_config: Any,
    default_sample_size: int,
    tokenizer_max_length: int,
    scheduler_config: dict[str, Any],
    flux: FluxConfig,
    default_num_inference_steps: int,
    scheduler_overrides: dict[str, dict[str, Any]] | None = None,
    max_size_factor: int = 2,
    limits: RequestLimits | None = None,
) -> PipelineConfig:
    """Derives a FLUX config as ``FluxPipeline`` does: the native size is its ``default_sample_size`` x the VAE scale
    factor, sides are multiples of the VAE scale factor x 2 (the packing), and rotary positions bound no size."""
    vae_scale_factor = _vae_scale_factor(vae_config)
    size_multiple = vae_scale_factor * FLUX_PACKING
    default_size = default_sample_size * vae_scale_factor
    return PipelineConfig(
        latent_channels=int(vae_config.latent_channels),
        vae_scale_factor=vae_scale_factor,
        size_multiple=size_multiple,
        default_height=default_size,
        default_width=default_size,
        max_height=default_size * max_size_factor,
        max_width=default_size * max_size_factor,
        text_max_length=int(tokenizer_max_length),
        text_hidden_size=flux.t5_hidden_size,
        default_num_inference_steps=default_num_inference_steps,
        scheduler_config=dict(scheduler_config),
        scheduler_overrides={name: dict(settings) for name, settings in (scheduler_overrides or {}).items()},
        flux=flux,
        **_vae_settings(vae_config),
        **dataclasses.asdict(limits or RequestLimits()),
    )


def _vae_scale_factor(vae_config: Any) -> int:
    return 2 ** (len(vae_config.block_out_channels) - 1)


def _vae_settings(vae_config: Any) -> dict[str, Any]:
    return {
        "vae_scaling_factor": float(vae_config.scaling_factor),
        "vae_force_upcast": bool(getattr(vae_config, "force_upcast", False)),
        "vae_latents_mean": _optional_floats(getattr(vae_config, "latents_mean", None)),
        "vae_latents_std": _optional_floats(getattr(vae_config, "latents_std", None)),
        "vae_tiling": VaeTiling.of_vae(vae_config),
    }


def _optional_floats(values: Any) -> list[float] | None:
    return None if values is None else [float(value) for value in values]
