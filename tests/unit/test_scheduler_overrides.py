"""A model's own settings per scheduler: validated when read, applied only to the scheduler they name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtriton.export.repository import load_source_pipeline, pipeline_config_of
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.schedulers import (
    SCHEDULER_OVERRIDES_FILE_NAME,
    build_scheduler,
    load_scheduler_overrides,
    validate_scheduler_overrides,
)
from sdtriton.shapes import architecture

LEADING_HEUN = {"heun": {"timestep_spacing": "leading"}}


def _first_timestep(name: str | None, overrides=None, config=architecture.SCHEDULER_CONFIG) -> int:
    scheduler = build_scheduler(config, name, overrides)
    scheduler.set_timesteps(20)
    return int(scheduler.timesteps[0])


def test_overrides_apply_to_the_scheduler_they_name_and_no_other() -> None:
    assert _first_timestep("heun") == 999  # the model's "trailing" spacing
    assert _first_timestep("heun", LEADING_HEUN) == 951
    assert _first_timestep("euler", LEADING_HEUN) == 999


def test_overrides_apply_to_the_model_own_scheduler_under_its_key() -> None:
    config = {**architecture.SCHEDULER_CONFIG, "_class_name": "HeunDiscreteScheduler"}
    assert _first_timestep(None, LEADING_HEUN, config) == 951


def test_an_unknown_scheduler_key_is_refused_with_the_allowed_keys() -> None:
    with pytest.raises(ValueError, match=r"'karras'.*allowed: ddim, pndm"):
        validate_scheduler_overrides({"karras": {"timestep_spacing": "leading"}})


def test_a_setting_the_scheduler_class_does_not_take_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['use_karras_sigmas'\] are not PNDMScheduler settings"):
        validate_scheduler_overrides({"pndm": {"use_karras_sigmas": True}})


def test_a_folder_without_overrides_has_none(tmp_path: Path) -> None:
    assert load_scheduler_overrides(tmp_path) == {}


def test_bad_overrides_in_a_model_folder_fail_on_read(tmp_path: Path) -> None:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / SCHEDULER_OVERRIDES_FILE_NAME).write_text(json.dumps({"lms": {"no_such": 1}}))
    with pytest.raises(ValueError, match="no_such"):
        load_scheduler_overrides(tmp_path)


def test_export_carries_the_model_overrides_into_the_pipeline_config() -> None:
    config = pipeline_config_of(load_source_pipeline("shapes"))
    assert config.scheduler_overrides == architecture.SCHEDULER_OVERRIDES
    assert PipelineConfig.from_json(config.to_json()).scheduler_overrides == architecture.SCHEDULER_OVERRIDES
