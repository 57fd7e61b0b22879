"""SD 3 / 3.5 served through a real tritonserver: the engine's flow-matching path gives StableDiffusion3Pipeline's
images on the same weights, for every scheduler the family offers, guidance on and off, a given and an omitted
negative prompt, a non-square size, T5 present and absent, dynamic shifting (the SD 3 without T5), SD 3.5's skip-layer
guidance, alone and batched with other requests in flight.

One server (``family_server``) holds a tiny repository of every family: SD 1.x's, and under model prefixes SDXL
with its refiner, SD 3.5 (dual-attention layers, RMS q/k norm, T5) and SD 3 without T5 (diffusers encodes zeros in
its place), of other geometry than make-tiny's (1x1 patches, 4 latent channels: ``tests/conftest.py``).
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.interface import FLOW_SCHEDULER_NAMES, SCHEDULER_NAMES
from tests.conftest import SD35_SKIP_GUIDANCE_LAYERS
from tests.integration.oracle import (
    MAX_PIXEL_DIFFERENCE,
    flow_diffusers_image,
    inpaint_mask,
    max_pixel_difference,
    start_picture,
)

pytestmark = pytest.mark.integration

PROMPT = "a purple star on an orange background"
STEPS = 6
SD35_ENTRY = "sd35_stable_diffusion"
NO_T5_ENTRY = "no_t5_stable_diffusion"


@pytest.fixture(scope="module")
def sd3_server(family_server):
    return family_server


@pytest.fixture(scope="module")
def oracles(sd3_exports) -> dict[str, object]:
    """diffusers' own StableDiffusion3Pipeline on the same folders."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    pipelines = {
        "sd35": StableDiffusion3Pipeline.from_pretrained(sd3_exports["sd35"][0], dtype=torch.float32),
        "sd3_no_t5": StableDiffusion3Pipeline.from_pretrained(
            sd3_exports["sd3_no_t5"][0], text_encoder_3=None, tokenizer_3=None, dtype=torch.float32
        ),
    }
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)
    return pipelines


@pytest.fixture(scope="module")
def client(sd3_server):
    with StableDiffusionClient(sd3_server.address.grpc_url, model_name=SD35_ENTRY) as client:
        yield client


def _check(client, oracle, **kwargs) -> np.ndarray:
    image = np.asarray(client.generate(PROMPT, **kwargs).image)
    expected = flow_diffusers_image(oracle, PROMPT, **kwargs)
    assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE
    return image


@pytest.mark.parametrize("scheduler", [None, *FLOW_SCHEDULER_NAMES])
def test_every_flow_scheduler_matches_diffusers_sd35(client, oracles, scheduler: str | None) -> None:
    image = _check(client, oracles["sd35"], seed=1234, num_inference_steps=STEPS, scheduler=scheduler)
    # The comparison can fail: another seed gives a clearly different picture.
    other = flow_diffusers_image(oracles["sd35"], PROMPT, seed=1235, num_inference_steps=STEPS, scheduler=scheduler)
    assert max_pixel_difference(image, other) > 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guidance_scale": 1.0},  # guidance off: one row, no negative
        {"negative_prompt": "blurry, low quality", "guidance_scale": 4.5},
        {"width": 96, "height": 64, "scheduler": "flow_heun"},  # non-square
        {},  # every default: the pipeline's 28 steps and guidance 7.0
    ],
    ids=["guidance-off", "negative", "non-square", "defaults"],
)
def test_guidance_negative_prompts_sizes_and_defaults_match_diffusers_sd35(client, oracles, kwargs) -> None:
    steps = {} if not kwargs else {"num_inference_steps": STEPS}
    image = np.asarray(client.generate(PROMPT, seed=7, **steps, **kwargs).image)
    expected = flow_diffusers_image(
        oracles["sd35"], PROMPT, seed=7, num_inference_steps=steps.get("num_inference_steps", 28), **kwargs
    )
    assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE


def _sd35_image(oracles, **kwargs) -> np.ndarray:
    """diffusers' SD 3.5 image; with skip-layer guidance asked for, the exported layers passed as the pipeline takes
    them."""
    if kwargs.get("skip_layer_guidance_scale"):
        kwargs["skip_guidance_layers"] = list(SD35_SKIP_GUIDANCE_LAYERS)
    return flow_diffusers_image(oracles["sd35"], PROMPT, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        # The pipeline's window (0.01..0.2 of 12 steps: evaluations 1 and 2) at its default scale.
        {"skip_layer_guidance_scale": 2.8, "num_inference_steps": 12},
        # Another window (evaluations 2..4 of Heun's 11), as float32 holds it exactly, and a negative prompt.
        {
            "skip_layer_guidance_scale": 4.0,
            "skip_layer_guidance_start": 0.25,
            "skip_layer_guidance_stop": 0.75,
            "num_inference_steps": 6,
            "scheduler": "flow_heun",
            "negative_prompt": "blurry",
        },
    ],
    ids=["defaults", "window-heun"],
)
def test_skip_layer_guidance_matches_diffusers_sd35(client, oracles, kwargs) -> None:
    kwargs = {"seed": 77, **kwargs}
    image = np.asarray(client.generate(PROMPT, **kwargs).image)
    assert max_pixel_difference(image, _sd35_image(oracles, **kwargs)) <= MAX_PIXEL_DIFFERENCE
    # The skip row counts: without it the picture differs.
    unskipped = {name: value for name, value in kwargs.items() if not name.startswith("skip_layer")}
    assert max_pixel_difference(image, _sd35_image(oracles, **unskipped)) > MAX_PIXEL_DIFFERENCE


def test_skip_layer_guidance_without_guidance_changes_nothing_as_in_diffusers(client) -> None:
    kwargs = {"seed": 78, "num_inference_steps": 6, "guidance_scale": 1.0}
    skipped = client.generate(PROMPT, skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.0, **kwargs)
    assert np.array_equal(np.asarray(skipped.image), np.asarray(client.generate(PROMPT, **kwargs).image))


@pytest.mark.parametrize(
    ("entry", "kwargs", "message"),
    [
        (NO_T5_ENTRY, {"skip_layer_guidance_scale": 2.8}, "skip_layer_guidance_scale: must be 0: this repository"),
        ("stable_diffusion", {"skip_layer_guidance_scale": 1.0}, "skip_layer_guidance_scale: must be 0: this"),
        (SD35_ENTRY, {"skip_layer_guidance_scale": -1.0}, "skip_layer_guidance_scale: must be 0 (off) or a finite"),
        (SD35_ENTRY, {"skip_layer_guidance_start": 1.5}, "skip_layer_guidance_start: must be a number in 0..1"),
        (SD35_ENTRY, {"skip_layer_guidance_stop": float("nan")}, "skip_layer_guidance_stop: must be a number in 0..1"),
    ],
)
def test_skip_layer_guidance_out_of_range_or_without_layers_is_refused(sd3_server, entry, kwargs, message) -> None:
    with StableDiffusionClient(sd3_server.address.http_url, model_name=entry) as client:
        with pytest.raises(InvalidRequestError) as error:
            client.generate(PROMPT, num_inference_steps=2, **kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("scheduler", "size"),
    [(None, {}), ("dpmpp_2m", {}), ("unipc", {"width": 96, "height": 64})],
)
def test_sd3_without_t5_and_with_dynamic_shifting_matches_diffusers(
    sd3_server, oracles, scheduler: str | None, size
) -> None:
    # Zeros in T5's place; mu from the image's patch count (another for the non-square size), as the pipeline.
    assert oracles["sd3_no_t5"].scheduler.config.use_dynamic_shifting
    with StableDiffusionClient(sd3_server.address.http_url, model_name=NO_T5_ENTRY) as client:
        _check(client, oracles["sd3_no_t5"], seed=11, num_inference_steps=STEPS, scheduler=scheduler, **size)


def test_flow_heun_is_refused_under_dynamic_shifting_as_diffusers_cannot_run_it(sd3_server, oracles) -> None:
    with pytest.raises(TypeError, match="mu"):  # FlowMatchHeun's set_timesteps takes no mu
        flow_diffusers_image(oracles["sd3_no_t5"], PROMPT, seed=0, num_inference_steps=2, scheduler="flow_heun")
    with StableDiffusionClient(sd3_server.address.http_url, model_name=NO_T5_ENTRY) as client:
        with pytest.raises(InvalidRequestError) as error:
            client.generate(PROMPT, num_inference_steps=2, scheduler="flow_heun")
    assert "scheduler: must be one of flow_euler, dpmpp_2m, unipc (this sd3 model's)" in str(error.value)


def test_every_family_served_side_by_side_by_one_server_stays_exact(
    sd3_server, oracles, diffusers_pipeline, sdxl_dirs, flux_exports
) -> None:
    import torch
    from diffusers import FluxPipeline, StableDiffusionXLPipeline

    from sdtriton.pipeline_config import PipelineConfig
    from tests.integration.oracle import diffusers_image, sdxl_diffusers_image

    sdxl = StableDiffusionXLPipeline.from_pretrained(sdxl_dirs[0], torch_dtype=torch.float32)
    flux_folder, flux_repository, flux_prefix = flux_exports["flux-dev"]
    flux = FluxPipeline.from_pretrained(flux_folder, dtype=torch.float32)
    flux_t5_rows = PipelineConfig.load(flux_repository / f"{flux_prefix}pipeline" / "1").flux.t5_max_length
    for pipeline in (sdxl, flux):
        pipeline.set_progress_bar_config(disable=True)
    jobs = [
        (SD35_ENTRY, {"seed": 30, "num_inference_steps": 9, "scheduler": "unipc"}),
        (SD35_ENTRY, {"seed": 31, "num_inference_steps": 5, "guidance_scale": 1.0, "width": 96}),
        (SD35_ENTRY, {"seed": 32, "num_inference_steps": 7, "scheduler": "flow_heun"}),
        # Three rows (skip-layer guidance) beside two- and one-row images in the same transformer call.
        (SD35_ENTRY, {"seed": 37, "num_inference_steps": 10, "skip_layer_guidance_scale": 3.0}),
        (NO_T5_ENTRY, {"seed": 33, "num_inference_steps": 8}),
        ("stable_diffusion", {"seed": 34, "num_inference_steps": 8, "scheduler": "dpmpp_2m"}),  # SD 1.x beside them
        ("sdxl_stable_diffusion", {"seed": 35, "num_inference_steps": 6, "scheduler": "euler"}),  # and SDXL
        ("flux_stable_diffusion", {"seed": 36, "num_inference_steps": 4, "width": 64, "height": 64}),  # and FLUX
    ]

    def run(job) -> np.ndarray:
        model_name, kwargs = job
        with StableDiffusionClient(sd3_server.address.grpc_url, model_name=model_name) as client:
            return np.asarray(client.generate(PROMPT, **kwargs).image)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        images = list(pool.map(run, jobs))
    expected = {
        SD35_ENTRY: lambda kwargs: _sd35_image(oracles, **kwargs),
        NO_T5_ENTRY: lambda kwargs: flow_diffusers_image(oracles["sd3_no_t5"], PROMPT, **kwargs),
        "stable_diffusion": lambda kwargs: diffusers_image(diffusers_pipeline, PROMPT, **kwargs),
        "sdxl_stable_diffusion": lambda kwargs: sdxl_diffusers_image(sdxl, PROMPT, **kwargs),
        "flux_stable_diffusion": lambda kwargs: flow_diffusers_image(
            flux, PROMPT, max_sequence_length=flux_t5_rows, **kwargs
        ),
    }
    for image, (model_name, kwargs) in zip(images, jobs, strict=True):
        assert max_pixel_difference(image, expected[model_name](kwargs)) <= MAX_PIXEL_DIFFERENCE, model_name


@pytest.mark.parametrize("scheduler", [name for name in SCHEDULER_NAMES if name not in FLOW_SCHEDULER_NAMES])
def test_a_noise_prediction_scheduler_is_refused_naming_the_flow_ones(client, scheduler: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        client.generate(PROMPT, num_inference_steps=2, scheduler=scheduler)
    message = str(error.value)
    assert "scheduler" in message and all(name in message for name in FLOW_SCHEDULER_NAMES)
    assert client.generate(PROMPT, num_inference_steps=2, seed=1).image.size == (64, 64)  # still serving


def test_progress_and_previews_stream_and_end_with_the_same_image(client, oracles) -> None:
    kwargs = {"seed": 50, "num_inference_steps": 6, "scheduler": "flow_euler"}
    events = []
    streamed = client.generate(PROMPT, on_progress=events.append, preview_every=2, **kwargs)
    assert [event.steps_done[0] for event in events] == list(range(1, 7))
    # Every second step before the last (the image itself comes then), at latent resolution, drawn from the 16
    # latent channels by the projection the export fitted.
    assert [event.steps_done[0] for event in events if event.previews] == [2, 4]
    latent_side = 64 // oracles["sd35"].vae_scale_factor
    previews = [event.previews[0] for event in events if event.previews]
    assert {preview.size for preview in previews} == {(latent_side, latent_side)}
    assert all(np.asarray(preview).std() > 0 for preview in previews)
    assert np.array_equal(np.asarray(streamed.image), np.asarray(client.generate(PROMPT, **kwargs).image))


def test_the_generate_command_offers_every_scheduler_a_family_accepts(sd3_server, client, tmp_path) -> None:
    """``sdtriton generate --scheduler`` takes the names of every family (the flow ones too), from the interface's
    lists; a flow scheduler sent from the command gives the client's image."""
    from sdtriton.cli import build_parser

    (generate,) = (
        parser
        for action in build_parser()._subparsers._group_actions
        for name, parser in action.choices.items()
        if name == "generate"
    )
    (scheduler,) = (action for action in generate._actions if action.dest == "scheduler")
    assert sorted(scheduler.choices) == sorted({*SCHEDULER_NAMES, *FLOW_SCHEDULER_NAMES})
    output = tmp_path / "heun.png"
    arguments = ["--steps", "4", "--seed", "5", "--scheduler", "flow_heun", "--model", SD35_ENTRY, "-o", str(output)]
    done = subprocess.run(
        [sys.executable, "-m", "sdtriton.cli", "generate", PROMPT, "--url", sd3_server.address.grpc_url, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    expected = client.generate(PROMPT, seed=5, num_inference_steps=4, scheduler="flow_heun").image
    assert np.array_equal(np.asarray(Image.open(output).convert("RGB")), np.asarray(expected))


@pytest.fixture(scope="module")
def img2img_oracles(oracles) -> dict[str, object]:
    """diffusers' own StableDiffusion3Img2ImgPipeline on the same modules."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    pipelines = {name: StableDiffusion3Img2ImgPipeline.from_pipe(pipeline) for name, pipeline in oracles.items()}
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)
    return pipelines


@pytest.mark.parametrize("strength", [0.5, 0.8])
@pytest.mark.parametrize("scheduler", [None, "flow_euler", "flow_heun"])
def test_image_to_image_matches_diffusers_sd35_img2img(
    client, img2img_oracles, scheduler: str | None, strength: float
) -> None:
    """Every scheduler StableDiffusion3Img2ImgPipeline runs (those with scale_noise), two strengths, non-square."""
    kwargs = {"seed": 3, "num_inference_steps": STEPS, "scheduler": scheduler, "strength": strength}
    picture = start_picture(96, 64)
    result = client.generate(PROMPT, image=picture, **kwargs)
    assert result.image.size == (96, 64)
    # The pipeline resizes the image to width x height (its default size unless given): given, as the served size.
    expected = flow_diffusers_image(img2img_oracles["sd35"], PROMPT, image=picture, width=96, height=64, **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE


def test_image_to_image_with_dynamic_shifting_matches_diffusers(sd3_server, img2img_oracles) -> None:
    """The SD 3 without T5: mu from the input image's patch count, as the img2img pipeline computes it."""
    kwargs = {"seed": 4, "num_inference_steps": STEPS, "strength": 0.7}
    picture = start_picture(64, 96, variant=2)
    with StableDiffusionClient(sd3_server.address.http_url, model_name=NO_T5_ENTRY) as client:
        result = client.generate(PROMPT, image=picture, **kwargs)
    expected = flow_diffusers_image(img2img_oracles["sd3_no_t5"], PROMPT, image=picture, width=64, height=96, **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheduler": "dpmpp_2m"}, "scheduler: must be one of flow_euler, flow_heun with an input_image on this sd3"),
        ({"skip_layer_guidance_scale": 2.0}, "skip_layer_guidance_scale: must be 0 with an input_image"),
    ],
)
def test_what_the_sd3_img2img_pipeline_cannot_do_is_refused_by_name(client, kwargs, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        client.generate(PROMPT, image=start_picture(64, 64), num_inference_steps=STEPS, **kwargs)


@pytest.mark.parametrize(("scheduler", "strength"), [(None, None), ("flow_euler", 1.0), ("flow_heun", 0.5)])
def test_inpainting_matches_diffusers_sd35_inpaint(client, oracles, scheduler: str | None, strength) -> None:
    """StableDiffusion3InpaintPipeline on the same modules (a 16-channel transformer: the latents outside the mask
    replaced by the re-noised image's after each step), its schedulers with scale_noise, strengths 1.0, 0.5 and its
    default 0.6; it decodes without the VAE's shift (as diffusers draws it, so does the server)."""
    from diffusers import StableDiffusion3InpaintPipeline

    inpainting = StableDiffusion3InpaintPipeline.from_pipe(oracles["sd35"])
    inpainting.set_progress_bar_config(disable=True)
    picture, mask = start_picture(96, 64), inpaint_mask(96, 64)
    kwargs = {"seed": 3, "num_inference_steps": STEPS, "scheduler": scheduler, "strength": strength}
    result = client.generate(PROMPT, image=picture, mask=mask, **kwargs)
    expected = flow_diffusers_image(inpainting, PROMPT, image=picture, mask_image=mask, width=96, height=64, **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE
