"""The load tests' requests: committed input-data files equal their rendering and are valid requests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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
    mixed_requests,
    raw_inputs,
    varied_requests,
)
from sdtriton.pipeline_config import PipelineConfig, pipeline_config_from_components
from sdtriton.serving.validation import parse_generation_params
from sdtriton.shapes.world import PALETTE
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
                pictures = {name: v.shape[:2] for name, v in request.sent().items() if isinstance(v, np.ndarray)}
                params = parse_generation_params(
                    config=config,
                    num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale,
                    seed=request.seed,
                    width=request.width,
                    height=request.height,
                    scheduler=request.scheduler,
                    vae_tiling=request.vae_tiling,
                    strength=request.strength,
                    image_size=pictures.get(interface.INPUT_IMAGE.name),
                    mask_size=pictures.get(interface.MASK_IMAGE.name),
                )
                assert params.width == request.width and params.inpaint == (request.mask_image is not None)
                assert len(request.prompt.encode()) <= interface.MAX_PROMPT_BYTES


def test_load_input_data_names_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text('{"data": []}')
    with pytest.raises(ValueError, match="no 'data'"):
        load_input_data(path)


def test_the_mixed_inputs_are_text_img2img_inpaint_and_each_adapter_on_the_prompts_own_picture() -> None:
    base = fixed_requests(size_px=64, num_inference_steps=20)[0]
    mix = mixed_requests(base, strengths=(0.6, 0.8), adapters=(("a", 1.0), ("b", 0.5)))
    assert [request.kind for request in mix] == ["text", "img2img", "inpaint", "lora a", "lora b"]
    text, image, inpaint, *adapted = mix
    assert text == base and [(r.lora, r.lora_scale) for r in adapted] == [("a", 1.0), ("b", 0.5)]
    assert (image.strength, inpaint.strength, inpaint.input_image) == (0.6, 0.8, image.input_image)
    picture, mask = inpaint.sent()["input_image"], inpaint.sent()["mask_image"]
    assert picture.shape == (64, 64, 3) and mask.shape == (64, 64, 1)
    # A yellow star on purple, as the base prompt says; the mask repaints the star alone (binary, as diffusers reads).
    assert set(np.unique(mask)) == {0, 255}
    star = mask[..., 0] == 255
    assert 0.05 < star.mean() < 0.5
    assert np.abs(picture[star].mean(axis=0) - PALETTE["yellow"]).max() < 40
    assert np.abs(picture[~star].mean(axis=0) - PALETTE["purple"]).max() < 40


def test_pictures_travel_as_b64_items_and_reach_the_client_and_the_pipeline_as_pixels() -> None:
    _, image, inpaint, *_ = INPUT_DATA_FILES["default_mixed.json"]
    entry = json.loads(input_data_text([inpaint]))["data"][0]
    assert entry["input_image"]["shape"] == [64, 64, 3] and entry["mask_image"]["shape"] == [64, 64, 1]
    assert entry["input_image"]["b64"] == inpaint.input_image and entry["strength"] == {"content": [0.8], "shape": [1]}
    assert RequestSpec.from_input_data_entry(entry) == inpaint
    text_entry = json.loads(input_data_text([fixed_requests(size_px=64, num_inference_steps=3)[0]]))["data"][0]
    assert not {"input_image", "mask_image", "strength"} & set(text_entry)  # text only: omitted, not empty
    parameters = image.client_parameters()
    assert parameters["image"].shape == (64, 64, 3) and parameters["strength"] == 0.6
    assert "mask" not in parameters and "prompt" not in parameters
    raw = raw_inputs(inpaint)
    assert raw["input_image"].shape == (1, 64, 64, 3) and raw["mask_image"].dtype == np.uint8
    assert raw["strength"].dtype == np.float32
