"""Tiled VAE decoding through a real tritonserver: a request that sends ``vae_tiling`` gets diffusers' image with
``pipe.vae.enable_tiling()`` on the same weights (SD, SDXL, SD 3.5, FLUX.1-dev), at sizes that do not divide into
whole tiles, alone, batched and streamed; and an image 8 times the tiny model's side decodes with the VAE stub's
memory growing by about one tile's activation peak, far less than the same image decoded in one call.

They run on the server of every family (``family_server``), whose repositories tile only where a request asks
(``UNTILED``), so the same request without ``vae_tiling`` gives the untiled image to tell the two apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.export.configs import RenderOptions
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.liveness import StubProcess
from tests.conftest import LARGE_IMAGES_AT_ONCE, LARGE_PREFIX, LARGE_SIZE_FACTOR, SDXL_PREFIX
from tests.integration.oracle import (
    MAX_PIXEL_DIFFERENCE,
    diffusers_image,
    flow_diffusers_image,
    max_pixel_difference,
    sdxl_diffusers_image,
)

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

PROMPT = "a green triangle on a grey background"
STEPS = 4
# The tiny VAEs' tiles are 32 latents (64 px) a side, one every 24 latents: 112 x 80 px is 56 x 40 latents, tiles of
# 32, 32 and 8 latents across and 32 and 16 down; SD 3's position table caps the tiny SD 3.5 at 96 px: 48 x 32
# latents, tiles of 32 and 24 across, 32 and 8 down.
WIDE = {"width": 112, "height": 80}
SD3_WIDE = {"width": 96, "height": 64}


@contextlib.contextmanager
def _tiling(pipeline) -> Iterator[None]:
    pipeline.vae.enable_tiling()
    try:
        yield
    finally:
        pipeline.vae.disable_tiling()


def _sd(diffusers_pipeline, **_) -> tuple[object, Callable[..., np.ndarray]]:
    return diffusers_pipeline, lambda **call: diffusers_image(diffusers_pipeline, PROMPT, **call)


def _sdxl(sdxl_dirs, **_) -> tuple[object, Callable[..., np.ndarray]]:
    import torch
    from diffusers import StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(sdxl_dirs[0], torch_dtype=torch.float32)
    base.set_progress_bar_config(disable=True)
    return base, lambda **call: sdxl_diffusers_image(base, PROMPT, **call)


def _sd35(sd3_exports, **_) -> tuple[object, Callable[..., np.ndarray]]:
    import torch
    from diffusers import StableDiffusion3Pipeline

    pipeline = StableDiffusion3Pipeline.from_pretrained(sd3_exports["sd35"][0], dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, lambda **call: flow_diffusers_image(pipeline, PROMPT, **call)


def _flux(flux_exports, **_) -> tuple[object, Callable[..., np.ndarray]]:
    import torch
    from diffusers import FluxPipeline

    folder, repository, prefix = flux_exports["flux-dev"]
    pipeline = FluxPipeline.from_pretrained(folder, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    t5_rows = PipelineConfig.load(repository / f"{prefix}pipeline" / "1").flux.t5_max_length
    return pipeline, lambda **call: flow_diffusers_image(pipeline, PROMPT, max_sequence_length=t5_rows, **call)


# family: (model prefix, size, the fixture its diffusers folder comes from, its oracle)
FAMILIES = {
    "sd": ("", WIDE, "diffusers_pipeline", _sd),
    "sdxl": (SDXL_PREFIX, WIDE, "sdxl_dirs", _sdxl),
    "sd35": ("sd35_", SD3_WIDE, "sd3_exports", _sd35),
    "flux-dev": ("flux_", SD3_WIDE, "flux_exports", _flux),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiled_images_are_diffusers_with_vae_tiling(family_server, request, family: str) -> None:
    prefix, size, source, oracle_of = FAMILIES[family]
    pipeline, oracle = oracle_of(request.getfixturevalue(source))
    call = {"num_inference_steps": STEPS, **size}
    with StableDiffusionClient(family_server.address.grpc_url, model_name=f"{prefix}stable_diffusion") as client:
        # Two images in one request: their tiles share the VAE calls.
        tiled = client.generate([PROMPT, PROMPT], seed=[21, 22], vae_tiling=True, **call).images
        untiled = client.generate(PROMPT, seed=21, **call).image
    with _tiling(pipeline):
        expected = [oracle(seed=seed, **call) for seed in (21, 22)]
    for image, want in zip(tiled, expected, strict=True):
        assert max_pixel_difference(np.asarray(image), want) <= MAX_PIXEL_DIFFERENCE
    # The comparison can fail: decoded in one call, the image is another.
    assert max_pixel_difference(np.asarray(untiled), expected[0]) > MAX_PIXEL_DIFFERENCE


def test_a_streamed_tiled_request_ends_with_the_same_image(family_server) -> None:
    call = {"seed": 23, "num_inference_steps": STEPS, "vae_tiling": True, **WIDE}
    with StableDiffusionClient(family_server.address.grpc_url) as client:
        steps = []
        streamed = client.generate(PROMPT, on_progress=steps.append, **call).image
        answered = client.generate(PROMPT, **call).image
    assert steps
    assert np.array_equal(np.asarray(streamed), np.asarray(answered))


def _peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM): what it ever held at once, not what it holds now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


# ONNX Runtime's CPU arena grows in chunks of up to the size it already holds: what it takes can reach twice the
# largest call's live bytes.
ARENA_SLACK = 2


def _decoder_peak_bytes(model_dir: Path, *, width_px: int, height_px: int, rows: int) -> int:
    """The planner's activation peak of one VAE decoder call of ``rows`` images of this size, in fp32 with
    attention matrices held (ONNX Runtime's CPU attention), decoded in one call."""
    from sdtriton.plan import Workload, architecture, measure

    workload = Workload(
        width_px=width_px,
        height_px=height_px,
        steps=1,
        batch=rows,
        guidance=False,
        dtype="fp32",
        fused_attention=False,
        vae_tile_above_px=0,
    )
    return measure(architecture(str(model_dir)), workload).network("vae_decoder").activation_peak_bytes


def test_a_large_image_decodes_with_one_tiles_memory(family_server, large_repository, tiny_model_dir) -> None:
    """8 times the tiny model's 64 px across (the height kept small: the tiny UNet's self-attention at the full 512 px
    square would need gigabytes, which no VAE setting changes). The repository decodes at most two tiles a call."""
    size = {"width": 64 * LARGE_SIZE_FACTOR, "height": 128}
    call = {"seed": 5, "num_inference_steps": 1, "guidance_scale": 1.0, **size}
    directory = large_repository / f"{LARGE_PREFIX}vae_decoder"
    stub = StubProcess.find(parent_pid=family_server.pid, model_directory=directory)
    assert stub is not None
    rows = RenderOptions(max_batch_size=LARGE_IMAGES_AT_ONCE, max_running_images=LARGE_IMAGES_AT_ONCE)
    tile_px = PipelineConfig.load(large_repository / f"{LARGE_PREFIX}pipeline" / "1").vae_tiling.sample_size
    tile_peak = _decoder_peak_bytes(tiny_model_dir, width_px=tile_px, height_px=tile_px, rows=1)
    call_peak = _decoder_peak_bytes(
        tiny_model_dir, width_px=tile_px, height_px=tile_px, rows=rows.component_max_batch_size
    )
    untiled_peak = _decoder_peak_bytes(tiny_model_dir, width_px=size["width"], height_px=size["height"], rows=1)
    with StableDiffusionClient(family_server.address.grpc_url, model_name=f"{LARGE_PREFIX}stable_diffusion") as client:
        before = _peak_rss_bytes(stub.pid)
        tiled = client.generate(PROMPT, vae_tiling=True, **call).image
        after_tiled = _peak_rss_bytes(stub.pid)
        untiled = client.generate(PROMPT, **call).image
        after_untiled = _peak_rss_bytes(stub.pid)
    tiled_growth, untiled_growth = after_tiled - before, after_untiled - before
    logger.info(
        "VAE stub peak RSS growth at %dx%d: tiled %.1f MiB, untiled %.1f MiB; planned activation peaks: one tile "
        "%.1f MiB, one call of %d tiles %.1f MiB, the image in one call %.1f MiB",
        size["width"],
        size["height"],
        tiled_growth / 2**20,
        untiled_growth / 2**20,
        tile_peak / 2**20,
        rows.component_max_batch_size,
        call_peak / 2**20,
        untiled_peak / 2**20,
    )
    assert tiled.size == untiled.size == (size["width"], size["height"])
    assert tiled_growth <= ARENA_SLACK * call_peak, f"tiled decoding grew the VAE stub by {tiled_growth} bytes"
    # What the image in one call needs, the stub took (the planner's count is what ONNX Runtime allocates).
    assert untiled_growth >= untiled_peak / ARENA_SLACK
