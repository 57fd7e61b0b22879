"""SDXL through the same export, engine, interface and client: parity with diffusers' SDXL pipelines.

The tiny SDXL base and refiner are made here (``make-tiny --family sdxl`` / ``sdxl-refiner``), exported into one
repository with the refiner as a second stage and every model named ``sdxl_*`` (``--model-prefix``), and served
by one real tritonserver together with the tiny SD repository and the SD 3 ones (``family_server``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.interface import SCHEDULER_NAMES
from tests.conftest import SDXL_PREFIX
from tests.integration.oracle import MAX_PIXEL_DIFFERENCE, max_pixel_difference, sdxl_diffusers_image, start_picture

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
STEPS = 12


SDXL_ENTRY = SDXL_PREFIX + "stable_diffusion"


@pytest.fixture(scope="module")
def sdxl_server(family_server):
    """The server of every family (tests/conftest.py): the tiny SD repository and the prefixed SDXL one among them."""
    return family_server


@pytest.fixture(scope="module")
def oracle(sdxl_dirs):
    """diffusers' own StableDiffusionXLPipeline and refiner on the same weights."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base_dir, refiner_dir = sdxl_dirs
    base = StableDiffusionXLPipeline.from_pretrained(base_dir, torch_dtype=torch.float32)
    # As diffusers' recipe: the refiner shares the base's second text encoder and VAE.
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        refiner_dir, text_encoder_2=base.text_encoder_2, vae=base.vae, torch_dtype=torch.float32
    )
    for pipeline in (base, refiner):
        pipeline.set_progress_bar_config(disable=True)
    return base, refiner


@pytest.fixture(scope="module")
def client(sdxl_server):
    with StableDiffusionClient(sdxl_server.address.grpc_url, model_name=SDXL_ENTRY) as client:
        yield client


def _check(client, oracle, **kwargs) -> np.ndarray:
    base, refiner = oracle
    result = client.generate(PROMPT, **kwargs)
    expected = sdxl_diffusers_image(base, PROMPT, refiner=refiner, **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE
    return np.asarray(result.image)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_matches_diffusers_sdxl(client, oracle, scheduler: str) -> None:
    image = _check(client, oracle, seed=1234, num_inference_steps=STEPS, scheduler=scheduler)
    # The comparison can fail: another seed gives a clearly different picture.
    other = sdxl_diffusers_image(oracle[0], PROMPT, seed=1235, num_inference_steps=STEPS, scheduler=scheduler)
    assert max_pixel_difference(image, other) > 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guidance_scale": 1.0},  # guidance off: one row, no negative
        {"negative_prompt": "blurry, low quality"},
        {"negative_prompt": ""},  # sent empty: encoded, not zeroed (diffusers zeroes only an omitted one)
        {"width": 96, "height": 64, "scheduler": "euler_a"},  # non-square: size conditioning follows it
        {},  # the model's own scheduler (EulerDiscrete, "leading")
    ],
    ids=["guidance-off", "negative", "empty-negative", "non-square", "default-scheduler"],
)
def test_guidance_negative_prompts_and_sizes_match_diffusers_sdxl(client, oracle, kwargs) -> None:
    _check(client, oracle, seed=7, num_inference_steps=10, **kwargs)


def test_an_omitted_and_an_empty_negative_prompt_differ_as_in_diffusers(client) -> None:
    omitted = client.generate(PROMPT, seed=3, num_inference_steps=6)
    empty = client.generate(PROMPT, seed=3, num_inference_steps=6, negative_prompt="")
    assert max_pixel_difference(np.asarray(omitted.image), np.asarray(empty.image)) > 0


@pytest.mark.parametrize(("scheduler", "fraction"), [("euler", 0.2), ("heun", 0.3), ("dpmpp_2m", 0.5), ("ddim", 0.25)])
def test_base_and_refiner_match_diffusers_two_pipeline_recipe(client, oracle, scheduler: str, fraction: float) -> None:
    refined = _check(client, oracle, seed=21, num_inference_steps=STEPS, scheduler=scheduler, refiner_fraction=fraction)
    base_only = client.generate(PROMPT, seed=21, num_inference_steps=STEPS, scheduler=scheduler)
    # The refiner stage changed the image by more than the rounding the parity check allows.
    assert max_pixel_difference(refined, np.asarray(base_only.image)) > MAX_PIXEL_DIFFERENCE


def test_a_refined_and_a_plain_request_batched_together_stay_exact(sdxl_server, oracle) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        {"seed": 30, "num_inference_steps": 14, "scheduler": "euler_a", "refiner_fraction": 0.4},
        {"seed": 31, "num_inference_steps": 9, "scheduler": "unipc", "guidance_scale": 1.0},
        {"seed": 32, "num_inference_steps": 11, "scheduler": "lms", "refiner_fraction": 0.2, "width": 96},
    ]

    def run(kwargs: dict) -> np.ndarray:
        with StableDiffusionClient(sdxl_server.address.grpc_url, model_name=SDXL_ENTRY) as client:
            return np.asarray(client.generate(PROMPT, **kwargs).image)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        images = list(pool.map(run, jobs))
    for image, kwargs in zip(images, jobs, strict=True):
        expected = sdxl_diffusers_image(oracle[0], PROMPT, refiner=oracle[1], **kwargs)
        assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"refiner_fraction": 1.0}, "above 0 and below 1"),
        ({"refiner_fraction": float("inf")}, "above 0 and below 1"),
        ({"width": 130}, "multiple of 4 in 4..128"),
        ({"scheduler": "ddpm"}, "one of"),
    ],
)
def test_bad_sdxl_input_is_rejected_with_field_and_range(client, kwargs, allowed: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        client.generate(PROMPT, num_inference_steps=2, **kwargs)
    assert next(iter(kwargs)) in str(error.value) and allowed in str(error.value)
    assert client.generate(PROMPT, num_inference_steps=2, seed=1).image.size == (64, 64)  # still serving


def test_progress_streams_through_both_stages_and_ends_with_the_same_image(client) -> None:
    kwargs = {"seed": 50, "num_inference_steps": 10, "scheduler": "euler", "refiner_fraction": 0.3}
    events = []
    streamed = client.generate(PROMPT, on_progress=events.append, **kwargs)
    assert [event.steps_done[0] for event in events] == list(range(1, 11))
    assert {event.total_steps[0] for event in events} == {10}  # 7 base steps, then 3 of the refiner
    assert np.array_equal(np.asarray(streamed.image), np.asarray(client.generate(PROMPT, **kwargs).image))


def test_sd_and_sdxl_are_served_by_one_server_at_once(sdxl_server, oracle, diffusers_pipeline) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.oracle import diffusers_image

    url = sdxl_server.address.http_url
    kwargs = {"seed": 60, "num_inference_steps": 10, "scheduler": "dpmpp_2m"}

    def run(model_name: str) -> np.ndarray:
        with StableDiffusionClient(url, model_name=model_name) as client:
            return np.asarray(client.generate(PROMPT, **kwargs).image)

    with ThreadPoolExecutor(max_workers=2) as pool:
        sd, sdxl = pool.map(run, ["stable_diffusion", SDXL_ENTRY])
    assert max_pixel_difference(sd, diffusers_image(diffusers_pipeline, PROMPT, **kwargs)) <= MAX_PIXEL_DIFFERENCE
    assert max_pixel_difference(sdxl, sdxl_diffusers_image(oracle[0], PROMPT, **kwargs)) <= MAX_PIXEL_DIFFERENCE


def test_the_command_line_generates_with_the_refiner(sdxl_server, client, tmp_path: Path) -> None:
    from PIL import Image

    from sdtriton.cli import main

    output = tmp_path / "refined.png"
    arguments = ["--seed", "4", "--steps", "6", "--scheduler", "euler", "--refiner-fraction", "0.25"]
    url = sdxl_server.address.grpc_url
    assert main(["generate", PROMPT, "--url", url, "--model", SDXL_ENTRY, "-o", str(output), *arguments]) == 0
    expected = client.generate(PROMPT, seed=4, num_inference_steps=6, scheduler="euler", refiner_fraction=0.25)
    assert np.array_equal(np.asarray(Image.open(output).convert("RGB")), np.asarray(expected.image))


def test_every_sd_bad_input_case_is_rejected_the_same_way_by_sdxl(client) -> None:
    from tests.integration.test_bad_input import BAD_INPUTS

    cases = [case for case in BAD_INPUTS if "without a refiner" not in case[2]]  # this repository has one
    assert len(cases) == len(BAD_INPUTS) - 1
    for kwargs, field, allowed in cases:
        with pytest.raises(InvalidRequestError) as error:
            client.generate(PROMPT, **{"num_inference_steps": 2, **kwargs})
        assert field in str(error.value) and allowed in str(error.value), (kwargs, str(error.value))


def test_the_gateway_serves_every_prefixed_family_by_name(sdxl_server, client, tmp_path: Path) -> None:
    """The HTTP gateway (in process) over the server of every family: each prefixed entry is a model, the
    unprefixed one the default, and an SDXL request by name gives the client's image."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from sdtriton.gateway.app import create_app
    from sdtriton.gateway.settings import GatewaySettings

    settings = GatewaySettings(triton_url=sdxl_server.address.grpc_url, data_dir=tmp_path)
    with TestClient(create_app(settings)) as http:
        models = [model["id"] for model in http.get("/v1/models").json()["data"]]
        assert models[0] == "stable_diffusion" and SDXL_ENTRY in models
        assert {"sd35_stable_diffusion", "flux_stable_diffusion", "schnell_stable_diffusion"} <= set(models)
        assert http.get("/readyz").json()["ready"] is True
        body = {"model": SDXL_ENTRY, "prompt": PROMPT, "size": "64x64", "seed": 9, "num_inference_steps": 4}
        answer = http.post("/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"])))
    expected = client.generate(PROMPT, seed=9, num_inference_steps=4, width=64, height=64)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected.image))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_image_to_image_matches_diffusers_sdxl_img2img(client, oracle, scheduler: str) -> None:
    """StableDiffusionXLImg2ImgPipeline on the base's modules, every scheduler, from a non-square picture."""
    picture = start_picture(96, 64)
    result = client.generate(PROMPT, image=picture, strength=0.6, seed=5, num_inference_steps=8, scheduler=scheduler)
    assert result.image.size == (96, 64)
    expected = sdxl_diffusers_image(
        oracle[0], PROMPT, image=picture, strength=0.6, seed=5, num_inference_steps=8, scheduler=scheduler
    )
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE


def test_a_tiled_image_to_image_request_is_diffusers_with_vae_tiling(client, oracle) -> None:
    """112 x 80 px: the input image encoded (and the latents decoded) in tiles of the tiny VAE's 64 px that do not
    divide it, as StableDiffusionXLImg2ImgPipeline with ``pipe.vae.enable_tiling()``."""
    picture = start_picture(112, 80, variant=2)
    kwargs = {"image": picture, "strength": 0.6, "seed": 7, "num_inference_steps": 8}
    result = np.asarray(client.generate(PROMPT, vae_tiling=True, **kwargs).image)
    base = oracle[0]
    base.vae.enable_tiling()
    try:
        expected = sdxl_diffusers_image(base, PROMPT, **kwargs)
    finally:
        base.vae.disable_tiling()
    assert max_pixel_difference(result, expected) <= MAX_PIXEL_DIFFERENCE


@pytest.mark.parametrize(
    ("scheduler", "strength", "fraction"), [("euler", 0.5, 0.3), ("heun", 0.8, 0.2), ("dpmpp_2m", 1.0, 0.4)]
)
def test_image_to_image_with_the_refiner_matches_diffusers_recipe(
    sdxl_server, oracle, scheduler: str, strength: float, fraction: float
) -> None:
    """The img2img base to denoising_end, the refiner from denoising_start (diffusers' recipe), batched with a
    text-to-image request of the same size."""
    from concurrent.futures import ThreadPoolExecutor

    picture = start_picture(64, 64, variant=1)
    jobs = [
        {"image": picture, "strength": strength, "refiner_fraction": fraction, "scheduler": scheduler, "seed": 40},
        {"scheduler": "unipc", "seed": 41, "refiner_fraction": 0.25},
    ]

    def run(kwargs: dict) -> np.ndarray:
        with StableDiffusionClient(sdxl_server.address.grpc_url, model_name=SDXL_ENTRY) as client:
            return np.asarray(client.generate(PROMPT, num_inference_steps=10, **kwargs).image)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        images = list(pool.map(run, jobs))
    for image, kwargs in zip(images, jobs, strict=True):
        expected = sdxl_diffusers_image(oracle[0], PROMPT, refiner=oracle[1], num_inference_steps=10, **kwargs)
        assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE
