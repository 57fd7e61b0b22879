"""FLUX.1 served through a real tritonserver: the engine gives FluxPipeline's images on the same weights, for every
scheduler each model offers, two guidance values (dev), a non-square size, the defaults, true classifier-free guidance
(``true_cfg_scale`` with a negative prompt), alone and batched with other requests in flight; the schedulers
FluxPipeline cannot run are refused, naming the offered ones, and so is a true_cfg_scale out of range or sent to a
family whose guidance is classifier-free already.

They run on the server of every family (``family_server``), where FLUX.1-dev (guidance embedding, dynamic
shifting, T5 at 512 rows) and FLUX.1-schnell (no guidance, no shifting, a T5 of another width at 256 rows) sit
under model prefixes beside SD, SDXL and SD 3.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.interface import FLOW_SCHEDULER_NAMES
from sdtriton.pipeline_config import PipelineConfig
from tests.integration.oracle import (
    MAX_PIXEL_DIFFERENCE,
    flow_diffusers_image,
    inpaint_mask,
    max_pixel_difference,
    start_picture,
)

pytestmark = pytest.mark.integration

PROMPT = "a purple star on an orange background"
STEPS = 5
SMALL = {"width": 64, "height": 64}  # the tiny models' native size is FluxPipeline's 128 latents = 256 px
PREFIXES = {"flux-dev": "flux_", "flux-schnell": "schnell_"}
DEV_SCHEDULERS = ("flow_euler", "dpmpp_2m", "unipc")
SCHNELL_SCHEDULERS = ("flow_euler", "unipc")


@pytest.fixture(scope="module")
def flux_server(family_server):
    return family_server


@pytest.fixture(scope="module")
def oracles(flux_exports) -> dict[str, tuple[object, int]]:
    """diffusers' own FluxPipeline on the same folders, with the T5 rows each was exported with."""
    import torch
    from diffusers import FluxPipeline

    oracles = {}
    for family, (folder, repository, prefix) in flux_exports.items():
        pipeline = FluxPipeline.from_pretrained(folder, dtype=torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        config = PipelineConfig.load(repository / f"{prefix}pipeline" / "1")
        oracles[family] = (pipeline, config.flux.t5_max_length)
    return oracles


def _expected(oracles, family: str, **kwargs) -> np.ndarray:
    pipeline, max_sequence_length = oracles[family]
    return flow_diffusers_image(pipeline, PROMPT, max_sequence_length=max_sequence_length, **kwargs)


def _generate(url: str, family: str, **kwargs) -> np.ndarray:
    model_name = PREFIXES[family] + "stable_diffusion"
    with StableDiffusionClient(url, model_name=model_name) as client:
        return np.asarray(client.generate(PROMPT, **kwargs).image)


@pytest.mark.parametrize(
    ("family", "scheduler"),
    [("flux-dev", None), *(("flux-dev", name) for name in DEV_SCHEDULERS), ("flux-schnell", "unipc")],
)
def test_every_offered_scheduler_matches_flux_pipeline(flux_server, oracles, family: str, scheduler) -> None:
    kwargs = {"seed": 1234, "num_inference_steps": STEPS, "scheduler": scheduler, **SMALL}
    image = _generate(flux_server.address.grpc_url, family, **kwargs)
    assert max_pixel_difference(image, _expected(oracles, family, **kwargs)) <= MAX_PIXEL_DIFFERENCE
    # The comparison can fail: another seed gives a clearly different picture.
    other = _expected(oracles, family, **{**kwargs, "seed": 1235})
    assert max_pixel_difference(image, other) > 20


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("flux-dev", {"guidance_scale": 1.5, **SMALL}),
        ("flux-dev", {"guidance_scale": 6.0, **SMALL}),
        ("flux-dev", {"width": 96, "height": 64, "scheduler": "dpmpp_2m"}),  # non-square
        ("flux-dev", SMALL),  # the pipeline's 28 steps and guidance 3.5 (at a small size)
        ("flux-schnell", {}),  # every default: schnell's 4 steps at FluxPipeline's 256 px
    ],
    ids=["guidance-1.5", "guidance-6", "non-square", "dev-defaults", "schnell-defaults"],
)
def test_guidance_sizes_and_defaults_match_flux_pipeline(flux_server, oracles, family: str, kwargs) -> None:
    steps = {"num_inference_steps": STEPS} if "guidance_scale" in kwargs or "scheduler" in kwargs else {}
    image = _generate(flux_server.address.http_url, family, seed=7, **steps, **kwargs)
    default_steps = 28 if family == "flux-dev" else 4
    expected = _expected(
        oracles, family, seed=7, num_inference_steps=steps.get("num_inference_steps", default_steps), **kwargs
    )
    assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE
    if family == "flux-schnell":
        assert image.shape == (256, 256, 3)


def test_guidance_changes_dev_and_is_ignored_by_schnell_as_in_diffusers(flux_server) -> None:
    url = flux_server.address.grpc_url
    kwargs = {"seed": 9, "num_inference_steps": 3, **SMALL}
    dev = [_generate(url, "flux-dev", guidance_scale=scale, **kwargs) for scale in (1.5, 6.0)]
    assert max_pixel_difference(*dev) > 0
    schnell = [_generate(url, "flux-schnell", guidance_scale=scale, **kwargs) for scale in (0.0, 6.0)]
    assert np.array_equal(*schnell)
    # No true CFG (true_cfg_scale 1, the default): a negative prompt changes nothing, as in diffusers; nor does a
    # true_cfg_scale without a negative prompt (FluxPipeline's has_neg_prompt is False when it is None).
    negative = _generate(url, "flux-dev", negative_prompt="blurry", guidance_scale=6.0, **kwargs)
    assert np.array_equal(negative, dev[1])
    no_negative = _generate(url, "flux-dev", true_cfg_scale=4.0, guidance_scale=6.0, **kwargs)
    assert np.array_equal(no_negative, dev[1])


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("flux-dev", {"negative_prompt": "blurry", "true_cfg_scale": 4.0, "guidance_scale": 2.0}),
        ("flux-dev", {"negative_prompt": "", "true_cfg_scale": 2.5, "scheduler": "unipc"}),  # "" is a negative prompt
        # 5: on the schnell of another T5 width (tests/conftest.py) 3 moves the image by only 9/255.
        ("flux-schnell", {"negative_prompt": "blurry", "true_cfg_scale": 5.0}),
    ],
    ids=["dev", "dev-empty-negative", "schnell"],
)
def test_true_cfg_with_a_negative_prompt_matches_flux_pipeline(flux_server, oracles, family: str, kwargs) -> None:
    kwargs = {"seed": 11, "num_inference_steps": 4, **SMALL, **kwargs}
    image = _generate(flux_server.address.grpc_url, family, **kwargs)
    assert max_pixel_difference(image, _expected(oracles, family, **kwargs)) <= MAX_PIXEL_DIFFERENCE
    # The negative row counts: without true CFG the picture differs.
    assert max_pixel_difference(image, _expected(oracles, family, **{**kwargs, "true_cfg_scale": 1.0})) > 10


@pytest.mark.parametrize(
    ("prefix", "value", "message"),
    [
        ("flux_", 31.0, "must be a finite number in 0..30, got 31.0"),
        ("flux_", float("nan"), "must be a finite number in 0..30, got nan"),
        ("sd35_", 2.0, "must be 1: true classifier-free guidance is FLUX's; this sd3 model's guidance_scale"),
        ("", 0.5, "must be 1: true classifier-free guidance is FLUX's; this sd model's guidance_scale"),
    ],
)
def test_a_true_cfg_scale_out_of_range_or_for_another_family_is_refused(
    flux_server, prefix: str, value: float, message: str
) -> None:
    with StableDiffusionClient(flux_server.address.http_url, model_name=prefix + "stable_diffusion") as client:
        with pytest.raises(InvalidRequestError) as error:
            client.generate(PROMPT, negative_prompt="blurry", true_cfg_scale=value, num_inference_steps=2, **SMALL)
    assert f"true_cfg_scale: {message}" in str(error.value)


def test_flux_requests_batched_together_stay_exact(flux_server, oracles) -> None:
    jobs = [
        ("flux-dev", {"seed": 30, "num_inference_steps": 6, "scheduler": "unipc", **SMALL}),
        ("flux-dev", {"seed": 31, "num_inference_steps": 4, "guidance_scale": 5.0, **SMALL}),
        ("flux-dev", {"seed": 32, "num_inference_steps": 5, "width": 96, "height": 64}),
        ("flux-schnell", {"seed": 33, "num_inference_steps": 3, **SMALL}),
        # Two rows (true CFG) beside one-row images in the same transformer call.
        ("flux-dev", {"seed": 34, "num_inference_steps": 4, "negative_prompt": "dull", "true_cfg_scale": 3.0, **SMALL}),
    ]

    def run(job) -> np.ndarray:
        family, kwargs = job
        return _generate(flux_server.address.grpc_url, family, **kwargs)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        images = list(pool.map(run, jobs))
    for image, (family, kwargs) in zip(images, jobs, strict=True):
        assert max_pixel_difference(image, _expected(oracles, family, **kwargs)) <= MAX_PIXEL_DIFFERENCE


@pytest.mark.parametrize(
    ("family", "scheduler", "offered"),
    [
        ("flux-dev", "flow_heun", DEV_SCHEDULERS),
        ("flux-dev", "euler", DEV_SCHEDULERS),
        ("flux-schnell", "dpmpp_2m", SCHNELL_SCHEDULERS),
    ],
)
def test_a_scheduler_flux_pipeline_cannot_run_is_refused_naming_the_offered_ones(
    flux_server, oracles, family: str, scheduler: str, offered: tuple[str, ...]
) -> None:
    if scheduler in FLOW_SCHEDULER_NAMES:
        # diffusers' own FluxPipeline fails with it too (no sigmas argument; DPM-Solver's mu without shifting).
        with pytest.raises((ValueError, AssertionError)):
            _expected(oracles, family, seed=0, num_inference_steps=2, scheduler=scheduler, **SMALL)
    with pytest.raises(InvalidRequestError) as error:
        _generate(flux_server.address.http_url, family, num_inference_steps=2, scheduler=scheduler, **SMALL)
    message = str(error.value)
    assert "scheduler" in message and f"must be one of {', '.join(offered)} (this flux model's)" in message


def test_flux_progress_and_previews_stream_and_end_with_the_same_image(flux_server) -> None:
    kwargs = {"seed": 50, "num_inference_steps": 4, **SMALL}
    events = []
    dev_entry = PREFIXES["flux-dev"] + "stable_diffusion"
    with StableDiffusionClient(flux_server.address.grpc_url, model_name=dev_entry) as client:
        streamed = client.generate(PROMPT, on_progress=events.append, preview_every=2, **kwargs)
        plain = client.generate(PROMPT, **kwargs)
    assert [event.steps_done[0] for event in events] == [1, 2, 3, 4]
    # The packed latents unpacked to 16 x 32 x 32, drawn by the projection the export fitted.
    previews = [event.previews[0] for event in events if event.previews]
    assert [preview.size for preview in previews] == [(32, 32)]
    assert np.asarray(previews[0]).std() > 0
    assert np.array_equal(np.asarray(streamed.image), np.asarray(plain.image))


@pytest.mark.parametrize(
    ("family", "scheduler", "strength", "extra"),
    [
        ("flux-dev", None, 0.5, {"guidance_scale": 3.5}),
        ("flux-dev", "flow_euler", 0.8, {"guidance_scale": 7.0}),
        ("flux-dev", "flow_euler", 0.6, {"guidance_scale": 3.5, "true_cfg_scale": 3.0, "negative_prompt": "blurry"}),
        ("flux-schnell", "flow_euler", 0.5, {}),
    ],
)
def test_image_to_image_matches_flux_img2img_pipeline(
    flux_server, oracles, family: str, scheduler, strength: float, extra: dict
) -> None:
    """FluxImg2ImgPipeline on the same modules: the flow schedulers it runs (those with scale_noise), several
    strengths, true CFG; its image resized to width x height, given as the input's size."""
    from diffusers import FluxImg2ImgPipeline

    picture = start_picture(96, 64)
    kwargs = {"seed": 8, "num_inference_steps": STEPS, "scheduler": scheduler, "strength": strength, **extra}
    image = _generate(flux_server.address.grpc_url, family, image=picture, **kwargs)
    assert image.shape == (64, 96, 3)
    pipeline, max_sequence_length = oracles[family]
    img2img = FluxImg2ImgPipeline.from_pipe(pipeline)
    img2img.set_progress_bar_config(disable=True)
    expected = flow_diffusers_image(
        img2img, PROMPT, image=picture, width=96, height=64, max_sequence_length=max_sequence_length, **kwargs
    )
    assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE


def test_flux_image_to_image_refuses_the_schedulers_its_pipeline_cannot_run(flux_server) -> None:
    with pytest.raises(InvalidRequestError, match="scheduler: must be one of flow_euler with an input_image"):
        _generate(flux_server.address.grpc_url, "flux-dev", image=start_picture(64, 64), scheduler="unipc")


@pytest.mark.parametrize(
    ("family", "strength", "extra"),
    [
        ("flux-dev", None, {"guidance_scale": 3.5}),
        ("flux-dev", 1.0, {"guidance_scale": 3.5, "true_cfg_scale": 2.0, "negative_prompt": "blurry"}),
        ("flux-schnell", 0.5, {}),
    ],
)
def test_inpainting_matches_flux_inpaint_pipeline(flux_server, oracles, family: str, strength, extra: dict) -> None:
    """FluxInpaintPipeline on the same modules: packed latents blended with the re-noised image's outside the packed
    mask after each step; its default strength 0.6, 1.0 and 0.5, true CFG (its default guidance is 7.0: sent)."""
    from diffusers import FluxInpaintPipeline

    picture, mask = start_picture(96, 64), inpaint_mask(96, 64)
    kwargs = {"seed": 8, "num_inference_steps": STEPS, "scheduler": "flow_euler", "strength": strength, **extra}
    image = _generate(flux_server.address.grpc_url, family, image=picture, mask=mask, **kwargs)
    pipeline, max_sequence_length = oracles[family]
    inpainting = FluxInpaintPipeline.from_pipe(pipeline)
    inpainting.set_progress_bar_config(disable=True)
    expected = flow_diffusers_image(
        inpainting,
        PROMPT,
        image=picture,
        mask_image=mask,
        width=96,
        height=64,
        max_sequence_length=max_sequence_length,
        **kwargs,
    )
    assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE
