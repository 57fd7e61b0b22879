"""Inpainting through the real server gives the image diffusers' inpainting pipelines give on the same weights
(``StableDiffusionInpaintPipeline``, ``StableDiffusionXLInpaintPipeline``): both kinds of model (a plain UNet, whose
latents are blended with the re-noised input image outside the mask after each step, and a dedicated inpainting UNet
of 9 input channels), SD 1.5 and SDXL, every scheduler, strengths 0.5, 0.8, 1.0 and the pipelines' default; inpainting,
image-to-image and text-to-image requests in flight together; the stream and the CLI; bad masks refused by name.

Every model is in ``family_server`` (tests/conftest.py): the plain SD and SDXL repositories the other family tests
use, and the inpainting ones (``inpainting_exports``).
"""

from __future__ import annotations

import re
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
from tests.conftest import INPAINT_PREFIX, SDXL_INPAINT_PREFIX, SDXL_PREFIX
from tests.integration.oracle import (
    MAX_PIXEL_DIFFERENCE,
    diffusers_image,
    img2img_diffusers_image,
    inpaint_diffusers_image,
    inpaint_mask,
    max_pixel_difference,
    start_picture,
)

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
STEPS = 6
STRENGTHS = (0.5, 0.8, 1.0)
# Not square: the output has the input's size, and the pipelines are given it.
WIDTH, HEIGHT = 96, 64
# The entry model of each kind: SD's and SDXL's plain UNet, and their inpainting UNet.
KINDS = {
    "sd": ENTRY_MODEL_NAME,
    "sd_inpainting_unet": INPAINT_PREFIX + ENTRY_MODEL_NAME,
    "sdxl": SDXL_PREFIX + ENTRY_MODEL_NAME,
    "sdxl_inpainting_unet": SDXL_INPAINT_PREFIX + ENTRY_MODEL_NAME,
}


def _picture(variant: int = 0) -> Image.Image:
    return start_picture(WIDTH, HEIGHT, variant)


def _mask(variant: int = 0) -> Image.Image:
    return inpaint_mask(WIDTH, HEIGHT, variant)


@pytest.fixture(scope="module")
def oracles(tiny_model_dir: Path, sdxl_dirs, inpainting_exports) -> dict[str, object]:
    """diffusers' own pipelines of each kind's weights (the inpainting ones made from them by the oracle)."""
    import torch
    from diffusers import DiffusionPipeline

    folders = {
        "sd": tiny_model_dir,
        "sd_inpainting_unet": inpainting_exports["sd-inpaint"][0],
        "sdxl": sdxl_dirs[0],
        "sdxl_inpainting_unet": inpainting_exports["sdxl-inpaint"][0],
    }
    pipelines = {}
    for kind, folder in folders.items():
        pipeline = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        pipelines[kind] = pipeline
    return pipelines


@pytest.fixture(scope="module")
def clients(family_server):
    opened = {
        kind: StableDiffusionClient(family_server.address.grpc_url, model_name=name) for kind, name in KINDS.items()
    }
    yield opened
    for client in opened.values():
        client.close()


def _check(clients, oracles, kind: str, **kwargs) -> np.ndarray:
    result = clients[kind].generate(PROMPT, image=_picture(), mask=_mask(), **kwargs)
    assert result.image.size == (WIDTH, HEIGHT)
    expected = inpaint_diffusers_image(oracles[kind], PROMPT, image=_picture(), mask=_mask(), **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE
    return np.asarray(result.image)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_and_strength_matches_diffusers(clients, oracles, kind: str, scheduler: str) -> None:
    """Each kind runs every scheduler; the strength turns with the scheduler, so each kind runs every strength on
    several schedulers (8 schedulers x 3 strengths in full would treble the file's calls)."""
    strength = STRENGTHS[SCHEDULER_NAMES.index(scheduler) % len(STRENGTHS)]
    _check(clients, oracles, kind, seed=21, num_inference_steps=STEPS, scheduler=scheduler, strength=strength)


@pytest.mark.parametrize("kind", KINDS)
def test_the_default_strength_is_the_inpainting_pipelines(clients, oracles, kind: str) -> None:
    """No strength sent: StableDiffusionInpaintPipeline's 1.0, StableDiffusionXLInpaintPipeline's 0.9999 (one step
    fewer); unguided, and on the model's own scheduler."""
    _check(clients, oracles, kind, seed=4, num_inference_steps=STEPS, guidance_scale=1.0)


def test_the_mask_changes_the_image(clients, oracles, diffusers_img2img_pipeline) -> None:
    """The comparisons above can fail: another mask gives another picture, and so does image-to-image."""
    kwargs = {"seed": 21, "num_inference_steps": STEPS, "scheduler": "ddim", "strength": 0.8}
    served = np.asarray(clients["sd"].generate(PROMPT, image=_picture(), mask=_mask(), **kwargs).image)
    other_mask = inpaint_diffusers_image(oracles["sd"], PROMPT, image=_picture(), mask=_mask(variant=3), **kwargs)
    img2img = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, image=_picture(), **kwargs)
    assert max_pixel_difference(served, other_mask) > 4 * MAX_PIXEL_DIFFERENCE
    assert max_pixel_difference(served, img2img) > 4 * MAX_PIXEL_DIFFERENCE


def test_inpainting_img2img_and_text_requests_share_the_steps_exactly(
    clients, oracles, diffusers_img2img_pipeline
) -> None:
    """On the plain SD model, an inpainting, an image-to-image and a text-to-image request in flight together (one
    UNet, one latent size: they share its calls) each give diffusers' own image."""
    common = {"num_inference_steps": STEPS, "scheduler": "euler_a"}
    requests = [
        ({"image": _picture(), "mask": _mask(), "strength": 0.8, "seed": 1}, "inpaint"),
        ({"image": _picture(variant=1), "strength": 0.8, "seed": 2}, "img2img"),
        ({"width": WIDTH, "height": HEIGHT, "seed": 3}, "text"),
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        served = list(pool.map(lambda request: clients["sd"].generate(PROMPT, **request[0], **common), requests))
    pipeline = oracles["sd"]
    for result, (kwargs, kind) in zip(served, requests, strict=True):
        if kind == "inpaint":
            expected = inpaint_diffusers_image(pipeline, PROMPT, **kwargs, **common)
        elif kind == "img2img":
            expected = img2img_diffusers_image(diffusers_img2img_pipeline, PROMPT, **kwargs, **common)
        else:
            expected = diffusers_image(pipeline, PROMPT, **kwargs, **common)
        assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE, kind


def test_the_stream_reports_the_strength_cut_steps_and_ends_with_the_same_image(clients) -> None:
    """Over the stream entry: int(steps x strength) steps, then the image the plain entry gives."""
    kwargs = {"image": _picture(), "mask": _mask(), "strength": 0.5, "seed": 6, "num_inference_steps": 8}
    kwargs["scheduler"] = "ddim"
    client = clients["sd_inpainting_unet"]
    seen = []
    streamed = client.generate(PROMPT, on_progress=seen.append, **kwargs)
    assert seen[-1].total_steps == [4]
    assert np.array_equal(np.asarray(streamed.image), np.asarray(client.generate(PROMPT, **kwargs).image))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": _mask()}, "mask_image: is taken with an input_image only"),
        (
            {"image": _picture(), "mask": inpaint_mask(WIDTH, HEIGHT + 8)},
            f"mask_image: must have the input_image's height and width ({HEIGHT} x {WIDTH}), "
            f"got {HEIGHT + 8} x {WIDTH}",
        ),
    ],
)
def test_a_bad_mask_is_refused_by_name(clients, kwargs, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        clients["sd"].generate(PROMPT, seed=1, num_inference_steps=2, **kwargs)


def test_triton_refuses_a_mask_of_another_type_or_shape_by_name(family_server) -> None:
    """Sent raw (the client converts what it is given to UINT8 [H, W, 1]): Triton's own refusal names the input."""
    prompt = triton_http.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=np.object_))
    image = triton_http.InferInput("input_image", [1, HEIGHT, WIDTH, 3], "UINT8")
    image.set_data_from_numpy(np.asarray(_picture())[None])
    with triton_http.InferenceServerClient(family_server.address.http_url.removeprefix("http://")) as raw:
        for array, datatype in (
            (np.zeros((1, HEIGHT, WIDTH, 1), dtype=np.float32), "FP32"),
            (np.zeros((1, HEIGHT, WIDTH, 3), dtype=np.uint8), "UINT8"),
        ):
            mask = triton_http.InferInput("mask_image", list(array.shape), datatype)
            mask.set_data_from_numpy(array)
            with pytest.raises(Exception, match="mask_image"):
                raw.infer(ENTRY_MODEL_NAME, [prompt, image, mask])


@pytest.mark.parametrize("kind", ["sd_inpainting_unet", "sdxl_inpainting_unet"])
@pytest.mark.parametrize("kwargs", [{}, {"image": _picture()}], ids=["text", "img2img"])
def test_an_inpainting_model_refuses_a_request_without_a_mask(clients, kind: str, kwargs) -> None:
    """Only diffusers' inpainting pipelines run a 9-channel UNet; without a mask the request is refused by name."""
    with pytest.raises(InvalidRequestError, match=r"mask_image: is required by this inpainting model"):
        clients[kind].generate(PROMPT, seed=1, num_inference_steps=2, **kwargs)


def test_sdxl_refuses_the_refiner_with_a_mask(clients) -> None:
    with pytest.raises(InvalidRequestError, match=r"refiner_fraction: must be 0 \(off\) with a mask_image"):
        clients["sdxl"].generate(PROMPT, image=_picture(), mask=_mask(), refiner_fraction=0.3, num_inference_steps=4)


def test_the_command_line_inpaints(family_server, oracles, tmp_path: Path) -> None:
    picture, mask, output = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    _picture().save(picture)
    _mask().convert("RGB").save(mask)  # any mode: read as gray, as diffusers converts it
    command = [
        *(sys.executable, "-m", "sdtriton.cli", "generate", PROMPT),
        *("--url", family_server.address.http_url, "--model", KINDS["sd_inpainting_unet"]),
        *("--image", str(picture), "--mask", str(mask), "--strength", "0.8", "--seed", "3", "--steps", str(STEPS)),
        *("-o", str(output)),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    expected = inpaint_diffusers_image(
        oracles["sd_inpainting_unet"],
        PROMPT,
        image=_picture(),
        mask=_mask(),
        strength=0.8,
        seed=3,
        num_inference_steps=STEPS,
    )
    assert max_pixel_difference(np.asarray(Image.open(output).convert("RGB")), expected) <= MAX_PIXEL_DIFFERENCE
