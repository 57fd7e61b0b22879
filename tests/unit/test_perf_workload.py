"""The load tests' requests: committed input-data files equal their rendering and are valid requests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdtriton import interface
from sdtriton.perf.profiles import DEFAULT_PERF_DIR, INPUT_DATA_DIR_NAME, load_profiles
from sdtriton.perf.workload import (
    INPUT_DATA_FILES,
    PROMPTS,
    RequestSpec,
    fixed_requests,
    input_data_text,
    load_input_data,
    varied_requests,
)
from sdtriton.pipeline_config import PipelineConfig, pipeline_config_from_components
from sdtriton.serving.validation import parse_generation_params
from sdtriton.tiny import PROFILES

INPUT_DIR = DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME
# AutoencoderKL's default, which make-tiny keeps where a profile's VAE config names none.
_VAE_SCALING_FACTOR = 0.18215


def _model_config(model: str) -> PipelineConfig:
    """The geometry `sdtriton export` derives for a profile's model, without building its weights."""
    if model in PROFILES:
        unet, vae, text = PROFILES[model].unet, PROFILES[model].vae, PROFILES[model].text_encoder
    else:
        from sdtriton.shapes import architecture

        unet, vae, text = architecture.UNET_CONFIG, architecture.VAE_CONFIG, architecture.TEXT_ENCODER_CONFIG
    return pipeline_config_from_components(
        unet_config=SimpleNamespace(time_cond_proj_dim=None, **unet),
        vae_config=SimpleNamespace(**{"scaling_factor": _VAE_SCALING_FACTOR, **vae}),
        text_encoder_config=SimpleNamespace(**text),
        tokenizer_max_length=text["max_position_embeddings"],
        scheduler_config={},
    )


def test_request_fields_are_the_public_inputs() -> None:
    assert [f.name for f in dataclasses.fields(RequestSpec)] == [t.name for t in interface.ENTRY_INPUTS]


@pytest.mark.parametrize("name", sorted(INPUT_DATA_FILES))
def test_committed_input_data_equals_its_rendering(name: str) -> None:
    path = INPUT_DIR / name
    expected = input_data_text(INPUT_DATA_FILES[name])
    assert path.read_text() == expected, (
        f"{path} differs from sdtriton.perf.workload.INPUT_DATA_FILES; rewrite it with "
        "`python -c 'from pathlib import Path; from sdtriton.perf.workload import write_input_data_files as w; "
        'w(Path("perf/input_data"))\'`'
    )
    assert load_input_data(path) == INPUT_DATA_FILES[name]


def test_entries_are_perf_analyzer_items_of_shape_1() -> None:
    (entry,) = json.loads(input_data_text(fixed_requests(size_px=64, num_inference_steps=3)))["data"]
    assert entry["prompt"] == {"content": [PROMPTS[0]], "shape": [1]}
    assert entry["num_inference_steps"] == {"content": [3], "shape": [1]}
    assert RequestSpec.from_input_data_entry(entry).num_inference_steps == 3


def test_an_entry_without_an_input_is_rejected() -> None:
    (entry,) = json.loads(input_data_text(fixed_requests(size_px=64, num_inference_steps=3)))["data"]
    del entry["seed"]
    with pytest.raises(ValueError, match="seed"):
        RequestSpec.from_input_data_entry(entry)


def test_varied_requests_cover_every_scheduler_step_count_and_size() -> None:
    requests = varied_requests(sizes_px=(64, 96, 128), steps=(10, 20, 30), count=24)
    assert {r.scheduler for r in requests} == set(interface.SCHEDULER_NAMES)
    assert {r.num_inference_steps for r in requests} == {10, 20, 30}
    assert {r.width for r in requests} == {64, 96, 128}
    assert {r.guidance_scale for r in requests} >= {1.0, 7.5}
    assert len({r.seed for r in requests}) == len(requests)
    assert len({r.prompt for r in requests}) > 1


def test_every_profile_request_is_valid_for_its_model() -> None:
    for profile in load_profiles(DEFAULT_PERF_DIR).values():
        config = _model_config(profile.model)
        for name in profile.input_data_files():
            for request in load_input_data(INPUT_DIR / name):
                params = parse_generation_params(
                    config=config,
                    num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale,
                    seed=request.seed,
                    width=request.width,
                    height=request.height,
                    scheduler=request.scheduler,
                )
                assert params.width == request.width
                assert len(request.prompt.encode()) <= interface.MAX_PROMPT_BYTES


def test_load_input_data_names_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text('{"data": []}')
    with pytest.raises(ValueError, match="no 'data'"):
        load_input_data(path)
