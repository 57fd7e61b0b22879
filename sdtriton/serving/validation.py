"""Checks every public input of a request and turns it into typed parameters, or names what is wrong.

Each error names the field and its allowed range; the Triton adapters send it back as ``INVALID_ARG``.
Scheduler names are looked up in a fixed table only: nothing a request sends is imported or evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdtriton import interface
from sdtriton.pipeline_config import (
    FLUX_FAMILY,
    SD3_FAMILY,
    SD_FAMILY,
    SDXL_FAMILY,
    PipelineConfig,
)
from sdtriton.schedulers import (
    image_to_image_noise_method,
    image_to_image_skipped_steps,
    scheduler_class_from_config,
    scheduler_key_for_class,
    scheduler_steps_minimum,
)
from sdtriton.serving.errors import InvalidInputError

_MAX_ECHOED_CHARS = 40
# The families whose image-to-image pipelines the engine follows (StableDiffusionImg2ImgPipeline and its kin).
IMAGE_TO_IMAGE_FAMILIES = (SD_FAMILY, SDXL_FAMILY, SD3_FAMILY, FLUX_FAMILY)


@dataclass(frozen=True)
class GenerationParams:
    """Validated parameters of one image."""

    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    scheduler: str | None  # None: the model's own scheduler
    refiner_fraction: float = 0.0  # SDXL with a refiner: the share of the denoising the refiner does
    # Whether the model's guidance is classifier-free (PipelineConfig.classifier_free_guidance); FLUX's is not.
    classifier_free: bool = True
    # FLUX's true classifier-free guidance in effect: the request's true_cfg_scale where it is above 1 and a negative
    # prompt was sent (FluxPipeline's do_true_cfg), else 1 (off).
    true_cfg_scale: float = interface.DEFAULT_TRUE_CFG_SCALE
    # SD 3 exported with skip-guidance layers: skip-layer guidance's scale (0: off) and its window, shares of the steps.
    skip_layer_guidance_scale: float = 0.0
    skip_layer_guidance_start: float = interface.DEFAULT_SKIP_LAYER_GUIDANCE_START
    skip_layer_guidance_stop: float = interface.DEFAULT_SKIP_LAYER_GUIDANCE_STOP
    # Whether the VAE decodes the image in tiles (PipelineConfig.vae_tiling), as diffusers with vae.enable_tiling().
    vae_tiled: bool = False
    # Image-to-image: the share of the denoising redone from the input image (None: text-to-image).
    strength: float | None = None
    # Inpainting: the image-to-image request sent a mask (StableDiffusionInpaintPipeline and its SDXL twin).
    inpaint: bool = False
    # The LoRA adapter of this image (None: none) and its weight (the default where there is none, so that requests
    # without an adapter are equal whatever scale they sent).
    lora: str | None = None
    lora_scale: float = interface.DEFAULT_LORA_SCALE

    @property
    def uses_classifier_free_guidance(self) -> bool:
        """Whether each evaluation sends [negative, prompt] rows: as diffusers, guidance <= 1 turns classifier-free
        guidance off; FLUX embeds its guidance (dev) or has none, and has rows only with true CFG."""
        return (self.classifier_free and self.guidance_scale > 1.0) or self.true_cfg_scale > 1.0

    @property
    def cfg_scale(self) -> float:
        """The scale the rows are combined with, negative + scale * (prompt - negative): the guidance scale, or
        FLUX's true_cfg_scale."""
        return self.guidance_scale if self.classifier_free else self.true_cfg_scale


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_ECHOED_CHARS else text[:_MAX_ECHOED_CHARS] + "..."


def decode_prompt(field: str, raw: bytes | str, *, max_bytes: int = interface.MAX_PROMPT_BYTES) -> str:
    """Decodes a prompt tensor item: UTF-8, at most ``max_bytes`` bytes (the export's limit)."""
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise InvalidInputError(field, f"must be at most {max_bytes} bytes of UTF-8, got {len(data)} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            field, f"must be valid UTF-8 text of at most {max_bytes} bytes ({error.reason})"
        ) from None


def _int_in_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInputError(field, f"must be an integer in {low}..{high}, got {_echo(value)}")
    return value


def _guidance_scale(value: float) -> float:
    field = interface.GUIDANCE_SCALE.name
    low, high = interface.MIN_GUIDANCE_SCALE, interface.MAX_GUIDANCE_SCALE
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInputError(field, f"must be a finite number in {low:g}..{high:g}, got {_echo(value)}")
    return value


def _image_side(field: str, value: int, *, multiple: int, maximum: int, only: int | None, side: str = "") -> int:
    """Checks one side of the image; ``side`` names it where the field is the whole image (``input_image``)."""
    subject = f"its {side} " if side else ""
    if only is not None and value != only:
        raise InvalidInputError(
            field,
            f"{subject}must be {only}: this repository's engines were built for one image size "
            f"(export --trt-static-shapes), got {_echo(value)}",
        )
    if not (multiple <= value <= maximum and value % multiple == 0):
        raise InvalidInputError(
            field, f"{subject}must be a positive multiple of {multiple} in {multiple}..{maximum}, got {_echo(value)}"
        )
    return value


def _scheduler(raw: bytes | str, config: PipelineConfig) -> str:
    field = interface.SCHEDULER.name
    name = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    allowed = config.scheduler_names
    if name not in allowed:
        raise InvalidInputError(
            field, f"must be one of {', '.join(allowed)} (this {config.family} model's), got {_echo(name)}"
        )
    return name


def _refiner_fraction(value: float, config: PipelineConfig) -> float:
    field = interface.REFINER_FRACTION.name
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise InvalidInputError(field, f"must be 0 (off) or a number above 0 and below 1, got {_echo(value)}")
    if value > 0.0 and not config.has_refiner:
        raise InvalidInputError(field, "must be 0: this repository was exported without a refiner")
    return value


def _true_cfg_scale(value: float, config: PipelineConfig, *, negative_given: bool) -> float:
    """FLUX's true CFG scale in effect: as FluxPipeline, on only above 1 with a negative prompt sent (an empty one
    counts: ``negative_prompt is not None``). Models whose guidance_scale is classifier-free already take 1 only."""
    field = interface.TRUE_CFG_SCALE.name
    low, high = interface.MIN_GUIDANCE_SCALE, interface.MAX_GUIDANCE_SCALE
    off = interface.DEFAULT_TRUE_CFG_SCALE
    if config.classifier_free_guidance:
        if value != off:
            raise InvalidInputError(
                field,
                f"must be {off:g}: true classifier-free guidance is FLUX's; this {config.family} model's "
                f"{interface.GUIDANCE_SCALE.name} is classifier-free already, got {_echo(value)}",
            )
        return off
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInputError(field, f"must be a finite number in {low:g}..{high:g}, got {_echo(value)}")
    return value if value > off and negative_given else off


def _skip_layer_guidance_scale(value: float, config: PipelineConfig) -> float:
    field = interface.SKIP_LAYER_GUIDANCE_SCALE.name
    high = interface.MAX_GUIDANCE_SCALE
    if not (math.isfinite(value) and 0.0 <= value <= high):
        raise InvalidInputError(field, f"must be 0 (off) or a finite number up to {high:g}, got {_echo(value)}")
    if value > 0.0 and (config.sd3 is None or not config.sd3.skip_guidance_layers):
        raise InvalidInputError(
            field,
            "must be 0: this repository was exported without skip-guidance layers (SD 3: export "
            "--skip-guidance-layers)",
        )
    return value


def _share(tensor: interface.PublicTensor, value: float | None, default: float) -> float:
    if value is None:
        return default  # the pipeline's own default as it writes it, not its float32 rounding
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidInputError(tensor.name, f"must be a number in 0..1, got {_echo(value)}")
    return value


def _vae_tiled(value: bool | None, config: PipelineConfig, *, width: int, height: int) -> bool:
    """Tiles where the request asks, and always above the export's size (one tile's memory is what the VAE holds)."""
    field = interface.VAE_TILING.name
    tiling = config.vae_tiling
    if tiling is None:
        if value:
            raise InvalidInputError(
                field, "must be false or omitted: this repository was exported without VAE tiling (export it again)"
            )
        return False
    always = tiling.always_above(width=width, height=height)
    if value is None:
        return always
    if not value and always:
        raise InvalidInputError(
            field,
            f"must be true or omitted for images over {tiling.tile_above_px} px a side (this repository decodes "
            f"them in tiles of {tiling.sample_size} px: export --vae-tile-above), got false for {width} x {height}",
        )
    return bool(value)


def _lora(raw: bytes | str | None, config: PipelineConfig) -> str | None:
    field = interface.LORA.name
    name = "" if raw is None else raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if not name:
        return None
    if not config.loras:
        raise InvalidInputError(
            field,
            f"must be empty: this repository was exported without LoRA adapters (export --lora), got {_echo(name)}",
        )
    if name not in config.lora_names:
        raise InvalidInputError(
            field,
            f"must be one of {', '.join(config.lora_names)} (the adapters this {config.family} repository was "
            f"exported with) or empty, got {_echo(name)}",
        )
    return name


def _lora_scale(value: float | None, lora: str | None) -> float:
    field = interface.LORA_SCALE.name
    low, high = interface.MIN_LORA_SCALE, interface.MAX_LORA_SCALE
    scale = interface.DEFAULT_LORA_SCALE if value is None else float(value)
    if not (math.isfinite(scale) and low <= scale <= high):
        raise InvalidInputError(field, f"must be a finite number in {low:g}..{high:g}, got {_echo(value)}")
    return scale if lora is not None else interface.DEFAULT_LORA_SCALE


def _enough_steps_for_scheduler(params: GenerationParams, config: PipelineConfig) -> None:
    """Some schedulers cannot set up fewer than a few steps (PNDM with its Runge-Kutta warm-up): the fewest are read
    from the scheduler each stage builds (its config, the model's overrides), as the denoising loop will build it."""
    scheduler_configs = [config.scheduler_config]
    if params.refiner_fraction > 0 and config.sdxl is not None and config.sdxl.refiner is not None:
        scheduler_configs.append(config.sdxl.refiner.scheduler_config)
    for scheduler_config in scheduler_configs:
        minimum = scheduler_steps_minimum(scheduler_config, params.scheduler, config.scheduler_overrides)
        if minimum is None or params.num_inference_steps >= minimum.steps:
            continue
        if params.scheduler is not None:
            which = f"scheduler {params.scheduler!r}"
        else:
            own = scheduler_class_from_config(scheduler_config)
            which = f"this model's own scheduler {scheduler_key_for_class(own) or own.__name__!r}"
        raise InvalidInputError(
            interface.NUM_INFERENCE_STEPS.name,
            f"must be at least {minimum.steps} with {which} on this model ({minimum.reason}), "
            f"got {params.num_inference_steps}",
        )


def _strength(value: float | None, config: PipelineConfig, *, num_inference_steps: int, inpaint: bool) -> float:
    """The strength as the client wrote it (a float32 on the wire is read back as its shortest decimal, so 0.7 is
    diffusers' 0.7, not 0.69999999), checked as the pipelines check it, and large enough that a step runs. Omitted:
    the pipeline's default (the inpainting pipelines' with a mask)."""
    field = interface.STRENGTH.name
    if value is None:
        return config.default_inpaint_strength if inpaint else interface.DEFAULT_STRENGTH
    strength = float(str(np.float32(value)))
    if not (math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise InvalidInputError(field, f"must be a number above 0 and at most 1, got {_echo(strength)}")
    skipped = image_to_image_skipped_steps(num_inference_steps, strength, flow_matching=config.flow_matching)
    if num_inference_steps - skipped < 1:
        raise InvalidInputError(
            field,
            f"must be at least {1 / num_inference_steps:g} with {num_inference_steps} inference steps: "
            f"int({interface.NUM_INFERENCE_STEPS.name} x {field}) steps run, and {_echo(strength)} runs none",
        )
    return strength


def _image_to_image_options(params: GenerationParams, config: PipelineConfig) -> None:
    """What an image-to-image request may not combine with, as its pipeline: a scheduler without the noising method
    the pipeline calls (SD 3's multistep solvers), SD 3.5's skip-layer guidance (not in its img2img pipeline), the
    SDXL refiner with a mask."""
    if not image_to_image_noise_method(config.scheduler_config, params.scheduler):
        able = [name for name in config.scheduler_names if image_to_image_noise_method(config.scheduler_config, name)]
        raise InvalidInputError(
            interface.SCHEDULER.name,
            f"must be one of {', '.join(able)} with an {interface.INPUT_IMAGE.name} on this {config.family} model (its "
            f"img2img pipeline noises the image with the scheduler's scale_noise), got {_echo(params.scheduler)}",
        )
    if params.skip_layer_guidance_scale > 0:
        raise InvalidInputError(
            interface.SKIP_LAYER_GUIDANCE_SCALE.name,
            f"must be 0 with an {interface.INPUT_IMAGE.name} "
            "(StableDiffusion3Img2ImgPipeline has no skip-layer guidance)",
        )
    if params.inpaint and params.refiner_fraction > 0:
        # diffusers' inpainting refiner recipe blends with the base's latents, not the input image's: not served.
        raise InvalidInputError(
            interface.REFINER_FRACTION.name,
            f"must be 0 (off) with a {interface.MASK_IMAGE.name}, got {params.refiner_fraction:g}",
        )


def _image_size(
    image_size: tuple[int, int], config: PipelineConfig, *, width: int | None, height: int | None
) -> tuple[int, int]:
    """(width, height) of an image-to-image request: the input image's, which width and height, when sent, equal."""
    field = interface.INPUT_IMAGE.name
    if config.family not in IMAGE_TO_IMAGE_FAMILIES:
        raise InvalidInputError(
            field, f"is not taken by this {config.family} model (image-to-image: {', '.join(IMAGE_TO_IMAGE_FAMILIES)})"
        )
    image_height, image_width = image_size
    for tensor, sent, side in ((interface.WIDTH, width, image_width), (interface.HEIGHT, height, image_height)):
        if sent is not None and int(sent) != side:
            raise InvalidInputError(
                tensor.name, f"must be the {field}'s {tensor.name} ({side}) or omitted, got {_echo(int(sent))}"
            )
    for tensor, side, maximum, only in (
        (interface.WIDTH, image_width, config.max_width, config.default_width),
        (interface.HEIGHT, image_height, config.max_height, config.default_height),
    ):
        _image_side(
            field,
            side,
            multiple=config.size_multiple,
            maximum=maximum,
            only=only if config.fixed_size else None,
            side=tensor.name,
        )
    return image_width, image_height


def _mask_size(mask_size: tuple[int, int] | None, image_size: tuple[int, int] | None, config: PipelineConfig) -> bool:
    """Whether the request inpaints: a mask of its input image's size (every family inpaints); an inpainting
    model (a 9-channel UNet) takes nothing else, as only diffusers' inpainting pipelines can run it."""
    field = interface.MASK_IMAGE.name
    if mask_size is None:
        if config.inpainting_unet:
            raise InvalidInputError(
                field,
                f"is required by this inpainting model (a {config.unet_in_channels}-channel UNet: latents, mask, "
                f"masked-image latents, as StableDiffusionInpaintPipeline): send an {interface.INPUT_IMAGE.name} "
                f"and a {field}",
            )
        return False
    if image_size is None:
        raise InvalidInputError(
            field, f"is taken with an {interface.INPUT_IMAGE.name} only: {interface.MASK_IMAGE.allowed}"
        )
    if tuple(mask_size) != tuple(image_size):
        raise InvalidInputError(
            field,
            f"must have the {interface.INPUT_IMAGE.name}'s height and width ({image_size[0]} x {image_size[1]}), "
            f"got {mask_size[0]} x {mask_size[1]}",
        )
    return True


def random_seed() -> int:
    return secrets.randbelow(interface.MAX_SEED + 1)


def parse_generation_params(
    *,
    config: PipelineConfig,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: bytes | str | None = None,
    refiner_fraction: float | None = None,
    true_cfg_scale: float | None = None,
    skip_layer_guidance_scale: float | None = None,
    skip_layer_guidance_start: float | None = None,
    skip_layer_guidance_stop: float | None = None,
    vae_tiling: bool | None = None,
    strength: float | None = None,
    lora: bytes | str | None = None,
    lora_scale: float | None = None,
    negative_given: bool = True,
    image_size: tuple[int, int] | None = None,
    mask_size: tuple[int, int] | None = None,
    draw_seed: Callable[[], int] = random_seed,
) -> GenerationParams:
    """Validates one item's parameters; an omitted one takes the model's default. ``negative_given``: whether the
    request sent a negative prompt (FLUX's true CFG needs one); ``image_size``: (height, width) of its input image
    (image-to-image; None: text-to-image), which is then the size drawn; ``mask_size``: (height, width) of its mask
    (inpainting; None: none)."""
    steps = config.default_num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    inpaint = _mask_size(mask_size, image_size, config)
    if image_size is None:
        if strength is not None:
            raise InvalidInputError(
                interface.STRENGTH.name,
                f"is taken with an {interface.INPUT_IMAGE.name} only: {interface.STRENGTH.allowed}",
            )
    else:
        width, height = _image_size(image_size, config, width=width, height=height)
    adapter = _lora(lora, config)
    params = GenerationParams(
        num_inference_steps=_int_in_range(
            interface.NUM_INFERENCE_STEPS.name,
            steps,
            interface.MIN_INFERENCE_STEPS,
            config.max_inference_steps,
        ),
        guidance_scale=_guidance_scale(
            config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        ),
        seed=draw_seed()
        if seed is None
        else _int_in_range(interface.SEED.name, int(seed), interface.MIN_SEED, interface.MAX_SEED),
        width=_image_side(
            interface.WIDTH.name,
            config.default_width if width is None else int(width),
            multiple=config.size_multiple,
            maximum=config.max_width,
            only=config.default_width if config.fixed_size else None,
        ),
        height=_image_side(
            interface.HEIGHT.name,
            config.default_height if height is None else int(height),
            multiple=config.size_multiple,
            maximum=config.max_height,
            only=config.default_height if config.fixed_size else None,
        ),
        scheduler=None if scheduler is None else _scheduler(scheduler, config),
        refiner_fraction=0.0 if refiner_fraction is None else _refiner_fraction(float(refiner_fraction), config),
        classifier_free=config.classifier_free_guidance,
        true_cfg_scale=_true_cfg_scale(
            interface.DEFAULT_TRUE_CFG_SCALE if true_cfg_scale is None else float(true_cfg_scale),
            config,
            negative_given=negative_given,
        ),
        skip_layer_guidance_scale=(
            0.0
            if skip_layer_guidance_scale is None
            else _skip_layer_guidance_scale(float(skip_layer_guidance_scale), config)
        ),
        skip_layer_guidance_start=_share(
            interface.SKIP_LAYER_GUIDANCE_START, skip_layer_guidance_start, interface.DEFAULT_SKIP_LAYER_GUIDANCE_START
        ),
        skip_layer_guidance_stop=_share(
            interface.SKIP_LAYER_GUIDANCE_STOP, skip_layer_guidance_stop, interface.DEFAULT_SKIP_LAYER_GUIDANCE_STOP
        ),
        strength=None
        if image_size is None
        else _strength(strength, config, num_inference_steps=steps, inpaint=inpaint),
        inpaint=inpaint,
        lora=adapter,
        lora_scale=_lora_scale(lora_scale, adapter),
    )
    pixels = params.width * params.height
    if pixels > config.pixel_limit:
        raise InvalidInputError(
            f"{interface.WIDTH.name} x {interface.HEIGHT.name}",
            f"must be at most {config.pixel_limit} pixels, got {params.width} x {params.height} = {pixels}",
        )
    _enough_steps_for_scheduler(params, config)
    if params.strength is not None:
        _image_to_image_options(params, config)
    vae_tiled = _vae_tiled(
        None if vae_tiling is None else bool(vae_tiling), config, width=params.width, height=params.height
    )
    return dataclasses.replace(params, vae_tiled=vae_tiled)
