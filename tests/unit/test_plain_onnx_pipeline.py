"""The pure pipeline over ONNX Runtime sessions (no Triton) equals diffusers; exported files are dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdtriton.components import UNET
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.denoise import generate_image
from sdtriton.serving.networks import OnnxRuntimeComponents
from sdtriton.serving.requests import parse_request
from tests.integration.oracle import MAX_PIXEL_DIFFERENCE, diffusers_image, max_pixel_difference


@pytest.fixture(scope="module")
def components(tiny_repository: Path) -> OnnxRuntimeComponents:
    return OnnxRuntimeComponents.from_model_repository(tiny_repository)


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "heun"])
def test_plain_loop_matches_diffusers(components, tiny_repository: Path, diffusers_pipeline, scheduler: str) -> None:
    config = PipelineConfig.load(tiny_repository / "pipeline" / "1")
    raw = {
        "prompt": np.array([b"a blue cross"], dtype=object),
        "negative_prompt": np.array([b"ugly"], dtype=object),
        "num_inference_steps": np.array([10]),
        "seed": np.array([21]),
        "scheduler": np.array([scheduler.encode()], dtype=object),
    }
    tokenizers = {"text_encoder": diffusers_pipeline.tokenizer}
    (request,) = parse_request(raw, config=config, tokenizers=tokenizers).images
    image = generate_image(image=request, config=config, components=components)
    expected = diffusers_image(
        diffusers_pipeline, "a blue cross", negative_prompt="ugly", seed=21, num_inference_steps=10, scheduler=scheduler
    )
    assert max_pixel_difference(image, expected) <= MAX_PIXEL_DIFFERENCE


def test_exported_unet_takes_any_batch_and_size(components, tiny_repository: Path) -> None:
    config = PipelineConfig.load(tiny_repository / "pipeline" / "1")
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((3, config.latent_channels, 24, 48)).astype(np.float32)
    states = rng.standard_normal((3, config.text_max_length, config.text_hidden_size)).astype(np.float32)
    timestep = np.array([1.0, 500.0, 999.0], np.float32)
    inputs = {"sample": sample, "timestep": timestep, "encoder_hidden_states": states}
    noise = components.predict_noise("unet", {name: torch.from_numpy(value) for name, value in inputs.items()})
    assert noise.shape == sample.shape and noise.device == components.device
    assert UNET.output_names == ["noise_pred"]
