"""The latent-to-RGB preview: the least-squares fit, its shape checks, its place in the pipeline config, and how
well the projection fitted at export previews the trained 'shapes' model's held-out images."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.preview import (
    UINT8_MAX,
    area_downsample_rgb,
    fit_latent_rgb_projection,
    latents_to_preview,
    preview_mean_abs_error,
)

logger = logging.getLogger(__name__)

CHANNELS = 4
LATENT_SIZE = 6
FACTOR = 4


def _synthetic(seed: int = 0, *, samples: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latents, a known projection, and images whose f x f block means are exactly that projection's RGB."""
    rng = np.random.default_rng(seed)
    latents = rng.uniform(-1.0, 1.0, size=(samples, CHANNELS, LATENT_SIZE, LATENT_SIZE))
    projection = np.concatenate([rng.uniform(-0.1, 0.1, size=(CHANNELS, 3)), rng.uniform(0.4, 0.6, size=(1, 3))])
    rgb = np.einsum("nchw,ck->nkhw", latents, projection[:-1]) + projection[-1][None, :, None, None]
    assert 0.05 < rgb.min() and rgb.max() < 0.95  # no clipping, so the map is exactly linear
    images = np.repeat(np.repeat(rgb * 2.0 - 1.0, FACTOR, axis=2), FACTOR, axis=3)
    # Detail inside each block that averages to zero: the fit must see block means, not single pixels.
    checker = np.indices((FACTOR, FACTOR)).sum(axis=0) % 2 * 2.0 - 1.0
    images = images + 0.05 * np.tile(checker, (LATENT_SIZE, LATENT_SIZE))
    return latents.astype(np.float32), projection.astype(np.float32), images.astype(np.float32)


def test_fit_recovers_a_known_linear_map() -> None:
    latents, projection, images = _synthetic()
    fitted = fit_latent_rgb_projection(latents, images)
    assert fitted.shape == (CHANNELS + 1, 3) and fitted.dtype == np.float32
    np.testing.assert_allclose(fitted, projection, atol=1e-5)
    # Rounding to uint8 is the only error left.
    assert preview_mean_abs_error(latents, images, fitted) <= 0.5


def test_preview_applies_the_projection_with_bias_clipping_and_rounding() -> None:
    projection = np.zeros((CHANNELS + 1, 3), dtype=np.float32)
    projection[0] = [1.0, 0.0, -1.0]
    projection[-1] = [0.0, 0.5, 1.0]
    latents = np.zeros((CHANNELS, 1, 3), dtype=np.float32)
    latents[0, 0] = [0.2, 2.0, -0.5]
    preview = latents_to_preview(latents, projection)
    assert preview.shape == (1, 3, 3) and preview.dtype == np.uint8
    expected = [[51, 128, 204], [255, 128, 0], [0, 128, 255]]  # 0.2*255 = 51, clipped at 0 and 1
    np.testing.assert_array_equal(preview[0], expected)


def test_area_downsampling_averages_blocks_of_the_clipped_image() -> None:
    images = np.full((1, 3, 2, 4), -1.0, dtype=np.float32)
    images[0, :, :, :2] = [[3.0, 1.0], [0.0, 1.0]]  # first block: clipped to 1, 1, 0.5, 1
    rgb = area_downsample_rgb(images, height=1, width=2)
    assert rgb.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(rgb[0, 0, :, 0], [0.875, 0.0])


@pytest.mark.parametrize(
    ("latents_shape", "images_shape", "message"),
    [
        ((4, 6, 6), (1, 3, 24, 24), "latents must be 4-D"),
        ((1, 4, 6, 6), (3, 24, 24), "images must be 4-D"),
        ((1, 4, 6, 6), (1, 4, 24, 24), "images must have 3 channels"),
        ((2, 4, 6, 6), (1, 3, 24, 24), "same number of samples"),
        ((1, 4, 6, 6), (1, 3, 20, 24), "not one integer multiple"),
        ((1, 4, 6, 6), (1, 3, 24, 12), "not one integer multiple"),
        ((1, 4, 1, 2), (1, 3, 4, 8), "cannot determine 5 unknowns"),
    ],
)
def test_fit_rejects_mismatched_shapes(latents_shape, images_shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_latent_rgb_projection(np.zeros(latents_shape), np.zeros(images_shape))


def test_fit_rejects_non_finite_values() -> None:
    latents, _, images = _synthetic()
    latents[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="latents holds NaN"):
        fit_latent_rgb_projection(latents, images)


@pytest.mark.parametrize(
    ("latents_shape", "projection_shape", "message"),
    [
        ((1, 4, 6, 6), (5, 3), "latents must be 3-D"),
        ((4, 6, 6), (4, 3), r"projection must be \[C \+ 1, 3\] = \[5, 3\]"),
        ((4, 6, 6), (5, 4), r"projection must be \[C \+ 1, 3\]"),
    ],
)
def test_preview_rejects_mismatched_shapes(latents_shape, projection_shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        latents_to_preview(np.zeros(latents_shape), np.zeros(projection_shape))


def _config(**changes) -> PipelineConfig:
    base = PipelineConfig(
        latent_channels=CHANNELS,
        vae_scale_factor=FACTOR,
        size_multiple=16,
        default_height=64,
        default_width=64,
        max_height=128,
        max_width=128,
        vae_scaling_factor=0.5,
        text_max_length=77,
        text_hidden_size=32,
    )
    return dataclasses.replace(base, **changes)


def test_pipeline_config_carries_the_projection_through_json() -> None:
    _, projection, _ = _synthetic()
    config = _config(latent_rgb_projection=projection.astype(float).tolist())
    assert PipelineConfig.from_json(config.to_json()) == config
    # Files written before previews existed still load, without a projection.
    values = dataclasses.asdict(config)
    del values["latent_rgb_projection"]
    assert PipelineConfig.from_json(json.dumps(values)) == _config()
    # Still strict about keys it does not know.
    with pytest.raises(ValueError, match="unknown pipeline config keys"):
        PipelineConfig.from_json(json.dumps({**values, "latent_rgb_matrix": []}))


@pytest.mark.parametrize(
    ("projection", "message"),
    [
        ([[0.0, 0.0, 0.0]] * 4, r"must be empty or \[5\]\[3\]"),
        ([[0.0, 0.0]] * 5, r"must be empty or \[5\]\[3\]"),
        ([[0.0, 0.0, 0.0]] * 4 + [[0.0, float("nan"), 0.0]], "NaN or infinite"),
    ],
)
def test_pipeline_config_rejects_a_malformed_projection(projection, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(latent_rgb_projection=projection)


def test_fit_on_the_tiny_model_gives_a_projection_the_config_keeps(tiny_model_dir: Path) -> None:
    from sdtriton.export.preview_fit import fit_preview_projection
    from sdtriton.export.repository import load_source_pipeline, pipeline_config_of

    pipeline = load_source_pipeline(tiny_model_dir)
    config = pipeline_config_of(pipeline)
    start_s = time.perf_counter()
    fit = fit_preview_projection(pipeline, config)
    logger.info("tiny: preview fit in %.2f s, error %.2f / 255", time.perf_counter() - start_s, fit.mean_abs_error)
    assert fit.projection.shape == (config.latent_channels + 1, 3)
    assert (fit.height, fit.width) == (config.default_height, config.default_width)
    config = dataclasses.replace(config, latent_rgb_projection=fit.projection.astype(float).tolist())
    loaded = PipelineConfig.from_json(config.to_json())
    np.testing.assert_array_equal(np.asarray(loaded.latent_rgb_projection, dtype=np.float32), fit.projection)


# Measured on the committed weights (mean |preview - image| in 0..255 over 4 held-out prompts, 30 steps): 29.6
# for the projection fitted at export, 80.2 for the oracle mean colour of the held-out images themselves.
SHAPES_HELD_OUT_MAX_ERROR = 40.0
SHAPES_MAX_ERROR_FRACTION_OF_BASELINE = 0.6


def test_the_export_fit_previews_held_out_shapes_images(shapes_diffusers_pipeline) -> None:
    from sdtriton.export.preview_fit import PREVIEW_FIT_PROMPTS, fit_preview_projection, sample_final_latents
    from sdtriton.export.repository import pipeline_config_of
    from sdtriton.shapes.world import evaluation_prompts

    pipeline = shapes_diffusers_pipeline
    config = pipeline_config_of(pipeline)
    fit = fit_preview_projection(pipeline, config)
    prompts = [case.prompt for case in evaluation_prompts(4, seed=11)]
    assert not set(prompts) & set(PREVIEW_FIT_PROMPTS)
    latents, images = sample_final_latents(
        pipeline,
        prompts=prompts,
        seed=1234,
        height=fit.height,
        width=fit.width,
        num_inference_steps=config.default_num_inference_steps,
    )
    error = preview_mean_abs_error(latents, images, fit.projection)
    target = area_downsample_rgb(images, height=latents.shape[2], width=latents.shape[3]) * UINT8_MAX
    baseline = float(np.abs(target - target.mean(axis=(0, 1, 2))).mean())
    logger.info(
        "shapes: fit error %.2f, held-out error %.2f, mean-colour baseline %.2f (0..255)",
        fit.mean_abs_error,
        error,
        baseline,
    )
    assert error < SHAPES_HELD_OUT_MAX_ERROR
    assert error < SHAPES_MAX_ERROR_FRACTION_OF_BASELINE * baseline
