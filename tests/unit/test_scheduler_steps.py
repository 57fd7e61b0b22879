"""The fewest steps a scheduler can set up: read from the scheduler as built, checked against diffusers itself, and
refused in validation with INVALID_ARG naming num_inference_steps, the scheduler and the minimum."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from sdtriton.pipeline_config import PipelineConfig, SdxlConfig, SdxlRefinerConfig
from sdtriton.schedulers import SCHEDULERS, build_scheduler, scheduler_steps_minimum
from sdtriton.sd15 import SD15_SCHEDULER_CONFIG
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.validation import parse_generation_params
from sdtriton.tiny import SDXL_SCHEDULER_CONFIG

SD15 = {"_class_name": "PNDMScheduler", **SD15_SCHEDULER_CONFIG}  # skip_prk_steps true
PNDM_WITH_PRK = {**SD15, "skip_prk_steps": False}
# SDXL's own scheduler is Euler: its config has no skip_prk_steps, so PNDM built from it takes the default, False.
SDXL = {"_class_name": "EulerDiscreteScheduler", **SDXL_SCHEDULER_CONFIG}
SCHEDULER_CONFIGS = {"sd15": SD15, "pndm_with_prk": PNDM_WITH_PRK, "sdxl": SDXL}

CONFIG = PipelineConfig(
    latent_channels=4,
    vae_scale_factor=8,
    size_multiple=64,
    default_height=512,
    default_width=512,
    max_height=1024,
    max_width=1024,
    vae_scaling_factor=0.18215,
    text_max_length=77,
    text_hidden_size=768,
    scheduler_config=SD15,
)


def _diffusers_runs(config: dict, name: str, steps: int) -> bool:
    """Whether diffusers' scheduler sets up ``steps`` and takes every step of them (zeros for the noise)."""
    scheduler = build_scheduler(config, name)
    try:
        scheduler.set_timesteps(steps)
    except ValueError:
        return False
    sample = torch.zeros(1, 4, 8, 8)
    accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
    kwargs = {"generator": torch.Generator().manual_seed(0)} if accepts_generator else {}
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.zeros_like(sample), t, scheduler.scale_model_input(sample, t), **kwargs)[0]
    return bool(torch.isfinite(sample).all())


@pytest.mark.parametrize("config_name", SCHEDULER_CONFIGS)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_the_minimum_is_the_fewest_steps_diffusers_can_run(config_name: str, name: str) -> None:
    config = SCHEDULER_CONFIGS[config_name]
    minimum = scheduler_steps_minimum(config, name)
    fewest = 1 if minimum is None else minimum.steps
    assert [_diffusers_runs(config, name, steps) for steps in range(1, fewest + 2)] == [
        steps >= fewest for steps in range(1, fewest + 2)
    ]


def test_pndm_needs_its_order_of_steps_only_with_the_runge_kutta_warm_up() -> None:
    with_prk = scheduler_steps_minimum(PNDM_WITH_PRK, "pndm")
    assert with_prk is not None and (with_prk.steps, with_prk.reason) == (4, "its PRK warm-up")
    assert with_prk.steps == build_scheduler(PNDM_WITH_PRK, "pndm").pndm_order
    assert scheduler_steps_minimum(SD15, "pndm") is None
    assert scheduler_steps_minimum(SD15, None) is None  # the model's own: PNDM, skipping the warm-up
    assert scheduler_steps_minimum(PNDM_WITH_PRK, None) == with_prk
    assert scheduler_steps_minimum(SDXL, "pndm") == with_prk
    # The model's overrides are part of the scheduler the request gets.
    assert scheduler_steps_minimum(SD15, "pndm", {"pndm": {"skip_prk_steps": False}}) == with_prk
    assert scheduler_steps_minimum(PNDM_WITH_PRK, "pndm", {"pndm": {"skip_prk_steps": True}}) is None


def _refused(config: PipelineConfig, **kwargs) -> str:
    with pytest.raises(InvalidInputError) as error:
        parse_generation_params(config=config, seed=0, **kwargs)
    assert error.value.field == "num_inference_steps"
    return str(error.value)


def test_too_few_steps_for_a_scheduler_are_refused_naming_the_minimum() -> None:
    config = dataclasses.replace(CONFIG, scheduler_config=PNDM_WITH_PRK)
    for steps in (1, 2, 3):
        assert _refused(config, num_inference_steps=steps, scheduler="pndm") == (
            "num_inference_steps: must be at least 4 with scheduler 'pndm' on this model (its PRK warm-up), "
            f"got {steps}"
        )
    assert _refused(config, num_inference_steps=2) == (
        "num_inference_steps: must be at least 4 with this model's own scheduler 'pndm' on this model "
        "(its PRK warm-up), got 2"
    )
    assert parse_generation_params(config=config, num_inference_steps=4, scheduler="pndm").num_inference_steps == 4
    for name in SCHEDULERS:
        if name != "pndm":
            assert parse_generation_params(config=config, num_inference_steps=1, scheduler=name).scheduler == name


def test_a_model_that_skips_the_warm_up_takes_one_step_and_its_overrides_count() -> None:
    assert parse_generation_params(config=CONFIG, num_inference_steps=1, scheduler="pndm").num_inference_steps == 1
    assert parse_generation_params(config=CONFIG, num_inference_steps=1).num_inference_steps == 1
    overridden = dataclasses.replace(CONFIG, scheduler_overrides={"pndm": {"skip_prk_steps": False}})
    assert "at least 4 with scheduler 'pndm'" in _refused(overridden, num_inference_steps=3, scheduler="pndm")
    assert parse_generation_params(config=overridden, num_inference_steps=1, scheduler="ddim").num_inference_steps == 1


def test_an_sdxl_refiner_stage_is_checked_with_its_own_scheduler() -> None:
    refiner = SdxlRefinerConfig(
        text_hidden_size=1280,
        time_ids=5,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        scheduler_config=PNDM_WITH_PRK,
    )
    config = dataclasses.replace(
        CONFIG, scheduler_config=SDXL, sdxl=SdxlConfig(text_hidden_sizes=(768, 1280), pooled_size=1280, refiner=refiner)
    )
    # The base (Euler) takes one step; the refiner stage, when it runs, is its own PNDM with the warm-up.
    assert parse_generation_params(config=config, num_inference_steps=1).num_inference_steps == 1
    assert "this model's own scheduler 'pndm'" in _refused(config, num_inference_steps=3, refiner_fraction=0.3)
    assert parse_generation_params(config=config, num_inference_steps=4, refiner_fraction=0.3).refiner_fraction == 0.3
    # A named scheduler applies to both stages: PNDM built from SDXL's Euler config has the warm-up too.
    assert "scheduler 'pndm'" in _refused(config, num_inference_steps=3, scheduler="pndm")
