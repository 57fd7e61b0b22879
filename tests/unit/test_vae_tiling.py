"""Tiled VAE decoding and encoding: the cut and blend against diffusers' own ``tiled_decode`` and
``_tiled_encode``, when a request is tiled, and the engine sharing VAE calls between the tiles of several requests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from sdtriton import interface
from sdtriton.pipeline_config import VaeTiling
from sdtriton.sd3 import SD3_VAE
from sdtriton.serving.engine import DiffusionEngine, EngineLimits
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.tiling import decode_in_tiles, encode_in_tiles
from sdtriton.serving.validation import parse_generation_params
from sdtriton.tiny import PROFILES
from tests.unit.test_engine import CONFIG, FakeNetworks, _alone, _image, _serve_each

# The tiny VAE (64 px tiles of 32 latents), and the same with SD 3's settings: no quant convs, 16 channels.
VAE_CONFIGS = {
    "sd": PROFILES["tiny"].vae,
    "sd3": {**PROFILES["tiny"].vae, **{key: SD3_VAE[key] for key in ("latent_channels", "use_post_quant_conv")}},
}


@pytest.mark.parametrize("family", sorted(VAE_CONFIGS))
def test_tiles_decode_to_diffusers_tiled_decode_exactly(family: str) -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIGS[family]).eval()
    tiling = VaeTiling.of_vae(vae.config)
    # diffusers' own numbers, read from the autoencoder it builds.
    assert (tiling.sample_size, tiling.latent_size) == (vae.tile_sample_min_size, vae.tile_latent_min_size)
    assert tiling.overlap_factor == vae.tile_overlap_factor
    # 56 x 40 latents: three rows and two columns of tiles, the last of each cut short (not whole tiles).
    latents = torch.randn(1, vae.config.latent_channels, 56, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        calls: list[tuple[int, ...]] = []

        def decode(tile: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(tile.shape))
            return vae.decode(tile).sample

        ours = decode_in_tiles(latents, tiling, decode)
        vae.enable_tiling()
        theirs = vae.decode(latents).sample
    assert torch.equal(ours, theirs)
    assert len(calls) == 6 and max(shape[2:] for shape in calls) == (tiling.latent_size, tiling.latent_size)


@pytest.mark.parametrize("family", sorted(VAE_CONFIGS))
def test_tiles_encode_to_diffusers_tiled_encode(family: str) -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIGS[family]).eval()
    tiling = VaeTiling.of_vae(vae.config)
    # 208 x 136 px in 64 px tiles every 48: five rows and three columns, the last of each cut short.
    image = torch.rand(1, 3, 208, 136, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        calls: list[tuple[int, ...]] = []

        def encode(tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(tuple(tile.shape))
            # The served encoder's answer: DiagonalGaussianDistribution's mean and std.
            latent = vae.encode(tile).latent_dist
            return latent.mean, latent.std

        mean, std = encode_in_tiles(image, tiling, encode)
        vae.enable_tiling()
        theirs = vae.encode(image).latent_dist
    assert len(calls) == 15 and max(shape[2:] for shape in calls) == (tiling.sample_size, tiling.sample_size)
    scale = tiling.sample_size // tiling.latent_size
    assert mean.shape == theirs.mean.shape == (1, vae.config.latent_channels, 208 // scale, 136 // scale)
    assert torch.equal(mean, theirs.mean)
    # std: through 2 log std and back, a float's rounding from diffusers' exp(0.5 logvar).
    torch.testing.assert_close(std, theirs.std, rtol=1e-5, atol=0)


def _params(**values):
    return parse_generation_params(config=TILED, seed=1, num_inference_steps=2, **values)


TILED = dataclasses.replace(CONFIG, vae_tiling=VaeTiling(sample_size=8, latent_size=4, tile_above_px=16))


def test_tiles_above_the_exports_size_or_where_the_request_asks() -> None:
    assert not _params(width=16, height=16).vae_tiled
    assert _params(width=16, height=24).vae_tiled
    assert _params(width=16, height=16, vae_tiling=np.bool_(True)).vae_tiled
    assert not _params(width=16, height=16, vae_tiling=np.bool_(False)).vae_tiled
    off = dataclasses.replace(TILED, vae_tiling=dataclasses.replace(TILED.vae_tiling, tile_above_px=0))
    assert not parse_generation_params(config=off, seed=1, width=32, height=32).vae_tiled


def test_a_request_may_not_turn_tiling_off_above_the_exports_size() -> None:
    with pytest.raises(InvalidInputError) as caught:
        _params(width=32, height=16, vae_tiling=False)
    message = str(caught.value)
    assert interface.VAE_TILING.name in message and "16 px" in message and "32 x 16" in message


def test_a_repository_exported_before_tiling_refuses_it_by_name() -> None:
    assert CONFIG.vae_tiling is None
    assert not parse_generation_params(config=CONFIG, seed=1, vae_tiling=False).vae_tiled
    with pytest.raises(InvalidInputError, match=interface.VAE_TILING.name):
        parse_generation_params(config=CONFIG, seed=1, vae_tiling=True)


def _tiled_image(seed: int, **values):
    image = _image(seed=seed, size=16)
    params = dataclasses.replace(image.params, height=24, **values)
    return dataclasses.replace(image, params=params)


def test_the_engine_decodes_the_tiles_of_several_requests_in_shared_calls() -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=TILED, networks=networks, limits=EngineLimits(max_vae_rows=16))
    images = [_tiled_image(seed, vae_tiled=True) for seed in (3, 4)]
    sinks = _serve_each(engine, images)
    for image, sink in zip(images, sinks, strict=True):
        assert sink.error is None
        assert np.array_equal(sink.result.images[0], _alone(image, TILED))
        assert sink.result.images[0].shape == (24, 16, 3)
    # 12 x 8 latents in tiles of 4 every 3: rows of 4, 4, 4, 3 and columns of 4, 4, 2 latents, 12 tiles an image
    # of 4 shapes; each shape's tiles of both requests in one call.
    assert sorted(networks.vae_batches) == [2 * 1, 2 * 2, 2 * 3, 2 * 6]


def test_the_planner_counts_one_tiles_peak_above_the_vae_sample_size() -> None:
    from sdtriton.plan import measure_model, render_measurement

    native = measure_model("sd15", steps=1).network("vae_decoder")  # 512 px: SD 1.5's VAE sample_size, one call
    large = measure_model("sd15", width_px=1024, height_px=768, steps=1)
    whole = measure_model("sd15", width_px=1024, height_px=768, steps=1, vae_tile_above_px=0).network("vae_decoder")
    tiled = large.network("vae_decoder")
    assert native.vae_tiling.tiles == 1 and whole.vae_tiling.tiles == 1
    # 128 x 96 latents in tiles of 64 every 48: columns of 64, 64, 32 and rows of 64, 48.
    assert tiled.vae_tiling.tiles == tiled.calls_per_request == 6
    assert tiled.activation_peak_bytes == native.activation_peak_bytes
    assert tiled.vae_tiling.untiled_activation_peak_bytes == whole.activation_peak_bytes > tiled.activation_peak_bytes
    assert "VAE tiling   on above 512 px a side" in "\n".join(render_measurement(large))


def test_the_engine_encodes_the_tiles_of_several_img2img_requests_in_shared_calls() -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=TILED, networks=networks, limits=EngineLimits(max_vae_rows=16))
    images = []
    for seed in (3, 4):
        image = _image(seed=seed, size=24, strength=0.5)
        pixels = image.input_image[:, :16]
        params = dataclasses.replace(image.params, width=16, vae_tiled=True)
        images.append(dataclasses.replace(image, params=params, input_image=pixels))
    sinks = _serve_each(engine, images)
    for image, sink in zip(images, sinks, strict=True):
        assert sink.error is None
        # The plain loop (encode_in_tiles) gives the same image: the engine's cut, calls and blend are the same.
        assert np.array_equal(sink.result.images[0], _alone(image, TILED))
    # 24 x 16 px in tiles of 8 every 6: rows of 8, 8, 8, 6 and columns of 8, 8, 4 px, 12 tiles an image of 4
    # shapes; each shape's tiles of both requests in one call.
    assert sorted(networks.encoder_batches) == [2 * 1, 2 * 2, 2 * 3, 2 * 6]
