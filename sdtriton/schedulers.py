"""The schedulers a request may name, and how one is built for each request.

A scheduler is stateful (step index, model-output history), so the pipeline builds a fresh one per
request from the model's own scheduler config, exactly as ``Scheduler.from_config(pipe.scheduler.config)``
does in diffusers. Requests name schedulers by key; keys map to classes through this fixed table only.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdtriton.interface import FLOW_SCHEDULER_NAMES, SCHEDULER_NAMES

SCHEDULERS: Mapping[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "lms": LMSDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
}
if tuple(SCHEDULERS) != SCHEDULER_NAMES:
    raise ImportError("sdtriton.schedulers.SCHEDULERS must map exactly interface.SCHEDULER_NAMES, in order")

# Models trained for flow matching (SD 3, FLUX), whose own scheduler is a FlowMatch* one: the schedulers a request
# may name there. The multistep solvers run on flow sigmas, as diffusers sets them up for these pipelines
# (``use_flow_sigmas``, ``prediction_type="flow_prediction"``, ``flow_shift`` = the model's ``shift``).
FLOW_SCHEDULERS: Mapping[str, type[SchedulerMixin]] = {
    "flow_euler": FlowMatchEulerDiscreteScheduler,
    "flow_heun": FlowMatchHeunDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}
if tuple(FLOW_SCHEDULERS) != FLOW_SCHEDULER_NAMES:
    raise ImportError("sdtriton.schedulers.FLOW_SCHEDULERS must map exactly interface.FLOW_SCHEDULER_NAMES, in order")
_FLOW_SIGMA_SCHEDULERS = (DPMSolverMultistepScheduler, UniPCMultistepScheduler)


def scheduler_class_from_config(config: Mapping[str, Any]) -> type[SchedulerMixin]:
    """Returns the scheduler class a diffusers ``scheduler_config.json`` names.

    The name comes from the exported model, never from a request, and must still be a diffusers
    scheduler class: nothing else is looked up.
    """
    class_name = str(config.get("_class_name", ""))
    scheduler_class = getattr(diffusers, class_name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ValueError(f"scheduler config names {class_name!r}, which is not a diffusers scheduler class")
    return scheduler_class


def is_flow_matching(config: Mapping[str, Any]) -> bool:
    """Whether the model's own scheduler (its ``scheduler_config.json``'s class) is a flow-matching one."""
    return str(config.get("_class_name", "")).startswith("FlowMatch")


def schedulers_for(config: Mapping[str, Any]) -> Mapping[str, type[SchedulerMixin]]:
    """The schedulers a request may name for a model with this scheduler config: :data:`FLOW_SCHEDULERS` for a
    flow-matching model, else :data:`SCHEDULERS`."""
    return FLOW_SCHEDULERS if is_flow_matching(config) else SCHEDULERS


def scheduler_key_for_class(
    scheduler_class: type[SchedulerMixin], table: Mapping[str, type[SchedulerMixin]] = SCHEDULERS
) -> str | None:
    """Returns the request key of a scheduler class in ``table``, or None if it is not there."""
    for key, known_class in table.items():
        if known_class is scheduler_class:
            return key
    return None


# A model may carry settings of its own for some schedulers, beside ``scheduler_config.json`` in its diffusers
# folder: {"heun": {"timestep_spacing": "leading"}}. They apply when a request names that scheduler, exactly
# as ``HeunDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")`` in diffusers.
SCHEDULER_OVERRIDES_FILE_NAME = "sdtriton_scheduler_overrides.json"
SchedulerOverrides = Mapping[str, Mapping[str, Any]]


def validate_scheduler_overrides(overrides: SchedulerOverrides) -> dict[str, dict[str, Any]]:
    """Checks that every key names a scheduler and every setting is an argument of that scheduler class."""
    checked: dict[str, dict[str, Any]] = {}
    known = {**SCHEDULERS, **FLOW_SCHEDULERS}
    for name, settings in overrides.items():
        if name not in known:
            raise ValueError(f"scheduler overrides name {name!r}; allowed: {', '.join(known)}")
        accepted = set(inspect.signature(known[name].__init__).parameters) - {"self"}
        unknown = sorted(set(settings) - accepted)
        if unknown:
            class_name = known[name].__name__
            raise ValueError(f"scheduler overrides for {name!r}: {unknown} are not {class_name} settings")
        checked[name] = dict(settings)
    return checked


def _scheduler_overrides_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / "scheduler" / SCHEDULER_OVERRIDES_FILE_NAME


def load_scheduler_overrides(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Reads ``scheduler/sdtriton_scheduler_overrides.json`` of a diffusers folder; {} if it has none."""
    path = _scheduler_overrides_path(model_dir)
    if not path.is_file():
        return {}
    return validate_scheduler_overrides(json.loads(path.read_text()))


def save_scheduler_overrides(model_dir: str | Path, overrides: SchedulerOverrides) -> Path:
    """Writes a model's own scheduler settings beside the scheduler config of its diffusers folder."""
    path = _scheduler_overrides_path(model_dir)
    path.write_text(json.dumps(validate_scheduler_overrides(overrides), indent=2, sort_keys=True) + "\n")
    return path


def build_scheduler(
    config: Mapping[str, Any], name: str | None, overrides: SchedulerOverrides | None = None
) -> SchedulerMixin:
    """Builds a fresh scheduler for one request.

    Args:
        config: the model's own scheduler config (``scheduler_config.json``).
        name: a key of :func:`schedulers_for` the config, or None for the model's own scheduler class.
        overrides: the model's own settings per scheduler key, applied over ``config``.
    """
    table = schedulers_for(config)
    scheduler_class = scheduler_class_from_config(config) if name is None else table[name]
    key = name if name is not None else scheduler_key_for_class(scheduler_class, table)
    flow_sigmas: dict[str, Any] = {}
    if table is FLOW_SCHEDULERS and issubclass(scheduler_class, _FLOW_SIGMA_SCHEDULERS):
        flow_sigmas = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": config["shift"]}
    settings = (overrides or {}).get(key, {})
    return scheduler_class.from_config({**config, **flow_sigmas, **settings})


def dynamic_shift_mu(config: Mapping[str, Any], image_seq_len: int, *, default_max_shift: float) -> float:
    """``mu`` of a flow-matching scheduler's dynamic shifting for an image of ``image_seq_len`` tokens, by diffusers'
    ``calculate_shift`` over the scheduler config's settings (the calling pipeline's defaults where it has none:
    StableDiffusion3Pipeline's max_shift is 1.16, FluxPipeline's 1.15)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", default_max_shift),
    )


def set_flux_timesteps(
    scheduler: SchedulerMixin, num_inference_steps: int, *, image_seq_len: int, device: Any = None
) -> None:
    """Sets a scheduler's timesteps as ``FluxPipeline.__call__`` does (its step 5): sigmas linear from 1 to
    1 / steps (none where the scheduler makes its own flow sigmas), ``mu`` from the packed image's sequence length by
    diffusers' ``calculate_shift``, both through diffusers' ``retrieve_timesteps``.

    Raises:
        ValueError, AssertionError: as diffusers does for a scheduler FluxPipeline cannot run (no ``sigmas`` argument;
            DPM-Solver given ``mu`` without dynamic shifting asserts).
    """
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    config = scheduler.config
    sigmas = (
        None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    )
    # FluxPipeline's own default max_shift where the config has none.
    mu = dynamic_shift_mu(config, image_seq_len, default_max_shift=1.15)
    retrieve_timesteps(scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)


def set_sd3_timesteps(
    scheduler: SchedulerMixin, num_inference_steps: int, *, image_seq_len: int, device: Any = None
) -> None:
    """Sets a scheduler's timesteps as ``StableDiffusion3Pipeline.__call__`` does (its step 5): ``mu`` from the
    image's patch count where the scheduler's config asks for dynamic shifting, nothing else.

    Raises:
        TypeError: as diffusers does for a scheduler whose ``set_timesteps`` takes no ``mu`` (FlowMatchHeun) under
            dynamic shifting.
    """
    config = scheduler.config
    kwargs = {}
    if config.get("use_dynamic_shifting", False):
        # StableDiffusion3Pipeline's own default max_shift where the config has none.
        kwargs["mu"] = dynamic_shift_mu(config, image_seq_len, default_max_shift=1.16)
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)


# Steps and sequence length of the probes below: any that the pipelines take (the answer depends on neither).
_FLUX_PROBE_STEPS = 4
_FLUX_PROBE_SEQ_LEN = 256


def _flow_scheduler_names(
    config: Mapping[str, Any], overrides: SchedulerOverrides | None, set_timesteps: Callable[..., None]
) -> tuple[str, ...]:
    names = []
    for name in FLOW_SCHEDULERS:
        try:
            set_timesteps(
                build_scheduler(config, name, overrides), _FLUX_PROBE_STEPS, image_seq_len=_FLUX_PROBE_SEQ_LEN
            )
        except (TypeError, ValueError, AssertionError):
            continue
        names.append(name)
    return tuple(names)


def sd3_scheduler_names(config: Mapping[str, Any], overrides: SchedulerOverrides | None = None) -> tuple[str, ...]:
    """The flow schedulers ``StableDiffusion3Pipeline`` runs on a model with this scheduler config: all of them, but
    FlowMatchHeun under dynamic shifting (its ``set_timesteps`` takes no ``mu``: diffusers raises)."""
    return _flow_scheduler_names(config, overrides, set_sd3_timesteps)


def flux_scheduler_names(config: Mapping[str, Any], overrides: SchedulerOverrides | None = None) -> tuple[str, ...]:
    """The flow schedulers ``FluxPipeline`` runs on a model with this scheduler config: those whose timesteps it can
    set up (:func:`set_flux_timesteps`). FlowMatchHeun has no ``sigmas`` argument (diffusers refuses it there);
    DPM-Solver++ takes ``mu`` only with dynamic shifting (not FLUX.1-schnell's config)."""
    return _flow_scheduler_names(config, overrides, set_flux_timesteps)


@dataclass(frozen=True)
class StepsMinimum:
    """The fewest ``num_inference_steps`` a scheduler can set up, and what needs them (for the refusal's message)."""

    steps: int
    reason: str


def steps_minimum(scheduler: SchedulerMixin) -> StepsMinimum | None:
    """The fewest steps a built scheduler's ``set_timesteps`` takes, where it needs more than one; else None."""
    if isinstance(scheduler, PNDMScheduler) and not scheduler.config.skip_prk_steps:
        # PNDMScheduler.set_timesteps lays its Runge-Kutta warm-up over the last ``pndm_order`` timesteps (and
        # step_plms needs the warm-up's pndm_order - 1 results): with fewer steps it fails with a shape error.
        return StepsMinimum(steps=scheduler.pndm_order, reason="its PRK warm-up")
    return None


def scheduler_steps_minimum(
    config: Mapping[str, Any], name: str | None, overrides: SchedulerOverrides | None = None
) -> StepsMinimum | None:
    """:func:`steps_minimum` of the scheduler :func:`build_scheduler` builds from the same arguments.

    Building one takes about a millisecond, so the answer is kept per distinct (config, name, overrides): a
    server has one config, so a few entries at most.
    """
    return _cached_steps_minimum(
        json.dumps(
            [dict(config), name, {key: dict(settings) for key, settings in (overrides or {}).items()}], sort_keys=True
        )
    )


@functools.lru_cache(maxsize=64)
def _cached_steps_minimum(arguments: str) -> StepsMinimum | None:
    config, name, overrides = json.loads(arguments)
    return steps_minimum(build_scheduler(config, name, overrides))


def image_to_image_skipped_steps(num_inference_steps: int, strength: float, *, flow_matching: bool) -> int:
    """How many of ``num_inference_steps`` an image-to-image request skips (the noisiest ones): its schedule starts
    at this step, times the scheduler's order. As the pipelines' ``get_timesteps``: ``StableDiffusionImg2ImgPipeline``
    and SDXL's take ``int(steps x strength)`` steps, ``StableDiffusion3Img2ImgPipeline`` and FLUX's skip
    ``int(steps - steps x strength)``; a request runs ``num_inference_steps`` minus this many steps."""
    if flow_matching:
        return int(max(num_inference_steps - num_inference_steps * strength, 0))
    run = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - run, 0)


def image_to_image_noise_method(config: Mapping[str, Any], name: str | None) -> str:
    """The method the img2img pipelines noise the input image's latents with, on the scheduler ``name`` (None: the
    model's own) of a model of this scheduler config: ``add_noise`` (SD, SDXL), ``scale_noise`` on flow matching
    (``StableDiffusion3Img2ImgPipeline``, whose multistep solvers have none, so diffusers cannot run them there)."""
    scheduler_class = scheduler_class_from_config(config) if name is None else schedulers_for(config)[name]
    method = "scale_noise" if is_flow_matching(config) else "add_noise"
    return method if hasattr(scheduler_class, method) else ""
