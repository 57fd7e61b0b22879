"""Checks every public input of a request and turns it into typed parameters, or names what is wrong.

Each error names the field and its allowed range; the Triton adapters send it back as ``INVALID_ARG``.
Scheduler names are looked up in a fixed table only: nothing a request sends is imported or evaluated.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sdtriton import interface
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.schedulers import scheduler_class_from_config, scheduler_key_for_class, scheduler_steps_minimum
from sdtriton.serving.errors import InvalidInputError

_MAX_ECHOED_CHARS = 40


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


def _image_side(field: str, value: int, *, multiple: int, maximum: int, only: int | None) -> int:
    if only is not None and value != only:
        raise InvalidInputError(
            field,
            f"must be {only}: this repository's engines were built for one image size "
            f"(export --trt-static-shapes), got {_echo(value)}",
        )
    if not (multiple <= value <= maximum and value % multiple == 0):
        raise InvalidInputError(
            field, f"must be a positive multiple of {multiple} in {multiple}..{maximum}, got {_echo(value)}"
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
    lora: bytes | str | None = None,
    lora_scale: float | None = None,
    negative_given: bool = True,
    draw_seed: Callable[[], int] = random_seed,
) -> GenerationParams:
    """Validates one item's parameters; an omitted one takes the model's default. ``negative_given``: whether the
    request sent a negative prompt (FLUX's true CFG needs one)."""
    steps = config.default_num_inference_steps if num_inference_steps is None else int(num_inference_steps)
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
    return params
