"""Image-to-image through the real server gives the image diffusers' StableDiffusionImg2ImgPipeline gives: every
scheduler at two strengths, batched with text-to-image requests, streamed, from the CLI, encoded and decoded in tiles
(``vae_tiling``) as with ``pipe.vae.enable_tiling()``; bad images refused by name."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image

from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.interface import ENTRY_MODEL_NAME, SCHEDULER_NAMES
from tests.integration.oracle import (
    MAX_PIXEL_DIFFERENCE,
    diffusers_image,
    img2img_diffusers_image,
    max_pixel_difference,
    start_picture,
)

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
STEPS = 6
# Two strengths: half the steps redone, and diffusers' default share.
STRENGTHS = (0.5, 0.8)
# Not square, so that a swapped width and height would show: the output has the input's size.
WIDTH, HEIGHT = 96, 64


def _input_image(seed: int = 0) -> Image.Image:
    return start_picture(WIDTH, HEIGHT, seed)


@pytest.fixture(scope="module")
def client(http_url: str):
    with StableDiffusionClient(http_url) as client:
        yield client


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_matches_diffusers(client, diffusers_img2img_pipeline, scheduler: str, strength: float) -> None:
    kwargs = {"seed": 21, "num_inference_steps": STEPS, "scheduler": scheduler, "strength": strength}
    result = client.generate(PROMPT, image=_input_image(), **kwargs)
    assert result.image.size == (WIDTH, HEIGHT)
    expected = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, image=_input_image(), **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE


def test_the_input_image_and_the_strength_change_the_image(client, diffusers_img2img_pipeline) -> None:
    """The comparisons above can fail: another input image, or another strength, gives another picture."""
    kwargs = {"seed": 21, "num_inference_steps": STEPS, "scheduler": "ddim"}
    result = np.asarray(client.generate(PROMPT, image=_input_image(), strength=0.5, **kwargs).image)
    other_image = img2img_diffusers_image(
        diffusers_img2img_pipeline, PROMPT, image=_input_image(seed=3), strength=0.5, **kwargs
    )
    other_strength = img2img_diffusers_image(
        diffusers_img2img_pipeline, PROMPT, image=_input_image(), strength=1.0, **kwargs
    )
    # The tiny random VAE passes little of a picture through (18 of 255 measured): still far past the tolerance.
    assert max_pixel_difference(result, other_image) > 4 * MAX_PIXEL_DIFFERENCE
    assert max_pixel_difference(result, other_strength) > 4 * MAX_PIXEL_DIFFERENCE


def test_strength_one_and_the_default_strength_match_diffusers(client, diffusers_img2img_pipeline) -> None:
    kwargs = {"seed": 8, "num_inference_steps": 5, "guidance_scale": 1.0, "scheduler": "euler_a"}
    full = client.generate(PROMPT, image=_input_image(), strength=1.0, **kwargs)
    expected = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, image=_input_image(), strength=1.0, **kwargs)
    assert max_pixel_difference(np.asarray(full.image), expected) <= MAX_PIXEL_DIFFERENCE
    default = client.generate(PROMPT, image=_input_image(), **kwargs)  # diffusers' default strength, 0.8
    expected = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, image=_input_image(), strength=0.8, **kwargs)
    assert max_pixel_difference(np.asarray(default.image), expected) <= MAX_PIXEL_DIFFERENCE


def test_image_and_text_requests_share_the_engine(
    http_url: str, grpc_url: str, diffusers_pipeline, diffusers_img2img_pipeline
) -> None:
    """Text-to-image and image-to-image requests in flight together (rows of the same UNet calls, their latents of
    one size), and one request of two prompts each with its own image: each image is its own diffusers image."""
    text_kwargs = {"seed": 4, "num_inference_steps": 12, "scheduler": "unipc", "width": WIDTH, "height": HEIGHT}
    image_kwargs = {"seed": 5, "num_inference_steps": 12, "scheduler": "dpmpp_2m", "strength": 0.75}

    def text_to_image() -> np.ndarray:
        with StableDiffusionClient(http_url) as client:
            return np.asarray(client.generate(PROMPT, **text_kwargs).image)

    def image_to_image() -> list[np.ndarray]:
        with StableDiffusionClient(grpc_url) as client:
            result = client.generate(
                [PROMPT, "a red circle"], image=[_input_image(), _input_image(seed=2)], **image_kwargs
            )
        return [np.asarray(image) for image in result.images]

    with ThreadPoolExecutor(max_workers=2) as pool:
        text_future = pool.submit(text_to_image)
        image_future = pool.submit(image_to_image)
        text_image, images = text_future.result(), image_future.result()
    expected = diffusers_image(diffusers_pipeline, PROMPT, **text_kwargs)
    assert max_pixel_difference(text_image, expected) <= MAX_PIXEL_DIFFERENCE
    for prompt, seed, image in zip([PROMPT, "a red circle"], [0, 2], images, strict=True):
        expected = img2img_diffusers_image(
            diffusers_img2img_pipeline, prompt, image=_input_image(seed=seed), **image_kwargs
        )
        assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE


def test_the_stream_reports_the_steps_strength_leaves(grpc_url: str, diffusers_img2img_pipeline) -> None:
    kwargs = {"seed": 6, "num_inference_steps": 10, "scheduler": "heun", "strength": 0.3}
    with StableDiffusionClient(grpc_url) as client:
        events = list(client.stream(PROMPT, image=_input_image(), **kwargs))
    *progress, result = events
    # int(10 x 0.3) = 3 steps, Heun evaluating twice a step but its first: 2 x 3 - 1.
    assert [event.steps_done for event in progress] == [[step] for step in range(1, 6)]
    assert progress[-1].total_steps == [5]
    expected = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, image=_input_image(), **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE


# The tiny VAE's tiles are 64 px a side, one every 48 px: a 112 x 80 input image is encoded in tiles of 64, 64 and
# 16 px across and 64 and 32 down (not whole tiles), and decoded in the tiles of its 56 x 40 latents.
TILED_WIDTH, TILED_HEIGHT = 112, 80


def test_a_tiled_request_encodes_its_image_in_tiles_as_diffusers(client, diffusers_img2img_pipeline) -> None:
    kwargs = {"seed": 31, "num_inference_steps": STEPS, "strength": 0.6}
    image = start_picture(TILED_WIDTH, TILED_HEIGHT, 3)
    tiled = np.asarray(client.generate(PROMPT, image=image, vae_tiling=True, **kwargs).image)
    untiled = np.asarray(client.generate(PROMPT, image=image, **kwargs).image)
    diffusers_img2img_pipeline.vae.enable_tiling()
    try:
        expected = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, image=image, **kwargs)
    finally:
        diffusers_img2img_pipeline.vae.disable_tiling()
    assert tiled.shape == (TILED_HEIGHT, TILED_WIDTH, 3)
    assert max_pixel_difference(tiled, expected) <= MAX_PIXEL_DIFFERENCE
    # The comparison can fail: encoded and decoded in one call each, the image is another.
    assert max_pixel_difference(untiled, expected) > MAX_PIXEL_DIFFERENCE


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (_input_image(), {"width": HEIGHT}, f"width: must be the input_image's width ({WIDTH}) or omitted, got 64"),
        (_input_image(), {"height": 128}, f"height: must be the input_image's height ({HEIGHT}) or omitted"),
        (_input_image(), {"strength": 0.0}, "strength: must be a number above 0 and at most 1, got 0.0"),
        (_input_image(), {"strength": 1.5}, "strength: must be a number above 0 and at most 1, got 1.5"),
        (
            _input_image(),
            {"strength": 0.1, "num_inference_steps": 5},
            "strength: must be at least 0.2 with 5 inference steps",
        ),
        (None, {"strength": 0.5}, "strength: is taken with an input_image only"),
        (_input_image().resize((62, 64)), {}, "input_image: its width must be a positive multiple of 4 in 4..128"),
        (_input_image().resize((96, 256)), {}, "input_image: its height must be a positive multiple of 4 in 4..128"),
    ],
)
def test_bad_image_requests_are_refused_by_name(client, image, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        client.generate(PROMPT, image=image, seed=1, **kwargs)


def test_triton_refuses_an_image_of_another_type_or_shape_by_name(http_url: str) -> None:
    prompt = triton_http.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=np.object_))
    with triton_http.InferenceServerClient(http_url.removeprefix("http://")) as raw:
        for array, datatype in (
            (np.zeros((1, 64, 64, 3), dtype=np.float32), "FP32"),
            (np.zeros((1, 64, 64, 4), dtype=np.uint8), "UINT8"),
        ):
            image = triton_http.InferInput("input_image", list(array.shape), datatype)
            image.set_data_from_numpy(array)
            with pytest.raises(Exception, match="input_image"):
                raw.infer(ENTRY_MODEL_NAME, [prompt, image])


def test_the_generate_command_takes_an_image(http_url: str, tmp_path: Path, diffusers_img2img_pipeline) -> None:
    source = tmp_path / "start.png"
    _input_image().save(source)
    output = tmp_path / "out.png"
    command = [sys.executable, "-m", "sdtriton.cli", "generate", PROMPT, "--url", http_url, "-o", str(output)]
    options = ["--image", str(source), "--strength", "0.7", "--steps", "7", "--seed", "9", "--scheduler", "lms"]
    done = subprocess.run([*command, *options], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = img2img_diffusers_image(
        diffusers_img2img_pipeline,
        PROMPT,
        image=_input_image(),
        strength=0.7,
        num_inference_steps=7,
        seed=9,
        scheduler="lms",
    )
    assert max_pixel_difference(np.asarray(Image.open(output)), expected) <= MAX_PIXEL_DIFFERENCE
