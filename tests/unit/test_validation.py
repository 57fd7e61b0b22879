"""Request validation: defaults, every range, and names that are never looked up beyond a fixed table."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from sdtriton import interface
from sdtriton.pipeline_config import FluxConfig, LoraAdapter, PipelineConfig, SdxlConfig
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.requests import parse_request
from sdtriton.serving.validation import decode_prompt, parse_generation_params

CONFIG = PipelineConfig(
    latent_channels=4,
    vae_scale_factor=8,
    size_multiple=64,
    default_height=512,
    default_width=512,
    max_height=1024,
    max_width=768,
    vae_scaling_factor=0.18215,
    text_max_length=77,
    text_hidden_size=768,
    default_num_inference_steps=30,
    scheduler_config={"_class_name": "PNDMScheduler"},
)


def test_omitted_parameters_take_the_models_defaults() -> None:
    params = parse_generation_params(config=CONFIG, draw_seed=lambda: 1234)
    assert params.num_inference_steps == 30
    assert params.guidance_scale == 7.5
    assert params.seed == 1234
    assert (params.width, params.height) == (512, 512)
    assert params.scheduler is None
    assert params.uses_classifier_free_guidance


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps: must be an integer in 1..150, got 0"),
        ({"num_inference_steps": 151}, "num_inference_steps: must be an integer in 1..150"),
        ({"guidance_scale": math.nan}, "guidance_scale: must be a finite number in 0..30"),
        ({"guidance_scale": -math.inf}, "guidance_scale: must be a finite number in 0..30"),
        ({"guidance_scale": 30.01}, "guidance_scale: must be a finite number in 0..30"),
        ({"seed": -5}, "seed: must be an integer in 0..9223372036854775807"),
        ({"width": 832}, "width: must be a positive multiple of 64 in 64..768"),
        ({"width": 500}, "width: must be a positive multiple of 64 in 64..768"),
        ({"height": 0}, "height: must be a positive multiple of 64 in 64..1024"),
        ({"true_cfg_scale": 2.0}, "true_cfg_scale: must be 1: true classifier-free guidance is FLUX's; this sd"),
        ({"true_cfg_scale": math.nan}, "true_cfg_scale: must be 1"),
        (
            {"scheduler": b"os.system"},
            "scheduler: must be one of ddim, pndm, euler, euler_a, dpmpp_2m, unipc, lms, heun",
        ),
    ],
)
def test_each_bad_value_names_its_field_and_range(kwargs, message: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        parse_generation_params(config=CONFIG, **kwargs)
    assert message in str(error.value)
    assert error.value.field == message.split(":")[0]


def test_boundaries_are_allowed() -> None:
    params = parse_generation_params(
        config=CONFIG,
        num_inference_steps=150,
        guidance_scale=0.0,
        seed=interface.MAX_SEED,
        width=768,
        height=64,
        scheduler=b"heun",
    )
    assert params.seed == 2**63 - 1
    assert not params.uses_classifier_free_guidance
    assert params.scheduler == "heun"


def test_guidance_of_one_turns_guidance_off_as_diffusers_does() -> None:
    assert not parse_generation_params(config=CONFIG, guidance_scale=1.0, seed=0).uses_classifier_free_guidance
    assert parse_generation_params(config=CONFIG, guidance_scale=1.01, seed=0).uses_classifier_free_guidance


def test_long_echoed_values_are_cut() -> None:
    with pytest.raises(InvalidInputError) as error:
        parse_generation_params(config=CONFIG, scheduler="x" * 5000)
    assert len(str(error.value)) < 200


def test_prompt_limits() -> None:
    assert decode_prompt("prompt", "é" * 1000) == "é" * 1000
    with pytest.raises(InvalidInputError, match="prompt: must be at most 2000 bytes"):
        decode_prompt("prompt", "é" * 1001)
    with pytest.raises(InvalidInputError, match="negative_prompt: must be valid UTF-8"):
        decode_prompt("negative_prompt", b"\xc3\x28")


def test_the_exports_request_limits_are_enforced_by_name() -> None:
    import dataclasses

    limited = dataclasses.replace(CONFIG, max_inference_steps=40, max_prompt_bytes=16, max_pixels=512 * 640)
    assert parse_generation_params(config=limited, num_inference_steps=40, seed=0).num_inference_steps == 40
    with pytest.raises(InvalidInputError, match=r"num_inference_steps: must be an integer in 1\.\.40, got 41"):
        parse_generation_params(config=limited, num_inference_steps=41, seed=0)
    assert parse_generation_params(config=limited, width=640, height=512, seed=0).width == 640
    # Each side within its own limit, the two together over the pixel limit.
    with pytest.raises(InvalidInputError, match=r"width x height: must be at most 327680 pixels, got 768 x 512"):
        parse_generation_params(config=limited, width=768, height=512, seed=0)
    with pytest.raises(InvalidInputError, match="prompt: must be at most 16 bytes of UTF-8, got 17 bytes"):
        decode_prompt("prompt", "x" * 17, max_bytes=limited.max_prompt_bytes)
    # Without limits set, the defaults: 150 steps, 2000 bytes, the sides' own limit.
    assert CONFIG.max_inference_steps == interface.MAX_INFERENCE_STEPS and CONFIG.pixel_limit == 1024 * 768


def test_limits_that_contradict_the_model_are_refused_at_export() -> None:
    import dataclasses

    with pytest.raises(
        ValueError, match=r"default_num_inference_steps must be in 1\.\.max_inference_steps \(20\), got 30"
    ):
        dataclasses.replace(CONFIG, max_inference_steps=20)
    with pytest.raises(ValueError, match="default_num_inference_steps must be in 1"):
        dataclasses.replace(CONFIG, default_num_inference_steps=0)
    with pytest.raises(ValueError, match=r"max_pixels must allow the default image \(512 x 512 = 262144 pixels\)"):
        dataclasses.replace(CONFIG, max_pixels=100)
    with pytest.raises(ValueError, match=r"max_inference_steps must be in 1\.\.1000"):
        dataclasses.replace(CONFIG, max_inference_steps=5000)


def test_an_input_image_sets_the_size_and_the_strength_defaults_to_diffusers() -> None:
    params = parse_generation_params(config=CONFIG, image_size=(128, 320), seed=1)
    assert (params.width, params.height) == (320, 128)
    assert params.strength == interface.DEFAULT_STRENGTH
    assert parse_generation_params(config=CONFIG, seed=1).strength is None  # text-to-image
    # A float32 on the wire is the decimal the client wrote: int(10 x 0.7) = 7 steps, as diffusers' 0.7 runs.
    sent = parse_generation_params(config=CONFIG, image_size=(64, 64), strength=np.float32(0.7), num_inference_steps=10)
    assert sent.strength == 0.7
    assert parse_generation_params(config=CONFIG, image_size=(64, 64), width=64, height=64).width == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": (64, 128), "width": 64}, "width: must be the input_image's width (128) or omitted, got 64"),
        ({"image_size": (64, 128), "height": 128}, "height: must be the input_image's height (64) or omitted"),
        ({"image_size": (64, 100)}, "input_image: its width must be a positive multiple of 64 in 64..768, got 100"),
        ({"image_size": (1088, 64)}, "input_image: its height must be a positive multiple of 64 in 64..1024"),
        ({"image_size": (64, 64), "strength": 0.0}, "strength: must be a number above 0 and at most 1, got 0.0"),
        ({"image_size": (64, 64), "strength": 1.01}, "strength: must be a number above 0 and at most 1"),
        ({"image_size": (64, 64), "strength": math.nan}, "strength: must be a number above 0 and at most 1"),
        (
            {"image_size": (64, 64), "strength": 0.19, "num_inference_steps": 5},
            "strength: must be at least 0.2 with 5 inference steps: int(num_inference_steps x strength) steps run",
        ),
        ({"strength": 0.5}, "strength: is taken with an input_image only"),
    ],
)
def test_each_bad_image_to_image_value_names_its_field(kwargs, message: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_generation_params(config=CONFIG, seed=1, **kwargs)


def test_flow_models_take_an_image_with_the_schedulers_that_have_scale_noise_only() -> None:
    flux_fields = {"pooled_size": 8, "t5_hidden_size": 8, "t5_max_length": 16, "guidance_embeds": True}
    flux_fields |= {"vae_shift_factor": 0.1, "default_guidance_scale": 3.5, "scheduler_names": ("flow_euler", "unipc")}
    flux = dataclasses.replace(
        CONFIG,
        flux=FluxConfig(**flux_fields),
        scheduler_config={"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0},
    )
    assert parse_generation_params(config=flux, seed=1, image_size=(64, 64), scheduler="flow_euler").strength == 0.8
    assert parse_generation_params(config=flux, seed=1, scheduler="unipc").strength is None  # text-to-image: any
    with pytest.raises(
        InvalidInputError, match=r"scheduler: must be one of flow_euler with an input_image on this flux"
    ):
        parse_generation_params(config=flux, seed=1, image_size=(64, 64), scheduler="unipc")


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((1, 64, 64, 3), dtype=np.float32), "input_image: must be UINT8 pixels, got float32"),
        (np.zeros((1, 64, 64, 4), dtype=np.uint8), "input_image: must be [height, width, 3] RGB pixels per prompt"),
        (np.zeros((1, 64, 64), dtype=np.uint8), "input_image: must be [height, width, 3] RGB pixels per prompt"),
        (np.zeros((2, 64, 64, 3), dtype=np.uint8), "input_image: must have one image per prompt (1), got 2"),
    ],
)
def test_bad_input_image_tensors_are_refused_by_name(pixels: np.ndarray, message: str) -> None:
    raw = {"prompt": np.array([b"a star"], dtype=np.object_), "input_image": pixels}
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_request(raw, config=CONFIG, tokenizers={})  # refused before any prompt is tokenized


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((1, 64, 64, 1), dtype=np.float32), "mask_image: must be UINT8 pixels, got float32"),
        (np.zeros((1, 64, 64, 3), dtype=np.uint8), "mask_image: must be [height, width, 1] gray pixels per prompt"),
        (np.zeros((2, 64, 64, 1), dtype=np.uint8), "mask_image: must have one image per prompt (1), got 2"),
    ],
)
def test_bad_mask_tensors_are_refused_by_name(pixels: np.ndarray, message: str) -> None:
    raw = {"prompt": np.array([b"a star"], dtype=np.object_), "mask_image": pixels}
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_request(raw, config=CONFIG, tokenizers={})


def test_a_mask_makes_an_inpainting_request_with_the_inpainting_pipelines_default_strength() -> None:
    params = parse_generation_params(config=CONFIG, seed=1, image_size=(64, 128), mask_size=(64, 128))
    assert params.inpaint and params.strength == 1.0  # StableDiffusionInpaintPipeline's default
    sdxl = dataclasses.replace(CONFIG, sdxl=SdxlConfig(text_hidden_sizes=(768, 1280), pooled_size=1280))
    assert parse_generation_params(config=sdxl, seed=1, image_size=(64, 64), mask_size=(64, 64)).strength == 0.9999
    sent = parse_generation_params(config=CONFIG, seed=1, image_size=(64, 64), mask_size=(64, 64), strength=0.5)
    assert sent.strength == 0.5
    assert not parse_generation_params(config=CONFIG, seed=1, image_size=(64, 64)).inpaint


INPAINTING_CONFIG = dataclasses.replace(CONFIG, unet_in_channels=9)


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (CONFIG, {"mask_size": (64, 64)}, "mask_image: is taken with an input_image only"),
        (
            CONFIG,
            {"image_size": (64, 128), "mask_size": (64, 64)},
            "mask_image: must have the input_image's height and width (64 x 128), got 64 x 64",
        ),
        (INPAINTING_CONFIG, {}, "mask_image: is required by this inpainting model (a 9-channel UNet"),
        (INPAINTING_CONFIG, {"image_size": (64, 64)}, "mask_image: is required by this inpainting model"),
    ],
)
def test_each_bad_mask_names_its_field(config: PipelineConfig, kwargs, message: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_generation_params(config=config, seed=1, **kwargs)


def test_an_inpainting_model_takes_a_masked_request() -> None:
    params = parse_generation_params(config=INPAINTING_CONFIG, seed=1, image_size=(64, 64), mask_size=(64, 64))
    assert params.inpaint and INPAINTING_CONFIG.inpainting_unet and not CONFIG.inpainting_unet


LORA_CONFIG = dataclasses.replace(
    CONFIG,
    loras=(
        LoraAdapter(name="style", components=("unet", "text_encoder")),
        LoraAdapter(name="detail", components=("unet",)),
    ),
)


def test_a_lora_is_one_of_the_exported_adapters_and_its_scale_is_in_range() -> None:
    params = parse_generation_params(config=LORA_CONFIG, lora=b"detail", lora_scale=-0.5)
    assert (params.lora, params.lora_scale) == ("detail", -0.5)
    # None, or an empty name, is no adapter; its scale is then the default, so such requests are equal.
    assert parse_generation_params(config=LORA_CONFIG, seed=1, lora=b"", lora_scale=2.0) == parse_generation_params(
        config=LORA_CONFIG, seed=1
    )
    with pytest.raises(InvalidInputError, match=r"^lora: must be one of style, detail \(the adapters this sd"):
        parse_generation_params(config=LORA_CONFIG, lora=b"anime")
    with pytest.raises(InvalidInputError, match=r"^lora: must be empty: this repository was exported without LoRA"):
        parse_generation_params(config=CONFIG, lora="style")
    for scale in (math.nan, 4.01, -4.5):
        with pytest.raises(InvalidInputError, match=r"^lora_scale: must be a finite number in -4\.\.4"):
            parse_generation_params(config=LORA_CONFIG, lora=b"style", lora_scale=scale)


def test_lora_scales_rows_put_the_weight_in_the_adapters_column_where_it_has_layers() -> None:
    assert LORA_CONFIG.lora_components() == {"unet", "text_encoder"}
    assert LORA_CONFIG.lora_scales("style", 0.5, component="text_encoder") == [0.5, 0.0]
    assert LORA_CONFIG.lora_scales("detail", 0.7, component="unet") == [0.0, 0.7]
    # detail has no text-encoder layers: its rows there are the base encoder's (and share its cache entries).
    assert LORA_CONFIG.lora_scales("detail", 0.7, component="text_encoder") == [0.0, 0.0]
    assert LORA_CONFIG.lora_scales(None, 1.0, component="unet") == [0.0, 0.0]
    assert PipelineConfig.from_json(LORA_CONFIG.to_json()) == LORA_CONFIG
